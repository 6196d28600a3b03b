/**
 * The WebGPU executor against the CPU reference: prefill and decode logits within 1e-3, identical greedy
 * tokens, on the embedded stories260K model and on every random fixture shape; embeddings input,
 * chunked prefill and weights split across bindings; GPU sampling; stops, streaming, abort, device loss.
 */
import assert from "node:assert/strict";
import { CpuExecutor } from "../core/cpu/executor.ts";
import { JudgeQError } from "../core/errors.ts";
import type { DecodeOptions, KvSession } from "../core/executor.ts";
import { type ModelWeights, roundProjectionsToF16 } from "../core/weights.ts";
import { GpuExecutor, type GpuExecutorOptions, resolveWeightFormat } from "../gpu/executor.ts";
import { createBestExecutor } from "../gpu/mod.ts";
import { isDeviceLost } from "../server/errors.ts";
import { fixtureWeights, loadWeightsOnly, maxAbsDiff, promptTokens } from "../fixtures/testing.ts";

const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
const ignore = !adapter;
if (ignore) console.warn("gpu_executor_test: no WebGPU adapter, GPU tests skipped");
const opts = { ignore, sanitizeResources: false, sanitizeOps: false };
const TOL = 1e-3;
const greedy = (maxTokens: number, extra: Partial<DecodeOptions> = {}): DecodeOptions => ({
  maxTokens,
  sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
  stopTokenIds: [],
  returnLogits: true,
  ...extra,
});

/** f32 unless asked: "auto" may pick f16 where the adapter has shader-f16, and the reference is f32. */
async function compareModel(w: ModelWeights, promptLen: number, steps: number, o: GpuExecutorOptions = {}) {
  const gx = await GpuExecutor.create(w, { weightFormat: "f32", ...o });
  try {
    // f16 weights are checked against the CPU reference running the same f16-rounded weights.
    const ref = gx.gpuWeights.format === "f16" ? roundProjectionsToF16(w) : w;
    const cs = new CpuExecutor(ref).createSession(promptLen + steps + 8);
    const gs = gx.createSession(promptLen + steps + 8);
    const toks = promptTokens(promptLen, w.config.vocabSize);
    const cr = await cs.forward({ kind: "tokens", tokens: toks }, { logits: "all" });
    const gr = await gs.forward({ kind: "tokens", tokens: toks }, { logits: "all" });
    const prefillErr = maxAbsDiff(cr.logits!, gr.logits!);
    assert.ok(prefillErr < TOL, `prefill logits differ by ${prefillErr}`);
    const cd = await cs.decode(greedy(steps));
    const gd = await gs.decode(greedy(steps));
    assert.deepEqual(gd.tokens, cd.tokens);
    let decodeErr = 0;
    cd.logits!.forEach((l, i) => (decodeErr = Math.max(decodeErr, maxAbsDiff(l, gd.logits![i]))));
    assert.ok(decodeErr < TOL, `decode logits differ by ${decodeErr}`);
    assert.ok(gd.syncs <= Math.ceil(steps / gx.decodeBatch) + 1, `${gd.syncs} syncs`);
    assert.equal(gs.nextPosition, cs.nextPosition);
    assert.ok(maxAbsDiff(await cs.currentLogits(), await gs.currentLogits()) < TOL);
    return { prefillErr, decodeErr };
  } finally {
    gx.dispose();
  }
}

Deno.test({
  name: "gpu: stories260K prefill and 64 greedy decode steps match the CPU reference",
  ...opts,
  fn: async () => {
    await compareModel(await loadWeightsOnly(), 24, 64);
  },
});

for (const shape of ["llama3", "qwen2", "mistral", "llama100m"] as const) {
  Deno.test({
    // llama100m (87.5M parameters, hidden 768) also runs the wide-model path: RMSNorm as its own dispatch.
    name: `gpu: random ${shape} model prefill and 64 decode steps match the CPU reference`,
    ...opts,
    fn: async () => {
      await compareModel(fixtureWeights(shape), 19, 64);
    },
  });
}

Deno.test({
  name: "gpu: weights split across bindings, chunked prefill, embeddings input",
  ...opts,
  fn: async () => {
    const w = await loadWeightsOnly();
    // 24 KiB bindings split the LM head/embedding into 6 chunks and every projection into several.
    const gx = await GpuExecutor.create(w, {
      weightFormat: "f32",
      maxBindingBytes: 24576,
      prefillChunk: 7,
      decodeBatch: 5,
    });
    try {
      assert.ok(gx.gpuWeights.lmHead.chunks.length >= 5);
      assert.ok(gx.gpuWeights.layers[0].down.chunks.length > 1);
      const cs = new CpuExecutor(w).createSession(64), gs = gx.createSession(64);
      const rows = new Float32Array(5 * w.config.dim).map((_, i) => Math.sin(i * 0.37) * 0.5);
      const a = await cs.forward({ kind: "embeddings", rows, count: 5 }, { logits: "all" });
      const b = await gs.forward({ kind: "embeddings", rows, count: 5 }, { logits: "all" });
      assert.ok(maxAbsDiff(a.logits!, b.logits!) < TOL);
      const toks = promptTokens(17, w.config.vocabSize, 3);
      const c = await cs.forward({ kind: "tokens", tokens: toks }, { logits: "all" });
      const d = await gs.forward({ kind: "tokens", tokens: toks }, { logits: "all" });
      assert.ok(maxAbsDiff(c.logits!, d.logits!) < TOL);
      const none = await gs.forward({ kind: "tokens", tokens: [3] }, { logits: "none" });
      await cs.forward({ kind: "tokens", tokens: [3] }, { logits: "none" });
      assert.equal(none.logits, null);
      const cd = await cs.decode(greedy(12));
      const gd = await gs.decode(greedy(12));
      assert.deepEqual(gd.tokens, cd.tokens);
      assert.ok(maxAbsDiff(cd.logits![0], gd.logits![0]) < TOL);
    } finally {
      gx.dispose();
    }
  },
});

for (
  const [name, load] of [["stories260K", loadWeightsOnly], ["qwen2", () => fixtureWeights("qwen2")]] as const
) {
  Deno.test({
    name: `gpu: f16 weights on ${name} match the CPU reference on the same f16-rounded weights`,
    ...opts,
    fn: async () => {
      const w = await load();
      // Small bindings also split the packed matrices (the embedding gather reads across chunks).
      const { prefillErr, decodeErr } = await compareModel(w, 21, 64, {
        weightFormat: "f16",
        maxBindingBytes: 12288,
      });
      assert.ok(prefillErr < TOL && decodeErr < TOL);
      // The format really changed the weights: f16 logits differ from the f32 model's, a little.
      const gx = await GpuExecutor.create(w, { weightFormat: "f16" });
      try {
        assert.equal(gx.gpuWeights.format, "f16");
        assert.match(gx.description, /weights f16/);
        const toks = promptTokens(9, w.config.vocabSize, 5);
        const cpu = await new CpuExecutor(w).createSession(16).forward({ kind: "tokens", tokens: toks });
        const gpu = await gx.createSession(16).forward({ kind: "tokens", tokens: toks });
        const d = maxAbsDiff(cpu.logits!, gpu.logits!);
        assert.ok(d > 1e-6 && d < 0.05, `f16 vs f32 logits differ by ${d}`);
      } finally {
        gx.dispose();
      }
    },
  });
}

for (
  const [name, load] of [["stories260K", loadWeightsOnly], ["qwen2", () => fixtureWeights("qwen2")]] as const
) {
  Deno.test({
    name: `gpu: RMSNorm as separate dispatches (the wide-model path) on ${name} matches the CPU reference`,
    ...opts,
    fn: async () => {
      const w = await load();
      // Chunked prefill and "all" logits in several LM-head passes exercise every norm's row offsets.
      await compareModel(w, 23, 64, { separateNorm: true, prefillChunk: 7 });
      await compareModel(w, 9, 16, { separateNorm: true, weightFormat: "f16" });
      const gx = await GpuExecutor.create(w, { weightFormat: "f32" });
      assert.equal(gx.separateNorm, false, "narrow models keep the norm fused");
      gx.dispose();
    },
  });
}

Deno.test({
  name: "gpu: weight format auto is f16 with shader-f16 and range, else f32; bad choices name the field",
  fn: async () => {
    const w = await loadWeightsOnly();
    assert.equal(resolveWeightFormat("auto", w, new Set()), "f32");
    assert.equal(resolveWeightFormat("auto", w, new Set(["shader-f16"])), "f16");
    assert.equal(resolveWeightFormat("f16", w, new Set()), "f16", "packed f16 needs no shader-f16");
    assert.throws(
      () => resolveWeightFormat("f8" as "f16", w, new Set()),
      /weight_format: expected auto, f32 or f16/,
    );
    // A weight beyond f16's range: auto keeps f32, an explicit f16 names the tensor.
    const big = {
      ...w,
      layers: w.layers.map((l, i) => i === 2 ? { ...l, wUp: l.wUp.map((x, j) => j === 7 ? 7e4 : x) } : l),
    };
    assert.equal(resolveWeightFormat("auto", big, new Set(["shader-f16"])), "f32");
    assert.throws(
      () => resolveWeightFormat("f16", big, new Set()),
      /weight_format: f16 cannot hold tensor model\.layers\.2\.mlp\.up_proj\.weight/,
    );
  },
});

const hasF16 = adapter?.features.has("shader-f16") ?? false;
if (adapter && !hasF16) {
  console.warn("gpu_executor_test: adapter lacks shader-f16, the auto-f16 test is skipped");
}
Deno.test({
  name: "gpu: on an adapter with shader-f16 the default executor holds f16 weights",
  ...opts,
  ignore: !hasF16,
  fn: async () => {
    const gx = await GpuExecutor.create(await loadWeightsOnly());
    try {
      assert.equal(gx.gpuWeights.format, "f16");
    } finally {
      gx.dispose();
    }
  },
});

Deno.test({
  name: "gpu: temperature, top-k and top-p sampling on the GPU draw the reference's tokens",
  ...opts,
  fn: async () => {
    const w = await loadWeightsOnly();
    const gx = await GpuExecutor.create(w, { weightFormat: "f32", decodeBatch: 16 });
    try {
      const toks = promptTokens(12, w.config.vocabSize, 11);
      const settings = [
        { temperature: 1, topP: 1, topK: 0, seed: 1 },
        { temperature: 0.8, topP: 0.9, topK: 0, seed: 2 },
        { temperature: 1.2, topP: 1, topK: 5, seed: 3 },
        { temperature: 0.7, topP: 0.5, topK: 40, seed: 4 },
      ];
      for (const sampling of settings) {
        const cs = new CpuExecutor(w).createSession(80), gs = gx.createSession(80);
        await cs.forward({ kind: "tokens", tokens: toks });
        await gs.forward({ kind: "tokens", tokens: toks });
        const o = { maxTokens: 40, sampling, stopTokenIds: [] };
        const cd = await cs.decode(o);
        const gd = await gs.decode(o);
        assert.deepEqual(gd.tokens, cd.tokens, JSON.stringify(sampling));
        gs.dispose();
      }
    } finally {
      gx.dispose();
    }
  },
});

Deno.test({
  name: "gpu: stop tokens and budgets inside a batch roll the cache back to the reference's",
  ...opts,
  fn: async () => {
    const w = await loadWeightsOnly();
    const gx = await GpuExecutor.create(w, { weightFormat: "f32", decodeBatch: 8 });
    try {
      const toks = promptTokens(10, w.config.vocabSize, 5);
      const cx = new CpuExecutor(w);
      const probe = cx.createSession(100);
      await probe.forward({ kind: "tokens", tokens: toks });
      const seq = (await probe.decode(greedy(30, { returnLogits: false }))).tokens;
      // Stop at the first occurrence of the 11th token (mid-batch), and budgets ending mid-batch.
      for (const o of [greedy(30, { stopTokenIds: [seq[10]] }), greedy(13), greedy(1), greedy(8)]) {
        const cs: KvSession = cx.createSession(100), gs = gx.createSession(100);
        await cs.forward({ kind: "tokens", tokens: toks });
        await gs.forward({ kind: "tokens", tokens: toks });
        const cd = await cs.decode(o), gd = await gs.decode(o);
        assert.deepEqual(gd.tokens, cd.tokens);
        assert.equal(gd.finishReason, cd.finishReason);
        assert.equal(gd.logits!.length, cd.logits!.length);
        assert.equal(gs.nextPosition, cs.nextPosition);
        assert.deepEqual(await gs.positions(), await cs.positions());
        assert.ok(maxAbsDiff(await cs.currentLogits(), await gs.currentLogits()) < TOL);
        // Continuing after the stop gives the same tokens too.
        const more = greedy(9, { returnLogits: false });
        assert.deepEqual((await gs.decode(more)).tokens, (await cs.decode(more)).tokens);
        gs.dispose();
      }
    } finally {
      gx.dispose();
    }
  },
});

Deno.test({
  name: "gpu: streaming callback, abort, and a clear error after device loss",
  ...opts,
  fn: async () => {
    const w = await loadWeightsOnly();
    const gx = await GpuExecutor.create(w, { weightFormat: "f32", decodeBatch: 8 });
    const gs = gx.createSession(100);
    await gs.forward({ kind: "tokens", tokens: [1, 5, 9] });
    const seen: number[][] = [];
    const ctl = new AbortController();
    const r = await gs.decode(greedy(40, {
      returnLogits: false,
      onTokens: (ids) => {
        seen.push(ids);
        if (seen.flat().length >= 12) ctl.abort();
      },
      signal: ctl.signal,
    }));
    assert.equal(r.finishReason, "aborted");
    assert.deepEqual(seen.flat(), r.tokens);
    assert.equal(seen[0].length, 4, "the first streamed batch is small");
    assert.ok(r.tokens.length >= 12 && r.tokens.length < 40);
    // Device loss: the request in flight fails with a clear error, the executor refuses new work,
    // and a new executor (new device) works.
    const pending = gs.decode(greedy(64, { returnLogits: false }));
    gx.device.destroy();
    await assert.rejects(pending, /device lost|destroyed|GPU/i);
    assert.throws(() => gx.createSession(10), /device lost/i);
    // Typed: kind device_lost (the server answers 503 by kind, not by the message).
    assert.throws(() => gx.createSession(10), (e) => e instanceof JudgeQError && e.kind === "device_lost");
    assert.ok(isDeviceLost(await pending.catch((e) => e)));
    const fresh = await createBestExecutor(w, { prefer: "gpu" });
    assert.equal(fresh.kind, "gpu");
    const s2 = fresh.createSession(20);
    const out = await s2.forward({ kind: "tokens", tokens: [1, 2, 3] });
    assert.equal(out.logits!.length, w.config.vocabSize);
    fresh.dispose();
    const cpu = await createBestExecutor(w, { prefer: "cpu" });
    assert.equal(cpu.kind, "cpu");
    // A model the kernels cannot run falls back to the CPU with a warning naming the reason.
    const odd = fixtureWeights("mistral");
    const warnings: string[] = [];
    const fallback = await createBestExecutor(
      { ...odd, config: { ...odd.config, hiddenDim: 190 } },
      { warn: (m) => warnings.push(m) },
    );
    assert.equal(fallback.kind, "cpu");
    assert.match(warnings[0], /falling back to the CPU.*intermediate_size 190/);
  },
});
