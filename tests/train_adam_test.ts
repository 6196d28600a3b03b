import assert from "node:assert";
import { adamInit, adamStep, clipByNorm, scheduledLr } from "../core/train/adam.ts";
import { batchIndices } from "../core/train/loop.ts";

Deno.test("adam: cosine schedule starts at lr, ends at the floor, warms up linearly", () => {
  const s = { lr: 0.05, steps: 100, warmup: 0, minFactor: 0 };
  assert.strictEqual(scheduledLr(s, 0), 0.05);
  assert(Math.abs(scheduledLr(s, 50) - 0.025) < 1e-12);
  assert(scheduledLr(s, 100) < 1e-12);
  const w = { ...s, warmup: 10 };
  assert(Math.abs(scheduledLr(w, 4) - 0.025) < 1e-12);
  assert.strictEqual(scheduledLr(w, 10), 0.05);
});

Deno.test("adam: clipping rescales only above the limit", () => {
  const g = Float64Array.from([3, 4]);
  assert.strictEqual(clipByNorm(g, 10).grad, g);
  const c = clipByNorm(g, 1);
  assert.strictEqual(c.norm, 5);
  assert.deepStrictEqual([...c.grad].map((x) => +x.toFixed(12)), [0.6, 0.8]);
});

Deno.test("adam: minimises a quadratic and leaves its inputs untouched", () => {
  let p: Float64Array = Float64Array.from([3, -2]), st = adamInit(2);
  const first = p;
  for (let i = 0; i < 500; i++) {
    const r = adamStep(p, p.map((x) => 2 * x), st, 0.05);
    p = r.params;
    st = r.state;
  }
  assert(Math.hypot(p[0], p[1]) < 1e-2, `did not converge: ${p}`);
  assert.deepStrictEqual([...first], [3, -2]);
  assert.strictEqual(st.t, 500);
});

Deno.test("loop: batches cover every sample once per epoch and depend only on (seed, step)", () => {
  const epoch = [0, 1, 2].flatMap((s) => batchIndices(9, s, 6, 2));
  assert.deepStrictEqual([...epoch].sort(), [0, 1, 2, 3, 4, 5]);
  assert.deepStrictEqual(batchIndices(9, 7, 6, 4), batchIndices(9, 7, 6, 4));
  assert.notDeepStrictEqual(batchIndices(9, 0, 6, 6), batchIndices(10, 0, 6, 6));
  assert.strictEqual(batchIndices(1, 0, 3, 8).length, 3);
});
