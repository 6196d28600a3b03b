/**
 * One model on one device, shared by every session of an executor: the uploaded weights, the compiled
 * kernels, a buffer pool, and the RoPE cos/sin table (computed on the CPU in float64, so default and
 * llama3 scaling match the reference exactly; grown on demand).
 */
import { type ModelConfig, ropeInverseFrequencies } from "../core/config.ts";
import { JudgeQError } from "../core/errors.ts";
import type { ModelWeights } from "../core/weights.ts";
import { BufferPool, bufferWith, STORAGE } from "./buffers.ts";
import { checkDevice, type GpuContext } from "./device.ts";
import { compileKernels, type Kernels } from "./kernels/compile.ts";
import { PipelineCache } from "./pipelines.ts";
import type { GpuWeightFormat } from "../core/weight_formats.ts";
import { type GpuWeights, uploadWeights } from "./weights.ts";

export interface ModelOptions {
  format: GpuWeightFormat;
  /** Largest bytes of one weight binding. */
  maxBindingBytes: number;
  /** Decode steps recorded per submission. */
  decodeBatch: number;
  /** Prefill rows per chunk. */
  prefillChunk: number;
  /** RMSNorm as its own dispatch before the projections. */
  separateNorm: boolean;
}

export class GpuModel {
  readonly config: ModelConfig;
  readonly device: GPUDevice;
  readonly pipelines: PipelineCache;
  readonly pool: BufferPool;
  readonly weights: GpuWeights;
  readonly kernels: Kernels;
  /** RoPE (cos, sin) per position and pair; `ropeVersion` tells sessions to rebind. */
  rope: GPUBuffer;
  ropePositions = 0;
  ropeVersion = 0;
  private readonly invFreq: Float64Array;
  private disposed = false;

  constructor(readonly ctx: GpuContext, source: ModelWeights, readonly options: ModelOptions) {
    const c = source.config;
    this.config = c;
    this.device = ctx.device;
    this.pipelines = new PipelineCache(this.device);
    this.pool = new BufferPool(this.device);
    this.weights = uploadWeights(this.device, source, options.maxBindingBytes, options.format);
    this.kernels = compileKernels(this.pipelines, c, {
      format: options.format,
      bias: this.weights.layers[0]?.qkvBias !== null,
      separateNorm: options.separateNorm,
    });
    this.invFreq = ropeInverseFrequencies(c);
    this.rope = this.buildRope(Math.min(Math.max(c.maxSeqLen, 256), 8192));
  }

  get separateNorm(): boolean {
    return this.options.separateNorm;
  }

  private buildRope(positions: number): GPUBuffer {
    const half = this.config.headDim / 2;
    const t = new Float32Array(positions * half * 2);
    for (let p = 0; p < positions; p++) {
      for (let i = 0; i < half; i++) {
        const a = p * this.invFreq[i];
        t[(p * half + i) * 2] = Math.cos(a);
        t[(p * half + i) * 2 + 1] = Math.sin(a);
      }
    }
    this.ropePositions = positions;
    this.ropeVersion++;
    return bufferWith(this.device, t, STORAGE, "rope");
  }

  /** Makes the RoPE table cover positions < `end`. */
  ensureRope(end: number) {
    if (end <= this.ropePositions) return;
    const old = this.rope;
    this.rope = this.buildRope(Math.max(end, this.ropePositions * 2));
    old.destroy();
  }

  /** Throws when disposed, or the device's loss or pending validation error. */
  check() {
    if (this.disposed) throw new JudgeQError("internal", "the GPU executor was disposed");
    checkDevice(this.ctx);
  }

  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of this.weights.buffers) b.destroy();
    this.rope.destroy();
    this.pool.dispose();
  }
}
