/**
 * Records dispatches and copies into one command encoder, with the per-dispatch parameter records
 * packed into one uniform buffer (dynamic offsets). One compute pass holds consecutive dispatches;
 * a copy ends it. When the parameter buffer is full the recording is submitted and a new one begins
 * (queue order keeps each submission's parameters intact).
 */
import { emptyBuffer, UNIFORM } from "./buffers.ts";
import { encodeParams, PARAMS_WORDS, type StepParams } from "./kernels/common.ts";
import { bindGroup, type Kernel, type Resource } from "./pipelines.ts";

/**
 * A session's parameter buffer: `records` per-dispatch records `stride` bytes apart. Every recorder
 * and every bind group of the session goes through it (bind groups bind `P` to it).
 */
export class ParamRecords {
  readonly buffer: GPUBuffer;
  /** Bytes between records (the uniform offset alignment, at least one record). */
  readonly stride: number;

  constructor(readonly device: GPUDevice, records: number) {
    this.stride = Math.max(PARAMS_WORDS * 4, device.limits.minUniformBufferOffsetAlignment);
    this.buffer = emptyBuffer(device, records * this.stride, UNIFORM, "params");
  }

  recorder(): Recorder {
    return new Recorder(this.device, this.buffer, this.stride);
  }

  /** A bind group of `kernel` from named buffers, `P` being this parameter buffer. */
  bind(kernel: Kernel, resources: Record<string, Resource | null | undefined>): GPUBindGroup {
    return bindGroup(this.device, kernel, { ...resources, P: this.buffer }, this.stride);
  }

  dispose() {
    this.buffer.destroy();
  }
}

export class Recorder {
  private enc: GPUCommandEncoder;
  private pass: GPUComputePassEncoder | null = null;
  private readonly words: Uint32Array;
  private count = 0;
  dispatches = 0;
  submits = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly params: GPUBuffer,
    /** Bytes between records (the uniform offset alignment, at least 32). */
    readonly stride: number,
  ) {
    this.enc = device.createCommandEncoder();
    this.words = new Uint32Array(params.size / 4);
  }

  get capacity() {
    return this.params.size / this.stride;
  }

  /** Adds a parameter record and returns its dynamic offset. */
  param(p: StepParams): number {
    if (this.count >= this.capacity) this.flush();
    const at = this.count++ * this.stride;
    encodeParams(this.words, at / 4, p);
    return at;
  }

  /** Whether `n` more records fit before a flush; callers flush between logical steps. */
  fits(n: number): boolean {
    return this.count + n <= this.capacity;
  }

  dispatch(k: Kernel, group: GPUBindGroup, offset: number | null, x: number, y = 1, z = 1) {
    if (!this.pass) this.pass = this.enc.beginComputePass();
    this.pass.setPipeline(k.pipeline);
    this.pass.setBindGroup(0, group, offset === null ? [] : [offset]);
    this.pass.dispatchWorkgroups(x, y, z);
    this.dispatches++;
  }

  /** Ends the current compute pass (the next dispatch starts a new one). */
  endPass() {
    this.pass?.end();
    this.pass = null;
  }

  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, size: number) {
    this.endPass();
    this.enc.copyBufferToBuffer(src, srcOffset, dst, dstOffset, size);
  }

  clear(buf: GPUBuffer, offset = 0, size?: number) {
    this.endPass();
    this.enc.clearBuffer(buf, offset, size);
  }

  /** Submits what was recorded so far and starts a new encoder. */
  flush() {
    this.endPass();
    if (this.count > 0) {
      const bytes = this.count * this.stride;
      this.device.queue.writeBuffer(this.params, 0, this.words.buffer, 0, bytes);
    }
    this.device.queue.submit([this.enc.finish()]);
    this.submits++;
    this.count = 0;
    this.enc = this.device.createCommandEncoder();
  }
}
