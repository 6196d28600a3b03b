/**
 * The optimisation step of core/train/loop.ts with the batch gradient computed on the GPU: one
 * submission per sample and one readback per step; clipping and Adam stay on the CPU in float64
 * (they are O(n dim), and the state then has the CPU path's checkpoint format, so either executor
 * can resume the other's run; trajectories agree to float32 precision, not bit for bit).
 */
import {
  applyGradient,
  cpuFitBackend,
  type FitBackend,
  type FitOptions,
  type FitState,
  type StepReport,
  type TrainSample,
} from "../../core/train/loop.ts";
import type { TrainModel } from "../../core/train/model.ts";
import { GpuTrainer, type GpuTrainerOptions } from "./trainer.ts";

/** `trainStep` with the GPU batch gradient. */
export async function trainStepGpu(
  trainer: GpuTrainer,
  state: FitState,
  samples: TrainSample[],
  o: FitOptions,
): Promise<{ state: FitState; report: StepReport }> {
  const { loss, grad } = await trainer.batchGradient(samples, state.e, o.loss);
  return applyGradient(state, loss, grad, o);
}

export async function gpuFitBackend(m: TrainModel, o?: GpuTrainerOptions): Promise<FitBackend> {
  const trainer = await GpuTrainer.create(m, o);
  return {
    name: "gpu",
    step: (state, samples, opts) => trainStepGpu(trainer, state, samples, opts),
    meanLoss: (samples, e, kind) => trainer.meanLoss(samples, e, kind),
    dispose: () => trainer.dispose(),
  };
}

/** The backend for `--executor`: "gpu" fails loudly when WebGPU cannot run the model. */
export const fitBackend = (
  executor: "cpu" | "gpu",
  m: TrainModel,
  o?: GpuTrainerOptions,
): Promise<FitBackend> => executor === "gpu" ? gpuFitBackend(m, o) : Promise.resolve(cpuFitBackend(m));
