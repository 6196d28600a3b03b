/**
 * Training on prompt K/V prefilled by the fast CPU executor (wasm) and by the native one (ggml): Judge Q
 * gradients within 1e-4
 * (relative) of those on the CPU reference's K/V, for both losses, on tiny random models, a llama3-shaped
 * one and stories260K (200-token prompt, 32 soft rows); and `train data` + `train fit --executor wasm`
 * end to end, against the same fit on the CPU reference.
 */
import assert from "node:assert/strict";
import * as E from "fp-ts/Either";
import { decodeAdapter } from "../core/adapter.ts";
import { CpuExecutor } from "../core/cpu/executor.ts";
import { sampleLossAndGrad } from "../core/train/loop.ts";
import type { LossKind } from "../core/train/loss.ts";
import { trainModel } from "../core/train/model.ts";
import { softForward } from "../core/train/soft_pass.ts";
import type { ModelWeights } from "../core/weights.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "../io/model_dir.ts";
import { UsageError } from "../io/flags.ts";
import { parseArgs } from "../train/args.ts";
import { trainSamples } from "../train/fit.ts";
import { main } from "../train/main.ts";
import { tinyWeights } from "../fixtures/tiny_models.ts";
import { workPaths } from "../train/workdir.ts";
import { WasmExecutor, type WasmExecutorOptions, wasmUnsupportedReason } from "../wasm/mod.ts";
import { NativeExecutor, nativeUnsupportedReason } from "../native/mod.ts";
import type { Executor } from "../core/executor.ts";
import { randomModel, relErr, seededTokens, softRows } from "./helpers.ts";

const why = wasmUnsupportedReason();
if (why) console.warn(`train_wasm_test: ${why}, wasm training tests skipped`);
const ignore = why !== null;
const GRAD_TOL = 1e-4;

async function compareGradients(
  w: ModelWeights,
  L: number,
  n: number,
  o: WasmExecutorOptions,
  make: (w: ModelWeights) => Promise<Executor> = (w) => WasmExecutor.create(w, o),
) {
  const m = trainModel(w), prompt = seededTokens(L, w.config.vocabSize, 1);
  const sample = { split: "train" as const, prompt, response: [], target: new Float32Array() };
  const [ref] = await trainSamples(w, [sample], new CpuExecutor(w));
  const wasm = await make(w);
  try {
    const [fast] = await trainSamples(w, [sample], wasm);
    // Target: the maps of other soft rows, so the loss is far from its minimum.
    const target = softForward(m, ref.prompt, softRows(w, n, 1001)).maps;
    const e = softRows(w, n, 3);
    for (const kind of ["mse", "kl"] as LossKind[]) {
      const a = sampleLossAndGrad(m, { ...ref, target }, e, kind);
      const b = sampleLossAndGrad(m, { ...fast, target }, e, kind);
      assert.ok(a.loss > 0 && a.grad.some((g) => g !== 0), "degenerate reference");
      const lossErr = Math.abs(b.loss - a.loss) / Math.abs(a.loss), gradErr = relErr(b.grad, a.grad);
      assert.ok(lossErr < GRAD_TOL, `${kind}: loss ${b.loss} vs ${a.loss} (rel ${lossErr})`);
      assert.ok(gradErr < GRAD_TOL, `${kind}: gradient relative error ${gradErr}`);
    }
  } finally {
    wasm.dispose();
  }
}

for (const bias of [false, true]) {
  Deno.test({
    name: `train wasm: tiny ${bias ? "q/k/v-bias" : "GQA"} model, gradients on wasm K/V match the CPU's`,
    ignore,
    fn: () => compareGradients(tinyWeights(bias), 13, 5, { threads: 1 }),
  });
}

Deno.test({
  name: "train wasm: llama3-shaped model, every step split over 3 threads, gradients match the CPU's",
  ignore,
  fn: () => compareGradients(randomModel("llama3"), 45, 40, { threads: 3, parallelMinWork: 0 }),
});

Deno.test({
  name: "train wasm: stories260K, 200-token prompt, 32 soft rows: MSE and KL gradients match the CPU's",
  ignore,
  fn: async () => compareGradients((await loadModelDir(EMBEDDED_MODEL_DIR)).weights, 200, 32, { threads: 2 }),
});

const noNative = await nativeUnsupportedReason();
Deno.test({
  name: "train native: stories260K and a q/k/v-bias model, gradients on native (ggml) K/V match the CPU's",
  ignore: noNative !== null,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const native = (w: ModelWeights) => NativeExecutor.create(w, { threads: 1 });
    await compareGradients(tinyWeights(true), 13, 5, {}, native);
    await compareGradients((await loadModelDir(EMBEDDED_MODEL_DIR)).weights, 200, 32, {}, native);
  },
});

Deno.test("train cli: --executor, --threads and --weights are parsed and checked", () => {
  assert.equal(parseArgs([]).executor, "auto");
  assert.equal(parseArgs(["--executor", "reference"]).executor, "cpu");
  const a = parseArgs(["fit", "--executor", "wasm", "--threads", "3", "--weights", "f16"]);
  assert.deepEqual([a.executor, a.threads, a.weights], ["wasm", 3, "f16"]);
  for (
    const [argv, flag] of [
      [["--executor", "tpu"], "--executor"],
      [["--threads", "0"], "--threads"],
      [["--threads", "-1"], "--threads"],
      [["--threads", "1.5"], "--threads"],
      [["--threads", "abc"], "--threads"],
      [["--threads", "257"], "--threads"],
      [["--weights", "f8"], "--weights"],
    ] as [string[], string][]
  ) {
    assert.throws(() => parseArgs(argv), (e) => e instanceof UsageError && e.flag === flag, argv.join(" "));
  }
  assert.throws(() => parseArgs(["--threads", "0"]), /--threads: expected a whole number from 1 to 256/);
});

Deno.test({
  name: "train cli: data then fit --executor wasm runs end to end and fits like the CPU reference",
  ignore,
  fn: async () => {
    const work = await Deno.makeTempDir();
    const flags = [
      ["--samples", "3", "--heldout", "2", "--steps", "3", "--batch", "2", "--loss", "kl", "--n", "4"],
      ["--prompt-len", "40-50", "--heldout-len", "40-50", "--response-len", "8-12", "--eval-every", "1"],
    ].flat();
    const io = () => {
      const out: string[] = [], err: string[] = [];
      return {
        out,
        err,
        io: { out: (s: string) => out.push(s), err: (s: string) => err.push(s), progress: false },
      };
    };
    try {
      const d = io();
      assert.equal(await main(["data", "--work", work, ...flags], d.io), 0, d.err.join("\n"));
      const fits: Record<string, { history: Record<string, number>; info: Record<string, string> }> = {};
      for (const executor of ["cpu", "wasm"]) {
        const q = io();
        const code = await main(
          ["fit", "--work", work, "--executor", executor, "--threads", "2", ...flags],
          q.io,
        );
        assert.equal(code, 0, q.err.join("\n"));
        assert.match(q.out.join("\n"), /fit kl: held-out/);
        const p = workPaths(work).fit("kl");
        const adapter = decodeAdapter(await Deno.readFile(p.adapter));
        assert.ok(E.isRight(adapter));
        fits[executor] = {
          history: JSON.parse(await Deno.readTextFile(p.history)),
          info: adapter.right.info,
        };
      }
      assert.equal(fits.wasm.info.prefill, "wasm");
      assert.equal(fits.cpu.info.prefill, undefined, "a CPU run's adapter is as before");
      for (const k of ["initialHeldout", "finalHeldout", "finalTrain"]) {
        const a = fits.cpu.history[k], b = fits.wasm.history[k];
        assert.ok(Math.abs(a - b) / Math.abs(a) < 1e-4, `${k}: wasm ${b} vs cpu ${a}`);
      }
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
