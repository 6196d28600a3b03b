/**
 * Selection for the report through the shared scoring/selection code (core/methods, core/scoring,
 * core/selection), so the evaluation scores exactly as the serving interpreter does; plus the
 * critical-KV hit rate.
 */
import type { ModelConfig } from "../core/config.ts";
import { GLOBAL_DEFAULTS, METHODS } from "../core/methods/registry.ts";
import { aggregateGqa } from "../core/scoring.ts";
import { topPerHead } from "../core/selection.ts";

export interface Selection {
  /** Prompt positions always kept at the end of the prompt (counted in the budget). */
  window: number;
  /** Max-pool kernel over positions (1: none). */
  kernel: number;
}

/** Top `budget` per [layer][kvHead] of scores [layer][kvHead][L], the last `window` always kept. */
const keepTop = (
  c: ModelConfig,
  scores: Float32Array,
  L: number,
  budget: number,
  window: number,
): Int32Array[][] => topPerHead(scores, c.nLayers, c.nKvHeads, L, () => budget, window);

/**
 * Kept prompt positions of a registered attention method ("snapkv", "judgeq") from the summed
 * attention of its scoring rows, [layer][queryHead][L].
 */
export function selectPositions(
  c: ModelConfig,
  method: "snapkv" | "judgeq",
  mass: Float32Array,
  L: number,
  budget: number,
  sel: Selection,
): Int32Array[][] {
  const m = METHODS[method];
  const scores = m.score({ config: c, length: L, mass, firstRow: 0, keyNorms: null }, {
    ...GLOBAL_DEFAULTS,
    ...m.defaults,
    budget,
    window: sel.window,
    pooling: sel.kernel > 1 ? "max" : "none",
    kernel: sel.kernel,
  });
  return keepTop(c, scores, L, budget, sel.window);
}

/** The oracle: top-B positions by the response's attention, GQA mean, no window or pooling. */
export const oraclePositions = (
  c: ModelConfig,
  mass: Float32Array,
  L: number,
  budget: number,
): Int32Array[][] => keepTop(c, aggregateGqa(mass, c.nLayers, c.nHeads, c.nKvHeads, L, "mean"), L, budget, 0);

/** |kept ∩ oracle| / |oracle|, averaged over layers and KV heads. */
export function hitRate(kept: Int32Array[][], oracle: Int32Array[][]): number {
  let sum = 0, count = 0;
  for (let l = 0; l < oracle.length; l++) {
    for (let g = 0; g < oracle[l].length; g++) {
      const set = new Set(kept[l][g]);
      let hits = 0;
      for (const t of oracle[l][g]) if (set.has(t)) hits++;
      sum += hits / oracle[l][g].length;
      count++;
    }
  }
  return sum / count;
}
