/**
 * The optimisation loop as pure steps: state in, state out. Batches come from a fixed stream of
 * per-epoch shuffles, so step k's batch depends only on (seed, k) and a resumed run equals an
 * uninterrupted one.
 */
import { adamInit, type AdamState, adamStep, clipByNorm, type Schedule, scheduledLr } from "./adam.ts";
import { attentionLoss, type LossKind } from "./loss.ts";
import type { PromptKv, TrainModel } from "./model.ts";
import { deriveSeed, permutation, seededUniform } from "../random.ts";
import { softBackward, softForward } from "./soft_pass.ts";

export interface TrainSample {
  prompt: PromptKv;
  /** A_resp [layer][head][promptLength]: mean attention of the response tokens over the prompt. */
  target: Float32Array | Float64Array;
}

export interface FitOptions {
  loss: LossKind;
  batch: number;
  schedule: Schedule;
  /** Global gradient-norm clip (<= 0: off). */
  clip: number;
  seed: number;
}

export interface FitState {
  step: number;
  /** Soft embeddings [n, dim]. */
  e: Float64Array;
  adam: AdamState;
}

export const initFitState = (e: Float64Array): FitState => ({ step: 0, e, adam: adamInit(e.length) });

/** Loss of one sample and its gradient with respect to the soft embeddings. */
export function sampleLossAndGrad(
  m: TrainModel,
  s: TrainSample,
  e: Float64Array,
  kind: LossKind,
): { loss: number; grad: Float64Array } {
  const pass = softForward(m, s.prompt, e);
  const { loss, grad } = attentionLoss(kind, pass.maps, s.target, s.prompt.length);
  return { loss, grad: softBackward(m, s.prompt, pass, grad) };
}

export function sampleLoss(m: TrainModel, s: TrainSample, e: Float64Array, kind: LossKind): number {
  const pass = softForward(m, s.prompt, e);
  return attentionLoss(kind, pass.maps, s.target, s.prompt.length).loss;
}

/** Mean loss over samples (held-out evaluation). */
export const meanLoss = (m: TrainModel, samples: TrainSample[], e: Float64Array, kind: LossKind): number =>
  samples.reduce((a, s) => a + sampleLoss(m, s, e, kind), 0) / samples.length;

/** Indices of step `step`'s batch: consecutive slices of a stream of seeded per-epoch permutations. */
export function batchIndices(seed: number, step: number, count: number, batch: number): number[] {
  const size = Math.min(batch, count), out: number[] = [];
  for (let k = step * size; k < (step + 1) * size; k++) {
    const epoch = Math.floor(k / count);
    out.push(permutation(seededUniform(deriveSeed(seed, 1000 + epoch)), count)[k % count]);
  }
  return out;
}

export interface StepReport {
  loss: number;
  gradNorm: number;
  lr: number;
}

/** One optimisation step on the batch `samples`: mean loss and gradient, clip, Adam. */
export function trainStep(
  m: TrainModel,
  state: FitState,
  samples: TrainSample[],
  o: FitOptions,
): { state: FitState; report: StepReport } {
  const sum = new Float64Array(state.e.length);
  let loss = 0;
  for (const s of samples) {
    const r = sampleLossAndGrad(m, s, state.e, o.loss);
    loss += r.loss / samples.length;
    for (let i = 0; i < sum.length; i++) sum[i] += r.grad[i] / samples.length;
  }
  return applyGradient(state, loss, sum, o);
}

/**
 * The update shared by every backend once the batch's mean loss and gradient are known: clip by norm,
 * the scheduled learning rate, one Adam step.
 */
export function applyGradient(
  state: FitState,
  loss: number,
  meanGrad: Float64Array,
  o: FitOptions,
): { state: FitState; report: StepReport } {
  const { grad, norm } = clipByNorm(meanGrad, o.clip);
  const lr = scheduledLr(o.schedule, state.step);
  const next = adamStep(state.e, grad, state.adam, lr);
  return {
    state: { step: state.step + 1, e: next.params, adam: next.state },
    report: { loss, gradNorm: norm, lr },
  };
}

/** Where a fit's gradients come from: the CPU reference here, or WebGPU (gpu/train/fit_gpu.ts). */
export interface FitBackend {
  readonly name: "cpu" | "gpu";
  step(
    state: FitState,
    samples: TrainSample[],
    o: FitOptions,
  ): Promise<{ state: FitState; report: StepReport }>;
  meanLoss(samples: TrainSample[], e: Float64Array, kind: LossKind): Promise<number>;
  dispose(): void;
}

export const cpuFitBackend = (m: TrainModel): FitBackend => ({
  name: "cpu",
  step: (state, samples, o) => Promise.resolve(trainStep(m, state, samples, o)),
  meanLoss: (samples, e, kind) => Promise.resolve(meanLoss(m, samples, e, kind)),
  dispose: () => {},
});
