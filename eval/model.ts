/**
 * The model as the harness sees it: a loaded Model plus what identifies its results (name, executor,
 * adapter digest), and the token-level helpers every task needs.
 */
import type { Model } from "../core/engine.ts";
import { defaultAdapterPath, type ExecutorChoice, loadModel, type LoadOptions } from "../io/runtime.ts";

export interface EvalModel {
  model: Model;
  /** Short digest of the Judge Q adapter's soft embeddings, or null without one. */
  adapterId: string | null;
  /** Where the adapter was looked for, for skip reasons. */
  adapterPath: string;
}

async function digest(data: Float32Array): Promise<string> {
  const bytes = new Uint8Array(data.byteLength);
  bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(h.slice(0, 6), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Loads the model; its judgeq.safetensors adapter is picked up automatically when present. */
export async function loadEvalModel(
  dir: string | undefined,
  executor: ExecutorChoice,
  warn?: (m: string) => void,
  options: Pick<LoadOptions, "threads" | "weightFormat"> = {},
): Promise<EvalModel> {
  const model = await loadModel({ model: dir, executor, warn, ...options });
  const base = dir ?? new URL("../fixtures/models/stories260K/", import.meta.url).pathname;
  return {
    model,
    adapterId: model.adapter ? await digest(model.adapter.softEmbeddings) : null,
    adapterPath: defaultAdapterPath(base),
  };
}

/** Tokens of `text` (BOS first) as the model sees a prompt. */
export const encodePrompt = (m: Model, text: string) => m.tokenizer.encode(text, { addBos: true });

/**
 * Tokens of `text` continuing earlier tokens. SentencePiece prepends a space to every encoded text; a
 * leading space in `text` is expressed by that, and a lone prefix-space token is dropped otherwise.
 */
export function encodeContinuation(m: Model, text: string): number[] {
  if (text.startsWith(" ")) return m.tokenizer.encode(text.slice(1), { addBos: false });
  const ids = m.tokenizer.encode(text, { addBos: false });
  const space = m.tokenizer.tokenToId("▁");
  return ids.length > 1 && ids[0] === space ? ids.slice(1) : ids;
}

/**
 * Token span [start, end) of `tokens` whose text covers the first occurrence of `sub` in their decoded
 * text, or null. Binary search over decoded prefix lengths (SentencePiece cannot decode tokens alone).
 */
export function tokenSpan(m: Model, tokens: readonly number[], sub: string): [number, number] | null {
  const text = (k: number) => (k === 0 ? "" : m.tokenizer.decode(tokens.slice(0, k), { skipSpecial: true }));
  const at = text(tokens.length).indexOf(sub);
  if (at < 0 || sub.length === 0) return null;
  // Largest k whose prefix ends at or before `at`: token k starts the substring.
  let lo = 0, hi = tokens.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (text(mid).length <= at) lo = mid;
    else hi = mid - 1;
  }
  const start = lo;
  // Smallest k whose prefix covers the substring's end.
  lo = start + 1, hi = tokens.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (text(mid).length >= at + sub.length) hi = mid;
    else lo = mid + 1;
  }
  return [start, lo];
}

/** Output text for scoring: the tokens up to the first stop token, specials skipped. */
export function outputText(m: Model, tokens: readonly number[]): string {
  const stop = tokens.findIndex((t) => m.stopTokenIds.includes(t));
  const kept = stop < 0 ? tokens : tokens.slice(0, stop);
  return kept.length === 0 ? "" : m.tokenizer.decode(kept, { skipSpecial: true });
}
