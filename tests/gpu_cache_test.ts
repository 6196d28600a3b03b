/**
 * The GPU KV cache against the CPU reference: per-head compaction (different counts per head, memory
 * really freed), decoding after it, attention mass and key norms, truncation, mark/rewind (bit-identical
 * cache) and clone.
 */
import assert from "node:assert/strict";
import { CpuExecutor, type CpuSession } from "../core/cpu/executor.ts";
import type { DecodeOptions } from "../core/executor.ts";
import { GpuExecutor } from "../gpu/executor.ts";
import type { GpuSession } from "../gpu/session.ts";
import { fixtureWeights, loadWeightsOnly, maxAbsDiff, promptTokens } from "../fixtures/testing.ts";

const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
const ignore = !adapter;
if (ignore) console.warn("gpu_cache_test: no WebGPU adapter, GPU tests skipped");
const opts = { ignore, sanitizeResources: false, sanitizeOps: false };
const greedy = (maxTokens: number, captureQueries = false): DecodeOptions => ({
  maxTokens,
  sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
  stopTokenIds: [],
  returnLogits: true,
  captureQueries,
});

/** A deterministic per-head subset of the prompt: every head keeps a different number of positions. */
function subset(nLayers: number, nKv: number, promptLength: number): Int32Array[][] {
  return Array.from({ length: nLayers }, (_, l) =>
    Array.from({ length: nKv }, (_, g) => {
      const keep: number[] = [];
      for (let p = 0; p < promptLength; p++) {
        if ((p * 7 + l * 3 + g * 5) % (2 + ((l + g) % 4)) === 0) keep.push(p);
      }
      return Int32Array.from(keep);
    }));
}

async function assertSameCache(cs: CpuSession, gs: GpuSession, tol = 1e-4) {
  assert.deepEqual(await gs.positions(), await cs.positions());
  assert.equal(gs.kvBytes(), cs.kvBytes());
  const { keys, values } = await gs.readCache();
  for (let s = 0; s < keys.length; s++) {
    const n = cs.cache.counts[s] * cs.config.headDim;
    assert.ok(maxAbsDiff(keys[s], cs.cache.keys[s].subarray(0, n)) < tol, `keys of slot ${s}`);
    assert.ok(maxAbsDiff(values[s], cs.cache.values[s].subarray(0, n)) < tol, `values of slot ${s}`);
  }
}

for (const model of ["stories260K", "llama3"] as const) {
  Deno.test({
    name: `gpu cache (${model}): per-head compaction, then decode, mass and norms match the CPU`,
    ...opts,
    fn: async () => {
      const w = model === "stories260K" ? await loadWeightsOnly() : fixtureWeights("llama3");
      const c = w.config;
      const gx = await GpuExecutor.create(w, { weightFormat: "f32", decodeBatch: 16 });
      try {
        const P = 40;
        const cs = new CpuExecutor(w).createSession(200), gs = gx.createSession(200);
        const toks = promptTokens(P, c.vocabSize, 21);
        const cq = (await cs.forward({ kind: "tokens", tokens: toks }, { captureQueries: true })).queries!;
        const gq = (await gs.forward({ kind: "tokens", tokens: toks }, { captureQueries: true })).queries!;
        // A few soft rows after the prompt (as Judge Q appends), captured too.
        const rows = new Float32Array(3 * c.dim).map((_, i) => Math.cos(i * 0.11));
        const cq2 = (await cs.forward({ kind: "embeddings", rows, count: 3 }, { captureQueries: true }))
          .queries!;
        const gq2 = (await gs.forward({ kind: "embeddings", rows, count: 3 }, { captureQueries: true }))
          .queries!;
        assert.deepEqual(gq2.positions, cq2.positions);
        for (const [a, b] of [[cq, gq], [cq2, gq2]]) {
          const ma = await cs.attentionMass(a, P), mb = await gs.attentionMass(b, P);
          assert.ok(maxAbsDiff(ma, mb) < 1e-4, `attention mass differs by ${maxAbsDiff(ma, mb)}`);
        }
        assert.ok(maxAbsDiff(await cs.keyNorms(P), await gs.keyNorms(P)) < 1e-4);
        await cs.truncateFrom(P);
        await gs.truncateFrom(P);
        await assertSameCache(cs, gs);

        const before = gs.allocatedKvBytes();
        const kept = subset(c.nLayers, c.nKvHeads, P);
        await cs.keepPositions(kept, P);
        await gs.keepPositions(kept, P);
        const counts = new Set(cs.cache.counts);
        assert.ok(counts.size > 2, "heads keep different numbers of entries");
        await assertSameCache(cs, gs);
        assert.ok(gs.allocatedKvBytes() < before, "compaction frees GPU memory");
        assert.ok(maxAbsDiff(await cs.keyNorms(P), await gs.keyNorms(P)) < 1e-4);
        const mc = await cs.attentionMass(cq, P), mg = await gs.attentionMass(gq, P);
        assert.ok(maxAbsDiff(mc, mg) < 1e-4);

        // Decode after pruning (the logits after truncateFrom are those of the last soft row).
        const cd = await cs.decode(greedy(48, true)), gd = await gs.decode(greedy(48, true));
        assert.deepEqual(gd.tokens, cd.tokens);
        cd.logits!.forEach((l, i) => assert.ok(maxAbsDiff(l, gd.logits![i]) < 1e-3, `step ${i}`));
        await assertSameCache(cs, gs);
        assert.deepEqual(gd.queries!.positions, cd.queries!.positions);
        const dc = await cs.attentionMass(cd.queries!, P), dg = await gs.attentionMass(gd.queries!, P);
        assert.ok(maxAbsDiff(dc, dg) < 1e-4, `decode-row mass differs by ${maxAbsDiff(dc, dg)}`);
      } finally {
        gx.dispose();
      }
    },
  });
}

Deno.test({
  name: "gpu cache: mark/rewind restores a bit-identical cache; clone is independent",
  ...opts,
  fn: async () => {
    const w = fixtureWeights("qwen2");
    const gx = await GpuExecutor.create(w, { weightFormat: "f32", decodeBatch: 8 });
    try {
      const gs = gx.createSession(300);
      await gs.forward({ kind: "tokens", tokens: promptTokens(30, w.config.vocabSize, 2) });
      const mark = gs.mark();
      const snapshot = await gs.readCache();
      const logits0 = await gs.currentLogits();
      const first = await gs.decode(greedy(20));
      // Enough appends to grow the segments (a re-layout) before rewinding.
      await gs.forward({ kind: "tokens", tokens: promptTokens(250, w.config.vocabSize, 9) }, {
        logits: "none",
      });
      await gs.rewind(mark);
      const after = await gs.readCache();
      for (let s = 0; s < snapshot.keys.length; s++) {
        assert.deepEqual(after.keys[s], snapshot.keys[s]);
        assert.deepEqual(after.values[s], snapshot.values[s]);
      }
      assert.equal(gs.nextPosition, 30);
      // The clone continues exactly like the original would, and changes to it leave the original alone.
      await gs.forward({ kind: "tokens", tokens: [7] }, { logits: "none" });
      await gs.rewind(mark);
      const copy = await gs.clone();
      const cpu = new CpuExecutor(w).createSession(300);
      await cpu.forward({ kind: "tokens", tokens: promptTokens(30, w.config.vocabSize, 2) });
      assert.ok(maxAbsDiff(await cpu.currentLogits(), logits0) < 1e-3);
      const ref = await cpu.decode(greedy(20));
      assert.deepEqual(first.tokens, ref.tokens);
      await copy.truncateFrom(10);
      assert.equal(copy.kvBytes(), 10 * w.config.nLayers * w.config.nKvHeads * w.config.headDim * 8);
      const again = await gs.readCache();
      for (let s = 0; s < snapshot.keys.length; s++) assert.deepEqual(again.keys[s], snapshot.keys[s]);
      copy.dispose();
      gs.dispose();
    } finally {
      gx.dispose();
    }
  },
});

Deno.test({
  name: "gpu cache: capacity is enforced like the CPU's, and rewinding past a pruning is refused",
  ...opts,
  fn: async () => {
    const w = await loadWeightsOnly();
    const gx = await GpuExecutor.create(w, { weightFormat: "f32" });
    try {
      const gs = gx.createSession(8);
      await assert.rejects(gs.forward({ kind: "tokens", tokens: promptTokens(9, 512) }), /KV cache full/);
      await gs.forward({ kind: "tokens", tokens: promptTokens(6, 512) });
      const mark = gs.mark();
      await gs.forward({ kind: "tokens", tokens: [1] });
      const kept = subset(w.config.nLayers, w.config.nKvHeads, 7).map((l) => l.map(() => new Int32Array(0)));
      await gs.keepPositions(kept, 7);
      assert.equal(gs.kvBytes(), 0);
      await assert.rejects(gs.rewind(mark), /pruned/);
      // Positions past the RoPE table (the model's 512) grow it; results still match the CPU.
      const cs = new CpuExecutor(w).createSession(8), g2 = gx.createSession(8);
      for (const s of [cs, g2]) {
        await s.forward({ kind: "tokens", tokens: [1, 2, 3] });
        await s.truncateFrom(2000);
      }
      const a = await cs.forward({ kind: "tokens", tokens: [4, 5] }, { logits: "all" });
      const b = await g2.forward({ kind: "tokens", tokens: [4, 5] }, { logits: "all" });
      assert.ok(maxAbsDiff(a.logits!, b.logits!) < 1e-3);
      assert.deepEqual(await g2.positions(), await cs.positions());
    } finally {
      gx.dispose();
    }
  },
});

Deno.test({
  name: "gpu cache: pipelined decode (stop while the next batch is in flight, segment growth) matches",
  ...opts,
  fn: async () => {
    const w = await loadWeightsOnly();
    const gx = await GpuExecutor.create(w, { weightFormat: "f32", decodeBatch: 4 });
    try {
      const cx = new CpuExecutor(w);
      const toks = promptTokens(20, w.config.vocabSize, 4);
      const probe = cx.createSession(400);
      await probe.forward({ kind: "tokens", tokens: toks });
      const seq = (await probe.decode(greedy(40))).tokens;
      // Stops in the second, third and a later batch (each with a speculative batch behind it), then a
      // long decode that grows every segment past the initial 256 entries while batches are in flight.
      for (const stopAt of [5, 9, 26]) {
        const cs = cx.createSession(400) as CpuSession, gs = gx.createSession(400) as GpuSession;
        await cs.forward({ kind: "tokens", tokens: toks });
        await gs.forward({ kind: "tokens", tokens: toks });
        const o = { ...greedy(40), stopTokenIds: [seq[stopAt]] };
        const cd = await cs.decode(o), gd = await gs.decode(o);
        assert.deepEqual(gd.tokens, cd.tokens);
        assert.equal(gd.finishReason, cd.finishReason);
        assert.ok(maxAbsDiff(await cs.currentLogits(), await gs.currentLogits()) < 1e-3);
        await assertSameCache(cs, gs);
        const more = { ...greedy(300), returnLogits: false };
        assert.deepEqual((await gs.decode(more)).tokens, (await cs.decode(more)).tokens);
        await assertSameCache(cs, gs);
        gs.dispose();
      }
    } finally {
      gx.dispose();
    }
  },
});
