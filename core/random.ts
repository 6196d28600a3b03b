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
