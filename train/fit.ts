/**
 * `fit`: optimises the soft embeddings with the pure steps of core/train/loop.ts, evaluating the
 * held-out loss every few steps and writing a resumable checkpoint every N steps.
 */
import { CpuExecutor, CpuSession } from "../core/cpu/executor.ts";
import type { Executor, KvSession } from "../core/executor.ts";
import type { LossKind } from "../core/train/loss.ts";
import { randomSoftTokens } from "../core/soft_tokens.ts";
import {
  batchIndices,
  cpuFitBackend,
  type FitBackend,
  type FitState,
  initFitState,
  type TrainSample,
} from "../core/train/loop.ts";
import { CpuKvCache } from "../core/cpu/kv_cache.ts";
import { type PromptKv, promptKvFromCache, type TrainModel } from "../core/train/model.ts";
import type { ModelWeights } from "../core/weights.ts";
import { WasmSession } from "../wasm/mod.ts";
import type { Sample } from "./data.ts";
import { Progress } from "./progress.ts";

export interface FitConfig {
  loss: LossKind;
  n: number;
  steps: number;
  batch: number;
  lr: number;
  warmup: number;
  clip: number;
  noise: number;
  seed: number;
  evalEvery: number;
  checkpointEvery: number;
}

export interface StepPoint {
  step: number;
  /** Mean loss of the step's batch, before the update. */
  loss: number;
  lr: number;
  gradNorm: number;
}

export interface EvalPoint {
  /** Updates done when evaluated. */
  step: number;
  heldout: number;
}

export interface FitResult {
  config: FitConfig;
  e: Float64Array;
  steps: StepPoint[];
  evals: EvalPoint[];
  /** Wall time of the optimisation loop, summed over resumed runs. */
  seconds: number;
  finalTrain: number;
  finalHeldout: number;
}

const CHECKPOINT_FORMAT = "judgeq-fit-checkpoint-v1";

/**
 * Soft embeddings before training: the mean token embedding plus noise x the embedding RMS. It is the
 * same function as the interpreter's random-soft-token ablation, so "random" in the report is that.
 */
export const untrainedEmbeddings = (w: ModelWeights, n: number, noise: number, seed: number): Float64Array =>
  Float64Array.from(randomSoftTokens(w.embed, w.config.dim, n, seed, noise));

/**
 * The K/V of positions 0..length-1 of a session holding an unpruned prompt, for the soft passes: read in
 * place on the CPU executors, through the executor-neutral snapshot on any other (native, WebGPU).
 */
export async function promptKvOf(session: KvSession, length: number): Promise<PromptKv> {
  if (session instanceof CpuSession) return promptKvFromCache(session.cache, length);
  if (session instanceof WasmSession) return promptKvFromCache(session.toCpuCache(), length);
  const cache = CpuKvCache.fromSnapshot(await session.exportCache(), Math.max(1, length), length);
  return promptKvFromCache(cache, length);
}

/**
 * Prefills each prompt and keeps its K/V: the constant half of every soft pass. On the CPU reference
 * by default; the wasm executor gives the same K/V within float32 rounding, faster.
 */
export async function trainSamples(
  w: ModelWeights,
  samples: Sample[],
  executor: Executor = new CpuExecutor(w),
): Promise<TrainSample[]> {
  const out: TrainSample[] = [];
  for (const s of samples) {
    const session = executor.createSession(s.prompt.length);
    try {
      await session.forward({ kind: "tokens", tokens: s.prompt }, { logits: "none" });
      out.push({ prompt: await promptKvOf(session, s.prompt.length), target: s.target });
    } finally {
      session.dispose();
    }
  }
  return out;
}

interface Checkpoint {
  format: string;
  config: FitConfig;
  dataHash: string;
  state: { step: number; e: number[]; t: number; m: number[]; v: number[] };
  steps: StepPoint[];
  evals: EvalPoint[];
  seconds: number;
}

export interface FitContext {
  model: TrainModel;
  weights: ModelWeights;
  train: TrainSample[];
  heldout: TrainSample[];
  dataHash: string;
  /** Checkpoint file. */
  checkpoint: string;
  resume: boolean;
  progress?: boolean;
  /** Stop (with a checkpoint) once this many updates are done: a time-boxed or interrupted run. */
  stopAt?: number;
  /** Where gradients are computed (default: the CPU reference). */
  backend?: FitBackend;
}

async function readCheckpoint(path: string, cfg: FitConfig, dataHash: string): Promise<Checkpoint> {
  let c: Checkpoint;
  try {
    c = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(`--resume: cannot read checkpoint ${path}: ${(e as Error).message}`);
  }
  if (c.format !== CHECKPOINT_FORMAT) throw new Error(`--resume: ${path} is not a fit checkpoint`);
  if (c.dataHash !== dataHash) throw new Error(`--resume: ${path} was trained on other data`);
  // Everything that changes the trajectory must match; evaluation and checkpoint cadence may differ.
  for (const k of Object.keys(cfg) as (keyof FitConfig)[]) {
    if (k !== "evalEvery" && k !== "checkpointEvery" && c.config[k] !== cfg[k]) {
      throw new Error(
        `--resume: ${path} was made with ${k} = ${c.config[k]}, not ${cfg[k]} (drop --resume to restart)`,
      );
    }
  }
  return c;
}

export async function runFit(ctx: FitContext, cfg: FitConfig): Promise<FitResult> {
  const { model, train, heldout } = ctx;
  const backend = ctx.backend ?? cpuFitBackend(model);
  const opts = {
    loss: cfg.loss,
    batch: cfg.batch,
    clip: cfg.clip,
    seed: cfg.seed,
    schedule: { lr: cfg.lr, steps: cfg.steps, warmup: cfg.warmup, minFactor: 0 },
  };
  let state: FitState = initFitState(untrainedEmbeddings(ctx.weights, cfg.n, cfg.noise, cfg.seed));
  let steps: StepPoint[] = [], evals: EvalPoint[] = [], seconds = 0;
  if (ctx.resume) {
    const c = await readCheckpoint(ctx.checkpoint, cfg, ctx.dataHash);
    const f = (a: number[]) => Float64Array.from(a);
    state = { step: c.state.step, e: f(c.state.e), adam: { t: c.state.t, m: f(c.state.m), v: f(c.state.v) } };
    ({ steps, evals, seconds } = c);
  }
  const evaluate = async () => {
    evals.push({ step: state.step, heldout: await backend.meanLoss(heldout, state.e, cfg.loss) });
  };
  const save = () => {
    const c: Checkpoint = {
      format: CHECKPOINT_FORMAT,
      config: cfg,
      dataHash: ctx.dataHash,
      state: {
        step: state.step,
        e: [...state.e],
        t: state.adam.t,
        m: [...state.adam.m],
        v: [...state.adam.v],
      },
      steps,
      evals,
      seconds,
    };
    return Deno.writeTextFile(ctx.checkpoint, JSON.stringify(c));
  };
  const bar = ctx.progress === false ? null : new Progress(`fit ${cfg.loss}`, cfg.steps);
  const started = performance.now() - seconds * 1000;
  if (evals.length === 0) await evaluate();
  const stop = Math.min(cfg.steps, ctx.stopAt ?? cfg.steps);
  while (state.step < stop) {
    const batch = batchIndices(cfg.seed, state.step, train.length, cfg.batch).map((i) => train[i]);
    const r = await backend.step(state, batch, opts);
    steps.push({ step: state.step, ...r.report });
    state = r.state;
    if (state.step % cfg.evalEvery === 0 || state.step === cfg.steps) await evaluate();
    seconds = (performance.now() - started) / 1000;
    bar?.update(state.step, {
      loss: r.report.loss.toPrecision(4),
      "held-out": evals[evals.length - 1].heldout.toPrecision(4),
    });
    if (state.step % cfg.checkpointEvery === 0 || state.step === stop) await save();
  }
  bar?.finish();
  // Final losses of what is shipped: the embeddings rounded to float32.
  const e = Float64Array.from(Float32Array.from(state.e));
  return {
    config: cfg,
    e,
    steps,
    evals,
    seconds,
    finalTrain: await backend.meanLoss(train, e, cfg.loss),
    finalHeldout: await backend.meanLoss(heldout, e, cfg.loss),
  };
}
