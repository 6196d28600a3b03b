/**
 * Judge Q's soft pass, one sequence for the plan's prefill compression and for compression during decoding:
 * append the soft tokens after the cache, measure their attention over every position before them, and
 * remove their own entries again, so that nothing of them stays in the cache.
 */
import type { KvSession } from "./executor.ts";

/** The rows to append: the adapter's, or the random ones of the ablation (also when there is no adapter). */
export const softRows = (
  randomSoft: boolean,
  adapter: Float32Array | null,
  random: () => Float32Array,
): Float32Array => (randomSoft || !adapter ? random() : adapter);

/**
 * Appends `count` soft rows at the next position P, returns their summed attention over positions < P
 * ([layer][queryHead][P]), and truncates the cache back to P.
 */
export async function softPass(s: KvSession, rows: Float32Array, count: number): Promise<Float32Array> {
  const P = s.nextPosition;
  const r = await s.forward({ kind: "embeddings", rows, count }, { logits: "none", captureQueries: true });
  let mass: Float32Array;
  try {
    mass = await s.attentionMass(r.queries!, P);
  } finally {
    r.queries!.dispose();
  }
  await s.truncateFrom(P);
  return mass;
}
