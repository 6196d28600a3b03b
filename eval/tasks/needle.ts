/**
 * Needle in a haystack over essays on a grid of context lengths x depths (the classic heat map):
 * sample `index` walks the grid length-major, `repeats` samples per cell.
 */
import { niah } from "./ruler.ts";
import type { GenContext, TaskInstance } from "./types.ts";

export interface NeedleGrid {
  /** Prompt lengths in tokens. */
  lengths: number[];
  /** Needle depths in percent of the context (0 = first sentence, 100 = last). */
  depths: number[];
  repeats: number;
}

export const gridSize = (g: NeedleGrid) => g.lengths.length * g.depths.length * g.repeats;

/** Grid cell of sample `index`. */
export function gridCell(g: NeedleGrid, index: number): { length: number; depth: number; repeat: number } {
  const repeat = index % g.repeats, cell = Math.floor(index / g.repeats);
  return {
    length: g.lengths[Math.floor(cell / g.depths.length)],
    depth: g.depths[cell % g.depths.length],
    repeat,
  };
}

/** One needle at the grid cell's depth, the context fitted to the cell's length (the target is ignored). */
export function needleInstance(g: NeedleGrid, ctx: GenContext, index: number): TaskInstance {
  const cell = gridCell(g, index);
  const t = niah(
    "needle",
    { haystack: "essay", keys: 1, values: 1, queries: 1, digits: 7, depth: cell.depth / 100 },
    ctx,
    index,
    cell.length,
  );
  return { ...t, meta: { ...t.meta, length: cell.length, depth: cell.depth } };
}
