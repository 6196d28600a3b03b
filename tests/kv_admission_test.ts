/**
 * The KV admission rule of batched decoding (server/kv_ledger.ts) on the CPU reference and the native
 * executor with stories260K and its Judge Q adapter: a stream reserves its plan's peak while it prefills and
 * scores, then exactly the bytes of its pruned cache plus its tokens to come (checked against the byte count
 * worked out from the model's shape), so streams decode beside a Judge Q prefill's peak where the growth
 * bound would not let them; the cap is never passed, at any step.
 */
import { assert, assertEquals } from "./helpers.ts";
import { generateText, type Model, type TextRequest } from "../core/engine.ts";
import { promptTokens } from "../fixtures/testing.ts";
import { loadModel } from "../io/runtime.ts";
import { nativeUnsupportedReason } from "../native/mod.ts";
import { BatchScheduler } from "../server/batch_scheduler.ts";

/** Bytes of a cache of `entries` per KV head in every layer, f32 K and V and an i32 position each, plus logits. */
function exactBytes(m: Model, entries: number): number {
  const c = m.config;
  return c.nLayers * c.nKvHeads * entries * (2 * c.headDim * 4 + 4) + c.vocabSize * 4;
}

const judgeq = (seed: number, length: number, budget: number, maxTokens: number): TextRequest => ({
  prompt: promptTokens(length, 512, seed),
  maxTokens,
  ignoreEos: true,
  compression: { method: "judgeq", budget },
});

const nativeReason = await nativeUnsupportedReason();

for (const executor of ["cpu", "native"] as const) {
  const ignore = executor === "native" && nativeReason !== null;
  let loaded: Promise<Model> | null = null;
  const model = () => (loaded ??= loadModel({ executor, threads: 1, warn: () => {} }));

  Deno.test({
    name: `${executor}: a stream's reservation drops to exactly its pruned cache plus its tokens to come`,
    ignore,
    fn: async () => {
      const m = await model();
      const scheduler = new BatchScheduler(m.executor, { maxBatchTokens: 64, kvCapBytes: 64 * 2 ** 20 });
      const wrapped = { ...m, executor: scheduler.wrap() };
      const B = 24, L = 180, T = 30;
      const reserved: number[] = [], decoding: number[] = [];
      scheduler.onStep = (s) => {
        reserved.push(scheduler.kvReserved);
        if (s.decodeRows === 1) decoding.push(scheduler.kvReserved);
        assert(scheduler.kvAllocated() <= scheduler.kvReserved, "allocated past the reservation");
      };
      const r = await generateText(wrapped, judgeq(3, L, B, T));
      assertEquals(r.outputs[0].tokens.length, T);
      // Prefill: the peak (the prompt and the 32 soft rows) was reserved before the first row ran.
      assert(reserved[0] >= exactBytes(m, L + 32), `prefill reserved ${reserved[0]}`);
      // Decode: B kept entries + T to come per head, not a byte more.
      assert(decoding.length >= T - 1, `${decoding.length} decode steps`);
      for (const d of decoding) assertEquals(d, exactBytes(m, B + T));
      assertEquals(scheduler.kvReserved, 0);
    },
  });

  Deno.test({
    name: `${executor}: Judge Q streams decode beside a prefill's peak and the cap holds at every step`,
    ignore,
    fn: async () => {
      const m = await model();
      const B = 16, L = 200, T = 24;
      // The peak a Judge Q prefill reserves (its plan's capacity, measured on an uncapped scheduler)...
      const probe = new BatchScheduler(m.executor, { maxBatchTokens: 64, kvCapBytes: null });
      let peak = 0;
      probe.onStep = () => peak = Math.max(peak, probe.kvReserved);
      await generateText({ ...m, executor: probe.wrap() }, judgeq(69, L, B, T));
      // ...and room for four pruned streams beside it, no more.
      const cap = peak + 4 * exactBytes(m, B + T) + 1024;
      const scheduler = new BatchScheduler(m.executor, { maxBatchTokens: 64, kvCapBytes: cap });
      const wrapped = { ...m, executor: scheduler.wrap() };
      let worst = 0, besidePrefill = 0, waited = 0;
      scheduler.onStep = (s) => {
        worst = Math.max(worst, scheduler.kvAllocated(), scheduler.kvReserved);
        if (s.rows > s.decodeRows) besidePrefill = Math.max(besidePrefill, s.decodeRows);
        waited = Math.max(waited, scheduler.kvWaiting);
      };
      const reqs = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => judgeq(70 + i, L, B, T));
      const got = await Promise.all(reqs.map((r) => generateText(wrapped, r)));
      for (const [i, g] of got.entries()) {
        assertEquals(g.outputs[0].tokens, (await generateText(m, reqs[i])).outputs[0].tokens, `request ${i}`);
      }
      assert(worst <= cap, `${worst} bytes over the cap of ${cap}`);
      assert(waited > 0, "no request waited: the cap did not bind");
      // The growth bound (half again over B + T) would leave room for 2 streams beside the peak.
      assert(besidePrefill >= 3, `at most ${besidePrefill} streams decoded beside a prefill`);
      assertEquals(scheduler.kvReserved, 0);
    },
  });
}
