/**
 * The WebAssembly executor's q8_0 weights: ggml's blocks of 32 int8 values with a scale each, laid out as
 * gemmQ8 reads them (wasm/assembly/kernels.ts): 3-row groups interleaved 16 bytes at a time, the last
 * N mod 3 rows row-major, the block scales (f32 holding the f16 values) in the same order in their own
 * array, and per row the offset term 2^20 sum_b d_b (sum of block b's values). A GGUF file's Q8_0 matrix
 * arrives with its values and scales as stored; any other matrix is quantized by ggml's rule
 * (core/gguf/quants.ts: d = max |x| / 127 stored as f16, q = round(x / d) with the f32 d).
 */
import { fail, type JudgeQError } from "../core/errors.ts";
import { expectedTensors, mapProjections, type ModelWeights, projectionMatrices } from "../core/weights.ts";
import { GGML_TYPE } from "../core/gguf/ggml_types.ts";
import { dequantize, quantizeQ8_0 } from "../core/gguf/quants.ts";
import { int8Layout } from "./row_groups.ts";

/** Values per block. */
export const Q8_BLOCK = 32;
/** Bytes of a GGUF Q8_0 block: the f16 scale, then 32 int8 values. */
const GGUF_BLOCK_BYTES = 34;

/** A matrix in blocks, row-major: q [rows, cols] and d [rows, cols / 32]. */
export interface Q8Blocks {
  rows: number;
  cols: number;
  q: Int8Array;
  d: Float32Array;
}

/** The blocks of GGUF Q8_0 bytes (rows of cols / 32 blocks of 34 bytes), values and scales unchanged. */
export function blocksOfGguf(bytes: Uint8Array, rows: number, cols: number): Q8Blocks {
  const kb = cols / Q8_BLOCK, q = new Int8Array(rows * cols), d = new Float32Array(rows * kb);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const signed = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let b = 0; b < rows * kb; b++) {
    const o = b * GGUF_BLOCK_BYTES;
    d[b] = view.getFloat16(o, true);
    q.set(signed.subarray(o + 2, o + GGUF_BLOCK_BYTES), b * Q8_BLOCK);
  }
  return { rows, cols, q, d };
}

/** Float rows quantized as ggml's quantize_row_q8_0 does (through the project's GGUF quantizer). */
export function quantizeBlocks(m: Float32Array, rows: number, cols: number): Q8Blocks {
  return blocksOfGguf(quantizeQ8_0(m), rows, cols);
}

/** The layout gemmQ8 reads: interleaved values, scales in the same order, and each row's offset term. */
export interface Q8Layout {
  bytes: Int8Array;
  scales: Float32Array;
  offsets: Float64Array;
}

export function layoutQ8(m: Q8Blocks): Q8Layout {
  const { rows, cols, q, d } = m, kb = cols / Q8_BLOCK, n3 = rows - rows % 3;
  // The values as int8's groups (whole blocks, so no row is padded); a group's three scales of a block side by side.
  const bytes = int8Layout(q, rows, cols), scales = new Float32Array(rows * kb);
  const offsets = new Float64Array(rows);
  for (let g = 0; g < n3; g += 3) {
    for (let r = 0; r < 3; r++) {
      for (let b = 0; b < kb; b++) scales[g * kb + 3 * b + r] = d[(g + r) * kb + b];
    }
  }
  scales.set(d.subarray(n3 * kb), n3 * kb);
  for (let n = 0; n < rows; n++) {
    let off = 0;
    for (let b = 0; b < kb; b++) {
      let sum = 0;
      for (let k = 0; k < Q8_BLOCK; k++) sum += q[n * cols + b * Q8_BLOCK + k];
      off += d[n * kb + b] * sum; // each term exact (an f16 value times |sum| <= 2^12), summed in block order
    }
    offsets[n] = off * 2 ** 20;
  }
  return { bytes, scales, offsets };
}

/** The first matrix whose rows are not whole blocks of 32, as an error naming it; null when all are. */
export function q8BlockError(w: ModelWeights): JudgeQError | null {
  const shapes = expectedTensors(w.config);
  for (const [name, t] of projectionMatrices(w)) {
    const cols = shapes.get(name)![1];
    if (cols % Q8_BLOCK !== 0 || t.length % cols !== 0) {
      return fail(
        "unprocessable",
        `q8_0 weights need rows of whole blocks of ${Q8_BLOCK} values; ${name} has rows of ${cols}`,
        "weights",
      );
    }
  }
  return null;
}

/**
 * Whether a GGUF file gave every layer's projection matrices as Q8_0 (its embedding and LM head may be
 * another type): "auto" then runs them as stored, a quarter of f32's bytes, rather than dequantized.
 */
export function storedAsQ8_0(w: ModelWeights): boolean {
  const stored = ggufQ8Sources(w);
  const layers = projectionMatrices(w).filter(([name]) => name.startsWith("model.layers."));
  return layers.length > 0 && layers.every(([, t]) => stored.has(t));
}

/** The GGUF file's Q8_0 matrices (ModelWeights.quantized), by the f32 array they were dequantized into. */
export function ggufQ8Sources(w: ModelWeights): Map<Float32Array, Uint8Array> {
  const out = new Map<Float32Array, Uint8Array>();
  if (!w.quantized) return out;
  for (const [name, t] of projectionMatrices(w)) {
    const given = w.quantized.get(name);
    if (given?.ggmlType === GGML_TYPE.Q8_0) out.set(t, given.bytes);
  }
  return out;
}

/** The weights a q8_0 executor computes with, as f32 (q x d): the reference runs these to compare. */
export function roundProjectionsToQ8_0(w: ModelWeights): ModelWeights {
  return mapProjections(w, (m) => dequantize(GGML_TYPE.Q8_0, quantizeQ8_0(m), m.length));
}
