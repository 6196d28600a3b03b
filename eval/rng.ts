/**
 * Seeded randomness for task generation. Every generator draws from a stream derived from
 * (suite seed, task name, sample index), so adding a task or a sample never changes the others.
 */

/** Mulberry32 (core/random.ts): small, fast, and good enough for picking words and depths. */
export { mulberry32 as rngFrom } from "../core/random.ts";

/** FNV-1a hash of a string, for deriving stream seeds from names. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h >>> 0;
}

/** A seed for one stream: base seed, a name (task) and an index (sample), mixed. */
export function streamSeed(seed: number, name: string, index: number): number {
  let h = Math.imul((seed >>> 0) ^ hashString(name), 0x85ebca6b) ^ Math.imul(index + 1, 0xc2b2ae35);
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
  h = Math.imul(h ^ (h >>> 12), 0x297a2d39);
  return (h ^ (h >>> 15)) >>> 0;
}

export type Rng = () => number;

/** Integer in [lo, hi], inclusive. */
export const randInt = (r: Rng, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));

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

/** `k` distinct items, in drawn order. */
export const sample = <T>(r: Rng, xs: readonly T[], k: number): T[] => shuffle(r, xs).slice(0, k);

/** A decimal number of exactly `digits` digits (no leading zero). */
export function randDigits(r: Rng, digits: number): string {
  let s = String(randInt(r, 1, 9));
  for (let i = 1; i < digits; i++) s += String(randInt(r, 0, 9));
  return s;
}
