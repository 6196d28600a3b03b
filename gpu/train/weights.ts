/**
 * The frozen weights in float32, in the layouts the training kernels read: each projection both as
 * [in, out] (forward: adjacent invocations = adjacent output columns = adjacent floats) and as the
 * Hugging Face [out, in] (backward, dx = dy W: adjacent input columns adjacent). RMSNorm weights are
 * folded into the projections that follow them (W diag(w)), which makes the norm a per-row scale in
 * the forward and leaves the backward a per-row formula on (w * dxn).
 */
import { JudgeQError } from "../../core/errors.ts";
import type { TrainModel } from "../../core/train/model.ts";
import { qkvColumn, swigluColumn } from "./matmul.ts";

export interface GpuTrainLayer {
  /** [D, NQ] (columns permuted for RoPE, see matmul.ts) and [NQ, D]: attention norm folded in. */
  qkvT: GPUBuffer;
  qkv: GPUBuffer;
  bias: GPUBuffer | null;
  /** Absent in the last layer, whose output reaches no attention map. */
  mlp: {
    oT: GPUBuffer; // [QW, D]
    o: GPUBuffer; // [D, QW]
    guT: GPUBuffer; // [D, 2F], gate/up columns interleaved (matmul.ts), MLP norm folded in
    gu: GPUBuffer; // [2F, D]
    downT: GPUBuffer; // [F, D]
    down: GPUBuffer; // [D, F]
  } | null;
}

export interface GpuTrainWeights {
  layers: GpuTrainLayer[];
  bytes: number;
  buffers: GPUBuffer[];
}

/** Rows [out, in] stacked, each column i scaled by fold[i] (when given). */
function stack(parts: Float64Array[], inDim: number, fold: Float64Array | null): Float32Array {
  const rows = parts.reduce((a, p) => a + p.length / inDim, 0), out = new Float32Array(rows * inDim);
  let at = 0;
  for (const p of parts) {
    for (let k = 0; k < p.length; k++) out[at + k] = fold ? p[k] * fold[k % inDim] : p[k];
    at += p.length;
  }
  return out;
}

/** [in, out] from [out, in] rows; output column j is row colOf(j). */
function transpose(a: Float32Array, outDim: number, inDim: number, colOf = (j: number) => j): Float32Array {
  const t = new Float32Array(a.length);
  for (let j = 0; j < outDim; j++) {
    const o = colOf(j) * inDim;
    for (let i = 0; i < inDim; i++) t[i * outDim + j] = a[o + i];
  }
  return t;
}

export function uploadTrainWeights(device: GPUDevice, m: TrainModel, maxBinding: number): GpuTrainWeights {
  const c = m.config, D = c.dim, F = c.hiddenDim, QW = c.nHeads * c.headDim;
  const buffers: GPUBuffer[] = [];
  let bytes = 0;
  const upload = (data: Float32Array, label: string) => {
    if (data.byteLength > maxBinding) {
      throw new JudgeQError(
        "unprocessable",
        `GPU training: ${label} (${data.byteLength} bytes) exceeds the binding limit ${maxBinding}`,
      );
    }
    const b = device.createBuffer({
      label,
      size: Math.max(16, Math.ceil(data.byteLength / 16) * 16),
      usage: GPUBufferUsage.STORAGE,
      mappedAtCreation: true,
    });
    new Float32Array(b.getMappedRange()).set(data);
    b.unmap();
    buffers.push(b);
    bytes += b.size;
    return b;
  };
  const layers = m.layers.map((l, i): GpuTrainLayer => {
    const pair = (
      rows: Float32Array,
      outDim: number,
      inDim: number,
      name: string,
      colOf?: (j: number) => number,
    ) => ({
      hf: upload(rows, `${name}.${i}`),
      t: upload(transpose(rows, outDim, inDim, colOf), `${name}T.${i}`),
    });
    const nq = (c.nHeads + 2 * c.nKvHeads) * c.headDim, qkvCol = (j: number) => qkvColumn(c.headDim, j);
    const qkv = pair(stack([l.wq, l.wk, l.wv], D, l.attnNorm), nq, D, "qkv", qkvCol);
    const b = l.bq && l.bk && l.bv ? [...l.bq, ...l.bk, ...l.bv] : null;
    const bias = b ? upload(Float32Array.from({ length: nq }, (_, j) => b[qkvCol(j)]), `bqkv.${i}`) : null;
    if (i === m.layers.length - 1) return { qkvT: qkv.t, qkv: qkv.hf, bias, mlp: null };
    const o = pair(stack([l.wo], QW, null), D, QW, "o");
    const gu = pair(stack([l.wGate, l.wUp], D, l.mlpNorm), 2 * F, D, "gu", (j) => swigluColumn(F, j));
    const down = pair(stack([l.wDown], F, null), D, F, "down");
    return {
      qkvT: qkv.t,
      qkv: qkv.hf,
      bias,
      mlp: { oT: o.t, o: o.hf, guT: gu.t, gu: gu.hf, downT: down.t, down: down.hf },
    };
  });
  return { layers, bytes, buffers };
}
