/**
 * The WebGPU backend. `createBestExecutor` returns the GPU executor when an adapter exists (and the
 * model's shape is supported), else the CPU reference with a logged warning.
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import type { Executor } from "../core/executor.ts";
import type { ModelWeights } from "../core/weights.ts";
import { GpuExecutor, type GpuExecutorOptions } from "./executor.ts";

export { acquireDevice, gpuAvailable } from "./device.ts";
export {
  GpuExecutor,
  type GpuExecutorOptions,
  resolveWeightFormat,
  WEIGHT_FORMATS,
  type WeightFormatChoice,
} from "./executor.ts";
export { GpuQueryRows, GpuSession } from "./session.ts";

export interface BestExecutorOptions extends GpuExecutorOptions {
  prefer?: "gpu" | "cpu";
  /** Where the fallback warning goes (console.warn by default). */
  warn?: (message: string) => void;
}

export async function createBestExecutor(
  weights: ModelWeights,
  options: BestExecutorOptions = {},
): Promise<Executor> {
  if ((options.prefer ?? "gpu") === "cpu") return new CpuExecutor(weights);
  try {
    return await GpuExecutor.create(weights, options);
  } catch (e) {
    (options.warn ?? console.warn)(
      `WebGPU unavailable, falling back to the CPU executor: ${(e as Error).message}`,
    );
    return new CpuExecutor(weights);
  }
}
