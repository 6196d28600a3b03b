/**
 * Token sampling shared by the executors: greedy, temperature, top-k, top-p, with a seeded generator
 * simple enough to mirror in WGSL (a 32-bit xorshift, so the GPU can draw the same numbers).
 */
import type { SamplingOptions } from "./executor.ts";

export const GREEDY: SamplingOptions = { temperature: 0, topP: 1, topK: 0, seed: 0 };

/** xorshift32 state from a seed (never zero). */
export function seedState(seed: number): number {
  const s = (Math.imul(seed >>> 0, 0x9e3779b1) ^ 0x6d2b79f5) >>> 0;
  return s === 0 ? 0x6d2b79f5 : s;
}

/** Advances the generator: returns [uniform in [0,1), next state]. */
export function nextUniform(state: number): [number, number] {
  let x = state >>> 0;
  x ^= x << 13;
  x >>>= 0;
  x ^= x >>> 17;
  x ^= x << 5;
  x >>>= 0;
  return [(x >>> 8) / 16777216, x];
}

/** Index of the largest logit; the first one among equals. */
export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** Samples one token; returns [token, next generator state]. */
export function sampleToken(logits: Float32Array, o: SamplingOptions, state: number): [number, number] {
  if (o.temperature <= 0) return [argmax(logits), state];
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[i]);
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  const probs = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) total += probs[i] = Math.exp((logits[i] - max) / o.temperature);
  // Keep the smallest prefix of the sorted tokens reaching top-p mass, at most top-k of them.
  const limit = o.topK > 0 ? Math.min(o.topK, n) : n;
  let keep = 0, mass = 0;
  while (keep < limit) {
    mass += probs[order[keep]] / total;
    keep++;
    if (mass >= o.topP) break;
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += probs[order[i]];
  const [u, next] = nextUniform(state);
  let acc = 0;
  for (let i = 0; i < keep; i++) {
    acc += probs[order[i]] / kept;
    if (u < acc) return [order[i], next];
  }
  return [order[keep - 1], next];
}
