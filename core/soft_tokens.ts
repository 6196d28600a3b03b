/** Untrained soft tokens for the Judge Q ablation and for training's initialisation. */
import { seededNormal } from "./random.ts";

/** Mean token embedding plus seeded Gaussian noise of `noise` times its RMS, as [n, dim]. */
export function randomSoftTokens(
  embed: Float32Array,
  dim: number,
  n: number,
  seed: number,
  noise = 1,
): Float32Array {
  const vocab = embed.length / dim;
  const mean = new Float64Array(dim);
  for (let v = 0; v < vocab; v++) for (let i = 0; i < dim; i++) mean[i] += embed[v * dim + i] / vocab;
  let ss = 0;
  for (let k = 0; k < embed.length; k++) ss += embed[k] * embed[k];
  const rms = Math.sqrt(ss / embed.length);
  const normal = seededNormal(seed);
  const out = new Float32Array(n * dim);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < dim; i++) out[r * dim + i] = mean[i] + noise * rms * normal();
  }
  return out;
}
