import assert from "node:assert";
import { parseModelConfig } from "../core/config.ts";
import * as E from "fp-ts/Either";
import { hitRate, oraclePositions, selectPositions } from "../train/select.ts";
import { fidelity } from "../train/evaluate.ts";
import { tinyConfigJson } from "../train/testing.ts";

const config = (() => {
  const c = parseModelConfig(tinyConfigJson());
  if (E.isLeft(c)) throw c.left;
  return c.right; // 2 layers, 4 query heads, 2 KV heads
})();
const L = 10;
const mass = () => new Float32Array(config.nLayers * config.nHeads * L);

Deno.test("select: per KV head, GQA mean of query heads, window always kept, budget respected", () => {
  const m = mass();
  // Layer 0, KV head 0 = query heads 0 and 1: head 0 favours 2, head 1 favours 5 more strongly.
  m[0 * L + 2] = 1;
  m[1 * L + 5] = 3;
  m[1 * L + 2] = 0.5;
  for (const method of ["snapkv", "judgeq"] as const) {
    const kept = selectPositions(config, method, m, L, 4, { window: 2, kernel: 1 });
    assert.deepStrictEqual([...kept[0][0]], [2, 5, 8, 9]);
    for (const layer of kept) for (const head of layer) assert.strictEqual(head.length, 4);
  }
  // Ties go to the earlier position; a prompt within the budget is kept whole.
  assert.deepStrictEqual([...oraclePositions(config, m, L, 3)[1][0]], [0, 1, 2]);
  assert.deepStrictEqual([...oraclePositions(config, m, L, 10)[1][1]], [...Array(10).keys()]);
});

Deno.test("select: max-pooling spreads a peak to its neighbours, only before the window", () => {
  const m = mass();
  m[4] = 1; // layer 0, query head 0, position 4
  const pooled = selectPositions(config, "judgeq", m, L, 3, { window: 0, kernel: 3 })[0][0];
  assert.deepStrictEqual([...pooled], [3, 4, 5]);
  const unpooled = selectPositions(config, "judgeq", m, L, 3, { window: 0, kernel: 1 })[0][0];
  assert.deepStrictEqual([...unpooled], [0, 1, 4]);
});

Deno.test("select: hit rate is the overlap fraction averaged over layers and heads", () => {
  const a = [[Int32Array.from([1, 2]), Int32Array.from([3, 4])]];
  const b = [[Int32Array.from([2, 1]), Int32Array.from([4, 5])]];
  assert.strictEqual(hitRate(a, b), 0.75);
});

Deno.test("evaluate: fidelity is zero KL and full agreement for identical logits", () => {
  const x = Float32Array.from([1, 2, 3, 0, 5, -1]);
  assert.deepStrictEqual(fidelity(x, x, 3), { kl: 0, top1: 1 });
  const f = fidelity(x, Float32Array.from([3, 2, 1, 0, 5, -1]), 3);
  assert(f.kl > 0 && f.top1 === 0.5);
});
