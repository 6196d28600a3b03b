/**
 * Time per gradient, GPU (this device) vs the float64 CPU reference, on the embedded stories260K:
 *
 *   deno run -A bench/gpu_train.ts [--prompt 300] [--n 32] [--rounds 7] [--batch 8]
 *
 * GPU and CPU calls alternate within each round (so a busy machine slows both alike); medians over
 * rounds are printed with the load average, which matters on a shared 2-core box.
 */
import { parseArgs } from "node:util";
import { randomSoftTokens } from "../core/soft_tokens.ts";
import { meanLoss, sampleLossAndGrad, type TrainSample } from "../core/train/loop.ts";
import type { LossKind } from "../core/train/loss.ts";
import { promptKvFromCache, trainModel } from "../core/train/model.ts";
import { softForward } from "../core/train/soft_pass.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "../io/model_dir.ts";
import { prefilled } from "../fixtures/tiny_models.ts";
import { GpuTrainer } from "../gpu/train/trainer.ts";
import { median } from "../core/percentile.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    prompt: { type: "string", default: "300" },
    n: { type: "string", default: "32" },
    rounds: { type: "string", default: "7" },
    batch: { type: "string", default: "8" },
  },
});
const L = Number(values.prompt), n = Number(values.n), rounds = Number(values.rounds);
const batch = Number(values.batch);

const w = (await loadModelDir(EMBEDDED_MODEL_DIR)).weights, m = trainModel(w);
const rows = (seed: number) => Float64Array.from(randomSoftTokens(w.embed, w.config.dim, n, seed));
const samples: TrainSample[] = [];
for (let i = 0; i < batch; i++) {
  const tokens = Array.from(
    { length: L },
    (_, t) => 1 + ((t * 7919 + i * 104729) % (w.config.vocabSize - 1)),
  );
  const prompt = promptKvFromCache((await prefilled(w, tokens, L + 1)).cache, L);
  samples.push({ prompt, target: softForward(m, prompt, rows(100 + i)).maps });
}
const e = rows(1), one = samples[0];

let t0 = performance.now();
const trainer = await GpuTrainer.create(m);
const createMs = performance.now() - t0;
t0 = performance.now();
await trainer.gradient(one, e, "kl");
const firstMs = performance.now() - t0;

const time = async (fn: () => unknown, reps = 1) => {
  const t = performance.now();
  for (let i = 0; i < reps; i++) await fn();
  return (performance.now() - t) / reps;
};

console.log(`stories260K, prompt ${L}, n ${n}; ${trainer.ctx.description}`);
console.log(`GPU trainer: create ${createMs.toFixed(0)} ms, first gradient ${firstMs.toFixed(0)} ms`);
for (const kind of ["mse", "kl"] as LossKind[]) {
  const gpu: number[] = [], cpu: number[] = [], gpuBatch: number[] = [], gpuLoss: number[] = [];
  const cpuLoss: number[] = [];
  for (let r = 0; r < rounds; r++) {
    gpu.push(await time(() => trainer.gradient(one, e, kind), 3));
    cpu.push(await time(() => sampleLossAndGrad(m, one, e, kind)));
    gpuBatch.push(await time(() => trainer.batchGradient(samples, e, kind)) / batch);
    gpuLoss.push(await time(() => trainer.meanLoss(samples, e, kind)) / batch);
    cpuLoss.push(await time(() => meanLoss(m, samples.slice(0, 2), e, kind)) / 2);
  }
  const g = median(gpu), c = median(cpu);
  console.log(
    `${kind}: gradient GPU ${g.toFixed(1)} ms, CPU ${c.toFixed(1)} ms (x${(c / g).toFixed(1)}); ` +
      `GPU batch of ${batch}: ${median(gpuBatch).toFixed(1)} ms/sample; ` +
      `loss only: GPU ${median(gpuLoss).toFixed(1)} ms/sample, CPU ${median(cpuLoss).toFixed(1)} ms/sample`,
  );
}
console.log(`load average ${Deno.loadavg().map((x) => x.toFixed(2)).join(" ")}`);
trainer.dispose();
