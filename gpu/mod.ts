/**
 * The WebGPU backend. `createBestExecutor` returns the GPU executor when an adapter exists (and the
 * model's shape is supported), else the CPU reference with a logged warning.
 *
 * How gpu/ is laid out (imports point down this list; gpu/ imports only core/):
 *   executor.ts   the Executor: options, weight format, device; creates sessions over one model
 *   session.ts    KvSession, thin glue over the modules below (one per session: cache, pass, samplers)
 *   decode.ts     the decode scheduler: pipelined batches, speculation (with its own step timing), the
 *                 three logits regions, GPU samplers (kernels/sample.ts, argmax)
 *   scoring.ts    attention mass and key norms of the cached prompt entries (compression methods)
 *   forward.ts    the forward pass, read top to bottom: embed -> layers -> final norm + LM head
 *   kv_cache.ts   the per-head compacting KV cache; owns its layout (grow, keep, truncate, rewind, clone)
 *   model.ts      what sessions share: uploaded weights (weights.ts), compiled kernels, RoPE, buffer pool
 *   readback.ts   the one place a session waits on the GPU (syncs), failing on device loss
 *   recorder.ts   command recording with per-dispatch parameter records (dynamic uniform offsets)
 *   pipelines.ts  the kernel-definition layer: a kernel = name + named bindings + WGSL body, declared
 *                 once; layouts and bind groups (by binding name) come from it
 *   kernels/      the WGSL kernel definitions (matmul, attention, misc, sample) and compile.ts
 *   device.ts, buffers.ts  adapter/device acquisition, loss and errors; buffer helpers and pool
 *   train/        Judge Q training on WebGPU (its own kernels; train/program.ts)
 * Errors are core/errors.ts `JudgeQError`s; a lost device is kind "device_lost".
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import type { Executor } from "../core/executor.ts";
import type { ModelWeights } from "../core/weights.ts";
import { GpuExecutor, type GpuExecutorOptions } from "./executor.ts";

export { acquireDevice, gpuAvailable } from "./device.ts";
export { GpuExecutor, type GpuExecutorOptions, resolveWeightFormat } from "./executor.ts";
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
