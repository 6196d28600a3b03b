/**
 * Seeded random numbers (not for cryptography): the project's one module for them.
 *  - generators: seededUniform/seededNormal (the sampler's xorshift stream, core/sampling.ts) for
 *    training and soft-token init; mulberry32 for fixtures and evaluation task data;
 *  - stream seeds: every stream is named, by (seed, index) in training (deriveSeed) and by
 *    (seed, task name, sample index) in evaluation (streamSeed), so adding a stream never changes
 *    the others; both end in the same 32-bit finaliser (mix32);
 *  - draws: randInt, pick, shuffle, sample, permutation, randDigits.
 * Every seeded result in tests and results/ depends on these outputs: change none of them.
 */
import { nextUniform, seedState } from "./sampling.ts";

export type Rng = () => number;

export function seededUniform(seed: number): Rng {
  let state = seedState(seed);
  return () => {
    const [u, next] = nextUniform(state);
    state = next;
    return u;
  };
}

/** Standard normal draws (Box-Muller). */
export function seededNormal(seed: number): Rng {
  const u = seededUniform(seed);
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

/** Mulberry32: a small seeded generator of uniforms in [0, 1) for fixtures and task data. */
export function mulberry32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The 32-bit finaliser both stream seeds end in. */
function mix32(h: number): number {
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
  h = Math.imul(h ^ (h >>> 12), 0x297a2d39);
  return (h ^ (h >>> 15)) >>> 0;
}

/** FNV-1a hash of a string, for deriving stream seeds from names. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h >>> 0;
}

/** Training: a 32-bit seed from a base seed and a stream index, so streams do not overlap. */
export function deriveSeed(seed: number, stream: number): number {
  return mix32(Math.imul((seed >>> 0) ^ 0x85ebca6b, 0xc2b2ae35) ^ Math.imul(stream + 1, 0x27d4eb2f));
}

/** Evaluation: a seed for one stream from a base seed, a name (task) and an index (sample). */
export function streamSeed(seed: number, name: string, index: number): number {
  return mix32(Math.imul((seed >>> 0) ^ hashString(name), 0x85ebca6b) ^ Math.imul(index + 1, 0xc2b2ae35));
}

/** Integer in [lo, hi], inclusive. */
export const randInt = (r: Rng, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));

export const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];

/** Fisher-Yates shuffle into a new array. */
export function shuffle<T>(r: Rng, xs: readonly T[]): T[] {
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** Fisher-Yates permutation of 0..n-1 (the shuffle of the indices). */
export const permutation = (r: Rng, n: number): number[] =>
  shuffle(r, Array.from({ length: n }, (_, i) => i));

/** `k` distinct items, in drawn order. */
export const sample = <T>(r: Rng, xs: readonly T[], k: number): T[] => shuffle(r, xs).slice(0, k);

/** A decimal number of exactly `digits` digits (no leading zero). */
export function randDigits(r: Rng, digits: number): string {
  let s = String(randInt(r, 1, 9));
  for (let i = 1; i < digits; i++) s += String(randInt(r, 0, 9));
  return s;
}
