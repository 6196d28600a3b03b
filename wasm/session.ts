/**
 * A session of the fast CPU executor: one KV cache in the shared memory (wasm/kv_cache.ts) and the forward
 * pass over chunks of rows, as dispatches of kernels (built by wasm/jobs.ts).
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
import { forwardRows } from "../core/executor.ts";
import { decodeTokens } from "../core/decode_loop.ts";
import type { Arena } from "./arena.ts";
import type { Job, ThreadPool } from "./pool.ts";
import type { Matrix, WasmWeights } from "./weights.ts";
import { CHUNK_ROWS, NORM_ROWS, type Workspace } from "./workspace.ts";
import type { ModelConfig } from "../core/config.ts";
import type { CpuKvCache } from "../core/cpu/kv_cache.ts";
import { WasmKvCache } from "./kv_cache.ts";
import {
  attentionJob,
  attentionMassJob,
  type CacheAddresses,
  embedJob,
  gemmJob,
  keyNormsJob,
  rmsNormJob,
  ropeAppendJob,
  siluMulJob,
} from "./jobs.ts";

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

export class WasmSession implements KvSession {
  readonly config: ModelConfig;
  nextPosition = 0;
  private logits: Float32Array | null = null;
  private readonly invFreq: Float64Array;
  private readonly kv: WasmKvCache;
  /** Bumped whenever entries leave the cache (prune, cut, rewind): fused masses before it are stale. */
  private version = 0;

  /** `kv`: the cache to take over (a clone's), else a new empty one. */
  constructor(private readonly x: SessionContext, readonly capacity: number, kv?: WasmKvCache) {
    const c = x.config;
    this.config = c;
    this.invFreq = ropeInverseFrequencies(c);
    this.kv = kv ?? new WasmKvCache(x.arena, c.nLayers, c.nKvHeads, c.headDim, capacity);
  }

  private run(jobs: Job[], work: number) {
    this.x.pool.run(jobs, this.x.parallel ? work : 0);
  }

  private gemm(w: Matrix, x: number, bias: number, y: number, M: number, acc: boolean, xStride = 0): Job {
    const ws = this.x.workspace;
    return gemmJob({
      format: this.x.weights.format,
      x,
      w,
      bias,
      y,
      M,
      acc,
      xStride,
      panels: ws.panels,
      quant: ws.quant,
      quantStride: ws.quantStride,
    });
  }

  async forward(input: ForwardInput, options: ForwardOptions = {}): Promise<ForwardResult> {
    const c = this.config;
    const rows = forwardRows(input, c);
    this.kv.reserve(rows);
    if (this.x.parallel) await this.x.pool.ready();
    const cache = this.kv.addresses();
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
      const table = this.x.weights.embed, format = this.x.weights.format;
      this.run([embedJob({ table, format, tokens: ws.tokens, x: ws.x, M, D: c.dim })], 0);
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

  /**
   * The transformer layers over the M rows in x (residual stream), appending their K/V. Up to NORM_ROWS
   * rows (decoding), each RMS norm runs in the dispatch of the GEMMs that read it, every chunk normalizing
   * its own copy: 6 barriers per layer instead of 8. More rows amortize the barriers and share one copy.
   */
  private layers(
    M: number,
    cache: CacheAddresses,
    captured: Float32Array | null,
    r0: number,
    mass: number,
    stride: number,
  ) {
    const c = this.config, ws = this.x.workspace, hd = c.headDim;
    const qw = c.nHeads * hd, kvw = c.nKvHeads * hd;
    const counts = this.kv.counts();
    const scores = ws.scores(cache.cap);
    const fused = M <= NORM_ROWS;
    const xb = fused ? ws.normed : ws.xb, xStride = fused ? ws.normedStride : 0;
    /** The norm's job: with the GEMMs (fused), or a dispatch of its own before them. */
    const norm = (weight: number): Job[] => {
      const job = rmsNormJob({
        x: ws.x,
        weight,
        out: xb,
        M,
        D: c.dim,
        eps: c.rmsNormEps,
        chunkStride: xStride,
      });
      if (fused) return [job];
      this.run([job], M * c.dim);
      return [];
    };
    for (let l = 0; l < c.nLayers; l++) {
      const w = this.x.weights.layers[l], slot0 = l * c.nKvHeads;
      // Attention: normalise, project, rotate and cache K/V, attend over each KV head's own entries.
      this.run([
        ...norm(w.attnNorm),
        this.gemm(w.wq, xb, w.bq, ws.q, M, false, xStride),
        this.gemm(w.wk, xb, w.bk, ws.k, M, false, xStride),
        this.gemm(w.wv, xb, w.bv, ws.v, M, false, xStride),
      ], M * c.dim * (qw + 2 * kvw));
      this.run([ropeAppendJob({
        q: ws.q,
        k: ws.k,
        v: ws.v,
        M,
        nHeads: c.nHeads,
        nKv: c.nKvHeads,
        headDim: hd,
        cos: ws.cos,
        sin: ws.sin,
        cache,
        slot0,
        pos0: this.nextPosition,
      })], M * (qw + kvw));
      if (captured) {
        const q = this.x.arena.f32At(ws.q, M * qw);
        for (let m = 0; m < M; m++) {
          captured.set(q.subarray(m * qw, (m + 1) * qw), ((r0 + m) * c.nLayers + l) * qw);
        }
      }
      const seen = counts[slot0] + M;
      this.run([attentionJob({
        q: ws.q,
        out: ws.att,
        M,
        nHeads: c.nHeads,
        nKv: c.nKvHeads,
        headDim: hd,
        scale: 1 / Math.sqrt(hd),
        cache,
        slot0,
        scratch: scores,
        mass: mass ? mass + l * c.nHeads * stride * 4 : 0,
        massStride: stride,
      })], M * c.nHeads * seen * hd * 2);
      this.kv.appended(slot0, M);
      this.run([this.gemm(w.wo, ws.att, 0, ws.x, M, true)], M * qw * c.dim);
      // SwiGLU MLP.
      this.run([
        ...norm(w.mlpNorm),
        this.gemm(w.wGate, xb, 0, ws.gate, M, false, xStride),
        this.gemm(w.wUp, xb, 0, ws.up, M, false, xStride),
        siluMulJob({ gate: ws.gate, up: ws.up, M, N: c.hiddenDim }),
      ], 2 * M * c.dim * c.hiddenDim);
      this.run([this.gemm(w.wDown, ws.gate, 0, ws.x, M, true)], M * c.dim * c.hiddenDim);
    }
  }

  /** Logits of `count` rows of x from row `from`: final norm and LM head. */
  private logitsOf(from: number, count: number): Float32Array {
    const c = this.config, ws = this.x.workspace;
    const x = ws.x + from * c.dim * 4;
    this.run([
      rmsNormJob({ x, weight: this.x.weights.finalNorm, out: ws.xb, M: count, D: c.dim, eps: c.rmsNormEps }),
    ], 0);
    this.run(
      [this.gemm(this.x.weights.lmHead, ws.xb, 0, ws.logits, count, false)],
      count * c.dim * c.vocabSize,
    );
    return this.x.arena.f32At(ws.logits, count * c.vocabSize).slice();
  }

  async attentionMass(queries: QueryRows, promptLength: number): Promise<Float32Array> {
    const c = this.config, cache = this.kv.addresses(), a = this.x.arena;
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
      const scores = this.x.workspace.scores(cache.cap);
      const work = R * c.nLayers * c.nHeads * Math.max(...this.kv.counts()) * hd;
      this.run([attentionMassJob({
        q,
        rowPositions: pos,
        R,
        nLayers: c.nLayers,
        nHeads: c.nHeads,
        nKv: c.nKvHeads,
        headDim: hd,
        scale: 1 / Math.sqrt(hd),
        cache,
        promptLength,
        mass,
        scratch: scores,
      })], work);
      return a.f32At(mass, outLength).slice();
    } finally {
      a.release(q);
      a.release(pos);
      a.release(mass);
    }
  }

  keyNorms(promptLength: number): Promise<Float32Array> {
    const c = this.config, a = this.x.arena, slots = this.kv.slots;
    const length = slots * promptLength, out = a.alloc(length * 4);
    try {
      a.f32.fill(0, out / 4, out / 4 + length);
      this.run(
        [keyNormsJob({ cache: this.kv.addresses(), slots, headDim: c.headDim, promptLength, out })],
        0,
      );
      return Promise.resolve(a.f32At(out, length).slice());
    } finally {
      a.release(out);
    }
  }

  keepPositions(kept: Int32Array[][], promptLength: number): Promise<void> {
    const c = this.config;
    const keep = new Uint8Array(promptLength);
    this.version++;
    for (let l = 0; l < c.nLayers; l++) {
      for (let g = 0; g < c.nKvHeads; g++) {
        keep.fill(0);
        for (const p of kept[l][g]) if (p >= 0 && p < promptLength) keep[p] = 1;
        this.kv.filter(l * c.nKvHeads + g, (p) => p >= promptLength || keep[p] === 1);
      }
    }
    this.kv.trim();
    return Promise.resolve();
  }

  truncateFrom(position: number): Promise<void> {
    this.version++;
    for (let s = 0; s < this.kv.slots; s++) this.kv.filter(s, (p) => p < position);
    this.kv.trim();
    this.nextPosition = position;
    return Promise.resolve();
  }

  mark(): CacheMark {
    return { counts: this.kv.counts().slice(), nextPosition: this.nextPosition };
  }

  rewind(mark: CacheMark): Promise<void> {
    this.kv.rewind(mark.counts);
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
    return Promise.resolve(this.kv.positions());
  }

  kvBytes(): number {
    return this.kv.kvBytes();
  }

  allocatedBytes(): number {
    if (this.kv.disposed) return 0;
    return this.kv.allocatedBytes() + (this.logits?.byteLength ?? 0);
  }

  clone(): Promise<KvSession> {
    const copy = new WasmSession(this.x, this.capacity, this.kv.clone());
    copy.nextPosition = this.nextPosition;
    copy.logits = this.logits;
    return Promise.resolve(copy);
  }

  /** A copy of the cache in the CPU reference's layout (training reads prompt K/V from it). */
  toCpuCache(): CpuKvCache {
    return this.kv.toCpuCache();
  }

  exportCache(): Promise<CacheSnapshot> {
    const c = this.config;
    return Promise.resolve({
      nLayers: c.nLayers,
      nKvHeads: c.nKvHeads,
      headDim: c.headDim,
      nextPosition: this.nextPosition,
      ...this.kv.export(),
      logits: this.logits ? this.logits.slice() : null,
    });
  }

  /** Fills this new, empty session with a (checked) snapshot. */
  load(snap: CacheSnapshot) {
    this.kv.load(snap);
    this.nextPosition = snap.nextPosition;
    this.logits = snap.logits ? snap.logits.slice() : null;
    this.version++;
  }

  dispose() {
    this.kv.dispose();
  }
}
