/**
 * The WebGPU executor: weights uploaded once and kernels compiled once (sizes baked into the WGSL) in a
 * `GpuModel`, and sessions that each own a KV cache. `GpuExecutor.create` acquires a fresh device; after
 * a device loss every call fails with a device_lost error and a new executor must be created.
 */
import type { ModelConfig } from "../core/config.ts";
import { JudgeQError } from "../core/errors.ts";
import { checkSnapshot } from "../core/cache_snapshot.ts";
import type { CacheSnapshot, Executor, KvSession } from "../core/executor.ts";
import { beyondF16Error, type ModelWeights, tensorBeyondF16 } from "../core/weights.ts";
import {
  choiceList,
  GPU_WEIGHT_CHOICES,
  type GpuWeightChoice,
  type GpuWeightFormat,
  isChoice,
} from "../core/weight_formats.ts";
import { acquireDevice, checkDevice, type GpuContext } from "./device.ts";
import { GpuModel } from "./model.ts";
import { GpuSession } from "./session.ts";
import { type GpuWeights, unsupportedShape } from "./weights.ts";

export interface GpuExecutorOptions {
  /** Largest bytes of one weight binding; lower than the device limit to force splitting (tests). */
  maxBindingBytes?: number;
  /** Decode steps recorded per submission (default 32). */
  decodeBatch?: number;
  /** Prefill rows per chunk (default 256). */
  prefillChunk?: number;
  /** Reuse a device (otherwise a new one is acquired). */
  context?: GpuContext;
  /**
   * Projection/embedding storage: "auto" (default) is f16 when the adapter has shader-f16 and every
   * weight fits f16's range, else f32. f16 is packed in u32 words, so it also works without shader-f16.
   */
  weightFormat?: GpuWeightChoice;
  /**
   * RMSNorm as its own dispatch before the projections instead of inside them (default: hidden size
   * >= SEPARATE_NORM_MIN_DIM). Fused, every invocation of a projection recomputes the row's norm (a
   * sixth of its loads); separate, one small dispatch per norm does it once (16% faster decode on the
   * 87.5M model in bench/decode_probe.ts; on a tiny model the extra dispatches cost more than they save).
   */
  separateNorm?: boolean;
}

export const SEPARATE_NORM_MIN_DIM = 256;

/** The format "auto" resolves to, or an error naming the tensor that cannot be f16. */
export function resolveWeightFormat(choice: GpuWeightChoice, w: ModelWeights, features: Set<string>) {
  if (!isChoice(GPU_WEIGHT_CHOICES, choice)) {
    const expected = choiceList(GPU_WEIGHT_CHOICES);
    throw new JudgeQError("invalid_request", `expected ${expected}, got '${choice}'`, "weight_format");
  }
  if (choice === "f32" || (choice === "auto" && !features.has("shader-f16"))) return "f32";
  const beyond = tensorBeyondF16(w); // one pass over the weights, only when f16 is in question
  if (choice === "auto") return beyond ? "f32" : "f16";
  if (beyond) throw beyondF16Error(beyond, "weight_format");
  return "f16";
}

export class GpuExecutor implements Executor {
  readonly kind = "gpu" as const;
  readonly decodesAhead = true;
  readonly config: ModelConfig;
  readonly description: string;
  /** Weights, kernels, RoPE table and buffer pool, shared by the sessions. */
  readonly model: GpuModel;

  private constructor(
    readonly ctx: GpuContext,
    readonly weights: ModelWeights,
    o: GpuExecutorOptions,
    format: GpuWeightFormat,
  ) {
    const c = weights.config;
    this.config = c;
    this.model = new GpuModel(ctx, weights, {
      format,
      maxBindingBytes: Math.min(ctx.maxBinding, o.maxBindingBytes ?? Infinity),
      decodeBatch: Math.max(1, Math.min(o.decodeBatch ?? 32, 256)),
      prefillChunk: Math.max(1, o.prefillChunk ?? 256),
      separateNorm: o.separateNorm ?? c.dim >= SEPARATE_NORM_MIN_DIM,
    });
    const mb = (this.model.weights.bytes / 2 ** 20).toFixed(1);
    this.description = `WebGPU: ${ctx.description}; weights ${format} ${mb} MiB`;
  }

  /** Acquires a device (or reuses `options.context`) and uploads the weights. */
  static async create(weights: ModelWeights, options: GpuExecutorOptions = {}): Promise<GpuExecutor> {
    const bad = unsupportedShape(weights.config);
    if (bad) {
      throw new JudgeQError("invalid_adapter", `the WebGPU executor does not support this model: ${bad}`);
    }
    const ctx = options.context ?? (await acquireDevice());
    const format = resolveWeightFormat(options.weightFormat ?? "auto", weights, ctx.features);
    const ex = new GpuExecutor(ctx, weights, options, format);
    // Surface upload or compilation errors now rather than at the first request.
    await ctx.device.queue.onSubmittedWorkDone();
    checkDevice(ctx);
    return ex;
  }

  get device(): GPUDevice {
    return this.ctx.device;
  }

  get gpuWeights(): GpuWeights {
    return this.model.weights;
  }

  get decodeBatch(): number {
    return this.model.options.decodeBatch;
  }

  get prefillChunk(): number {
    return this.model.options.prefillChunk;
  }

  get separateNorm(): boolean {
    return this.model.options.separateNorm;
  }

  get lost(): boolean {
    return this.ctx.lost !== null;
  }

  createSession(capacity: number): GpuSession {
    this.model.check();
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new JudgeQError("invalid_request", `capacity ${capacity} must be a positive integer`, "capacity");
    }
    return new GpuSession(this.model, capacity);
  }

  restoreSession(snapshot: CacheSnapshot, capacity: number): Promise<KvSession> {
    checkSnapshot(snapshot, this.config, capacity);
    const session = this.createSession(capacity);
    session.load(snapshot);
    return Promise.resolve(session);
  }

  dispose() {
    this.model.dispose();
  }
}
