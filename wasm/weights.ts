/**
 * Model weights in the shared memory, as the kernels read them: norms and biases f32, projection and
 * embedding matrices f32, f16, int8 with one f32 scale per row (row-major [out, in], as in ModelWeights),
 * or q8_0 (ggml's blocks of 32 with a scale each, in gemmQ8's 3-row groups: wasm/q8_0.ts).
 */
import type { ModelConfig } from "../core/config.ts";
import { JudgeQError } from "../core/errors.ts";
import { beyondF16Error, mapProjections, type ModelWeights, tensorBeyondF16 } from "../core/weights.ts";
import {
  choiceList,
  isChoice,
  WASM_WEIGHT_CHOICES,
  type WasmWeightChoice,
  type WasmWeightFormat,
} from "../core/weight_formats.ts";
import { type Arena, MAX_BYTES } from "./arena.ts";
import { int8Layout, int8RowBytes } from "./row_groups.ts";
import { blocksOfGguf, ggufQ8Sources, layoutQ8, q8BlockError, quantizeBlocks, storedAsQ8_0 } from "./q8_0.ts";

/**
 * Address of a matrix in the arena, and of its row scales and row sums (int8; 0 otherwise). int8 rows are
 * readable 16 bytes past the matrix's end (the kernels read whole 16-byte groups).
 */
export interface Matrix {
  at: number;
  rows: number;
  cols: number;
  scales: number;
  /**
   * int8: each row's sum of its quantized values (i32), which takes the activations' offset back out.
   * q8_0: each row's offset term, 2^20 sum_b d_b (sum of block b's values), f64.
   */
  sums: number;
}

export interface LayerPointers {
  attnNorm: number;
  wq: Matrix;
  wk: Matrix;
  wv: Matrix;
  bq: number;
  bk: number;
  bv: number;
  wo: Matrix;
  mlpNorm: number;
  wGate: Matrix;
  wUp: Matrix;
  wDown: Matrix;
}

export interface WasmWeights {
  format: WasmWeightFormat;
  embed: Matrix;
  lmHead: Matrix;
  finalNorm: number;
  layers: LayerPointers[];
  bytes: number;
}

/**
 * "auto" is f32 (the reference's arithmetic), or q8_0 for a GGUF file whose layers are Q8_0 (run as stored,
 * not dequantized to four times the bytes); f16 halves the weight bytes, int8 (a scale per row,
 * max |w| / 127) quarters them: decoding streams every weight once per token. q8_0 (a scale per block of
 * 32, ggml's) keeps a GGUF file's Q8_0 values as stored; its rows must be whole blocks.
 */
export function resolveWeightFormat(choice: WasmWeightChoice, w: ModelWeights): WasmWeightFormat {
  if (!isChoice(WASM_WEIGHT_CHOICES, choice)) {
    const expected = choiceList(WASM_WEIGHT_CHOICES);
    throw new JudgeQError("invalid_request", `expected ${expected}, got '${choice}'`, "weights");
  }
  if (choice === "int8") return "int8";
  if (choice === "auto" && storedAsQ8_0(w) && !q8BlockError(w)) return "q8_0";
  if (choice === "q8_0") {
    const e = q8BlockError(w);
    if (e) throw e;
    return "q8_0";
  }
  if (choice !== "f16") return "f32";
  const beyond = tensorBeyondF16(w);
  if (beyond) throw beyondF16Error(beyond, "weights");
  return "f16";
}

/** Bytes the weights take in a format, computed from the config alone (before anything is allocated). */
export function weightBytes(c: ModelConfig, format: WasmWeightFormat): number {
  // q8_0: a byte per value and an f32 scale per 32 of them.
  const e = format === "f16" ? 2 : format === "int8" ? 1 : format === "q8_0" ? 1.125 : 4,
    q = c.nHeads * c.headDim,
    kv = c.nKvHeads * c.headDim;
  // int8 rows are padded to 16 bytes.
  const row = (cols: number) => (format === "int8" ? int8RowBytes(cols) : cols);
  // int8: a scale and a sum per row; q8_0: an offset term per row.
  const scales = format === "int8" || format === "q8_0" ? 8 : 0;
  // Rows x stored row length of wq, wk, wv ([q | kv, dim]), wo ([dim, q]), gate, up ([hidden, dim]), down.
  const perLayer = e * ((q + 2 * kv + 2 * c.hiddenDim) * row(c.dim) + c.dim * (row(q) + row(c.hiddenDim))) +
    scales * (q + 2 * kv + c.dim + 2 * c.hiddenDim + c.dim) +
    4 * (2 * c.dim + (c.attentionBias ? q + 2 * kv : 0));
  const tables = (e * row(c.dim) + scales) * c.vocabSize * (c.tiedEmbeddings ? 1 : 2);
  return c.nLayers * perLayer + tables + 4 * c.dim;
}

/** Throws, naming the model, when weights plus the given working bytes cannot fit 4 GiB of wasm32 memory. */
export function checkFits(c: ModelConfig, format: WasmWeightFormat, working: number) {
  const need = weightBytes(c, format) + working;
  if (need > MAX_BYTES) {
    const gib = (need / 2 ** 30).toFixed(2);
    throw new JudgeQError(
      "unprocessable",
      `the model needs ${gib} GiB with ${format} weights, beyond the 4 GiB a WebAssembly memory can address` +
        (format === "f32" ? " (try f16 weights)" : ""),
      "model",
    );
  }
}

export function uploadWeights(arena: Arena, w: ModelWeights, format: WasmWeightFormat): WasmWeights {
  const start = arena.size;
  const gguf = format === "q8_0" ? ggufQ8Sources(w) : null;
  const vector = (v: Float32Array): number => {
    const at = arena.alloc(v.length * 4);
    arena.f32.set(v, at / 4);
    return at;
  };
  const matrix = (m: Float32Array, rows: number, cols: number): Matrix => {
    if (format === "f32") return { at: vector(m), rows, cols, scales: 0, sums: 0 };
    if (gguf) {
      const stored = gguf.get(m);
      const l = layoutQ8(stored ? blocksOfGguf(stored, rows, cols) : quantizeBlocks(m, rows, cols));
      const at = arena.alloc(l.bytes.length);
      new Int8Array(arena.memory.buffer, at, l.bytes.length).set(l.bytes);
      const offsets = arena.alloc(rows * 8);
      new Float64Array(arena.memory.buffer, offsets, rows).set(l.offsets);
      return { at, rows, cols, scales: vector(l.scales), sums: offsets };
    }
    if (format === "int8") {
      const { q, scales } = quantizeRows(m, rows, cols);
      const stored = int8Layout(q, rows, cols);
      const at = arena.alloc(stored.length);
      new Int8Array(arena.memory.buffer, at, stored.length).set(stored);
      const sums = arena.alloc(rows * 4);
      arena.i32.set(rowSums(q, rows, cols), sums / 4);
      return { at, rows, cols, scales: vector(scales), sums };
    }
    const at = arena.alloc(m.length * 2);
    arena.u16.set(new Uint16Array(new Float16Array(m).buffer), at / 2);
    return { at, rows, cols, scales: 0, sums: 0 };
  };
  const c = w.config, q = c.nHeads * c.headDim, kv = c.nKvHeads * c.headDim;
  const embed = matrix(w.embed, c.vocabSize, c.dim);
  const layers = w.layers.map((l) => ({
    attnNorm: vector(l.attnNorm),
    wq: matrix(l.wq, q, c.dim),
    wk: matrix(l.wk, kv, c.dim),
    wv: matrix(l.wv, kv, c.dim),
    bq: l.bq ? vector(l.bq) : 0,
    bk: l.bk ? vector(l.bk) : 0,
    bv: l.bv ? vector(l.bv) : 0,
    wo: matrix(l.wo, c.dim, q),
    mlpNorm: vector(l.mlpNorm),
    wGate: matrix(l.wGate, c.hiddenDim, c.dim),
    wUp: matrix(l.wUp, c.hiddenDim, c.dim),
    wDown: matrix(l.wDown, c.dim, c.hiddenDim),
  }));
  const finalNorm = vector(w.finalNorm);
  const lmHead = w.lmHead === w.embed ? embed : matrix(w.lmHead, c.vocabSize, c.dim);
  return { format, embed, lmHead, finalNorm, layers, bytes: arena.size - start };
}

/** Each row's sum of its int8 values. */
export function rowSums(q: Int8Array, rows: number, cols: number): Int32Array {
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let k = 0; k < cols; k++) s += q[r * cols + k];
    out[r] = s;
  }
  return out;
}

/** Symmetric int8 per row: scale = max |w| / 127, q = round(w / scale). */
export function quantizeRows(
  m: Float32Array,
  rows: number,
  cols: number,
): { q: Int8Array; scales: Float32Array } {
  const q = new Int8Array(m.length), scales = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let max = 0;
    for (let k = 0; k < cols; k++) max = Math.max(max, Math.abs(m[r * cols + k]));
    const s = Math.fround(max / 127) || 1;
    scales[r] = s;
    for (let k = 0; k < cols; k++) {
      q[r * cols + k] = Math.max(-127, Math.min(127, Math.round(m[r * cols + k] / s)));
    }
  }
  return { q, scales };
}

/** The weights an int8 executor computes with, as f32 (q x scale): the reference runs these to compare. */
export function roundProjectionsToInt8(w: ModelWeights): ModelWeights {
  return mapProjections(w, (m, cols) => {
    const { q, scales } = quantizeRows(m, m.length / cols, cols);
    return Float32Array.from(q, (v, i) => v * scales[Math.floor(i / cols)]);
  });
}
