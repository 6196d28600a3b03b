/**
 * The forward pass of one session, encoded into a Recorder like run.c's forward(): embed the tokens,
 * run every layer (norm, QKV projection with RoPE and the cache write, attention, output projection,
 * norm, SwiGLU MLP), then the final norm and the LM head. Rows are processed in place in the session's
 * activation buffers; prefill records many rows per dispatch, decode one.
 */
import type { ModelConfig } from "../core/config.ts";
import { emptyBuffer, STORAGE } from "./buffers.ts";
import { MAX_SPLITS } from "./kernels/attention.ts";
import type { ByRows } from "./kernels/compile.ts";
import { PREFILL_TR } from "./kernels/common.ts";
import type { GpuKvCache } from "./kv_cache.ts";
import type { GpuModel } from "./model.ts";
import type { ParamRecords, Recorder } from "./recorder.ts";
import type { Chunk } from "./weights.ts";

/** Rows up to which attention uses the split (decode) kernels rather than the row-parallel one. */
export const SPLIT_ROWS = 4;

/** Where captured queries go: layer l's rows land at rows [row, row + rows) of a [layer][stride] array. */
export interface QueryCapture {
  buf: GPUBuffer;
  stride: number;
  row: number;
}

interface LayerGroups {
  /** Separate RMSNorms (x -> xn) before the attention and the MLP; null when fused into the projections. */
  attnNorm: GPUBindGroup | null;
  mlpNorm: GPUBindGroup | null;
  qkv: GPUBindGroup[];
  attn: GPUBindGroup;
  partial: GPUBindGroup;
  o: GPUBindGroup[];
  ffn: GPUBindGroup[];
  down: GPUBindGroup[];
}

interface Groups {
  key: string;
  embed: GPUBindGroup[];
  layers: LayerGroups[];
  lm: GPUBindGroup[];
  finalNorm: GPUBindGroup | null;
  combine: GPUBindGroup;
}

export class ForwardPass {
  /** Rows per prefill chunk (the activation buffers' height). */
  readonly chunk: number;
  /** The residual stream, [chunk][dim]. */
  readonly x: GPUBuffer;
  /** Normalized rows of x, the projections' input when the norm is a separate dispatch (else x itself). */
  readonly xn: GPUBuffer;
  /** Post-RoPE queries, attention output, MLP hidden rows. */
  readonly q: GPUBuffer;
  readonly att: GPUBuffer;
  readonly h: GPUBuffer;
  /** Logits rows (the LM head writes row outRow + r). */
  readonly logits: GPUBuffer;
  /** Input token ids (prefill) and sampled ids (decode, one per step). */
  readonly toks: GPUBuffer;
  /** Decode attention's partial softmax states. */
  private readonly partML: GPUBuffer;
  private readonly partO: GPUBuffer;
  private readonly config: ModelConfig;
  private groups: Groups | null = null;

  constructor(
    private readonly model: GpuModel,
    private readonly records: ParamRecords,
    private readonly cache: GpuKvCache,
    o: { capacity: number; logitsRows: number; tokens: number },
  ) {
    const c = model.config, d = model.device, qd = c.nHeads * c.headDim;
    this.config = c;
    this.chunk = Math.min(model.options.prefillChunk, o.capacity);
    this.x = emptyBuffer(d, this.chunk * c.dim * 4, STORAGE, "x");
    this.xn = model.separateNorm ? emptyBuffer(d, this.chunk * c.dim * 4, STORAGE, "xn") : this.x;
    this.q = emptyBuffer(d, this.chunk * qd * 4, STORAGE, "q");
    this.att = emptyBuffer(d, this.chunk * qd * 4, STORAGE, "att");
    this.h = emptyBuffer(d, this.chunk * c.hiddenDim * 4, STORAGE, "h");
    this.logits = emptyBuffer(d, o.logitsRows * c.vocabSize * 4, STORAGE, "logits");
    this.toks = emptyBuffer(d, o.tokens * 4, STORAGE, "tokens");
    const parts = SPLIT_ROWS * c.nHeads * MAX_SPLITS;
    this.partML = emptyBuffer(d, parts * 8, STORAGE, "attn-ml");
    this.partO = emptyBuffer(d, parts * c.headDim * 4, STORAGE, "attn-o");
  }

  /** Bytes of this pass's own buffers (activations of one chunk, logits rows, token ids, attention partials). */
  bytes(): number {
    const own = [this.x, this.q, this.att, this.h, this.logits, this.toks, this.partML, this.partO];
    if (this.xn !== this.x) own.push(this.xn);
    return own.reduce((n, b) => n + b.size, 0);
  }

  // ---- the pass, top to bottom --------------------------------------------------------------

  /** One whole pass over `rows` rows: embed (unless x already holds them), layers, LM head. */
  encode(
    rec: Recorder,
    off: number,
    rows: number,
    o: { embedded?: boolean; capture: QueryCapture | null; splits: number; lmHead: boolean },
  ) {
    if (!o.embedded) this.encodeEmbed(rec, off, rows);
    this.encodeLayers(rec, off, rows, o.capture, o.splits);
    if (o.lmHead) this.encodeLmHead(rec, this.bindings().lm, off, rows);
  }

  /** 1. Embedding: x[r] = embed[token r], one dispatch per chunk of the table. */
  encodeEmbed(rec: Recorder, off: number, rows: number) {
    const k = this.model.kernels.embed;
    for (const group of this.bindings().embed) {
      rec.dispatch(k, group, off, Math.ceil(this.config.dim / k.workgroupSize), rows);
    }
  }

  /** 2. Every layer over `rows` rows in x; optionally copies each layer's queries out. */
  encodeLayers(rec: Recorder, off: number, rows: number, capture: QueryCapture | null, splits: number) {
    const k = this.model.kernels, c = this.config, w = this.model.weights, g = this.bindings();
    const qBytes = c.nHeads * c.headDim * 4;
    for (let l = 0; l < c.nLayers; l++) {
      const lw = w.layers[l], lg = g.layers[l];
      // 2a. Attention norm (when not fused into the projection), then QKV: bias, RoPE, K/V into the cache.
      if (lg.attnNorm) rec.dispatch(k.rmsNorm, lg.attnNorm, off, rows);
      this.matmul(rec, k.mm.qkv, lg.qkv, lw.qkv.chunks, off, rows);
      if (capture) {
        rec.copy(this.q, 0, capture.buf, (l * capture.stride + capture.row) * qBytes, rows * qBytes);
      }
      // 2b. Causal attention over each head's cached entries: split over entries for a few rows
      // (decode), one invocation per (row, head) otherwise (prefill).
      if (rows <= SPLIT_ROWS) {
        const groups = Math.ceil((c.nKvHeads * splits) / k.attnPartial.workgroupSize);
        rec.dispatch(k.attnPartial, lg.partial, off, groups, rows);
        rec.dispatch(k.attnCombine, g.combine, off, Math.ceil((c.nHeads * c.headDim) / 4 / 64), rows);
      } else rec.dispatch(k.attnRows, lg.attn, off, Math.ceil(rows / k.attnRows.workgroupSize), c.nHeads);
      // 2c. Output projection, added to the residual stream.
      this.matmul(rec, k.mm.o, lg.o, lw.o.chunks, off, rows);
      // 2d. MLP norm, then h = silu(x W_gate) * (x W_up), then x += h W_down.
      if (lg.mlpNorm) rec.dispatch(k.rmsNorm, lg.mlpNorm, off, rows);
      this.matmul(rec, k.mm.swiglu, lg.ffn, lw.gate.chunks, off, rows);
      this.matmul(rec, k.mm.down, lg.down, lw.down.chunks, off, rows);
    }
  }

  /** 3. Final norm (when separate) and the LM head over `rows` rows from the record's rowStart. */
  encodeLmHead(rec: Recorder, lm: GPUBindGroup[], off: number, rows: number) {
    const g = this.bindings(), k = this.model.kernels;
    if (g.finalNorm) rec.dispatch(k.rmsNorm, g.finalNorm, off, rows);
    this.matmul(rec, k.mm.lm, lm, this.model.weights.lmHead.chunks, off, rows);
  }

  /** Entry splits of the decode attention: about 32 entries each for the longest head plus `extra` rows. */
  splits(extra: number): number {
    return Math.max(1, Math.min(MAX_SPLITS, Math.ceil((this.cache.maxCount() + extra) / 32)));
  }

  /** A projection: one dispatch per weight chunk, TR rows per invocation. */
  private matmul(
    rec: Recorder,
    kernels: ByRows,
    groups: GPUBindGroup[],
    chunks: Chunk[],
    off: number,
    rows: number,
  ) {
    const tr = rows > 1 ? PREFILL_TR : 1;
    const kernel = kernels[tr];
    for (let i = 0; i < chunks.length; i++) {
      const columnGroups = Math.ceil(chunks[i].n / 4 / kernel.workgroupSize);
      rec.dispatch(kernel, groups[i], off, Math.ceil(rows / tr), columnGroups);
    }
  }

  // ---- bind groups ----------------------------------------------------------------------------

  /** The LM head's bind groups writing logits into `out` (the session's logits, or an "all" chunk). */
  lmGroups(out: GPUBuffer): GPUBindGroup[] {
    const w = this.model.weights;
    return w.lmHead.chunks.map((ch) =>
      this.records.bind(this.model.kernels.mm.lm[1], {
        S: ch.info,
        W: ch.buffer,
        X: this.xn,
        OUT: out,
        G: w.finalNorm,
      })
    );
  }

  /** Bind groups of the whole pass, rebuilt when the cache's buffers or the RoPE table are replaced. */
  private bindings(): Groups {
    const key = `${this.cache.version}:${this.model.ropeVersion}`;
    if (this.groups?.key === key) return this.groups;
    const m = this.model, k = m.kernels, w = m.weights, cache = this.cache;
    const bind = this.records.bind.bind(this.records);
    const norm = (G: GPUBuffer) => (m.separateNorm ? bind(k.rmsNorm, { X: this.x, G, XN: this.xn }) : null);
    const layers = w.layers.map((lw, l): LayerGroups => {
      const kv = { KC: cache.keys(l), VC: cache.values(l), META: cache.meta, S: lw.info, Q: this.q };
      return {
        attnNorm: norm(lw.attnNorm),
        mlpNorm: norm(lw.mlpNorm),
        qkv: lw.qkv.chunks.map((ch) =>
          bind(k.mm.qkv[1], {
            ...kv,
            S: ch.info,
            W: ch.buffer,
            X: this.xn,
            OUT: this.q,
            G: lw.attnNorm,
            BIAS: lw.qkvBias,
            ROPE: m.rope,
          })
        ),
        attn: bind(k.attnRows, { ...kv, OUT: this.att }),
        partial: bind(k.attnPartial, { ...kv, PML: this.partML, PO: this.partO }),
        o: lw.o.chunks.map((ch) => bind(k.mm.o[1], { S: ch.info, W: ch.buffer, X: this.att, OUT: this.x })),
        ffn: lw.gate.chunks.map((ch, i) =>
          bind(k.mm.swiglu[1], {
            S: ch.info,
            W: ch.buffer,
            W2: lw.up.chunks[i].buffer,
            X: this.xn,
            OUT: this.h,
            G: lw.mlpNorm,
          })
        ),
        down: lw.down.chunks.map((ch) =>
          bind(k.mm.down[1], { S: ch.info, W: ch.buffer, X: this.h, OUT: this.x })
        ),
      };
    });
    this.groups = {
      key,
      embed: w.embed.chunks.map((ch) =>
        bind(k.embed, { S: ch.info, E: ch.buffer, TOK: this.toks, X: this.x })
      ),
      layers,
      lm: this.lmGroups(this.logits),
      finalNorm: norm(w.finalNorm),
      combine: bind(k.attnCombine, { PML: this.partML, PO: this.partO, OUT: this.att }),
    };
    return this.groups;
  }

  dispose() {
    for (const b of [this.x, this.q, this.att, this.h, this.logits, this.toks, this.partML, this.partO]) {
      b.destroy();
    }
    if (this.xn !== this.x) this.xn.destroy();
  }
}
