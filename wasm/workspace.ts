/**
 * Scratch memory shared by an executor's sessions (they run one operation at a time): activations of
 * one chunk of rows, RoPE tables, and per dispatch chunk a weight panel (f32: 8 rows packed [K][8]
 * and 32 bytes; f16: 4 rows widened), the int8 GEMM's quantized input
 * rows and two rows of attention scores.
 */
import type { ModelConfig } from "../core/config.ts";
import { FORWARD_CHUNK_ROWS } from "../core/executor.ts";
import type { Arena } from "./arena.ts";

/** Prompt rows run through the layers together (blocked GEMM); longer inputs go in chunks. */
export const CHUNK_ROWS = FORWARD_CHUNK_ROWS;

/** Rows up to which each RMS norm runs in its GEMMs' dispatch, one copy per chunk (wasm/session.ts). */
export const NORM_ROWS = 4;

/** Input rows the int8 GEMM quantizes at a time (Q_ROWS in wasm/assembly/kernels.ts). */
const Q_ROWS = 16;

/** Bytes of one chunk's int8 scratch: Q_ROWS scales, then Q_ROWS rows of 3 bytes per input rounded up to 16. */
function quantStride(c: ModelConfig): number {
  const k = Math.max(c.dim, c.hiddenDim, c.nHeads * c.headDim);
  return Math.ceil((Q_ROWS * 4 + Q_ROWS * 3 * (Math.ceil(k / 16) * 16)) / 64) * 64;
}

/** Bytes of one chunk's weight panel: gemmF32's 8 packed rows and 32 bytes (gemmF16 uses 4 rows of it). */
function panelBytes(c: ModelConfig): number {
  return 32 * Math.max(c.dim, c.hiddenDim, c.nHeads * c.headDim) + 32;
}

function normedStride(c: ModelConfig): number {
  return Math.ceil(NORM_ROWS * c.dim * 4 / 64) * 64;
}

export class Workspace {
  readonly x: number;
  readonly xb: number;
  readonly q: number;
  readonly k: number;
  readonly v: number;
  readonly att: number;
  readonly gate: number;
  readonly up: number;
  readonly logits: number;
  readonly tokens: number;
  readonly cos: number;
  readonly sin: number;
  readonly panels: number;
  /** The int8 GEMM's per-chunk scratch, `quantStride` bytes apart. */
  readonly quant: number;
  readonly quantStride: number;
  /** Per chunk, NORM_ROWS normalized rows (a fused norm's copies), `normedStride` bytes apart. */
  readonly normed: number;
  readonly normedStride: number;
  private scoresAt = 0;
  private scoresCap = 0;
  private readonly scoreRows: number;

  constructor(private readonly arena: Arena, c: ModelConfig, private readonly chunks: number) {
    const rows = CHUNK_ROWS, qw = c.nHeads * c.headDim, kvw = c.nKvHeads * c.headDim;
    const f32 = (n: number) => arena.alloc(n * 4);
    this.x = f32(rows * c.dim);
    this.xb = f32(rows * c.dim);
    this.q = f32(rows * qw);
    this.k = f32(rows * kvw);
    this.v = f32(rows * kvw);
    this.att = f32(rows * qw);
    this.gate = f32(rows * c.hiddenDim);
    this.up = f32(rows * c.hiddenDim);
    this.logits = f32(rows * c.vocabSize);
    this.tokens = f32(rows);
    this.cos = f32(rows * c.headDim / 2);
    this.sin = f32(rows * c.headDim / 2);
    this.panels = arena.alloc(chunks * panelBytes(c));
    this.quantStride = quantStride(c);
    this.quant = arena.alloc(chunks * this.quantStride);
    this.normedStride = normedStride(c);
    this.normed = arena.alloc(chunks * this.normedStride);
    this.scoreRows = Math.max(2, c.nHeads / c.nKvHeads);
  }

  /** Bytes a workspace needs, for the memory check before anything is allocated. */
  static bytes(c: ModelConfig, chunks: number): number {
    const rows = CHUNK_ROWS, qw = c.nHeads * c.headDim, kvw = c.nKvHeads * c.headDim;
    return 4 * rows * (2 * c.dim + 2 * qw + 2 * kvw + 2 * c.hiddenDim + c.vocabSize + 1 + c.headDim) +
      chunks * (panelBytes(c) + quantStride(c) + normedStride(c));
  }

  /**
   * Attention score rows of `capacity` floats, per dispatch chunk two or, for a decoded row's GQA group
   * (kernel attendGroup), one per query head of the group.
   */
  scores(capacity: number): number {
    if (capacity > this.scoresCap) {
      if (this.scoresAt) this.arena.release(this.scoresAt);
      this.scoresAt = this.arena.alloc(this.chunks * capacity * 4 * this.scoreRows);
      this.scoresCap = capacity;
    }
    return this.scoresAt;
  }
}
