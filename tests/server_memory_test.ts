/**
 * Memory accounting of kept contexts, written as the attacks that found it wrong: a context compressed to a
 * tiny budget used to allocate the model's whole context per head while the cap counted its kept bytes.
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import type { Model } from "../core/engine.ts";
import { startServer, testModel } from "./server_testing.ts";
import { assert, assertEquals } from "./helpers.ts";

const LONG = "Once upon a time, there was a little girl named Lily. She liked to play with her ball. ".repeat(
  5,
);

/** Bytes a CPU session holds for `entries` per KV head, with its logits. */
const cpuBytes = (m: Model, entries: number) => {
  const c = m.config;
  return c.nLayers * c.nKvHeads * entries * (c.headDim * 8 + 4) + c.vocabSize * 4;
};

Deno.test("attack: 60 contexts compressed to budget 1 are counted at what they allocate, under a 1 MB cap", async () => {
  const model = await testModel();
  const cap = 1 << 20;
  const s = await startServer({ contextMaxBytes: cap });
  try {
    const ids: string[] = [];
    let total = 0;
    for (let i = 0; i < 60; i++) {
      const r = await s.post("/v1/contexts", {
        context: LONG,
        kv_compression: { method: "snapkv", budget: 1 },
      });
      assertEquals(r.status, 200);
      // One entry per head and the logits: not room for the model's 512 positions per head.
      assertEquals(r.json.allocated_bytes, cpuBytes(model, 1));
      ids.push(r.json.id);
      total += r.json.allocated_bytes;
    }
    assertEquals(await s.metric("judgeq_contexts_kv_bytes"), total);
    assert(total <= cap, `${total} bytes counted, over the ${cap} cap`);
    // An answer grows the cache for a while; its room is given back, and the count is unchanged.
    const a = await s.post(`/v1/contexts/${ids[0]}/generate`, { question: " Who?", max_tokens: 20 });
    assertEquals(a.status, 200);
    assertEquals(await s.metric("judgeq_contexts_kv_bytes"), total);
    for (const id of ids) {
      const r = await fetch(`${s.base}/v1/contexts/${id}`, { method: "DELETE" });
      assertEquals([r.status, (await r.json()).deleted], [200, true]);
    }
    assertEquals(await s.metric("judgeq_contexts_kv_bytes"), 0);
  } finally {
    await s.close();
  }
});

Deno.test("contexts: the cap evicts by allocated bytes, the larger budget evicting more", async () => {
  const model = await testModel();
  const per8 = cpuBytes(model, 8);
  const s = await startServer({ contextMaxBytes: per8 * 4 });
  try {
    const make = async (budget: number) =>
      (await s.post("/v1/contexts", { context: LONG, kv_compression: { method: "h2o", budget } })).json;
    const small = [await make(8), await make(8), await make(8), await make(8)];
    assertEquals(await s.metric("judgeq_contexts_kv_bytes"), per8 * 4);
    const big = await make(16); // needs two small ones' room: the two least recently used go
    assertEquals(big.allocated_bytes, cpuBytes(model, 16));
    assertEquals((await s.get(`/v1/contexts/${small[0].id}`)).status, 404);
    assertEquals((await s.get(`/v1/contexts/${small[1].id}`)).status, 404);
    assertEquals((await s.get(`/v1/contexts/${small[2].id}`)).status, 200);
    assertEquals(await s.metric("judgeq_contexts_evicted_total"), 2);
  } finally {
    await s.close();
  }
});

Deno.test("a session for the whole model context allocates only what its prompt needs", async () => {
  const model = await testModel();
  const ex = new CpuExecutor((model.executor as CpuExecutor).weights);
  const session = ex.createSession(model.config.maxSeqLen + 1);
  try {
    await session.forward({ kind: "tokens", tokens: [1, 2, 3, 4, 5] });
    assert(
      session.allocatedBytes() <= cpuBytes(model, 16),
      `${session.allocatedBytes()} bytes for 5 positions`,
    );
  } finally {
    session.dispose();
  }
});
