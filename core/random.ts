/** Seeded random numbers for reproducible ablations and data (not for cryptography). */
import { nextUniform, seedState } from "./sampling.ts";

export function seededUniform(seed: number): () => number {
  let state = seedState(seed);
  return () => {
    const [u, next] = nextUniform(state);
    state = next;
    return u;
  };
}

/** Standard normal draws (Box-Muller). */
export function seededNormal(seed: number): () => number {
  const u = seededUniform(seed);
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

/** Mulberry32: a small seeded generator of uniforms in [0, 1) for fixtures and task data. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
