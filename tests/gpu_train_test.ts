/**
 * The WebGPU soft-row training kernels against core/train's float64 CPU reference: loss and dLoss/dE
 * for both losses on tiny random models (GQA, q/k/v bias, group 3 with two row blocks and llama3
 * RoPE scaling, multi-query with head_dim 32) and on stories260K with a 200-token prompt and 32 soft
 * rows; batches of mixed prompt lengths, workspace growth, held-out loss, one readback per call, and
 * a whole optimisation step. Skipped (with a printed reason) when no WebGPU adapter exists.
 */
import assert from "node:assert/strict";
import * as E from "fp-ts/Either";
import { parseModelConfig } from "../core/config.ts";
import {
  initFitState,
  meanLoss,
  sampleLossAndGrad,
  type TrainSample,
  trainStep,
} from "../core/train/loop.ts";
import type { LossKind } from "../core/train/loss.ts";
import { promptKvFromCache, type TrainModel, trainModel } from "../core/train/model.ts";
import { softForward } from "../core/train/soft_pass.ts";
import { assembleWeights, type ModelWeights } from "../core/weights.ts";
import { randomTensors, testModelConfig, type TestShape } from "../fixtures/test_models.ts";
import { acquireDevice, type GpuContext } from "../gpu/device.ts";
import { trainStepGpu } from "../gpu/train/fit_gpu.ts";
import { GpuTrainer } from "../gpu/train/trainer.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "../io/model_dir.ts";
import { prefilled, tinyConfigJson, tinyWeights } from "../fixtures/tiny_models.ts";
import { relErr, seededTokens, softRows } from "./helpers.ts";

const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
const ignore = !adapter;
if (ignore) console.warn("gpu_train_test: no WebGPU adapter, GPU training tests skipped");
const opts = { ignore, sanitizeResources: false, sanitizeOps: false };
const KINDS: LossKind[] = ["mse", "kl"];
const GRAD_TOL = 1e-3, LOSS_TOL = 1e-4;

// One device for the whole file (each acquisition costs a round trip).
let shared: GpuContext | null = null;
const context = async () => shared ??= await acquireDevice();

const fixtureWeights = (shape: TestShape) => weightsOf(testModelConfig(shape));

function weightsOf(json: Record<string, unknown>): ModelWeights {
  const config = parseModelConfig(json);
  if (E.isLeft(config)) throw config.left;
  const tensors = randomTensors(config.right, 1234);
  const w = assembleWeights(config.right, (n) => tensors.get(n));
  if (E.isLeft(w)) throw w.left;
  return w.right;
}

/** A prompt's K/V and, as target, the maps of other soft rows (so the loss is far from its minimum). */
async function sampleOf(
  w: ModelWeights,
  m: TrainModel,
  L: number,
  n: number,
  seed: number,
): Promise<TrainSample> {
  const session = await prefilled(w, seededTokens(L, w.config.vocabSize, seed), L + 1);
  const prompt = promptKvFromCache(session.cache, L);
  return { prompt, target: softForward(m, prompt, softRows(w, n, 1000 + seed)).maps };
}

async function compareGradients(w: ModelWeights, L: number, n: number) {
  const m = trainModel(w), sample = await sampleOf(w, m, L, n, 1), e = softRows(w, n, 3);
  const trainer = await GpuTrainer.create(m, { context: await context() });
  try {
    for (const kind of KINDS) {
      const cpu = sampleLossAndGrad(m, sample, e, kind);
      const gpu = await trainer.gradient(sample, e, kind);
      const lossErr = Math.abs(gpu.loss - cpu.loss) / Math.abs(cpu.loss),
        gradErr = relErr(gpu.grad, cpu.grad);
      assert.ok(cpu.loss > 0 && cpu.grad.some((g) => g !== 0), "degenerate reference");
      assert.ok(lossErr < LOSS_TOL, `${kind}: loss ${gpu.loss} vs ${cpu.loss} (rel ${lossErr})`);
      assert.ok(gradErr < GRAD_TOL, `${kind}: gradient relative error ${gradErr}`);
    }
    const maps = await trainer.softMaps(sample, e);
    assert.ok(relErr(maps, softForward(m, sample.prompt, e).maps) < 1e-5);
  } finally {
    trainer.dispose();
  }
}

for (const bias of [false, true]) {
  Deno.test({
    name: `gpu train: tiny ${bias ? "q/k/v-bias" : "GQA"} model, MSE and KL gradients match the CPU`,
    ...opts,
    fn: () => compareGradients(tinyWeights(bias), 13, 5),
  });
}

Deno.test({
  name: "gpu train: llama3-shaped model (GQA group 3, two row blocks, RoPE scaling) matches the CPU",
  ...opts,
  fn: () => compareGradients(fixtureWeights("llama3"), 45, 40),
});

Deno.test({
  name: "gpu train: multi-query model (one KV head, group 4, head_dim 32: one row per invocation)",
  ...opts,
  fn: () => {
    const c = { ...tinyConfigJson(), hidden_size: 128, intermediate_size: 96, num_key_value_heads: 1 };
    return compareGradients(weightsOf(c), 21, 7);
  },
});

Deno.test({
  name: "gpu train: qwen2-shaped model (q/k/v bias, head_dim 16) matches the CPU",
  ...opts,
  fn: () => compareGradients(fixtureWeights("qwen2"), 30, 9),
});

Deno.test({
  name: "gpu train: stories260K, 200-token prompt, 32 soft rows: MSE and KL gradients match the CPU",
  ...opts,
  fn: async () => compareGradients((await loadModelDir(EMBEDDED_MODEL_DIR)).weights, 200, 32),
});

Deno.test({
  name: "gpu train: batch gradient, held-out loss and a fit step, one readback each",
  ...opts,
  fn: async () => {
    const w = tinyWeights(true), m = trainModel(w), n = 6;
    // Different prompt lengths in one batch; a first short call makes the batch grow the workspace.
    const samples = [
      await sampleOf(w, m, 9, n, 1),
      await sampleOf(w, m, 17, n, 2),
      await sampleOf(w, m, 70, n, 3),
    ];
    const e = softRows(w, n, 5);
    const trainer = await GpuTrainer.create(m, { context: await context() });
    try {
      const short = await trainer.gradient(samples[0], e, "kl");
      assert.ok(relErr(short.grad, sampleLossAndGrad(m, samples[0], e, "kl").grad) < GRAD_TOL);
      // Another row count reallocates too.
      const e3 = softRows(w, 3, 6);
      assert.ok(
        relErr(
          (await trainer.gradient(samples[1], e3, "mse")).grad,
          sampleLossAndGrad(m, samples[1], e3, "mse").grad,
        ) < GRAD_TOL,
      );
      for (const kind of KINDS) {
        const syncs = trainer.syncs;
        const gpu = await trainer.batchGradient(samples, e, kind);
        assert.equal(trainer.syncs, syncs + 1);
        const sum = new Float64Array(e.length);
        let loss = 0;
        for (const s of samples) {
          const r = sampleLossAndGrad(m, s, e, kind);
          loss += r.loss / samples.length;
          r.grad.forEach((g, i) => (sum[i] += g / samples.length));
        }
        assert.ok(Math.abs(gpu.loss - loss) / loss < LOSS_TOL, `${kind} batch loss ${gpu.loss} vs ${loss}`);
        assert.ok(relErr(gpu.grad, sum) < GRAD_TOL, `${kind} batch gradient`);
        const held = await trainer.meanLoss(samples, e, kind), cpuHeld = meanLoss(m, samples, e, kind);
        assert.ok(Math.abs(held - cpuHeld) / cpuHeld < LOSS_TOL, `${kind} held-out ${held} vs ${cpuHeld}`);
      }
      const o = {
        loss: "kl" as const,
        batch: 3,
        clip: 0.05,
        seed: 1,
        schedule: { lr: 0.01, steps: 10, warmup: 0, minFactor: 0 },
      };
      const cpu = trainStep(m, initFitState(e), samples, o);
      const gpu = await trainStepGpu(trainer, initFitState(e), samples, o);
      assert.ok(relErr(gpu.state.e, cpu.state.e) < 1e-6, "E after one step");
      assert.ok(Math.abs(gpu.report.gradNorm - cpu.report.gradNorm) / cpu.report.gradNorm < GRAD_TOL);
      await assert.rejects(() => trainer.gradient(samples[0], e.subarray(1), "kl"), /multiple of dim/);
    } finally {
      trainer.dispose();
    }
  },
});
