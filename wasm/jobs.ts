/**
 * Typed builders of the kernels' jobs: each takes its arguments by name and lays them out in the order
 * the kernel (wasm/assembly/kernels.ts) declares, so a call site cannot swap two numbers. Addresses are
 * byte offsets in the shared memory; 0 is "none" where a pointer is optional.
 */
import type { Job } from "./pool.ts";
import type { WasmWeightFormat } from "../core/weight_formats.ts";
import type { Matrix } from "./weights.ts";

/** y[m, :] (+)= w . x[m, :] (+ bias) for M rows; the kernel follows the weights' format. */
export interface GemmArgs {
  format: WasmWeightFormat;
  x: number;
  w: Matrix;
  bias: number;
  y: number;
  M: number;
  /** Add to y instead of overwriting it (the residual stream). */
  acc: boolean;
  /** Row stride of y in floats (default: the matrix's rows). */
  ldy?: number;
  /** Chunk t reads its x at x + t x xStride (rows a fused rmsNorm wrote per chunk); 0: one x for all. */
  xStride?: number;
  /** f32, f16: the chunks' weight panels. int8: the chunks' quantization scratch and its stride. */
  panels: number;
  quant: number;
  quantStride: number;
}

export function gemmJob(a: GemmArgs): Job {
  const shape = [a.M, a.w.rows, a.w.cols, a.ldy ?? a.w.rows, a.acc ? 1 : 0];
  const xs = a.xStride ?? 0;
  switch (a.format) {
    case "f32":
      return { kernel: "gemmF32", args: [a.x, a.w.at, a.bias, a.y, ...shape, a.panels, xs] };
    case "f16":
      return { kernel: "gemmF16", args: [a.x, a.w.at, a.bias, a.y, ...shape, a.panels, xs] };
    case "int8":
      return {
        kernel: "gemmI8",
        args: [a.x, a.w.at, a.w.scales, a.w.sums, a.bias, a.y, ...shape, a.quant, a.quantStride, xs],
      };
    case "q8_0":
      return {
        kernel: "gemmQ8",
        args: [a.x, a.w.at, a.w.scales, a.w.sums, a.bias, a.y, ...shape, a.quant, a.quantStride, xs],
      };
  }
}

/** out[m] = x[m] / rms(x[m]) x weight. With chunkStride, every chunk writes all rows at out + t x chunkStride. */
export function rmsNormJob(
  a: { x: number; weight: number; out: number; M: number; D: number; eps: number; chunkStride?: number },
): Job {
  return { kernel: "rmsNorm", args: [a.x, a.weight, a.out, a.M, a.D, a.eps, a.chunkStride ?? 0] };
}

/** gate = silu(gate) x up, [M, N]. */
export function siluMulJob(a: { gate: number; up: number; M: number; N: number }): Job {
  return { kernel: "siluMul", args: [a.gate, a.up, a.M, a.N] };
}

const FORMAT_CODES: Record<Exclude<WasmWeightFormat, "q8_0">, number> = { f32: 0, f16: 1, int8: 2 };

/** x rows = the table's rows of the M tokens (int32 at `tokens`). */
export function embedJob(
  a: { table: Matrix; format: WasmWeightFormat; tokens: number; x: number; M: number; D: number },
): Job {
  if (a.format === "q8_0") {
    return { kernel: "embedQ8", args: [a.table.at, a.table.scales, a.tokens, a.x, a.M, a.D, a.table.rows] };
  }
  return {
    kernel: "embed",
    args: [a.table.at, FORMAT_CODES[a.format], a.table.scales, a.tokens, a.x, a.M, a.D, a.table.rows],
  };
}

/** The KV cache's regions, as the kernels address them (see wasm/kv_cache.ts). */
export interface CacheAddresses {
  keys: number;
  values: number;
  positions: number;
  counts: number;
  /** Entries each slot has room for. */
  cap: number;
}

/** Rotates q and k of M rows, appends k and v to the layer's slots (slot0..) at positions pos0... */
export function ropeAppendJob(
  a: {
    q: number;
    k: number;
    v: number;
    M: number;
    nHeads: number;
    nKv: number;
    headDim: number;
    cos: number;
    sin: number;
    cache: CacheAddresses;
    slot0: number;
    pos0: number;
  },
): Job {
  const c = a.cache;
  return {
    kernel: "ropeAppend",
    args: [
      a.q,
      a.k,
      a.v,
      a.M,
      a.nHeads,
      a.nKv,
      a.headDim,
      a.cos,
      a.sin,
      c.keys,
      c.values,
      c.positions,
      c.counts,
      a.slot0,
      c.cap,
      a.pos0,
    ],
  };
}

/** Causal attention of M new rows over the layer's cached entries; with `mass`, their attention summed too. */
export function attentionJob(
  a: {
    q: number;
    out: number;
    M: number;
    nHeads: number;
    nKv: number;
    headDim: number;
    scale: number;
    cache: CacheAddresses;
    slot0: number;
    scratch: number;
    mass: number;
    massStride: number;
  },
): Job {
  const c = a.cache;
  return {
    kernel: "attention",
    args: [
      a.q,
      a.out,
      a.M,
      a.nHeads,
      a.nKv,
      a.headDim,
      a.scale,
      c.keys,
      c.values,
      c.counts,
      a.slot0,
      c.cap,
      a.scratch,
      a.mass,
      c.positions,
      a.massStride,
    ],
  };
}

/** Attention of R captured query rows over the cached prompt entries, summed into mass. */
export function attentionMassJob(
  a: {
    q: number;
    rowPositions: number;
    R: number;
    nLayers: number;
    nHeads: number;
    nKv: number;
    headDim: number;
    scale: number;
    cache: CacheAddresses;
    promptLength: number;
    mass: number;
    scratch: number;
  },
): Job {
  const c = a.cache;
  return {
    kernel: "attentionMass",
    args: [
      a.q,
      a.rowPositions,
      a.R,
      a.nLayers,
      a.nHeads,
      a.nKv,
      a.headDim,
      a.scale,
      c.keys,
      c.values,
      c.positions,
      c.counts,
      c.cap,
      a.promptLength,
      a.mass,
      a.scratch,
    ],
  };
}

/** L2 norms of the cached keys at prompt positions: out[slot][position]. */
export function keyNormsJob(
  a: { cache: CacheAddresses; slots: number; headDim: number; promptLength: number; out: number },
): Job {
  const c = a.cache;
  return {
    kernel: "keyNorms",
    args: [c.keys, c.positions, c.counts, a.slots, a.headDim, c.cap, a.promptLength, a.out],
  };
}
