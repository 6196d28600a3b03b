/**
 * A native session: one KV cache (native/kv_cache.ts) and the forward pass as one ggml graph per chunk of
 * rows: every projection one matrix product over the chunk, attention per KV head over that head's own
 * entries (flash attention, a mask only for causality and for heads holding fewer entries than the layer's
 * fullest), the new K/V written into the cache inside the same graph.
 */
import type { ModelConfig } from "../core/config.ts";
import { decodeTokens } from "../core/decode_loop.ts";
import type {
  CacheMark,
  CacheSnapshot,
  DecodeOptions,
  DecodeResult,
  ForwardInput,
  ForwardOptions,
  ForwardResult,
  KvSession,
  QueryRows,
} from "../core/executor.ts";
import { forwardRows } from "../core/executor.ts";
import { GraphBuilder, type Tensor } from "./graph.ts";
import { finishLayer, projectQkv } from "./layer.ts";
import { GGML_TYPE } from "./library.ts";
import type { NativeKvCache } from "./kv_cache.ts";
import type { NativeRuntime } from "./runtime.ts";

/**
 * Rows per graph of a prefill, with or without a scheduler's turns between graphs (the numbers of a graph
 * depend on its row count, so the chunking never changes with `between`).
 */
export const NATIVE_CHUNK_ROWS = 256;
/** Bytes of attention scores one scoring graph may hold (rows are chunked to stay under it). */
const SCORE_BYTES = 64 << 20;

const F16_ZERO = 0x0000, F16_NEG_INF = 0xfc00;

interface ForwardShape {
  n: number;
  input: "tokens" | "embeddings";
  logitRows: "all" | "last" | "none";
  capture: boolean;
  /** The cache layout the graph's views were made for. */
  generation: number;
  maskHeads: number[];
}

const sameShape = (a: ForwardShape, b: ForwardShape) =>
  a.n === b.n && a.input === b.input && a.logitRows === b.logitRows && a.capture === b.capture &&
  a.generation === b.generation && a.maskHeads.every((h, i) => h === b.maskHeads[i]);

/** A built forward graph and its tensors. */
interface ForwardGraph {
  b: GraphBuilder;
  shape: ForwardShape;
  x: Tensor;
  pos: Tensor;
  rows: Tensor[];
  masks: Tensor[];
  /** Per layer, the entries its attention spans (its masks' width). */
  widths: number[];
  queries: Tensor[];
  /** Per layer, the captured rows' summed attention [1, room, nH] (capturing graphs only). */
  mass: Tensor[];
  logits: Tensor | null;
  /** Its own allocator when kept, else null (the shared one). */
  allocator: Deno.PointerValue;
}

/**
 * The attention mass a capturing forward graph summed as it ran: per layer [nHeads][width] over the rows of
 * one graph, entry i of head h being entry i of its KV head's slot. Valid while the cache has lost no entry
 * since (its `removals` count unchanged): causality hides whatever was appended after.
 */
export interface FusedMass {
  removals: number;
  room: number[];
  layers: Float32Array[];
}

/** Post-RoPE queries of captured rows: per layer [rows][nHeads * headDim]; with their summed attention. */
export class NativeQueryRows implements QueryRows {
  constructor(
    readonly positions: number[],
    readonly layers: Float32Array[],
    readonly fused: FusedMass[] = [],
  ) {}
  dispose() {}
  static concat(parts: NativeQueryRows[], nLayers: number): NativeQueryRows {
    const positions = parts.flatMap((p) => p.positions);
    const layers = Array.from({ length: nLayers }, (_, l) => {
      const out = new Float32Array(parts.reduce((n, p) => n + p.layers[l].length, 0));
      let o = 0;
      for (const p of parts) out.set(p.layers[l], o), o += p.layers[l].length;
      return out;
    });
    return new NativeQueryRows(positions, layers, parts.flatMap((p) => p.fused));
  }
}

export class NativeSession implements KvSession {
  readonly config: ModelConfig;
  nextPosition = 0;
  private logits: Float32Array | null = null;
  /** The kept graph of a one-row step. */
  private step: ForwardGraph | null = null;

  constructor(readonly rt: NativeRuntime, readonly cache: NativeKvCache) {
    this.config = rt.config;
  }

  async forward(input: ForwardInput, options: ForwardOptions = {}): Promise<ForwardResult> {
    const c = this.config;
    const rows = forwardRows(input, c);
    const want = options.logits ?? "last";
    const chunk = NATIVE_CHUNK_ROWS;
    const all = want === "all" ? new Float32Array(rows * c.vocabSize) : null;
    const captured: NativeQueryRows[] = [];
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const n = Math.min(chunk, rows - r0);
      const last = r0 + n === rows;
      const part: ForwardInput = input.kind === "tokens"
        ? { kind: "tokens", tokens: input.tokens.slice(r0, r0 + n) }
        : { kind: "embeddings", rows: input.rows.subarray(r0 * c.dim, (r0 + n) * c.dim), count: n };
      const logitRows = want === "all" ? "all" : want === "last" && last ? "last" : "none";
      const out = await this.rt.exclusive(() =>
        this.runChunk(part, n, logitRows, options.captureQueries === true)
      );
      if (all && out.logits) all.set(out.logits, r0 * c.vocabSize);
      if (out.logits && last) {
        this.logits = logitRows === "all" ? out.logits.slice((n - 1) * c.vocabSize) : out.logits;
      }
      if (out.queries) captured.push(out.queries);
      if (options.between && !last) await options.between();
    }
    return {
      logits: want === "all" ? all : want === "last" ? this.logits : null,
      queries: options.captureQueries ? NativeQueryRows.concat(captured, c.nLayers) : null,
    };
  }

  /** One graph: `n` rows at nextPosition.., their K/V appended to every head. */
  private async runChunk(
    input: ForwardInput,
    n: number,
    logitRows: "all" | "last" | "none",
    capture: boolean,
  ): Promise<{ logits: Float32Array | null; queries: NativeQueryRows | null }> {
    const c = this.config, cache = this.cache, p0 = this.nextPosition;
    cache.reserve(n);
    const shape: ForwardShape = {
      n,
      input: input.kind,
      logitRows,
      capture,
      generation: cache.generation,
      maskHeads: Array.from({ length: c.nLayers }, (_, l) => this.sameCounts(l) ? 1 : c.nHeads),
    };
    // A decode step's graph is kept and run again while its shape holds (only its inputs change).
    const keep = n === 1;
    let f = keep && this.step && sameShape(this.step.shape, shape) ? this.step : null;
    if (!f) {
      if (keep) this.dropStep();
      f = this.build(shape, keep);
      if (keep) this.step = f;
    }
    try {
      const b = f.b;
      if (input.kind === "tokens") b.set(f.x, Int32Array.from(input.tokens));
      else b.set(f.x, input.rows.slice(0, n * c.dim));
      b.set(f.pos, Int32Array.from({ length: n }, (_, i) => p0 + i));
      for (let l = 0; l < c.nLayers; l++) {
        b.set(f.rows[l], this.appendRows(l, n));
        b.set(f.masks[l], this.forwardMask(l, n, shape.maskHeads[l], f.widths[l]));
      }
      await b.run(this.rt.threads);
      cache.appended(p0, n);
      this.nextPosition = p0 + n;
      const logitCount = logitRows === "all" ? n : logitRows === "last" ? 1 : 0;
      return {
        logits: f.logits ? b.readF32(f.logits, logitCount * c.vocabSize) : null,
        queries: capture
          ? new NativeQueryRows(
            Array.from({ length: n }, (_, i) => p0 + i),
            f.queries.map((t) => b.readF32(t, n * c.nHeads * c.headDim)),
            [{
              removals: cache.removals,
              room: [...f.widths],
              layers: f.mass.map((t, l) => b.readF32(t, f.widths[l] * c.nHeads)),
            }],
          )
          : null,
      };
    } finally {
      if (!keep) f.b.dispose();
    }
  }

  /** Whether every KV head of layer l holds as many entries (one mask row serves them all). */
  sameCounts(l: number): boolean {
    const s0 = this.cache.slot(l, 0), n = this.cache.counts[s0];
    for (let g = 1; g < this.config.nKvHeads; g++) if (this.cache.counts[s0 + g] !== n) return false;
    return true;
  }

  /**
   * The forward graph of a shape: every projection over the chunk's rows; K/V written into each head's
   * next free rows (`set_rows`, any per-head counts); attention over each layer's whole room, the mask
   * hiding what a head does not hold and what a row may not see yet. Allocated with the shared allocator,
   * or with one of its own when it is kept for reuse.
   */
  private build(shape: ForwardShape, keep: boolean): ForwardGraph {
    const c = this.config, w = this.rt.weights, cache = this.cache, hd = c.headDim, n = shape.n;
    const b = new GraphBuilder(this.rt.g, this.rt.graphSize);
    let x: Tensor, xIn: Tensor;
    if (shape.input === "tokens") {
      xIn = b.input(GGML_TYPE.i32, [n]);
      x = b.getRows(w.embed, xIn);
    } else {
      x = xIn = b.input(GGML_TYPE.f32, [c.dim, n]);
    }
    const pos = b.input(GGML_TYPE.i32, [n]);
    const eb = cache.elementBytes;
    const rows: Tensor[] = [], masks: Tensor[] = [], queries: Tensor[] = [], mass: Tensor[] = [];
    const widths: number[] = [];
    for (let l = 0; l < c.nLayers; l++) {
      const lw = w.layers[l], room = cache.room[l], rowBytes = hd * eb;
      const { q, k, v } = projectQkv(b, c, w, lw, x, pos, n);
      if (shape.capture) queries.push(b.output(q));
      const index = b.input(GGML_TYPE.i64, [c.nKvHeads * n]);
      rows.push(index);
      const flat = (t: Tensor) => b.reshape2d(t, hd, room * c.nKvHeads);
      b.expand(b.setRows(flat(cache.k[l]), b.reshape2d(k, hd, c.nKvHeads * n), index));
      b.expand(b.setRows(flat(cache.v[l]), b.reshape2d(v, hd, c.nKvHeads * n), index));
      // A kept step graph attends over the whole room (its shape holds while the cache grows into it); a
      // one-off graph only over what the fullest head will hold, so early prefill chunks skip the empty room.
      const width = keep ? room : Math.min(room, cache.most(l) + n);
      widths.push(width);
      const kAll = b.view3d(cache.k[l], hd, width, c.nKvHeads, rowBytes, room * rowBytes, 0);
      const vAll = b.view3d(cache.v[l], hd, width, c.nKvHeads, rowBytes, room * rowBytes, 0);
      const mask = b.input(GGML_TYPE.f16, [width, n, shape.maskHeads[l]]);
      masks.push(mask);
      let attn: Tensor;
      if (shape.capture) {
        // Captured rows are scored: the softmax rows themselves are needed, so attention is spelled out and
        // their sum over the rows comes from the same pass (no second one in attentionMass).
        const p = b.softMax(b.mulMat(kAll, b.permute(q, 0, 2, 1, 3)), mask, 1 / Math.sqrt(hd)); // [room, n, nH]
        const o = b.mulMat(b.cont(b.permute(vAll, 1, 0, 2, 3)), p); // [hd, n, nH]
        attn = b.cont(b.permute(o, 0, 2, 1, 3));
        mass.push(b.output(b.sumRows(b.cont(b.permute(p, 1, 0, 2, 3))))); // [1, room, nH]
      } else {
        attn = b.flashAttn(b.permute(q, 0, 2, 1, 3), kAll, vAll, mask, 1 / Math.sqrt(hd));
      }
      x = finishLayer(b, c, lw, x, b.reshape2d(attn, hd * c.nHeads, n));
    }
    let logits: Tensor | null = null;
    if (shape.logitRows !== "none") {
      const xs = shape.logitRows === "all" ? x : b.view2d(x, c.dim, 1, c.dim * 4, (n - 1) * c.dim * 4);
      logits = b.output(b.mulMat(w.lmHead, b.mul(b.rmsNorm(xs, c.rmsNormEps), w.finalNorm)));
    } else {
      b.output(x);
    }
    const allocator = keep ? this.rt.g.sym.ggml_gallocr_new(this.rt.g.bufferType) : this.rt.allocator;
    b.allocate(allocator);
    return {
      b,
      shape,
      x: xIn,
      pos,
      rows,
      masks,
      widths,
      queries,
      mass,
      logits,
      allocator: keep ? allocator : null,
    };
  }

  /** Destination rows (in the layer's [heads * room] rows) of the chunk's K/V: head g's next free rows. */
  appendRows(l: number, n: number): BigInt64Array {
    const c = this.config, cache = this.cache, room = cache.room[l];
    const out = new BigInt64Array(c.nKvHeads * n);
    for (let r = 0; r < n; r++) {
      for (let g = 0; g < c.nKvHeads; g++) {
        out[r * c.nKvHeads + g] = BigInt(g * room + cache.counts[cache.slot(l, g)] + r);
      }
    }
    return out;
  }

  /**
   * The f16 mask of layer l for `n` new rows: [width, n, heads] (width: the room, or the entries the fullest
   * head holds once the rows are in). A row sees every entry its head holds and the new rows up to itself
   * (cached entries all precede the new rows); the rest is -inf.
   */
  forwardMask(l: number, n: number, heads: number, width = this.cache.room[l]): Uint16Array {
    const c = this.config, cache = this.cache, room = width, group = c.nHeads / c.nKvHeads;
    const mask = new Uint16Array(room * n * heads).fill(F16_NEG_INF);
    for (let h = 0; h < heads; h++) {
      const had = cache.counts[cache.slot(l, Math.floor(h / group))];
      for (let r = 0; r < n; r++) {
        const row = (h * n + r) * room;
        mask.fill(F16_ZERO, row, row + had + r + 1);
      }
    }
    return mask;
  }

  private dropStep() {
    if (!this.step) return;
    this.step.b.dispose();
    if (this.step.allocator) this.rt.g.sym.ggml_gallocr_free(this.step.allocator);
    this.step = null;
  }

  /** Records a step run elsewhere (a batched graph): `n` rows appended at p0, the last row's logits. */
  stepped(p0: number, n: number, logits: Float32Array | null) {
    this.cache.appended(p0, n);
    this.nextPosition = p0 + n;
    if (logits) this.logits = logits;
  }

  attentionMass(queries: QueryRows, promptLength: number): Promise<Float32Array> {
    const rows = queries as NativeQueryRows;
    if (rows.fused.length > 0 && rows.fused.every((f) => f.removals === this.cache.removals)) {
      return Promise.resolve(this.fusedMass(rows.fused, promptLength));
    }
    return this.rt.exclusive(() => this.mass(rows, promptLength));
  }

  /** The mass the capturing graphs summed, by prompt position (entries have kept their indexes since). */
  private fusedMass(fused: FusedMass[], promptLength: number): Float32Array {
    const c = this.config, cache = this.cache, group = c.nHeads / c.nKvHeads;
    const acc = new Float64Array(c.nLayers * c.nHeads * promptLength);
    for (const f of fused) {
      for (let l = 0; l < c.nLayers; l++) {
        const room = f.room[l], sums = f.layers[l];
        for (let h = 0; h < c.nHeads; h++) {
          const slot = cache.slot(l, Math.floor(h / group)), kpos = cache.positions[slot];
          const base = (l * c.nHeads + h) * promptLength;
          const n = Math.min(room, cache.counts[slot]);
          for (let i = 0; i < n; i++) if (kpos[i] < promptLength) acc[base + kpos[i]] += sums[h * room + i];
        }
      }
    }
    return Float32Array.from(acc);
  }

  /** Softmax rows of the captured queries over each head's entries, summed over rows, by prompt position. */
  private async mass(rows: NativeQueryRows, promptLength: number): Promise<Float32Array> {
    const c = this.config, cache = this.cache, hd = c.headDim, group = c.nHeads / c.nKvHeads;
    const acc = new Float64Array(c.nLayers * c.nHeads * promptLength);
    const R = rows.positions.length;
    let most = 1;
    for (let l = 0; l < c.nLayers; l++) most = Math.max(most, cache.most(l));
    const chunk = Math.max(1, Math.min(R, Math.floor(SCORE_BYTES / (most * c.nHeads * 4 * 3))));
    const eb = cache.elementBytes;
    for (let r0 = 0; r0 < R; r0 += chunk) {
      const n = Math.min(chunk, R - r0);
      const b = new GraphBuilder(this.rt.g, this.rt.graphSize);
      try {
        const sums: { t: Tensor; most: number }[] = [];
        for (let l = 0; l < c.nLayers; l++) {
          const m = cache.most(l), room = cache.room[l];
          if (m === 0) {
            sums.push({ t: null, most: 0 });
            continue;
          }
          const qData = rows.layers[l].subarray(r0 * c.nHeads * hd, (r0 + n) * c.nHeads * hd).slice();
          const q = b.input(GGML_TYPE.f32, [hd, c.nHeads, n], qData);
          const k = b.view3d(cache.k[l], hd, m, c.nKvHeads, hd * eb, room * hd * eb, 0);
          const kq = b.mulMat(k, b.permute(q, 0, 2, 1, 3)); // [m, n, nHeads]
          const [ne, mask] = this.massMask(l, m, rows.positions.slice(r0, r0 + n));
          const p = b.softMax(kq, b.input(GGML_TYPE.f32, ne, mask), 1 / Math.sqrt(hd));
          sums.push({ t: b.output(b.sumRows(b.cont(b.permute(p, 1, 0, 2, 3)))), most: m }); // [1, m, nHeads]
        }
        await b.compute(this.rt.allocator, this.rt.threads);
        for (let l = 0; l < c.nLayers; l++) {
          const { t, most: m } = sums[l];
          if (!t) continue;
          const s = b.readF32(t, m * c.nHeads);
          for (let h = 0; h < c.nHeads; h++) {
            const slot = cache.slot(l, Math.floor(h / group)), kpos = cache.positions[slot];
            const base = (l * c.nHeads + h) * promptLength;
            for (let i = 0; i < cache.counts[slot]; i++) {
              if (kpos[i] < promptLength) acc[base + kpos[i]] += s[h * m + i];
            }
          }
        }
      } finally {
        b.dispose();
      }
    }
    return Float32Array.from(acc);
  }

  /** f32 mask [m, rows, 1 or nHeads]: entry i of a head is seen by a row at or after its position. */
  private massMask(l: number, m: number, qpos: number[]): [number[], Float32Array] {
    const c = this.config, cache = this.cache, group = c.nHeads / c.nKvHeads;
    const heads = cache.uniform(l) ? 1 : c.nHeads;
    const n = qpos.length;
    const mask = new Float32Array(m * n * heads).fill(-Infinity);
    for (let h = 0; h < heads; h++) {
      const slot = cache.slot(l, Math.floor(h / group)),
        kpos = cache.positions[slot],
        count = cache.counts[slot];
      for (let r = 0; r < n; r++) {
        const row = (h * n + r) * m;
        for (let i = 0; i < count && kpos[i] <= qpos[r]; i++) mask[row + i] = 0;
      }
    }
    return [[m, n, heads], mask];
  }

  keyNorms(promptLength: number): Promise<Float32Array> {
    const c = this.config, hd = c.headDim, cache = this.cache;
    const out = new Float32Array(c.nLayers * c.nKvHeads * promptLength);
    for (let l = 0; l < c.nLayers; l++) {
      const keys = this.layerF32(l, "k"), room = cache.room[l];
      for (let g = 0; g < c.nKvHeads; g++) {
        const slot = cache.slot(l, g), kpos = cache.positions[slot];
        for (let i = 0; i < cache.counts[slot]; i++) {
          if (kpos[i] >= promptLength) continue;
          let ss = 0;
          const o = (g * room + i) * hd;
          for (let d = 0; d < hd; d++) ss += keys[o + d] ** 2;
          out[slot * promptLength + kpos[i]] = Math.sqrt(ss);
        }
      }
    }
    return Promise.resolve(out);
  }

  /** Layer l's K or V as f32, [heads][room][headDim]. */
  private layerF32(l: number, which: "k" | "v"): Float32Array {
    const bytes = this.cache.read(l, which);
    if (this.cache.type === "f32") return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
    const out = new Float32Array(bytes.length / 2);
    this.rt.g.toFloat(GGML_TYPE.f16, bytes, out);
    return out;
  }

  keepPositions(kept: Int32Array[][], promptLength: number): Promise<void> {
    for (let l = 0; l < this.config.nLayers; l++) {
      const sets = kept[l].map((k) => new Set(k));
      this.cache.filterLayer(l, (g, p) => p >= promptLength || sets[g].has(p));
    }
    this.cache.trim();
    return Promise.resolve();
  }

  truncateFrom(position: number): Promise<void> {
    for (let l = 0; l < this.config.nLayers; l++) this.cache.filterLayer(l, (_g, p) => p < position);
    this.cache.trim();
    this.nextPosition = position;
    return Promise.resolve();
  }

  mark(): CacheMark {
    return { counts: this.cache.counts.slice(), nextPosition: this.nextPosition };
  }

  rewind(mark: CacheMark): Promise<void> {
    for (let s = 0; s < mark.counts.length; s++) {
      if (mark.counts[s] > this.cache.counts[s]) throw new Error("rewind: cache was pruned after the mark");
    }
    this.cache.setCounts(mark.counts);
    this.nextPosition = mark.nextPosition;
    return Promise.resolve();
  }

  async decode(o: DecodeOptions): Promise<DecodeResult> {
    if (!this.logits) throw new Error("decode: no current logits (run a forward pass first)");
    try {
      return await decodeTokens(o, {
        logits: () => this.logits!,
        feed: async (token, captureQueries) =>
          (await this.forward({ kind: "tokens", tokens: [token] }, { logits: "last", captureQueries }))
            .queries,
      }, (rows) => NativeQueryRows.concat(rows as NativeQueryRows[], this.config.nLayers));
    } finally {
      // The step graph and its buffers live through one decode: a kept, idle session holds only its cache.
      this.dropStep();
    }
  }

  currentLogits(): Promise<Float32Array> {
    if (!this.logits) return Promise.reject(new Error("no current logits"));
    return Promise.resolve(this.logits);
  }

  positions(): Promise<Int32Array[][]> {
    const c = this.config, cache = this.cache;
    return Promise.resolve(
      Array.from({ length: c.nLayers }, (_, l) =>
        Array.from({ length: c.nKvHeads }, (_, g) => {
          const s = cache.slot(l, g);
          return cache.positions[s].slice(0, cache.counts[s]);
        })),
    );
  }

  kvBytes(): number {
    return this.cache.entries() * this.config.headDim * 2 * this.cache.elementBytes;
  }

  allocatedBytes(): number {
    return this.cache.allocatedBytes() + (this.logits?.byteLength ?? 0);
  }

  reserveRoom(rows: number): Promise<void> {
    this.cache.reserveExact(rows);
    return Promise.resolve();
  }

  clone(): Promise<KvSession> {
    const copy = new NativeSession(this.rt, this.cache.clone());
    copy.nextPosition = this.nextPosition;
    copy.logits = this.logits;
    return Promise.resolve(copy);
  }

  exportCache(): Promise<CacheSnapshot> {
    const c = this.config, hd = c.headDim, cache = this.cache;
    const keys: Float32Array[] = [], values: Float32Array[] = [];
    const layers = Array.from(
      { length: c.nLayers },
      (_, l) => ({ k: this.layerF32(l, "k"), v: this.layerF32(l, "v") }),
    );
    for (let l = 0; l < c.nLayers; l++) {
      const room = cache.room[l];
      for (let g = 0; g < c.nKvHeads; g++) {
        const n = cache.counts[cache.slot(l, g)];
        keys.push(layers[l].k.slice(g * room * hd, (g * room + n) * hd));
        values.push(layers[l].v.slice(g * room * hd, (g * room + n) * hd));
      }
    }
    return Promise.resolve({
      nLayers: c.nLayers,
      nKvHeads: c.nKvHeads,
      headDim: hd,
      nextPosition: this.nextPosition,
      positions: cache.positions.map((p, s) => p.slice(0, cache.counts[s])),
      keys,
      values,
      logits: this.logits ? this.logits.slice() : null,
    });
  }

  /** Fills an empty session from a checked snapshot. */
  restoreFrom(snap: CacheSnapshot) {
    const c = this.config, hd = c.headDim, cache = this.cache;
    for (let s = 0; s < cache.counts.length; s++) cache.counts[s] = snap.positions[s].length;
    cache.positions = snap.positions.map((p) => Int32Array.from(p));
    cache.relayout(Int32Array.from({ length: c.nLayers }, (_, l) => cache.most(l)));
    for (let l = 0; l < c.nLayers; l++) {
      const room = cache.room[l];
      if (room === 0) continue;
      for (const which of ["k", "v"] as const) {
        const f32 = new Float32Array(room * c.nKvHeads * hd);
        for (let g = 0; g < c.nKvHeads; g++) {
          const s = cache.slot(l, g);
          f32.set((which === "k" ? snap.keys : snap.values)[s], g * room * hd);
        }
        cache.write(l, which, this.rt.encodeKv(f32, cache.type));
      }
    }
    this.nextPosition = snap.nextPosition;
    this.logits = snap.logits ? snap.logits.slice() : null;
  }

  dispose() {
    this.dropStep();
    this.cache.dispose();
  }
}
