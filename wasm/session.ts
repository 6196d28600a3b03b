/**
 * A session of the fast CPU executor: one KV cache in the shared memory (per layer and KV head, its own
 * compacting list of entries) and the forward pass over chunks of rows, as dispatches of kernels.
 */
import { ropeInverseFrequencies } from "../core/config.ts";
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
import { decodeTokens } from "../core/decode_loop.ts";
import type { Arena } from "./arena.ts";
import type { Job, ThreadPool } from "./pool.ts";
import type { Matrix, WasmWeights } from "./weights.ts";
import { CHUNK_ROWS, type Workspace } from "./workspace.ts";
import type { ModelConfig } from "../core/config.ts";
import { CpuKvCache } from "../core/cpu/kv_cache.ts";

/** Captured post-RoPE queries: [row][layer][nHeads x headDim]. */
export class WasmQueryRows implements QueryRows {
  constructor(
    readonly positions: number[],
    readonly data: Float32Array,
    /** Their attention mass, summed by the forward pass that captured them (see `attentionMass`). */
    readonly fused: FusedMass | null = null,
  ) {}
  dispose() {}
}

/**
 * Captured rows' attention summed during their own forward pass: [layer][query head][position < stride],
 * valid for the session that made it while its cache has not been pruned, cut or rewound since.
 */
interface FusedMass {
  mass: Float32Array;
  stride: number;
  owner: WasmSession;
  version: number;
}

/** What a session needs of its executor. */
export interface SessionContext {
  config: ModelConfig;
  arena: Arena;
  pool: ThreadPool;
  weights: WasmWeights;
  workspace: Workspace;
  /** Whether the model is big enough to wake the workers for. */
  parallel: boolean;
}

/**
 * The KV cache's regions: keys and values [slot][stride][headDim], positions [slot][stride], counts [slot].
 * `stride` (entries each slot has room for) grows on demand up to the session's capacity and is cut back to
 * the fullest slot after pruning, so a compressed cache allocates what it keeps, not its capacity.
 */
interface CacheRegions {
  keys: number;
  values: number;
  positions: number;
  counts: number;
}

export class WasmSession implements KvSession {
  readonly config: ModelConfig;
  nextPosition = 0;
  private logits: Float32Array | null = null;
  private readonly invFreq: Float64Array;
  private readonly slots: number;
  private cache: CacheRegions | null;
  /** Entries each slot has room for (the kernels' `cap`). */
  private stride: number;
  /** Bumped whenever entries leave the cache (prune, cut, rewind): fused masses before it are stale. */
  private version = 0;

  /** `stride`: the room each slot starts with (a clone starts with its source's). */
  constructor(
    private readonly x: SessionContext,
    readonly capacity: number,
    stride = Math.min(capacity, 16),
  ) {
    const c = x.config;
    this.config = c;
    this.invFreq = ropeInverseFrequencies(c);
    this.slots = c.nLayers * c.nKvHeads;
    this.stride = stride;
    this.cache = { ...this.allocEntries(this.stride), counts: x.arena.alloc(this.slots * 4) };
    x.arena.i32.fill(0, this.cache.counts / 4, this.cache.counts / 4 + this.slots);
  }

  private allocEntries(stride: number) {
    const entries = this.slots * stride, a = this.x.arena;
    return {
      keys: a.alloc(entries * this.config.headDim * 4),
      values: a.alloc(entries * this.config.headDim * 4),
      positions: a.alloc(entries * 4),
    };
  }

  /** Moves every slot's entries into regions of `stride` entries per slot. */
  private relayout(stride: number) {
    const from = this.regions(), to = this.allocEntries(stride), a = this.x.arena, hd = this.config.headDim;
    const counts = this.counts();
    for (let s = 0; s < this.slots; s++) {
      const n = counts[s], src = s * this.stride, dst = s * stride;
      a.f32.copyWithin(to.keys / 4 + dst * hd, from.keys / 4 + src * hd, from.keys / 4 + (src + n) * hd);
      a.f32.copyWithin(
        to.values / 4 + dst * hd,
        from.values / 4 + src * hd,
        from.values / 4 + (src + n) * hd,
      );
      a.i32.copyWithin(to.positions / 4 + dst, from.positions / 4 + src, from.positions / 4 + src + n);
    }
    a.release(from.keys);
    a.release(from.values);
    a.release(from.positions);
    this.cache = { ...to, counts: from.counts };
    this.stride = stride;
  }

  /** Room for `rows` more entries in every slot (a RangeError past capacity); grows by half again at least. */
  private reserve(rows: number) {
    const need = Math.max(...this.counts()) + rows;
    if (need > this.capacity) {
      throw new RangeError(`KV cache full: capacity ${this.capacity} positions per head`);
    }
    if (need > this.stride) {
      this.relayout(Math.min(this.capacity, Math.max(need, Math.ceil(this.stride * 1.5))));
    }
  }

  /** Frees the room no slot uses. */
  private trim() {
    const most = Math.max(1, ...this.counts());
    if (most < this.stride) this.relayout(most);
  }

  private regions(): CacheRegions {
    if (!this.cache) throw new Error("session disposed");
    return this.cache;
  }

  /** Entry counts per slot, a live view. */
  private counts(): Int32Array {
    return this.x.arena.i32.subarray(this.regions().counts / 4, this.regions().counts / 4 + this.slots);
  }

  private run(jobs: Job[], work: number) {
    this.x.pool.run(jobs, this.x.parallel ? work : 0);
  }

  private gemm(w: Matrix, x: number, bias: number, y: number, M: number, acc: boolean): Job {
    const shape = [M, w.rows, w.cols, w.rows, acc ? 1 : 0];
    switch (this.x.weights.format) {
      case "f32":
        return { kernel: "gemmF32", args: [x, w.at, bias, y, ...shape] };
      case "f16":
        return { kernel: "gemmF16", args: [x, w.at, bias, y, ...shape, this.x.workspace.panels] };
      case "int8":
        return {
          kernel: "gemmI8",
          args: [
            x,
            w.at,
            w.scales,
            w.sums,
            bias,
            y,
            ...shape,
            this.x.workspace.quant,
            this.x.workspace.quantStride,
          ],
        };
    }
  }

  async forward(input: ForwardInput, options: ForwardOptions = {}): Promise<ForwardResult> {
    const c = this.config;
    const rows = input.kind === "tokens" ? input.tokens.length : input.count;
    if (input.kind === "tokens") {
      for (const t of input.tokens) {
        if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) {
          throw new RangeError(`token id ${t} out of range`);
        }
      }
    } else if (input.rows.length < rows * c.dim) {
      throw new RangeError(`embeddings: ${input.rows.length} values for ${rows} rows of ${c.dim}`);
    }
    this.reserve(rows);
    if (this.x.parallel) await this.x.pool.ready();
    const cache = this.regions();
    const want = options.logits ?? "last";
    const all = want === "all" ? new Float32Array(rows * c.vocabSize) : null;
    const qw = c.nHeads * c.headDim;
    const captured = options.captureQueries ? new Float32Array(rows * c.nLayers * qw) : null;
    const firstPosition = this.nextPosition;
    // Captured rows (Judge Q's soft rows, scoring windows, H2O's chunks) have their attention summed by
    // the forward pass itself, so scoring them needs no second pass over the keys.
    const stride = this.nextPosition + rows, massLength = c.nLayers * c.nHeads * stride;
    const mass = captured && rows > 1 ? this.x.arena.alloc(massLength * 4) : 0;
    try {
      if (mass) this.x.arena.f32.fill(0, mass / 4, mass / 4 + massLength);
      for (let r0 = 0; r0 < rows; r0 += CHUNK_ROWS) {
        const M = Math.min(CHUNK_ROWS, rows - r0);
        this.loadRows(input, r0, M);
        this.layers(M, cache, captured, r0, mass, stride);
        if (all) all.set(this.logitsOf(0, M), r0 * c.vocabSize);
        else if (want === "last" && r0 + M === rows) this.logits = this.logitsOf(M - 1, 1);
        this.nextPosition += M;
        if (options.between && r0 + M < rows) await options.between();
      }
      if (all && rows > 0) this.logits = all.slice((rows - 1) * c.vocabSize);
      const positions = Array.from({ length: rows }, (_, i) => firstPosition + i);
      const fused = mass
        ? { mass: this.x.arena.f32At(mass, massLength).slice(), stride, owner: this, version: this.version }
        : null;
      return {
        logits: want === "all" ? all : want === "last" ? this.logits : null,
        queries: captured ? new WasmQueryRows(positions, captured, fused) : null,
      };
    } finally {
      if (mass) this.x.arena.release(mass);
    }
  }

  /** Input rows r0..r0+M into the workspace's x, and their RoPE angles. */
  private loadRows(input: ForwardInput, r0: number, M: number) {
    const c = this.config, ws = this.x.workspace, a = this.x.arena;
    if (input.kind === "tokens") {
      a.i32.set(input.tokens.slice(r0, r0 + M), ws.tokens / 4);
      const e = this.x.weights.embed, format = ["f32", "f16", "int8"].indexOf(this.x.weights.format);
      this.run([{ kernel: "embed", args: [e.at, format, e.scales, ws.tokens, ws.x, M, c.dim] }], 0);
    } else {
      a.f32.set(input.rows.subarray(r0 * c.dim, (r0 + M) * c.dim), ws.x / 4);
    }
    const half = c.headDim / 2, cos = a.f32At(ws.cos, M * half), sin = a.f32At(ws.sin, M * half);
    for (let m = 0; m < M; m++) {
      const pos = this.nextPosition + m;
      for (let i = 0; i < half; i++) {
        const angle = pos * this.invFreq[i];
        cos[m * half + i] = Math.cos(angle);
        sin[m * half + i] = Math.sin(angle);
      }
    }
  }

  /** The transformer layers over the M rows in x (residual stream), appending their K/V. */
  private layers(
    M: number,
    cache: CacheRegions,
    captured: Float32Array | null,
    r0: number,
    mass: number,
    stride: number,
  ) {
    const c = this.config, ws = this.x.workspace, hd = c.headDim;
    const qw = c.nHeads * hd, kvw = c.nKvHeads * hd;
    const counts = this.counts();
    const scores = ws.scores(this.stride);
    for (let l = 0; l < c.nLayers; l++) {
      const w = this.x.weights.layers[l], slot0 = l * c.nKvHeads;
      // Attention: normalise, project, rotate and cache K/V, attend over each KV head's own entries.
      this.run([{ kernel: "rmsNorm", args: [ws.x, w.attnNorm, ws.xb, M, c.dim, c.rmsNormEps] }], M * c.dim);
      this.run([
        this.gemm(w.wq, ws.xb, w.bq, ws.q, M, false),
        this.gemm(w.wk, ws.xb, w.bk, ws.k, M, false),
        this.gemm(w.wv, ws.xb, w.bv, ws.v, M, false),
      ], M * c.dim * (qw + 2 * kvw));
      this.run([{
        kernel: "ropeAppend",
        args: [
          ws.q,
          ws.k,
          ws.v,
          M,
          c.nHeads,
          c.nKvHeads,
          hd,
          ws.cos,
          ws.sin,
          cache.keys,
          cache.values,
          cache.positions,
          cache.counts,
          slot0,
          this.stride,
          this.nextPosition,
        ],
      }], M * (qw + kvw));
      if (captured) {
        const q = this.x.arena.f32At(ws.q, M * qw);
        for (let m = 0; m < M; m++) {
          captured.set(q.subarray(m * qw, (m + 1) * qw), ((r0 + m) * c.nLayers + l) * qw);
        }
      }
      const seen = counts[slot0] + M;
      this.run([{
        kernel: "attention",
        args: [
          ws.q,
          ws.att,
          M,
          c.nHeads,
          c.nKvHeads,
          hd,
          1 / Math.sqrt(hd),
          cache.keys,
          cache.values,
          cache.counts,
          slot0,
          this.stride,
          scores,
          mass ? mass + l * c.nHeads * stride * 4 : 0,
          cache.positions,
          stride,
        ],
      }], M * c.nHeads * seen * hd * 2);
      for (let g = 0; g < c.nKvHeads; g++) counts[slot0 + g] += M;
      this.run([this.gemm(w.wo, ws.att, 0, ws.x, M, true)], M * qw * c.dim);
      // SwiGLU MLP.
      this.run([{ kernel: "rmsNorm", args: [ws.x, w.mlpNorm, ws.xb, M, c.dim, c.rmsNormEps] }], M * c.dim);
      this.run([
        this.gemm(w.wGate, ws.xb, 0, ws.gate, M, false),
        this.gemm(w.wUp, ws.xb, 0, ws.up, M, false),
        { kernel: "siluMul", args: [ws.gate, ws.up, M, c.hiddenDim] },
      ], 2 * M * c.dim * c.hiddenDim);
      this.run([this.gemm(w.wDown, ws.gate, 0, ws.x, M, true)], M * c.dim * c.hiddenDim);
    }
  }

  /** Logits of `count` rows of x from row `from`: final norm and LM head. */
  private logitsOf(from: number, count: number): Float32Array {
    const c = this.config, ws = this.x.workspace;
    const x = ws.x + from * c.dim * 4;
    this.run(
      [{ kernel: "rmsNorm", args: [x, this.x.weights.finalNorm, ws.xb, count, c.dim, c.rmsNormEps] }],
      0,
    );
    this.run(
      [this.gemm(this.x.weights.lmHead, ws.xb, 0, ws.logits, count, false)],
      count * c.dim * c.vocabSize,
    );
    return this.x.arena.f32At(ws.logits, count * c.vocabSize).slice();
  }

  async attentionMass(queries: QueryRows, promptLength: number): Promise<Float32Array> {
    const c = this.config, cache = this.regions(), a = this.x.arena;
    const rows = queries as WasmQueryRows;
    const f = rows.fused;
    if (f && f.owner === this && f.version === this.version) {
      const out = new Float32Array(c.nLayers * c.nHeads * promptLength), n = Math.min(promptLength, f.stride);
      for (let r = 0; r < c.nLayers * c.nHeads; r++) {
        out.set(f.mass.subarray(r * f.stride, r * f.stride + n), r * promptLength);
      }
      return out;
    }
    const R = rows.positions.length, hd = c.headDim;
    if (this.x.parallel) await this.x.pool.ready();
    const outLength = c.nLayers * c.nHeads * promptLength;
    const q = a.alloc(rows.data.length * 4), pos = a.alloc(R * 4), mass = a.alloc(outLength * 4);
    try {
      a.f32.set(rows.data, q / 4);
      a.i32.set(rows.positions, pos / 4);
      a.f32.fill(0, mass / 4, mass / 4 + outLength);
      const scores = this.x.workspace.scores(this.stride);
      const work = R * c.nLayers * c.nHeads * Math.max(...this.counts()) * hd;
      this.run([{
        kernel: "attentionMass",
        args: [
          q,
          pos,
          R,
          c.nLayers,
          c.nHeads,
          c.nKvHeads,
          hd,
          1 / Math.sqrt(hd),
          cache.keys,
          cache.values,
          cache.positions,
          cache.counts,
          this.stride,
          promptLength,
          mass,
          scores,
        ],
      }], work);
      return a.f32At(mass, outLength).slice();
    } finally {
      a.release(q);
      a.release(pos);
      a.release(mass);
    }
  }

  keyNorms(promptLength: number): Promise<Float32Array> {
    const c = this.config, cache = this.regions(), a = this.x.arena;
    const length = this.slots * promptLength, out = a.alloc(length * 4);
    try {
      a.f32.fill(0, out / 4, out / 4 + length);
      this.run([{
        kernel: "keyNorms",
        args: [
          cache.keys,
          cache.positions,
          cache.counts,
          this.slots,
          c.headDim,
          this.stride,
          promptLength,
          out,
        ],
      }], 0);
      return Promise.resolve(a.f32At(out, length).slice());
    } finally {
      a.release(out);
    }
  }

  /** Keeps, in order, the entries of a slot whose position passes `keep`, compacted to the front. */
  private filter(slot: number, keep: (position: number) => boolean) {
    this.version++;
    const c = this.regions(), a = this.x.arena, hd = this.config.headDim;
    const counts = this.counts(), f = a.f32, p = a.i32;
    const base = slot * this.stride, pos0 = c.positions / 4 + base;
    const k0 = c.keys / 4 + base * hd, v0 = c.values / 4 + base * hd;
    let w = 0;
    for (let r = 0; r < counts[slot]; r++) {
      if (!keep(p[pos0 + r])) continue;
      if (w !== r) {
        f.copyWithin(k0 + w * hd, k0 + r * hd, k0 + (r + 1) * hd);
        f.copyWithin(v0 + w * hd, v0 + r * hd, v0 + (r + 1) * hd);
        p[pos0 + w] = p[pos0 + r];
      }
      w++;
    }
    counts[slot] = w;
  }

  keepPositions(kept: Int32Array[][], promptLength: number): Promise<void> {
    const c = this.config;
    const keep = new Uint8Array(promptLength);
    for (let l = 0; l < c.nLayers; l++) {
      for (let g = 0; g < c.nKvHeads; g++) {
        keep.fill(0);
        for (const p of kept[l][g]) if (p >= 0 && p < promptLength) keep[p] = 1;
        this.filter(l * c.nKvHeads + g, (p) => p >= promptLength || keep[p] === 1);
      }
    }
    this.trim();
    return Promise.resolve();
  }

  truncateFrom(position: number): Promise<void> {
    for (let s = 0; s < this.slots; s++) this.filter(s, (p) => p < position);
    this.trim();
    this.nextPosition = position;
    return Promise.resolve();
  }

  mark(): CacheMark {
    return { counts: this.counts().slice(), nextPosition: this.nextPosition };
  }

  rewind(mark: CacheMark): Promise<void> {
    // Entries are only ever appended after a mark, so restoring the counts restores the cache.
    const counts = this.counts();
    for (let s = 0; s < mark.counts.length; s++) {
      if (mark.counts[s] > counts[s]) throw new Error("rewind: cache was pruned after the mark");
    }
    counts.set(mark.counts);
    this.trim();
    this.nextPosition = mark.nextPosition;
    this.version++;
    return Promise.resolve();
  }

  decode(o: DecodeOptions): Promise<DecodeResult> {
    if (!this.logits) throw new Error("decode: no current logits (run a forward pass first)");
    return decodeTokens(o, {
      logits: () => this.logits!,
      feed: async (token, captureQueries) =>
        (await this.forward({ kind: "tokens", tokens: [token] }, { logits: "last", captureQueries })).queries,
    }, (rows) => {
      const data = new Float32Array(rows.reduce((n, r) => n + (r as WasmQueryRows).data.length, 0));
      rows.reduce(
        (at, r) => (data.set((r as WasmQueryRows).data, at), at + (r as WasmQueryRows).data.length),
        0,
      );
      return new WasmQueryRows(rows.flatMap((r) => r.positions), data);
    });
  }

  currentLogits(): Promise<Float32Array> {
    if (!this.logits) return Promise.reject(new Error("no current logits"));
    return Promise.resolve(this.logits);
  }

  positions(): Promise<Int32Array[][]> {
    const c = this.config, counts = this.counts(), p = this.x.arena.i32, base = this.regions().positions / 4;
    return Promise.resolve(
      Array.from({ length: c.nLayers }, (_, l) =>
        Array.from({ length: c.nKvHeads }, (_, g) => {
          const s = l * c.nKvHeads + g, at = base + s * this.stride;
          return p.slice(at, at + counts[s]);
        })),
    );
  }

  kvBytes(): number {
    return this.counts().reduce((a, b) => a + b, 0) * this.config.headDim * 2 * 4;
  }

  allocatedBytes(): number {
    if (!this.cache) return 0;
    const entries = this.slots * this.stride;
    return entries * (this.config.headDim * 8 + 4) + this.slots * 4 + (this.logits?.byteLength ?? 0);
  }

  clone(): Promise<KvSession> {
    const copy = new WasmSession(this.x, this.capacity, this.stride);
    const from = this.regions(), to = copy.regions();
    const f = this.x.arena.f32, i = this.x.arena.i32, hd = this.config.headDim;
    const counts = this.counts();
    for (let s = 0; s < this.slots; s++) {
      const base = s * this.stride, n = counts[s];
      f.copyWithin(to.keys / 4 + base * hd, from.keys / 4 + base * hd, from.keys / 4 + (base + n) * hd);
      f.copyWithin(to.values / 4 + base * hd, from.values / 4 + base * hd, from.values / 4 + (base + n) * hd);
      i.copyWithin(to.positions / 4 + base, from.positions / 4 + base, from.positions / 4 + base + n);
    }
    copy.counts().set(counts);
    copy.nextPosition = this.nextPosition;
    copy.logits = this.logits;
    return Promise.resolve(copy);
  }

  /** A copy of the cache in the CPU reference's layout (training reads prompt K/V from it). */
  toCpuCache(): CpuKvCache {
    const c = this.config, from = this.regions(), hd = c.headDim, counts = this.counts();
    const out = new CpuKvCache(c.nLayers, c.nKvHeads, hd, this.capacity);
    out.reserve(Math.max(...counts));
    const f = this.x.arena.f32, i = this.x.arena.i32;
    for (let s = 0; s < this.slots; s++) {
      const base = s * this.stride, n = counts[s];
      out.keys[s].set(f.subarray(from.keys / 4 + base * hd, from.keys / 4 + (base + n) * hd));
      out.values[s].set(f.subarray(from.values / 4 + base * hd, from.values / 4 + (base + n) * hd));
      out.positions[s].set(i.subarray(from.positions / 4 + base, from.positions / 4 + base + n));
    }
    out.counts.set(counts);
    return out;
  }

  exportCache(): Promise<CacheSnapshot> {
    const c = this.config, from = this.regions(), hd = c.headDim, counts = this.counts();
    const f = this.x.arena.f32, i = this.x.arena.i32;
    const positions: Int32Array[] = [], keys: Float32Array[] = [], values: Float32Array[] = [];
    for (let s = 0; s < this.slots; s++) {
      const base = s * this.stride, n = counts[s];
      positions.push(i.slice(from.positions / 4 + base, from.positions / 4 + base + n));
      keys.push(f.slice(from.keys / 4 + base * hd, from.keys / 4 + (base + n) * hd));
      values.push(f.slice(from.values / 4 + base * hd, from.values / 4 + (base + n) * hd));
    }
    return Promise.resolve({
      nLayers: c.nLayers,
      nKvHeads: c.nKvHeads,
      headDim: hd,
      nextPosition: this.nextPosition,
      positions,
      keys,
      values,
      logits: this.logits ? this.logits.slice() : null,
    });
  }

  /** Fills this new, empty session with a (checked) snapshot. */
  load(snap: CacheSnapshot) {
    this.relayout(Math.max(1, ...snap.positions.map((p) => p.length))); // room for exactly the entries
    const to = this.regions(), hd = this.config.headDim, counts = this.counts();
    const f = this.x.arena.f32, i = this.x.arena.i32;
    for (let s = 0; s < this.slots; s++) {
      const base = s * this.stride;
      i.set(snap.positions[s], to.positions / 4 + base);
      f.set(snap.keys[s], to.keys / 4 + base * hd);
      f.set(snap.values[s], to.values / 4 + base * hd);
      counts[s] = snap.positions[s].length;
    }
    this.nextPosition = snap.nextPosition;
    this.logits = snap.logits ? snap.logits.slice() : null;
    this.version++;
  }

  dispose() {
    if (!this.cache) return;
    const a = this.x.arena;
    a.release(this.cache.keys);
    a.release(this.cache.values);
    a.release(this.cache.positions);
    a.release(this.cache.counts);
    this.cache = null;
  }
}
