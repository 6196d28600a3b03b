/**
 * The GPU twin of core/train's `sampleLossAndGrad` / `meanLoss`: the soft-row forward, the loss and
 * the hand-written reverse mode down to dE as WGSL kernels, float32. A call records each sample of
 * a batch as one submission (one compute pass: forward, loss, backward), accumulates the gradient on
 * the GPU, and reads the batch's gradient and per-map losses back once.
 */
import { JudgeQError } from "../../core/errors.ts";
import type { TrainSample } from "../../core/train/loop.ts";
import type { LossKind } from "../../core/train/loss.ts";
import type { PromptKv, TrainModel } from "../../core/train/model.ts";
import { acquireDevice, checkDevice, type GpuContext } from "../device.ts";
import { compileKernels, type TrainKernels } from "./pipelines.ts";
import { type Shape, shapeOf, unsupported } from "./shape.ts";
import { type GpuTrainWeights, uploadTrainWeights } from "./weights.ts";
import { Workspace } from "./workspace.ts";

export interface GpuTrainerOptions {
  /** Reuse a device (e.g. the inference executor's); otherwise one is acquired and owned. */
  context?: GpuContext;
}

export interface LossAndGrad {
  loss: number;
  /** dLoss/dE, [n, dim]. */
  grad: Float64Array;
}

/** A prompt's K/V packed [G, L, hd] per layer in float32, as the kernels read it. */
interface PackedPrompt {
  keys: Float32Array[];
  values: Float32Array[];
}

function concat(parts: Float64Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, x) => a + x.length, 0));
  let at = 0;
  for (const x of parts) {
    out.set(x, at);
    at += x.length;
  }
  return out;
}

const pack = (p: PromptKv): PackedPrompt => ({
  keys: p.layers.map((l) => concat(l.keys)),
  values: p.layers.map((l) => concat(l.values)),
});

export class GpuTrainer {
  private ws: Workspace | null = null;
  private read: GPUBuffer | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  // Samples are reused every epoch: keep their float32 forms (dropped with the samples).
  private readonly prompts = new WeakMap<PromptKv, PackedPrompt>();
  private readonly targets = new WeakMap<object, Float32Array>();
  /** Submissions and readbacks so far (tests check the one-readback-per-call property). */
  submits = 0;
  syncs = 0;

  private constructor(
    readonly ctx: GpuContext,
    readonly model: TrainModel,
    readonly shape: Shape,
    private readonly kernels: TrainKernels,
    private readonly weights: GpuTrainWeights,
    private readonly ownsDevice: boolean,
  ) {}

  static async create(model: TrainModel, o: GpuTrainerOptions = {}): Promise<GpuTrainer> {
    const why = unsupported(model.config);
    if (why) throw new JudgeQError("invalid_adapter", `GPU training: unsupported model shape: ${why}`);
    const ctx = o.context ?? await acquireDevice();
    const device = ctx.device;
    device.pushErrorScope("validation");
    const shape = shapeOf(model.config);
    const kernels = compileKernels(device, shape, model.layers[0].bq !== null);
    const weights = uploadTrainWeights(device, model, ctx.maxBinding);
    const err = await device.popErrorScope();
    if (err) {
      for (const b of weights.buffers) b.destroy();
      throw new JudgeQError("internal", `GPU training: kernel or upload failed: ${err.message}`);
    }
    return new GpuTrainer(ctx, model, shape, kernels, weights, !o.context);
  }

  /** Loss of one sample and dLoss/dE: `sampleLossAndGrad` on the GPU. */
  gradient(s: TrainSample, e: Float64Array, kind: LossKind): Promise<LossAndGrad> {
    return this.batchGradient([s], e, kind);
  }

  /** Mean loss and mean gradient over `samples` (a training step's batch), one readback. */
  batchGradient(samples: TrainSample[], e: Float64Array, kind: LossKind): Promise<LossAndGrad> {
    return this.exclusive(async () => {
      const r = await this.run(samples, e, kind, true, false);
      return { loss: r.loss, grad: r.grad };
    });
  }

  /** Mean loss over `samples` (held-out evaluation), forward only, one readback. */
  meanLoss(samples: TrainSample[], e: Float64Array, kind: LossKind): Promise<number> {
    return this.exclusive(async () => (await this.run(samples, e, kind, false, false)).loss);
  }

  /** The soft rows' maps [layer][head][promptLength] of one sample (what the loss compares). */
  softMaps(s: TrainSample, e: Float64Array): Promise<Float64Array> {
    return this.exclusive(async () => (await this.run([s], e, "mse", false, true)).maps!);
  }

  dispose() {
    this.ws?.destroy();
    this.ws = null;
    this.read?.destroy();
    for (const b of this.weights.buffers) b.destroy();
    if (this.ownsDevice) this.ctx.device.destroy();
  }

  /** Calls share one workspace: run them one at a time. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => {});
    return next;
  }

  private workspace(rows: number, L: number): Workspace {
    if (this.ws && this.ws.rows === rows && this.ws.lCap >= L) return this.ws;
    this.ws?.destroy();
    // Room for a few longer prompts before the next reallocation.
    const lCap = Math.max(64, Math.ceil(L / 64) * 64);
    this.ws = new Workspace(this.ctx.device, this.shape, this.kernels, this.weights, rows, lCap);
    return this.ws;
  }

  private validate(samples: TrainSample[], e: Float64Array): number {
    const s = this.shape;
    if (samples.length === 0) throw new JudgeQError("invalid_request", "GPU training: no samples");
    if (e.length === 0 || e.length % s.D !== 0) {
      throw new JudgeQError(
        "invalid_request",
        `GPU training: E has ${e.length} values, not a multiple of dim ${s.D}`,
      );
    }
    for (const x of samples) {
      const L = x.prompt.length;
      if (L < 1 || x.prompt.layers.length !== s.NL) {
        throw new JudgeQError("invalid_request", "GPU training: bad prompt K/V");
      }
      if (x.target.length !== s.NL * s.H * L) {
        throw new JudgeQError(
          "invalid_request",
          `GPU training: target has ${x.target.length} values, expected ${s.NL * s.H * L}`,
        );
      }
    }
    return e.length / s.D;
  }

  private ropeTable(rows: number, L: number): Float32Array {
    const inv = this.model.invFreq, half = inv.length, t = new Float32Array(rows * half * 2);
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < half; i++) {
        const angle = (L + r) * inv[i];
        t[2 * (r * half + i)] = Math.cos(angle);
        t[2 * (r * half + i) + 1] = Math.sin(angle);
      }
    }
    return t;
  }

  private upload(ws: Workspace, x: TrainSample, scale: number) {
    const q = this.ctx.device.queue, L = x.prompt.length;
    let p = this.prompts.get(x.prompt);
    if (!p) this.prompts.set(x.prompt, p = pack(x.prompt));
    let t = this.targets.get(x.target);
    if (!t) this.targets.set(x.target, t = Float32Array.from(x.target));
    ws.writeUniforms(L, scale);
    q.writeBuffer(ws.rope, 0, this.ropeTable(ws.rows, L));
    for (let l = 0; l < this.shape.NL; l++) {
      q.writeBuffer(ws.pk[l], 0, p.keys[l]);
      q.writeBuffer(ws.pv[l], 0, p.values[l]);
    }
    q.writeBuffer(ws.target, 0, t);
  }

  /** The readback buffer, grown to `bytes`. */
  private readBuffer(bytes: number): GPUBuffer {
    if (this.read && this.read.size >= bytes) return this.read;
    this.read?.destroy();
    const size = Math.ceil(bytes / 4096) * 4096;
    this.read = this.ctx.device.createBuffer({
      size,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    return this.read;
  }

  private async run(
    samples: TrainSample[],
    e: Float64Array,
    kind: LossKind,
    backward: boolean,
    wantMaps: boolean,
  ): Promise<{ loss: number; grad: Float64Array; maps: Float64Array | null }> {
    checkDevice(this.ctx);
    const rows = this.validate(samples, e), device = this.ctx.device, s = this.shape;
    const ws = this.workspace(rows, Math.max(...samples.map((x) => x.prompt.length)));
    // Readback layout: dE sum | maps of the last sample (optional) | each sample's per-map losses.
    const nMaps = s.NL * s.H, last = samples[samples.length - 1];
    const gradBytes = rows * s.D * 4, mapsBytes = wantMaps ? nMaps * last.prompt.length * 4 : 0;
    const partsAt = gradBytes + mapsBytes, bytes = partsAt + samples.length * nMaps * 4;
    const read = this.readBuffer(bytes);
    device.queue.writeBuffer(ws.x[0], 0, Float32Array.from(e));
    // Queue order: each sample's writes land after the previous sample's submission has used them.
    samples.forEach((x, i) => {
      this.upload(ws, x, 1 / samples.length);
      const enc = device.createCommandEncoder();
      if (i === 0) enc.clearBuffer(ws.grad);
      ws.record(enc, kind, backward);
      enc.copyBufferToBuffer(ws.parts, 0, read, partsAt + i * nMaps * 4, nMaps * 4);
      if (i === samples.length - 1) {
        if (backward) enc.copyBufferToBuffer(ws.grad, 0, read, 0, gradBytes);
        if (wantMaps) enc.copyBufferToBuffer(ws.maps, 0, read, gradBytes, mapsBytes);
      }
      device.queue.submit([enc.finish()]);
      this.submits++;
    });
    await read.mapAsync(GPUMapMode.READ, 0, bytes);
    this.syncs++;
    try {
      checkDevice(this.ctx);
      const data = read.getMappedRange(0, bytes);
      // Per-map losses summed in float64: the batch mean of the per-sample losses.
      const parts = new Float32Array(data, partsAt, samples.length * nMaps);
      let loss = 0;
      for (let i = 0; i < parts.length; i++) loss += parts[i];
      return {
        loss: loss / samples.length,
        grad: backward ? Float64Array.from(new Float32Array(data, 0, rows * s.D)) : new Float64Array(0),
        maps: wantMaps ? Float64Array.from(new Float32Array(data, gradBytes, mapsBytes / 4)) : null,
      };
    } finally {
      read.unmap();
    }
  }
}
export const createGpuTrainer = (model: TrainModel, o?: GpuTrainerOptions): Promise<GpuTrainer> =>
  GpuTrainer.create(model, o);
