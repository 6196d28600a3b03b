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
    const qkv = perLayer(R * NQ, "qkv"), probs = perLayer(s.H * (lCap + R) * Math.ceil(R / 4) * 4, "probs");
    const x1 = perLayer(R * s.D, "x1", s.NL - 1), gu = perLayer(R * 2 * s.F, "gu", s.NL - 1);
    this.pk = perLayer(s.G * lCap * s.HD, "pk");
    this.pv = perLayer(s.G * lCap * s.HD, "pv");
    // The attention output is kept per layer: its backward uses dOut . out.
    const att = perLayer(R * QW, "att", s.NL - 1), a = f32(R * s.F, "a");
    this.rope = f32(R * s.HD, "rope");
    this.maps = f32(mapSize, "maps");
    this.target = f32(mapSize, "target");
    const dMaps = f32(mapSize, "dmaps");
    this.parts = f32(s.NL * s.H, "parts");
    const dxs = [f32(R * s.D, "dx.0"), f32(R * s.D, "dx.1")];
    const dgu = f32(R * 2 * s.F, "dgu"), dn = f32(R * s.D, "dn"), dx1 = f32(R * s.D, "dx1");
    const dOut = f32(R * QW, "dout"),
      dsp = f32(s.H * R * R, "dsp"),
      pdp = f32(s.H * R, "pdp"),
      dqkv = f32(R * NQ, "dqkv");
    this.grad = f32(R * s.D, "grad");

    const uni = (l: number): Resource => ({
      buffer: this.uniform,
      offset: l * this.uniformStride,
      size: UNIFORM_BYTES,
    });
    const op = (
      kernel: Kernel,
      res: Record<string, Resource | undefined>,
      size: [number, number],
    ): Dispatch => ({
      kernel,
      group: bind(device, kernel, res),
      size,
    });
    const mm = (p: Product, res: Record<string, Resource | undefined>) =>
      op(p.kernel, res, matmulGroups(p.spec, R));
    const attn = attentionGroups(s, R), perRow: [number, number] = [groups(R), 1];
    for (let l = 0; l < s.NL; l++) {
      const w = wts.layers[l], u = uni(l), mlp = w.mlp;
      // Attention tensors of this layer, forward and backward.
      const at = {
        u,
        QKV: qkv[l],
        PK: this.pk[l],
        PV: this.pv[l],
        P: probs[l],
        MAPS: this.maps,
        ATT: att[l],
        DMAPS: dMaps,
        ROPE: this.rope,
        DOUT: dOut,
        DQKV: dqkv,
        DSP: dsp,
        PDP: pdp,
      };
      const forward = [
        mm(k.qkv, { u, X: this.x[l], B: w.qkvT, BIAS: w.bias ?? undefined, ROPE: this.rope, Y: qkv[l] }),
        op(mlp ? k.attention : k.attentionLast, at, attn),
        op(k.map, at, [groups(lCap), s.H]),
      ];
      // This layer's input gradient goes to dxs[l % 2]; its output's gradient is in the other one.
      const dIn = dxs[l % 2], dNext = dxs[(l + 1) % 2];
      const backward: Dispatch[] = [];
      if (mlp) {
        forward.push(
          mm(k.o, { u, X: att[l], B: mlp.oT, RES: this.x[l], Y: x1[l] }),
          mm(k.gu, { u, X: x1[l], B: mlp.guT, Y: gu[l], A: a }),
          mm(k.down, { u, X: a, B: mlp.downT, RES: x1[l], Y: this.x[l + 1] }),
        );
        backward.push(
          mm(k.swigluBack, { u, X: dNext, B: mlp.down, GU: gu[l], Y: dgu }),
          mm(k.guBack, { u, X: dgu, B: mlp.gu, Y: dn }),
          op(k.rmsBack.res, { u, GW: dn, X: x1[l], RES: dNext, OUT: dx1 }, perRow),
          mm(k.oBack, { u, X: dx1, B: mlp.o, Y: dOut }),
        );
      }
      const norm = l === 0
        ? (mlp ? k.rmsBack.resAcc : k.rmsBack.acc)
        : (mlp ? k.rmsBack.res : k.rmsBack.plain);
      backward.push(
        op(mlp ? k.attentionBack : k.attentionBackLast, at, attn),
        op(mlp ? k.softBack : k.softBackLast, at, [groups(R), s.H]),
        op(mlp ? k.kvBack : k.kvBackLast, at, [groups((s.G * s.HD) / 2), R]),
        mm(k.qkvBack, { u, X: dqkv, B: w.qkv, Y: dn }),
        op(
          norm,
          { u, GW: dn, X: this.x[l], RES: mlp ? dx1 : undefined, OUT: l === 0 ? this.grad : dIn },
          perRow,
        ),
      );
      this.layers.push({ forward, backward });
    }
    const loss = (kind: LossKind) =>
      op(
        k.loss[kind],
        { u: uni(0), MAPS: this.maps, TGT: this.target, DMAPS: dMaps, PARTS: this.parts },
        [groups(s.NL * s.H), 1],
      );
    this.lossWork = { mse: loss("mse"), kl: loss("kl") };
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
