/**
 * Budget policies: which prompt positions each KV head keeps, given scores [layer][kvHead][L].
 * All pure. Among equal scores the earlier position wins; kept lists are ascending.
 */

/** Keeps the last `window` positions plus the `budget - window` best-scored of the rest. */
export function topWithWindow(
  scores: Float32Array,
  offset: number,
  length: number,
  budget: number,
  window: number,
): Int32Array {
  if (budget >= length) return Int32Array.from({ length }, (_, i) => i);
  const w = Math.min(window, budget);
  const candidates = Array.from({ length: length - w }, (_, i) => i);
  candidates.sort((a, b) => scores[offset + b] - scores[offset + a] || a - b);
  const kept = candidates.slice(0, budget - w);
  for (let t = length - w; t < length; t++) kept.push(t);
  return Int32Array.from(kept).sort();
}

/** `topWithWindow` for every layer and KV head of scores [layer][kvHead][L], budgets per layer. */
export function topPerHead(
  scores: Float32Array,
  nLayers: number,
  nKvHeads: number,
  length: number,
  budgetOfLayer: (layer: number) => number,
  window: number,
): Int32Array[][] {
  return Array.from(
    { length: nLayers },
    (_, l) =>
      Array.from(
        { length: nKvHeads },
        (_, g) => topWithWindow(scores, (l * nKvHeads + g) * length, length, budgetOfLayer(l), window),
      ),
  );
}

/**
 * PyramidKV per-layer budgets (the KVCache-Factory formula, beta 20): an arithmetic progression from
 * the first layer (most) to the last (fewest), window included. Integer division leaves a remainder;
 * it goes to the earliest layers, one entry each, so the budgets sum to exactly nLayers x budget.
 */
export function pyramidBudgets(
  nLayers: number,
  length: number,
  budget: number,
  window: number,
  beta = 20,
): number[] {
  if (nLayers === 1 || budget >= length) return Array(nLayers).fill(Math.min(budget, length));
  const capacity = budget - window;
  let minNum = Math.floor(capacity / beta);
  let maxNum = capacity * 2 - minNum;
  if (maxNum >= length - window) {
    maxNum = length - window;
    minNum = capacity * 2 - maxNum;
  }
  const step = Math.floor((maxNum - minNum) / (nLayers - 1));
  const budgets = Array.from({ length: nLayers }, (_, l) => maxNum - l * step + window);
  let remainder = nLayers * budget - budgets.reduce((a, b) => a + b, 0);
  for (let l = 0; remainder !== 0; l = (l + 1) % nLayers) {
    const delta = Math.sign(remainder);
    const next = budgets[l] + delta;
    if (next >= window && next <= length) {
      budgets[l] = next;
      remainder -= delta;
    }
  }
  return budgets;
}

/**
 * AdaKV head-adaptive allocation within one layer: every head keeps its window and at least
 * `floor` x (budget - window) of its best positions; the rest of the layer's total goes to the best
 * scores across heads. Returns kept positions per head; their counts sum to nKvHeads x budget.
 */
export function adaptiveSelect(
  scores: Float32Array,
  layerOffset: number,
  nKvHeads: number,
  length: number,
  budget: number,
  window: number,
  floor: number,
): Int32Array[] {
  if (budget >= length) {
    return Array.from({ length: nKvHeads }, () => Int32Array.from({ length }, (_, i) => i));
  }
  const free = budget - window;
  const guaranteed = Math.floor(floor * free);
  const chosen: Set<number>[] = [];
  const pool: { head: number; t: number; score: number }[] = [];
  for (let g = 0; g < nKvHeads; g++) {
    const off = layerOffset + g * length;
    const order = Array.from({ length: length - window }, (_, i) => i)
      .sort((a, b) => scores[off + b] - scores[off + a] || a - b);
    chosen.push(new Set(order.slice(0, guaranteed)));
    for (const t of order.slice(guaranteed)) pool.push({ head: g, t, score: scores[off + t] });
  }
  pool.sort((a, b) => b.score - a.score || a.t - b.t || a.head - b.head);
  for (const p of pool.slice(0, nKvHeads * (free - guaranteed))) chosen[p.head].add(p.t);
  return chosen.map((set) => {
    for (let t = length - window; t < length; t++) set.add(t);
    return Int32Array.from(set).sort();
  });
}
