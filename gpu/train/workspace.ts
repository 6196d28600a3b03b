/**
 * Activation, tape and gradient buffers for R soft rows and prompts up to `lCap` positions, with every
 * bind group made once: recording a sample is then only dispatches. Per sample, the queue writes the
 * uniform records, the RoPE table, the prompt K/V and the target before that sample's submission
 * (queue order keeps the samples of one batch apart); the gradient sum accumulates across the batch on
 * the GPU until the single readback.
 */
import { attentionGroups } from "./attention.ts";
import type { LossKind } from "../../core/train/loss.ts";
import { matmulGroups } from "./matmul.ts";
import type { Product, TrainKernels } from "./pipelines.ts";
import { bind, type Kernel, type Resource, UNIFORM_BYTES, WG } from "./program.ts";
import { qkvWidth, type Shape } from "./shape.ts";
import type { GpuTrainWeights } from "./weights.ts";

interface Dispatch {
  kernel: Kernel;
  group: GPUBindGroup;
  size: [number, number];
}

/** One layer's recorded work, forward and backward. */
interface LayerWork {
  forward: Dispatch[];
  backward: Dispatch[];
}

/** Per-sample activations and gradients that only the recorded dispatches touch. */
interface Tape {
  qkv: GPUBuffer[];
  probs: GPUBuffer[];
  x1: GPUBuffer[];
  gu: GPUBuffer[];
  att: GPUBuffer[];
  a: GPUBuffer;
  dMaps: GPUBuffer;
  /** Two layer-input gradients, used in turn. */
  dxs: GPUBuffer[];
  dgu: GPUBuffer;
  dn: GPUBuffer;
  dx1: GPUBuffer;
  dOut: GPUBuffer;
  dsp: GPUBuffer;
  pdp: GPUBuffer;
  dqkv: GPUBuffer;
}

const groups = (n: number) => Math.max(1, Math.ceil(n / WG));

export class Workspace {
  readonly buffers: GPUBuffer[] = [];
  readonly uniform: GPUBuffer;
  readonly uniformStride: number;
  /** Layer inputs; x[0] holds E. */
  readonly x: GPUBuffer[];
  readonly pk: GPUBuffer[];
  readonly pv: GPUBuffer[];
  readonly rope: GPUBuffer;
  readonly target: GPUBuffer;
  readonly maps: GPUBuffer;
  readonly parts: GPUBuffer;
  readonly grad: GPUBuffer;
  private readonly layers: LayerWork[] = [];
  private readonly lossWork: Record<LossKind, Dispatch>;

  constructor(
    private readonly device: GPUDevice,
    readonly shape: Shape,
    k: TrainKernels,
    wts: GpuTrainWeights,
    readonly rows: number,
    readonly lCap: number,
  ) {
    const s = shape, R = rows, NQ = qkvWidth(s), QW = s.H * s.HD, mapSize = s.NL * s.H * lCap;
    const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const f32 = (n: number, label: string, usage = storage) => {
      const b = device.createBuffer({ label, size: Math.max(16, Math.ceil((n * 4) / 16) * 16), usage });
      this.buffers.push(b);
      return b;
    };
    const perLayer = (n: number, label: string, count = s.NL) =>
      Array.from({ length: count }, (_, l) => f32(n, `${label}.${l}`));
    const align = device.limits.minUniformBufferOffsetAlignment;
    this.uniformStride = Math.ceil(UNIFORM_BYTES / align) * align;
    this.uniform = f32(
      (this.uniformStride * s.NL) / 4,
      "uniform",
      GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    );
    this.x = perLayer(R * s.D, "x");
    const t: Tape = {
      qkv: perLayer(R * NQ, "qkv"),
      probs: perLayer(s.H * (lCap + R) * Math.ceil(R / 4) * 4, "probs"),
      x1: perLayer(R * s.D, "x1", s.NL - 1),
      gu: perLayer(R * 2 * s.F, "gu", s.NL - 1),
      // The attention output is kept per layer: its backward uses dOut . out.
      att: perLayer(R * QW, "att", s.NL - 1),
      a: f32(R * s.F, "a"),
      dMaps: f32(mapSize, "dmaps"),
      dxs: [f32(R * s.D, "dx.0"), f32(R * s.D, "dx.1")],
      dgu: f32(R * 2 * s.F, "dgu"),
      dn: f32(R * s.D, "dn"),
      dx1: f32(R * s.D, "dx1"),
      dOut: f32(R * QW, "dout"),
      dsp: f32(s.H * R * R, "dsp"),
      pdp: f32(s.H * R, "pdp"),
      dqkv: f32(R * NQ, "dqkv"),
    };
    this.pk = perLayer(s.G * lCap * s.HD, "pk");
    this.pv = perLayer(s.G * lCap * s.HD, "pv");
    this.rope = f32(R * s.HD, "rope");
    this.maps = f32(mapSize, "maps");
    this.target = f32(mapSize, "target");
    this.parts = f32(s.NL * s.H, "parts");
    this.grad = f32(R * s.D, "grad");
    for (let l = 0; l < s.NL; l++) this.layers.push(this.layerWork(l, k, wts, t));
    const loss = (kind: LossKind) =>
      this.op(
        k.loss[kind],
        { u: this.uni(0), MAPS: this.maps, TGT: this.target, DMAPS: t.dMaps, PARTS: this.parts },
        [groups(s.NL * s.H), 1],
      );
    this.lossWork = { mse: loss("mse"), kl: loss("kl") };
  }

  /** The uniform record of layer l. */
  private uni(l: number): Resource {
    return { buffer: this.uniform, offset: l * this.uniformStride, size: UNIFORM_BYTES };
  }

  private op(kernel: Kernel, res: Record<string, Resource | undefined>, size: [number, number]): Dispatch {
    return { kernel, group: bind(this.device, kernel, res), size };
  }

  private mm(p: Product, res: Record<string, Resource | undefined>): Dispatch {
    return this.op(p.kernel, res, matmulGroups(p.spec, this.rows));
  }

  /** Layer l's dispatches with their bind groups, forward and backward. */
  private layerWork(l: number, k: TrainKernels, wts: GpuTrainWeights, t: Tape): LayerWork {
    const s = this.shape, R = this.rows, w = wts.layers[l], u = this.uni(l), mlp = w.mlp;
    const attn = attentionGroups(s, R), perRow: [number, number] = [groups(R), 1];
    // Attention tensors of this layer, forward and backward.
    const at = {
      u,
      QKV: t.qkv[l],
      PK: this.pk[l],
      PV: this.pv[l],
      P: t.probs[l],
      MAPS: this.maps,
      ATT: t.att[l],
      DMAPS: t.dMaps,
      ROPE: this.rope,
      DOUT: t.dOut,
      DQKV: t.dqkv,
      DSP: t.dsp,
      PDP: t.pdp,
    };
    const forward = [
      this.mm(k.qkv, { u, X: this.x[l], B: w.qkvT, BIAS: w.bias ?? undefined, ROPE: this.rope, Y: t.qkv[l] }),
      this.op(mlp ? k.attention : k.attentionLast, at, attn),
      this.op(k.map, at, [groups(this.lCap), s.H]),
    ];
    // This layer's input gradient goes to dxs[l % 2]; its output's gradient is in the other one.
    const dIn = t.dxs[l % 2], dNext = t.dxs[(l + 1) % 2];
    const backward: Dispatch[] = [];
    if (mlp) {
      forward.push(
        this.mm(k.o, { u, X: t.att[l], B: mlp.oT, RES: this.x[l], Y: t.x1[l] }),
        this.mm(k.gu, { u, X: t.x1[l], B: mlp.guT, Y: t.gu[l], A: t.a }),
        this.mm(k.down, { u, X: t.a, B: mlp.downT, RES: t.x1[l], Y: this.x[l + 1] }),
      );
      backward.push(
        this.mm(k.swigluBack, { u, X: dNext, B: mlp.down, GU: t.gu[l], Y: t.dgu }),
        this.mm(k.guBack, { u, X: t.dgu, B: mlp.gu, Y: t.dn }),
        this.op(k.rmsBack.res, { u, GW: t.dn, X: t.x1[l], RES: dNext, OUT: t.dx1 }, perRow),
        this.mm(k.oBack, { u, X: t.dx1, B: mlp.o, Y: t.dOut }),
      );
    }
    const norm = l === 0 ? (mlp ? k.rmsBack.resAcc : k.rmsBack.acc) : (mlp ? k.rmsBack.res : k.rmsBack.plain);
    const normRes = {
      u,
      GW: t.dn,
      X: this.x[l],
      RES: mlp ? t.dx1 : undefined,
      OUT: l === 0 ? this.grad : dIn,
    };
    backward.push(
      this.op(mlp ? k.attentionBack : k.attentionBackLast, at, attn),
      this.op(mlp ? k.softBack : k.softBackLast, at, [groups(R), s.H]),
      this.op(mlp ? k.kvBack : k.kvBackLast, at, [groups((s.G * s.HD) / 2), R]),
      this.mm(k.qkvBack, { u, X: t.dqkv, B: w.qkv, Y: t.dn }),
      this.op(norm, normRes, perRow),
    );
    return { forward, backward };
  }

  /** Writes the per-layer uniform records for a sample of prompt length L weighted by `scale`. */
  writeUniforms(L: number, scale: number) {
    const words = new ArrayBuffer(this.uniformStride * this.shape.NL);
    for (let l = 0; l < this.shape.NL; l++) {
      const at = l * this.uniformStride;
      new Uint32Array(words, at, 3).set([this.rows, L, l]);
      new Float32Array(words, at + 16, 1)[0] = scale;
    }
    this.device.queue.writeBuffer(this.uniform, 0, words);
  }

  /** Records one sample: forward, loss, and (when `backward`) the reverse mode into the gradient sum. */
  record(enc: GPUCommandEncoder, kind: LossKind, backward: boolean) {
    const pass = enc.beginComputePass();
    const run = (d: Dispatch) => {
      pass.setPipeline(d.kernel.pipeline);
      pass.setBindGroup(0, d.group);
      pass.dispatchWorkgroups(...d.size);
    };
    for (const l of this.layers) l.forward.forEach(run);
    run(this.lossWork[kind]);
    if (backward) { for (let l = this.layers.length - 1; l >= 0; l--) this.layers[l].backward.forEach(run); }
    pass.end();
  }

  destroy() {
    for (const b of this.buffers) b.destroy();
  }
}
