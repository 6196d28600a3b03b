/**
 * Shared pieces of attention-based scoring, as pure functions on flat arrays:
 * pooling along prompt positions and aggregation of query heads into their KV head (GQA).
 */

export type Pooling = "max" | "avg" | "none";
export type GqaAggregation = "mean" | "max" | "sum";

/**
 * Pools each row of `rows` x `length` values over a centred kernel (stride 1, same length), only over
 * the first `span` positions; positions from `span` on are copied unchanged. Max-pooling pads with -inf
 * (the edges see fewer values); average pooling averages the values inside the row.
 */
export function poolRows(
  values: Float32Array,
  rows: number,
  length: number,
  span: number,
  pooling: Pooling,
  kernel: number,
): Float32Array {
  if (pooling === "none" || kernel <= 1) return values.slice();
  const out = values.slice();
  const half = Math.floor(kernel / 2);
  for (let r = 0; r < rows; r++) {
    const base = r * length;
    for (let t = 0; t < span; t++) {
      const lo = Math.max(0, t - half), hi = Math.min(span - 1, t + kernel - 1 - half);
      let acc = pooling === "max" ? -Infinity : 0;
      for (let u = lo; u <= hi; u++) {
        const v = values[base + u];
        acc = pooling === "max" ? Math.max(acc, v) : acc + v;
      }
      out[base + t] = pooling === "max" ? acc : acc / (hi - lo + 1);
    }
  }
  return out;
}

/** [layer][queryHead][L] -> [layer][kvHead][L], combining each GQA group of query heads. */
export function aggregateGqa(
  perQueryHead: Float32Array,
  nLayers: number,
  nHeads: number,
  nKvHeads: number,
  length: number,
  how: GqaAggregation,
): Float32Array {
  const group = nHeads / nKvHeads;
  const out = new Float32Array(nLayers * nKvHeads * length);
  for (let l = 0; l < nLayers; l++) {
    for (let g = 0; g < nKvHeads; g++) {
      const o = (l * nKvHeads + g) * length;
      for (let t = 0; t < length; t++) {
        let acc = how === "max" ? -Infinity : 0;
        for (let j = 0; j < group; j++) {
          const v = perQueryHead[(l * nHeads + g * group + j) * length + t];
          acc = how === "max" ? Math.max(acc, v) : acc + v;
        }
        out[o + t] = how === "mean" ? acc / group : acc;
      }
    }
  }
  return out;
}
