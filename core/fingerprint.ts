/** A model's identity for adapters: SHA-256 of its normalised config and its embedding table. */
import type { ModelWeights } from "./weights.ts";

export async function modelFingerprint(weights: ModelWeights): Promise<string> {
  const configBytes = new TextEncoder().encode(JSON.stringify(weights.config));
  const embed = new Uint8Array(weights.embed.buffer, weights.embed.byteOffset, weights.embed.byteLength);
  const all = new Uint8Array(configBytes.length + embed.length);
  all.set(configBytes);
  all.set(embed, configBytes.length);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}
