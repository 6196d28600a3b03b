/** Identities: a model's (SHA-256 of its normalised config and embedding table), an adapter's. */
import type { ModelWeights } from "./weights.ts";

export function modelFingerprint(weights: ModelWeights): Promise<string> {
  return modelFingerprintOf(weights.config, weights.embed);
}

/** The same fingerprint from a model's config and embedding table (what a loaded Model keeps). */
export function modelFingerprintOf(config: unknown, embed: Float32Array): Promise<string> {
  return sha256Hex(
    new TextEncoder().encode(JSON.stringify(config)),
    new Uint8Array(embed.buffer, embed.byteOffset, embed.byteLength),
  );
}

/** A Judge Q adapter's identity: SHA-256 of its soft embeddings. */
export function adapterFingerprint(softEmbeddings: Float32Array): Promise<string> {
  return sha256Hex(
    new Uint8Array(softEmbeddings.buffer, softEmbeddings.byteOffset, softEmbeddings.byteLength),
  );
}

async function sha256Hex(...parts: Uint8Array[]): Promise<string> {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (all.set(p, at), at + p.length), 0);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}
