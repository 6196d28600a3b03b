/**
 * `deno task train`: the CLI edge of Judge Q training. Disk, progress and reports live here; the math
 * is in core/train/. `all` (the default) reproduces the shipped adapter from a fixed seed.
 */
import { encodeAdapter } from "../core/adapter.ts";
import { NativeExecutor, nativeUnsupportedReason } from "../native/mod.ts";
import { CpuExecutor } from "../core/cpu/executor.ts";
import { JudgeQError } from "../core/errors.ts";
import type { Executor } from "../core/executor.ts";
import { modelFingerprint } from "../core/fingerprint.ts";
import type { LossKind } from "../core/train/loss.ts";
import { type TrainModel, trainModel } from "../core/train/model.ts";
import type { TrainSample } from "../core/train/loop.ts";
import type { ModelWeights } from "../core/weights.ts";
import { WasmExecutor, wasmUnsupportedReason } from "../wasm/mod.ts";
import { flagError, UsageError } from "../io/flags.ts";
import { parseArgs, type TrainArgs, USAGE } from "./args.ts";
import {
  checkLengths,
  type DataOptions,
  type DataSet,
  decodeData,
  encodeData,
  generateData,
  sha256Hex,
} from "./data.ts";
import { evaluateSample, JUDGEQ_VARIANTS, type Measure, SNAPKV_VARIANTS } from "./evaluate.ts";
import { type FitConfig, runFit, trainSamples, untrainedEmbeddings } from "./fit.ts";
import { loadWeights, modelDirOf } from "./model.ts";
import { formatDuration, Progress } from "./progress.ts";
import {
  acceptance,
  aggregate,
  chooseLoss,
  judgeqMethod,
  markdownTable,
  RANDOM_METHOD,
  reportJson,
  SNAPKV_METHOD,
} from "./report.ts";
import { lossCurveSvg } from "./svg.ts";
import { exists, type History, readFit, reportPaths, workPaths } from "./workdir.ts";

export interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
  /** Show progress bars on stderr. */
  progress: boolean;
}

const defaultIo: Io = { out: (s) => console.log(s), err: (s) => console.error(s), progress: true };

interface Ctx {
  args: TrainArgs;
  io: Io;
  weights: ModelWeights;
  model: TrainModel;
  fingerprint: string;
}

interface LoadedData {
  data: DataSet;
  hash: string;
  /** Prompt K/V and targets, built once per process, and the executor kind that prefilled them. */
  samples?: { train: TrainSample[]; heldout: TrainSample[]; seconds: number; prefill: Executor["kind"] };
}

const dataOptions = (a: TrainArgs): DataOptions => ({
  seed: a.seed,
  samples: a.samples,
  heldout: a.heldout,
  promptLen: a.promptLen,
  heldoutLen: a.heldoutLen,
  responseLen: a.responseLen,
});

const fitConfig = (a: TrainArgs, loss: LossKind): FitConfig => ({
  loss,
  n: a.n,
  steps: a.steps,
  batch: a.batch,
  lr: a.lr,
  warmup: a.warmup,
  clip: a.clip,
  noise: a.noise,
  seed: a.seed,
  evalEvery: a.evalEvery,
  checkpointEvery: a.checkpointEvery,
});

async function makeData(ctx: Ctx): Promise<LoadedData> {
  const { args, io } = ctx, file = workPaths(args.work).data;
  const bad = checkLengths(ctx.weights.config, dataOptions(args), args.n);
  if (bad) throw flagError(bad.flag, bad.message);
  const bar = io.progress ? new Progress("data", args.samples + args.heldout) : null;
  const started = performance.now();
  const data = await generateData(ctx.weights, ctx.fingerprint, dataOptions(args), (d) => bar?.update(d));
  bar?.finish();
  const text = encodeData(data);
  await Deno.mkdir(args.work, { recursive: true });
  await Deno.writeTextFile(file, text);
  io.out(
    `data: ${data.samples.length} samples in ${
      formatDuration((performance.now() - started) / 1000)
    } -> ${file}`,
  );
  return { data, hash: await sha256Hex(text) };
}

async function readData(ctx: Ctx, file: string): Promise<LoadedData> {
  const text = await Deno.readTextFile(file);
  const data = decodeData(text, ctx.weights.config, file);
  if (data.fingerprint !== ctx.fingerprint) {
    throw new Error(`${file}: generated with another model (run \`deno task train data\` with this --model)`);
  }
  return { data, hash: await sha256Hex(text) };
}

/** `data` regenerates; `fit` and `report` need stored data; `all` reuses data of the same model and options. */
async function dataFor(ctx: Ctx): Promise<LoadedData> {
  const { command } = ctx.args, file = workPaths(ctx.args.work).data;
  if (command === "data") return makeData(ctx);
  let stored: LoadedData | null = null;
  if (command !== "all") {
    if (!(await exists(file))) {
      throw new Error(
        `${file} not found: run \`deno task train data\` first (or pass the --work DIR holding it)`,
      );
    }
    stored = await readData(ctx, file);
  } else if (await exists(file)) {
    stored = await readData(ctx, file).catch(() => null);
    if (stored && JSON.stringify(stored.data.options) !== JSON.stringify(dataOptions(ctx.args))) {
      stored = null;
    }
  }
  if (!stored) return makeData(ctx);
  ctx.io.out(`data: reusing ${file} (${stored.data.samples.length} samples)`);
  return stored;
}

/** The executor that prefills fit's prompts: wasm unless --executor cpu (see TRAIN_EXECUTORS). */
async function prefillExecutor(ctx: Ctx): Promise<Executor> {
  const { args } = ctx;
  if (args.executor === "cpu") return new CpuExecutor(ctx.weights);
  if (args.executor === "native") {
    const why = await nativeUnsupportedReason();
    if (why) throw flagError("--executor", `the native executor cannot run here: ${why}`);
    return await NativeExecutor.create(ctx.weights, { threads: args.threads ?? undefined });
  }
  const why = wasmUnsupportedReason();
  if (why) {
    if (args.executor === "wasm") {
      throw flagError("--executor", `the wasm executor cannot run in this runtime: ${why}`);
    }
    ctx.io.err(
      `warning: the wasm executor cannot run in this runtime (${why}): prefilling on the CPU reference`,
    );
    return new CpuExecutor(ctx.weights);
  }
  try {
    return await WasmExecutor.create(ctx.weights, {
      threads: args.threads ?? undefined,
      weightFormat: args.weights as "auto" | "f32" | "f16" | "int8" | "q8_0",
    });
  } catch (e) {
    if (e instanceof JudgeQError && e.param) {
      throw flagError(`--${e.param}`, e.message.replace(/^\w+: /, ""));
    }
    throw e;
  }
}

async function samplesOf(ctx: Ctx, d: LoadedData) {
  if (!d.samples) {
    const split = (s: "train" | "heldout") => d.data.samples.filter((x) => x.split === s);
    if (split("heldout").length === 0) throw new Error("data: no held-out samples (--heldout must be >= 1)");
    const executor = await prefillExecutor(ctx);
    try {
      const started = performance.now();
      const train = await trainSamples(ctx.weights, split("train"), executor);
      const heldout = await trainSamples(ctx.weights, split("heldout"), executor);
      d.samples = { train, heldout, seconds: (performance.now() - started) / 1000, prefill: executor.kind };
    } finally {
      executor.dispose();
    }
  }
  return d.samples;
}

async function fitOne(ctx: Ctx, d: LoadedData, loss: LossKind): Promise<History> {
  const { args, io } = ctx, p = workPaths(args.work).fit(loss);
  const tooLong = d.data.samples.find((s) => s.prompt.length + args.n > ctx.weights.config.maxSeqLen);
  if (tooLong) {
    throw flagError(
      "--n",
      `${args.n} soft tokens after a ${tooLong.prompt.length}-token prompt exceed the context`,
    );
  }
  const samples = await samplesOf(ctx, d);
  await Deno.mkdir(p.dir, { recursive: true });
  if (args.resume && !(await exists(p.checkpoint))) {
    throw new Error(`--resume: no checkpoint at ${p.checkpoint}`);
  }
  const cfg = fitConfig(args, loss);
  // GPU code is loaded only when asked for, so CPU runs need no WebGPU.
  const backend = args.executor === "gpu"
    ? await (await import("../gpu/train/fit_gpu.ts")).gpuFitBackend(ctx.model)
    : undefined;
  let r: Awaited<ReturnType<typeof runFit>>;
  try {
    r = await runFit({
      model: ctx.model,
      weights: ctx.weights,
      train: samples.train,
      heldout: samples.heldout,
      dataHash: d.hash,
      checkpoint: p.checkpoint,
      resume: args.resume,
      progress: io.progress,
      backend,
    }, cfg);
  } finally {
    backend?.dispose();
  }
  const initialHeldout = r.evals[0].heldout;
  // Only what the seed determines, so a rerun reproduces the file byte for byte (wall time is in the report).
  const info: Record<string, string> = {
    loss,
    steps: String(cfg.steps),
    batch: String(cfg.batch),
    lr: String(cfg.lr),
    seed: String(cfg.seed),
    samples: String(samples.train.length),
    data_hash: d.hash,
    initial_heldout_loss: String(initialHeldout),
    final_train_loss: String(r.finalTrain),
    final_heldout_loss: String(r.finalHeldout),
    trainer: "deno task train (judgeq-serve core/train)",
  };
  // Recorded only where not the CPU reference, so a CPU run still reproduces the shipped file byte for byte.
  if (args.executor === "gpu") info.executor = "gpu";
  if (samples.prefill !== "cpu") info.prefill = samples.prefill;
  const bytes = encodeAdapter({
    softEmbeddings: Float32Array.from(r.e),
    n: cfg.n,
    dim: ctx.weights.config.dim,
    fingerprint: ctx.fingerprint,
    info,
  });
  await Deno.writeFile(p.adapter, bytes);
  if (args.command === "fit" && args.outGiven) await Deno.writeFile(args.out, bytes);
  const { e: _e, ...rest } = r;
  const history: History = { ...rest, dataHash: d.hash, prepSeconds: samples.seconds, initialHeldout };
  await Deno.writeTextFile(p.history, JSON.stringify(history));
  io.out(
    `fit ${loss}: held-out ${initialHeldout.toPrecision(4)} -> ${r.finalHeldout.toPrecision(4)}, train ${
      r.finalTrain.toPrecision(4)
    }, ${formatDuration(r.seconds)} (+${formatDuration(samples.seconds)} prefill) -> ${p.adapter}`,
  );
  return history;
}

async function report(ctx: Ctx, d: LoadedData, losses: LossKind[]) {
  const { args, io, weights } = ctx;
  const started = performance.now();
  const fits = new Map<LossKind, Awaited<ReturnType<typeof readFit>>>();
  for (const loss of losses) {
    fits.set(
      loss,
      await readFit(args.work, loss, { fingerprint: ctx.fingerprint, dim: weights.config.dim }, d.hash),
    );
  }
  const first = fits.get(losses[0])!.history.config;
  const softs = [
    ...losses.map((loss) => ({ method: judgeqMethod(loss), e: fits.get(loss)!.adapter.softEmbeddings })),
    {
      method: RANDOM_METHOD,
      e: Float32Array.from(untrainedEmbeddings(weights, first.n, first.noise, first.seed)),
    },
  ];
  const heldout = d.data.samples.filter((s) => s.split === "heldout");
  const plan = { softs, snapkv: SNAPKV_VARIANTS, judgeq: JUDGEQ_VARIANTS, budgets: args.budgets };
  const measures: Measure[] = [];
  const bar = io.progress ? new Progress("report", heldout.length) : null;
  for (const [i, s] of heldout.entries()) {
    measures.push(...await evaluateSample(weights, s, plan));
    bar?.update(i + 1);
  }
  bar?.finish();
  const rows = aggregate(measures);
  const choice = chooseLoss(rows, losses, args.budgets);
  const shipped = fits.get(choice.loss)!;
  const h = shipped.history;
  const checks = acceptance(rows, choice.loss, args.budgets, {
    initialHeldout: h.initialHeldout,
    finalHeldout: h.finalHeldout,
    seconds: h.seconds + h.prepSeconds,
  });
  const out = reportPaths(args.out);
  const json = reportJson({
    model: args.model ?? "embedded stories260K (fixtures/models/stories260K)",
    fingerprint: ctx.fingerprint,
    data: {
      hash: d.hash,
      options: d.data.options,
      train: d.data.samples.length - heldout.length,
      heldout: heldout.length,
      heldoutPromptLengths: heldout.map((s) => s.prompt.length),
      heldoutResponseLengths: heldout.map((s) => s.response.length),
    },
    fits: Object.fromEntries([...fits].map(([loss, f]) => [loss, f.history])),
    choice,
    adapter: args.out,
    checks,
    rows,
    methods: [SNAPKV_METHOD, ...softs.map((s) => s.method)],
    budgets: args.budgets,
    seconds: (performance.now() - started) / 1000,
  });
  await Deno.writeTextFile(out.json, JSON.stringify(json, null, 2) + "\n");
  await Deno.writeTextFile(
    out.svg,
    lossCurveSvg([...fits].map(([loss, f]) => ({
      title: `Judge Q soft tokens, ${loss} loss (n=${f.history.config.n})`,
      steps: f.history.steps,
      evals: f.history.evals,
    }))),
  );
  await Deno.writeFile(args.out, shipped.bytes);
  io.out(markdownTable(rows));
  io.out(`\nshipped: ${choice.loss} (${choice.reason}) -> ${args.out}`);
  for (const c of checks) io.out(`${c.pass ? "PASS" : "FAIL"}  ${c.name}: ${c.detail}`);
  for (const l of json.judgeqLosesTo) io.out(`Judge Q loses: ${l}`);
  io.out(`report -> ${out.json}, ${out.svg}`);
  return json;
}

/** Runs the CLI; returns the exit code (2: bad flags or inputs, 1: other failures). */
export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    io.out(USAGE);
    return 0;
  }
  try {
    const args = parseArgs(argv);
    const weights = await loadWeights(modelDirOf(args.model)).catch((e) => {
      throw flagError("--model", (e as Error).message);
    });
    const ctx: Ctx = {
      args,
      io,
      weights,
      model: trainModel(weights),
      fingerprint: await modelFingerprint(weights),
    };
    const d = await dataFor(ctx);
    if (args.command === "fit" || args.command === "all") {
      for (const loss of args.losses) await fitOne(ctx, d, loss);
    }
    if (args.command === "report" || args.command === "all") await report(ctx, d, args.losses);
    return 0;
  } catch (e) {
    io.err(`train: ${(e as Error).message}`);
    return e instanceof UsageError ? 2 : 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
