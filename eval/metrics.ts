/**
 * KV-compression metrics as pure functions (arrays in, numbers out): the critical-KV oracle and hit
 * rate (ARCHITECTURE.md), and fidelity to the full cache along its own continuation.
 */

export interface HeadShape {
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
}

/** Indices of the `k` largest values, ascending; among equal values the earlier index wins. */
export function topK(values: ArrayLike<number>, k: number): number[] {
  const order = Array.from({ length: values.length }, (_, i) => i).sort((a, b) =>
    values[b] - values[a] || a - b
  );
  return order.slice(0, Math.max(0, k)).sort((a, b) => a - b);
}

/**
 * The oracle: per layer and KV head, the top-B prompt positions by the attention the full-cache
 * response rows paid them. `mass` is [layer][queryHead][L] (summed or mean over the rows: the order
 * is the same); query heads are averaged over their GQA group first. B >= L keeps every position.
 */
export function oracleSets(mass: ArrayLike<number>, s: HeadShape, L: number, B: number): number[][][] {
  const group = s.nHeads / s.nKvHeads;
  return Array.from({ length: s.nLayers }, (_, l) =>
    Array.from({ length: s.nKvHeads }, (_, g) => {
      const avg = new Float64Array(L);
      for (let j = 0; j < group; j++) {
        const o = (l * s.nHeads + g * group + j) * L;
        for (let t = 0; t < L; t++) avg[t] += mass[o + t] / group;
      }
      return topK(avg, Math.min(B, L));
    }));
}

/**
 * Critical-KV hit rate: |kept ∩ oracle| / B per layer and KV head, averaged. B is the nominal budget
 * (the oracle's size), so heads given more than B by an allocation policy (PyramidKV, AdaKV) can gain
 * and heads given fewer lose, as the policy intends. B = 0 counts as a perfect hit.
 */
export function hitRate(kept: ArrayLike<number>[][], oracle: number[][][], B: number): number {
  let sum = 0, n = 0;
  for (let l = 0; l < oracle.length; l++) {
    for (let g = 0; g < oracle[l].length; g++) {
      const k = new Set(Array.from(kept[l][g]));
      const o = oracle[l][g];
      const denom = Math.min(B, o.length);
      sum += denom === 0 ? 1 : o.filter((t) => k.has(t)).length / denom;
      n++;
    }
  }
  return n === 0 ? 1 : sum / n;
}

/**
 * Evidence retention: the share of the evidence positions (needle, introduction; [start, end) spans)
 * each layer and KV head kept, averaged. Null without evidence.
 */
export function spanRetention(
  kept: ArrayLike<number>[][],
  spans: readonly [number, number][],
): number | null {
  const positions = [
    ...new Set(spans.flatMap(([a, b]) => Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i))),
  ];
  if (positions.length === 0) return null;
  let sum = 0, n = 0;
  for (const layer of kept) {
    for (const head of layer) {
      const k = new Set(Array.from(head));
      sum += positions.filter((t) => k.has(t)).length / positions.length;
      n++;
    }
  }
  return n === 0 ? null : sum / n;
}

/** log softmax in float64. */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const shift = max + Math.log(sum);
  return Float64Array.from({ length: logits.length }, (_, i) => logits[i] - shift);
}

/** KL(p || q) of the distributions softmax(p) and softmax(q), in nats. */
export function klDivergence(pLogits: ArrayLike<number>, qLogits: ArrayLike<number>): number {
  if (pLogits.length !== qLogits.length) {
    throw new Error(`kl: lengths ${pLogits.length} != ${qLogits.length}`);
  }
  const lp = logSoftmax(pLogits), lq = logSoftmax(qLogits);
  let kl = 0;
  for (let i = 0; i < lp.length; i++) {
    const p = Math.exp(lp[i]);
    if (p > 0) kl += p * (lp[i] - lq[i]);
  }
  // Rounding can leave -1e-17 for identical inputs: KL is never negative.
  return Math.max(0, kl);
}

/** Index of the largest value; the first among equals (as greedy decoding). */
export function argmax(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

export interface Fidelity {
  /** Mean KL(full || pruned) over the steps. */
  kl: number;
  /** Share of steps where the argmax agrees. */
  top1: number;
}

/** Fidelity of `got` to `ref`: next-token logits at the same teacher-forced steps. */
export function fidelity(ref: ArrayLike<number>[], got: ArrayLike<number>[]): Fidelity {
  if (ref.length !== got.length) {
    throw new Error(`fidelity: ${ref.length} reference steps, ${got.length} compared`);
  }
  if (ref.length === 0) return { kl: 0, top1: 1 };
  let kl = 0, agree = 0;
  for (let i = 0; i < ref.length; i++) {
    kl += klDivergence(ref[i], got[i]);
    if (argmax(ref[i]) === argmax(got[i])) agree++;
  }
  return { kl: kl / ref.length, top1: agree / ref.length };
}

/** Length of the common prefix of two token lists (the exactly matching greedy prefix). */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/**
 * Greedy tokens a pruned model would produce along the reference before diverging, from teacher-forced
 * logits alone: step i's argmax must equal reference token `first + i`. `given` tokens at the start
 * come from before compression and always match.
 */
export function greedyPrefixFromLogits(
  got: ArrayLike<number>[],
  reference: readonly number[],
  given: number,
): number {
  let n = given;
  for (let i = 0; n < reference.length && i < got.length; i++, n++) {
    if (argmax(got[i]) !== reference[n]) break;
  }
  return Math.min(n, reference.length);
}

/** Mean of the non-null values; null when there are none. */
export function meanOf(xs: readonly (number | null | undefined)[]): number | null {
  const v = xs.filter((x): x is number => typeof x === "number" && Number.isFinite(x));
  return v.length === 0 ? null : v.reduce((a, b) => a + b, 0) / v.length;
}
