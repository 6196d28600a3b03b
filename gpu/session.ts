/**
 * A WebGPU session: one KV cache plus activation buffers, implementing KvSession exactly like the CPU
 * reference. Prefill runs in row chunks (tiled projections, row-parallel flash attention); decode records
 * many steps per command buffer, the sampled token staying on the GPU as the next step's input, and reads
 * the tokens back once per batch. Tokens past a stop are discarded and, since the CPU mirror of the entry
 * counts only advances over accepted tokens, the K/V they wrote is rolled back for free.
 */
import { JudgeQError } from "../core/errors.ts";
import type {
  CacheMark,
  DecodeOptions,
  DecodeResult,
  ForwardInput,
  ForwardOptions,
  ForwardResult,
  KvSession,
  QueryRows,
} from "../core/executor.ts";
import type { ModelConfig } from "../core/config.ts";
import { seedState } from "../core/sampling.ts";
import { emptyBuffer, READBACK, STORAGE, UNIFORM } from "./buffers.ts";
import type { GpuExecutor } from "./executor.ts";
import { MAX_SPLITS } from "./kernels/attention.ts";
import { PARAMS_WORDS, PREFILL_TR } from "./kernels/common.ts";
import { COMPACT_HEADROOM, GpuKvCache } from "./kv_cache.ts";
import { bindGroup, grid, type Kernel } from "./pipelines.ts";
import { Recorder } from "./recorder.ts";
import type { Chunk } from "./weights.ts";

/** Captured post-RoPE queries on the GPU: [layer][rowStride][nHeads * headDim]. */
export class GpuQueryRows implements QueryRows {
  private disposed = false;
  constructor(
    readonly positions: number[],
    readonly buffer: GPUBuffer | null,
    readonly rowStride: number,
    readonly owner: GpuExecutor,
  ) {}
  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.buffer?.destroy();
  }
}

/** One submitted decode batch: B steps, F of them fed; `data` resolves with its readback. */
interface DecodeBatch {
  B: number;
  F: number;
  /** Logits row each step sampled from. */
  inRows: number[];
  /** Row of the logits after the last step (the current logits when every step was fed). */
  lastOut: number;
  tokBytes: number;
  /** When its recording began (performance.now()). */
  t0: number;
  data: Promise<ArrayBuffer>;
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
  argmax: GPUBindGroup;
  sample: GPUBindGroup;
}

/** Rows up to which attention uses the split (decode) kernels rather than the row-parallel one. */
const SPLIT_ROWS = 4;

/** Most estimated milliseconds of a speculative decode batch (the work wasted when the one before stops). */
const SPECULATE_MS = 250;

/** Records in the parameter buffer: enough for a few decode batches or many prefill chunks. */
const PARAM_RECORDS = 512;

export class GpuSession implements KvSession {
  readonly config: ModelConfig;
  nextPosition = 0;
  /** Total queue syncs (readbacks) this session performed. */
  syncs = 0;
  readonly cache: GpuKvCache;
  /** Row of `logits` holding the current logits; -1 when none yet. */
  private curRow = -1;
  private readonly device: GPUDevice;
  private readonly stride: number;
  private readonly chunk: number;
  private readonly batch: number;
  private readonly params: GPUBuffer;
  private readonly x: GPUBuffer;
  /** Normalized rows of x, the projections' input when the norm is a separate dispatch (else x itself). */
  private readonly xn: GPUBuffer;
  private readonly q: GPUBuffer;
  private readonly att: GPUBuffer;
  private readonly h: GPUBuffer;
  private readonly logits: GPUBuffer;
  private readonly toks: GPUBuffer;
  private readonly sampling: GPUBuffer;
  private readonly rng: GPUBuffer;
  private readonly prob: GPUBuffer;
  private readonly partML: GPUBuffer;
  private readonly partO: GPUBuffer;
  private groups: Groups | null = null;
  private disposed = false;

  constructor(readonly ex: GpuExecutor, readonly capacity: number, caps?: Int32Array) {
    const c = ex.config, d = ex.device;
    this.config = c;
    this.device = d;
    this.stride = Math.max(PARAMS_WORDS * 4, d.limits.minUniformBufferOffsetAlignment);
    this.chunk = Math.min(ex.prefillChunk, capacity);
    this.batch = ex.decodeBatch;
    this.cache = new GpuKvCache(d, c.nLayers, c.nKvHeads, c.headDim, capacity, 256, caps);
    const qd = c.nHeads * c.headDim;
    this.params = emptyBuffer(d, PARAM_RECORDS * this.stride, UNIFORM, "params");
    this.x = emptyBuffer(d, this.chunk * c.dim * 4, STORAGE, "x");
    this.xn = ex.separateNorm ? emptyBuffer(d, this.chunk * c.dim * 4, STORAGE, "xn") : this.x;
    this.q = emptyBuffer(d, this.chunk * qd * 4, STORAGE, "q");
    this.att = emptyBuffer(d, this.chunk * qd * 4, STORAGE, "att");
    this.h = emptyBuffer(d, this.chunk * c.hiddenDim * 4, STORAGE, "h");
    // Three regions of batch + 1 rows, used in turn by decode batches (see decode).
    this.logits = emptyBuffer(d, 3 * (this.batch + 1) * c.vocabSize * 4, STORAGE, "logits");
    this.toks = emptyBuffer(d, (Math.max(capacity, 2 * this.batch) + this.batch + 4) * 4, STORAGE, "tokens");
    this.sampling = emptyBuffer(d, 16, UNIFORM, "sampling");
    this.rng = emptyBuffer(d, 16, STORAGE, "rng");
    this.prob = emptyBuffer(d, c.vocabSize * 4, STORAGE, "prob");
    const parts = SPLIT_ROWS * c.nHeads * MAX_SPLITS;
    this.partML = emptyBuffer(d, parts * 8, STORAGE, "attn-ml");
    this.partO = emptyBuffer(d, parts * c.headDim * 4, STORAGE, "attn-o");
  }

  // ---- bindings -------------------------------------------------------------------------------

  private bindings(): Groups {
    const key = `${this.cache.version}:${this.ex.ropeVersion}`;
    if (this.groups?.key === key) return this.groups;
    const ex = this.ex, k = ex.kernels, w = ex.gpuWeights, d = this.device, cache = this.cache;
    const bg = (kernel: Kernel, res: (GPUBuffer | null)[]) =>
      bindGroup(d, kernel, res.filter((r): r is GPUBuffer => r !== null), this.stride);
    const P = this.params, sep = ex.separateNorm;
    const norm = (g: GPUBuffer) => (sep ? bg(k.rmsNorm, [P, this.x, g, this.xn]) : null);
    const layers = w.layers.map((lw, l): LayerGroups => ({
      attnNorm: norm(lw.attnNorm),
      mlpNorm: norm(lw.mlpNorm),
      qkv: lw.qkv.chunks.map((ch) =>
        bg(k.mm.qkv[1], [
          P,
          ch.info,
          ch.buffer,
          this.xn,
          this.q,
          sep ? null : lw.attnNorm,
          lw.qkvBias,
          cache.k[l],
          cache.v[l],
          cache.meta,
          ex.rope,
        ])
      ),
      attn: bg(k.attnRows, [P, lw.info, this.q, cache.k[l], cache.v[l], cache.meta, this.att]),
      partial: bg(k.attnPartial, [
        P,
        lw.info,
        this.q,
        cache.k[l],
        cache.v[l],
        cache.meta,
        this.partML,
        this.partO,
      ]),
      o: lw.o.chunks.map((ch) => bg(k.mm.residual[1], [P, ch.info, ch.buffer, this.att, this.x])),
      ffn: lw.gate.chunks.map((ch, i) =>
        bg(k.mm.swiglu[1], [
          P,
          ch.info,
          ch.buffer,
          this.xn,
          this.h,
          sep ? null : lw.mlpNorm,
          lw.up.chunks[i].buffer,
        ])
      ),
      down: lw.down.chunks.map((ch) => bg(ex.downKernel(1), [P, ch.info, ch.buffer, this.h, this.x])),
    }));
    this.groups = {
      key,
      embed: w.embed.chunks.map((ch) => bg(k.embed, [P, ch.info, ch.buffer, this.toks, this.x])),
      layers,
      lm: this.lmGroups(this.logits),
      finalNorm: norm(w.finalNorm),
      combine: bg(k.attnCombine, [P, this.partML, this.partO, this.att]),
      argmax: bg(k.argmax, [P, this.logits, this.toks]),
      sample: bg(k.sample, [P, this.sampling, this.logits, this.toks, this.rng, this.prob]),
    };
    return this.groups;
  }

  private lmGroups(out: GPUBuffer): GPUBindGroup[] {
    const w = this.ex.gpuWeights;
    const g = this.ex.separateNorm ? [] : [w.finalNorm];
    return w.lmHead.chunks.map((ch) =>
      bindGroup(
        this.device,
        this.ex.kernels.mm.lm[1],
        [this.params, ch.info, ch.buffer, this.xn, out, ...g],
        this.stride,
      )
    );
  }

  // ---- recording helpers ----------------------------------------------------------------------

  private recorder() {
    return new Recorder(this.device, this.params, this.stride);
  }

  private matmul(
    rec: Recorder,
    kernels: Record<number, Kernel>,
    groups: GPUBindGroup[],
    chunks: Chunk[],
    off: number,
    rows: number,
  ) {
    const tr = rows > 1 ? PREFILL_TR : 1;
    const kernel = kernels[tr];
    for (let i = 0; i < chunks.length; i++) {
      rec.dispatch(
        kernel,
        groups[i],
        off,
        Math.ceil(rows / tr),
        Math.ceil(chunks[i].n / 4 / kernel.workgroupSize),
      );
    }
  }

  /** Every layer for `rows` rows already in x; optionally copies each layer's queries out. */
  private encodeLayers(
    rec: Recorder,
    g: Groups,
    off: number,
    rows: number,
    capture: { buf: GPUBuffer; stride: number; row: number } | null,
    splits: number,
  ) {
    const ex = this.ex, k = ex.kernels, c = this.config, w = ex.gpuWeights;
    const qBytes = c.nHeads * c.headDim * 4;
    for (let l = 0; l < c.nLayers; l++) {
      const lw = w.layers[l], lg = g.layers[l];
      if (lg.attnNorm) rec.dispatch(k.rmsNorm, lg.attnNorm, off, rows);
      this.matmul(rec, k.mm.qkv, lg.qkv, lw.qkv.chunks, off, rows);
      if (capture) {
        rec.copy(this.q, 0, capture.buf, (l * capture.stride + capture.row) * qBytes, rows * qBytes);
      }
      if (rows <= SPLIT_ROWS) {
        rec.dispatch(
          k.attnPartial,
          lg.partial,
          off,
          Math.ceil((c.nKvHeads * splits) / k.attnPartial.workgroupSize),
          rows,
        );
        rec.dispatch(k.attnCombine, g.combine, off, Math.ceil((c.nHeads * c.headDim) / 4 / 64), rows);
      } else rec.dispatch(k.attnRows, lg.attn, off, Math.ceil(rows / k.attnRows.workgroupSize), c.nHeads);
      this.matmul(rec, k.mm.residual, lg.o, lw.o.chunks, off, rows);
      if (lg.mlpNorm) rec.dispatch(k.rmsNorm, lg.mlpNorm, off, rows);
      this.matmul(rec, k.mm.swiglu, lg.ffn, lw.gate.chunks, off, rows);
      this.matmul(
        rec,
        { 1: ex.downKernel(1), [PREFILL_TR]: ex.downKernel(PREFILL_TR) },
        lg.down,
        lw.down.chunks,
        off,
        rows,
      );
    }
  }

  /** Entry splits of the decode attention: about 32 entries each for the longest head plus `extra` rows. */
  private splits(extra: number): number {
    let most = 0;
    for (const n of this.cache.counts) most = Math.max(most, n);
    return Math.max(1, Math.min(MAX_SPLITS, Math.ceil((most + extra) / 32)));
  }

  /** Final norm (when separate) and the LM head over `rows` rows from the record's rowStart. */
  private encodeLmHead(rec: Recorder, g: Groups, lm: GPUBindGroup[], off: number, rows: number) {
    if (g.finalNorm) rec.dispatch(this.ex.kernels.rmsNorm, g.finalNorm, off, rows);
    this.matmul(rec, this.ex.kernels.mm.lm, lm, this.ex.gpuWeights.lmHead.chunks, off, rows);
  }

  private encodeEmbed(rec: Recorder, g: Groups, off: number, rows: number) {
    const k = this.ex.kernels.embed;
    for (const group of g.embed) {
      rec.dispatch(k, group, off, Math.ceil(this.config.dim / k.workgroupSize), rows);
    }
  }

  /** Copies `bytes` of `src` back to the CPU after submitting everything recorded: one sync. */
  private async readback(rec: Recorder, src: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    const staging = this.ex.pool.acquire(bytes, READBACK);
    rec.copy(src, offset, staging, 0, bytes);
    rec.flush();
    return await this.mapRead(staging, bytes);
  }

  private async mapRead(staging: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    const ctx = this.ex.ctx;
    this.syncs++;
    try {
      await Promise.race([
        staging.mapAsync(GPUMapMode.READ, 0, bytes),
        this.device.lost.then((l) => {
          throw new JudgeQError("internal", `GPU device lost (${l.reason}): ${l.message || "no message"}`);
        }),
      ]);
    } catch (e) {
      if (ctx.lost) throw ctx.lost;
      if (e instanceof JudgeQError) throw e;
      throw new JudgeQError("internal", `GPU readback failed: ${(e as Error).message}`);
    }
    const out = staging.getMappedRange(0, bytes).slice(0);
    staging.unmap();
    this.ex.pool.release(staging);
    this.ex.check();
    return out;
  }

  private check() {
    if (this.disposed) throw new JudgeQError("internal", "the session was disposed");
    this.ex.check();
  }

  // ---- cache layout ---------------------------------------------------------------------------

  /** Makes room for `rows` more entries in every head, growing segments (and checking capacity). */
  private ensureRoom(rows: number) {
    const cache = this.cache;
    let grow = false;
    for (let s = 0; s < cache.slots; s++) {
      if (cache.counts[s] + rows > this.capacity) {
        throw new RangeError(`KV cache full: capacity ${this.capacity} positions per head`);
      }
      if (cache.counts[s] + rows > cache.caps[s]) grow = true;
    }
    if (!grow) return;
    const caps = cache.caps.map((cap, s) => {
      const n = cache.counts[s];
      if (n + rows <= cap) return cap;
      return Math.min(this.capacity, Math.max(n + rows, n + COMPACT_HEADROOM, Math.ceil(cap * 1.5)));
    });
    this.relayout(caps, Array.from({ length: cache.slots }, () => null));
  }

  /**
   * Moves the cache into new buffers with segment sizes `caps`, keeping per slot the entries listed in
   * `keep[s]` (indices, ascending; null keeps all). The gather runs on the GPU; the mirror is updated.
   */
  private relayout(caps: Int32Array, keep: (number[] | null)[]) {
    const cache = this.cache, c = this.config, ex = this.ex;
    const kept = keep.map((k, s) => k ?? Array.from({ length: cache.counts[s] }, (_, i) => i));
    cache.caps = caps;
    const old = cache.allocate();
    const rec = this.recorder();
    const maps: GPUBuffer[] = [];
    for (let l = 0; l < c.nLayers; l++) {
      const total = cache.layerEntries(l);
      if (total === 0) continue;
      const map = new Uint32Array(total).fill(0xffffffff);
      for (let g = 0; g < c.nKvHeads; g++) {
        const s = cache.slot(l, g), from = old.bases[s], to = cache.bases[s];
        kept[s].forEach((idx, i) => (map[to + i] = from + idx));
      }
      const mapBuf = emptyBuffer(this.device, map.byteLength, STORAGE, "kv-map");
      this.device.queue.writeBuffer(mapBuf, 0, map);
      maps.push(mapBuf);
      const group = bindGroup(
        this.device,
        ex.kernels.gather,
        [this.params, mapBuf, old.k[l], old.v[l], cache.k[l], cache.v[l]],
        this.stride,
      );
      const off = rec.param({ rows: total, pos0: 0, step: 0 });
      const [gx, gy] = grid(Math.ceil((total * c.headDim) / 4 / ex.kernels.gather.workgroupSize));
      rec.dispatch(ex.kernels.gather, group, off, gx, gy);
    }
    rec.flush();
    for (const b of [...old.k, ...old.v, ...maps]) b.destroy();
    for (let s = 0; s < cache.slots; s++) {
      const pos = cache.positions[s];
      const src = pos.slice(0, cache.counts[s]);
      kept[s].forEach((idx, i) => (pos[i] = src[idx]));
      cache.counts[s] = kept[s].length;
    }
    cache.metaDirty = true;
  }

  // ---- KvSession ------------------------------------------------------------------------------

  async forward(input: ForwardInput, options: ForwardOptions = {}): Promise<ForwardResult> {
    this.check();
    const c = this.config;
    const rows = input.kind === "tokens" ? input.tokens.length : input.count;
    const want = options.logits ?? "last";
    if (input.kind === "tokens") {
      for (const t of input.tokens) {
        if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) {
          throw new RangeError(`token id ${t} out of range`);
        }
      }
    } else if (input.rows.length < rows * c.dim) {
      throw new RangeError(`embeddings: ${input.rows.length} floats for ${rows} rows of ${c.dim}`);
    }
    const first = this.nextPosition;
    if (rows === 0) {
      return {
        logits: want === "all"
          ? new Float32Array(0)
          : want === "last" && this.curRow >= 0
          ? await this.currentLogits()
          : null,
        queries: options.captureQueries ? new GpuQueryRows([], null, 0, this.ex) : null,
      };
    }
    this.ensureRoom(rows);
    this.ex.ensureRope(first + rows);
    const g = this.bindings();
    this.cache.writeMeta();
    const qBytes = c.nHeads * c.headDim * 4;
    let embIn: GPUBuffer | null = null;
    if (input.kind === "tokens") {
      this.device.queue.writeBuffer(this.toks, 0, new Uint32Array(input.tokens));
    } else {
      embIn = this.ex.pool.acquire(rows * c.dim * 4, STORAGE);
      this.device.queue.writeBuffer(embIn, 0, input.rows, 0, rows * c.dim);
    }
    const capture = options.captureQueries
      ? emptyBuffer(this.device, c.nLayers * rows * qBytes, STORAGE, "queries")
      : null;
    const V = c.vocabSize;
    const all = want === "all" ? this.ex.pool.acquire(rows * V * 4, READBACK) : null;
    // "all" logits go through a chunk buffer that fits one binding.
    const lmRows = Math.max(1, Math.min(this.chunk, Math.floor(this.ex.ctx.maxBinding / (V * 4))));
    const allChunk = all ? this.ex.pool.acquire(lmRows * V * 4, STORAGE) : null;
    const allGroups = allChunk ? this.lmGroups(allChunk) : null;
    const rec = this.recorder();
    let last = 0;
    for (let c0 = 0; c0 < rows; c0 += this.chunk) {
      const n = Math.min(this.chunk, rows - c0);
      last = n;
      const splits = this.splits(rows);
      const off = rec.param({ rows: n, pos0: first + c0, step: c0, a: splits });
      if (embIn) rec.copy(embIn, c0 * c.dim * 4, this.x, 0, n * c.dim * 4);
      else this.encodeEmbed(rec, g, off, n);
      this.encodeLayers(rec, g, off, n, capture ? { buf: capture, stride: rows, row: c0 } : null, splits);
      if (all && allChunk && allGroups) {
        for (let r0 = 0; r0 < n; r0 += lmRows) {
          const m = Math.min(lmRows, n - r0);
          const o = rec.param({ rows: m, pos0: 0, step: 0, rowStart: r0, outRow: 0 });
          this.encodeLmHead(rec, g, allGroups, o, m);
          rec.copy(allChunk, 0, all, (c0 + r0) * V * 4, m * V * 4);
        }
      }
    }
    if (want !== "none") {
      const o = rec.param({ rows: 1, pos0: 0, step: 0, rowStart: last - 1, outRow: 0 });
      this.encodeLmHead(rec, g, g.lm, o, 1);
      this.curRow = 0;
    }
    this.cache.append(first, rows);
    this.nextPosition += rows;
    const queries = capture
      ? new GpuQueryRows(Array.from({ length: rows }, (_, i) => first + i), capture, rows, this.ex)
      : null;
    let logits: Float32Array | null = null;
    try {
      if (all) {
        rec.flush();
        logits = new Float32Array(await this.mapRead(all, rows * V * 4));
      } else if (want === "last") {
        logits = new Float32Array(await this.readback(rec, this.logits, 0, V * 4));
      } else {
        rec.flush();
      }
    } finally {
      if (embIn) this.ex.pool.release(embIn);
      if (allChunk) this.ex.pool.release(allChunk);
    }
    return { logits, queries };
  }

  /**
   * Decode runs in batches of steps recorded into one submission; the sampled tokens stay on the GPU.
   * Batches are pipelined: batch k+1 is recorded and submitted (speculatively, continuing from batch k's
   * last token on the GPU) before batch k's tokens are read back, and batch k's readback is started
   * before that submit, so the readback latency (and, where submit is synchronous, the GPU time of the
   * next batch) overlaps. Batch k+1 writes its K/V after batch k's (step offsets) and its logits to the
   * next of three logits regions; when batch k stops, batch k+1 is discarded: its K/V entries lie past
   * the mirrored counts (invisible, overwritten later) and the logits rows batch k read are intact.
   */
  async decode(o: DecodeOptions): Promise<DecodeResult> {
    this.check();
    if (this.curRow < 0) throw new Error("decode: no current logits (run a forward pass first)");
    const c = this.config, V = c.vocabSize, ex = this.ex;
    const greedy = o.sampling.temperature <= 0;
    const syncs0 = this.syncs;
    const tokens: number[] = [];
    const logits: Float32Array[] | null = o.returnLogits ? [] : null;
    const qBytes = c.nHeads * c.headDim * 4;
    const capStride = Math.max(o.maxTokens, 1);
    const capture = o.captureQueries
      ? emptyBuffer(this.device, c.nLayers * capStride * qBytes, STORAGE, "queries")
      : null;
    const captured: number[] = [];
    if (!greedy) {
      const sp = new DataView(new ArrayBuffer(16));
      sp.setFloat32(0, o.sampling.temperature, true);
      sp.setFloat32(4, o.sampling.topP, true);
      sp.setUint32(8, Math.max(0, Math.floor(o.sampling.topK)), true);
      this.device.queue.writeBuffer(this.sampling, 0, sp.buffer);
      this.device.queue.writeBuffer(this.rng, 0, new Uint32Array([seedState(o.sampling.seed), 0, 0, 0]));
    }
    let finishReason: DecodeResult["finishReason"] = "length";
    // Streaming callers get a first small batch quickly, then full batches.
    let size = o.onTokens ? Math.min(4, this.batch) : this.batch;
    const region = this.batch + 1;
    /** Logits row the next batch's first step samples from (on the GPU once its producer ran). */
    let prevRow = this.curRow;
    let inflight: DecodeBatch | null = null;
    /** Tokens submitted (accepted or in flight) so far. */
    let planned = 0;
    const launch = (): DecodeBatch | null => {
      const remaining = o.maxTokens - planned;
      if (remaining <= 0 || o.signal?.aborted) return null;
      const B = Math.min(size, remaining);
      // The last token of the whole decode is sampled but not fed (as the reference does).
      const F = B < remaining ? B : B - 1;
      const pending = inflight ? inflight.F : 0;
      if (inflight) {
        // A speculative batch is wasted work when the one before it stops: only speculate when a batch
        // is cheap (where submit is synchronous, as on GL, the waste is paid before the stop is seen).
        if (!(ex.decodeStepMs * B <= SPECULATE_MS)) return null;
        if (this.needsGrowth(pending + F)) return null; // growing moves the cache: drain first
      }
      if (!inflight) {
        // Room for this batch and, where capacity allows, the next one (so it needs no growth).
        const next = Math.max(0, Math.min(Math.min(size * 2, this.batch), remaining - B));
        const most = this.capacity - Math.max(...this.cache.counts);
        this.ensureRoom(F + next <= most ? F + next : F);
      } else this.ensureRoom(pending + F);
      size = Math.min(size * 2, this.batch);
      planned += B;
      const t0 = performance.now();
      ex.ensureRope(this.nextPosition + pending + F);
      const g = this.bindings();
      this.cache.writeMeta();
      const rec = this.recorder();
      if (!rec.fits(B)) rec.flush();
      const splits = this.splits(pending + B);
      // The region after the one the first step reads: with three regions, a batch launched while its
      // predecessor is in flight never overwrites the row that predecessor's first step samples from.
      const base = ((Math.floor(prevRow / region) + 1) % 3) * region;
      const inRows: number[] = [];
      for (let s = 0; s < B; s++) {
        const inRow = s === 0 ? prevRow : base + s;
        inRows.push(inRow);
        const off = rec.param({
          rows: 1,
          pos0: this.nextPosition + pending + s,
          step: pending + s,
          inRow,
          outRow: base + s + 1,
          a: splits,
        });
        if (greedy) rec.dispatch(ex.kernels.argmax, g.argmax, off, 1);
        else rec.dispatch(ex.kernels.sample, g.sample, off, 1);
        if (s >= F) continue;
        this.encodeEmbed(rec, g, off, 1);
        this.encodeLayers(
          rec,
          g,
          off,
          1,
          capture ? { buf: capture, stride: capStride, row: captured.length + pending + s } : null,
          splits,
        );
        this.encodeLmHead(rec, g, g.lm, off, 1);
      }
      const tokBytes = Math.ceil((B * 4) / 16) * 16;
      const bytes = tokBytes + (logits ? B * V * 4 : 0);
      const staging = ex.pool.acquire(bytes, READBACK);
      rec.copy(this.toks, pending * 4, staging, 0, B * 4);
      if (logits) {
        rec.copy(this.logits, prevRow * V * 4, staging, tokBytes, V * 4);
        if (B > 1) rec.copy(this.logits, (base + 1) * V * 4, staging, tokBytes + V * 4, (B - 1) * V * 4);
      }
      rec.flush();
      prevRow = base + B;
      // Start the readback now: its latency overlaps the next batch's recording and submission.
      return { B, F, inRows, lastOut: base + B, tokBytes, t0, data: this.mapRead(staging, bytes) };
    };
    try {
      inflight = launch();
      while (inflight) {
        const cur: DecodeBatch = inflight;
        // Speculate: submit the next batch before reading this one back (null when out of budget, or
        // when it would need the cache to grow while this batch's entries are not yet mirrored).
        inflight = launch();
        const data = await cur.data;
        // Milliseconds per step, launch to readback (an overestimate when the next batch ran meanwhile).
        ex.decodeStepMs = (performance.now() - cur.t0) / cur.B;
        const ids = new Uint32Array(data, 0, cur.B);
        // Accept tokens up to a stop or the budget; `fed` of them had their K/V appended.
        const fresh: number[] = [];
        let fed = cur.F, done = false;
        this.curRow = cur.lastOut;
        for (let s = 0; s < cur.B; s++) {
          logits?.push(new Float32Array(data, cur.tokBytes + s * V * 4, V).slice());
          const t = ids[s];
          if (o.stopTokenIds.includes(t)) {
            finishReason = "stop";
            done = true;
            fed = s;
            this.curRow = cur.inRows[s];
            break;
          }
          tokens.push(t);
          fresh.push(t);
          if (tokens.length === o.maxTokens) {
            done = true;
            fed = s;
            this.curRow = cur.inRows[s];
            break;
          }
        }
        for (let s = 0; s < fed; s++) captured.push(this.nextPosition + s);
        this.cache.append(this.nextPosition, fed);
        this.nextPosition += fed;
        if (fresh.length) await o.onTokens?.(fresh);
        if (done) break;
        if (o.signal?.aborted) {
          finishReason = "aborted";
          break;
        }
        inflight ??= launch();
      }
    } finally {
      // A speculative batch past a stop (or an error) is discarded once its readback settles.
      if (inflight) await inflight.data.catch(() => undefined);
    }
    if (o.signal?.aborted && finishReason === "length" && tokens.length < o.maxTokens) {
      finishReason = "aborted";
    }
    return {
      tokens,
      finishReason,
      logits,
      queries: capture ? new GpuQueryRows(captured, capture, capStride, ex) : null,
      syncs: this.syncs - syncs0,
    };
  }

  /** Whether `rows` more entries per head need a segment to grow (a cache relayout). */
  private needsGrowth(rows: number): boolean {
    const cache = this.cache;
    for (let s = 0; s < cache.slots; s++) if (cache.counts[s] + rows > cache.caps[s]) return true;
    return false;
  }

  async attentionMass(queries: QueryRows, promptLength: number): Promise<Float32Array> {
    this.check();
    if (!(queries instanceof GpuQueryRows) || queries.owner !== this.ex) {
      throw new JudgeQError(
        "invalid_request",
        "attentionMass: queries were not captured by this GPU executor",
      );
    }
    const c = this.config, ex = this.ex, cache = this.cache, k = ex.kernels;
    const P = promptLength, R = queries.positions.length;
    const outLen = c.nLayers * c.nHeads * P;
    if (R === 0 || P === 0 || !queries.buffer) return new Float32Array(outLen);
    this.cache.writeMeta();
    // Visible entries of every (slot, row): causal by position, entries being in position order.
    const vis = new Uint32Array(cache.slots * R);
    for (let s = 0; s < cache.slots; s++) {
      for (let r = 0; r < R; r++) vis[s * R + r] = cache.upperBound(s, queries.positions[r]);
    }
    const d = this.device;
    const visBuf = emptyBuffer(d, vis.byteLength, STORAGE, "vis");
    d.queue.writeBuffer(visBuf, 0, vis);
    const stats = emptyBuffer(d, c.nLayers * c.nHeads * R * 8, STORAGE, "stats");
    const out = emptyBuffer(d, outLen * 4, STORAGE, "mass");
    const temps = [visBuf, stats, out];
    const rec = this.recorder();
    rec.clear(out);
    const group = c.nHeads / c.nKvHeads;
    for (let l = 0; l < c.nLayers; l++) {
      const tasks: number[] = [];
      for (let g = 0; g < c.nKvHeads; g++) {
        const s = cache.slot(l, g), pos = cache.positions[s];
        for (let t = 0; t < cache.counts[s] && pos[t] < P; t++) tasks.push(cache.bases[s] + t, g, t, pos[t]);
      }
      const so = rec.param({ rows: R, pos0: 0, step: 0, a: l, b: queries.rowStride });
      const sg = bindGroup(d, k.massStats, [
        this.params,
        queries.buffer,
        cache.k[l],
        cache.meta,
        visBuf,
        stats,
      ], this.stride);
      rec.dispatch(k.massStats, sg, so, Math.ceil(R / 64), c.nHeads);
      if (tasks.length === 0) continue;
      const taskBuf = emptyBuffer(d, tasks.length * 4, STORAGE, "tasks");
      d.queue.writeBuffer(taskBuf, 0, new Uint32Array(tasks));
      temps.push(taskBuf);
      const n = tasks.length / 4;
      const mo = rec.param({ rows: n, pos0: P, step: R, a: l, b: queries.rowStride });
      const mg = bindGroup(
        d,
        k.mass,
        [this.params, queries.buffer, cache.k[l], taskBuf, visBuf, stats, out],
        this.stride,
      );
      rec.dispatch(k.mass, mg, mo, Math.ceil(n / 64), group);
    }
    try {
      return new Float32Array(await this.readback(rec, out, 0, outLen * 4));
    } finally {
      for (const b of temps) b.destroy();
    }
  }

  async keyNorms(promptLength: number): Promise<Float32Array> {
    this.check();
    const c = this.config, cache = this.cache, k = this.ex.kernels.keyNorm, d = this.device;
    const P = promptLength, outLen = c.nLayers * c.nKvHeads * P;
    if (outLen === 0) return new Float32Array(0);
    const out = emptyBuffer(d, outLen * 4, STORAGE, "norms");
    const temps = [out];
    const rec = this.recorder();
    rec.clear(out);
    for (let l = 0; l < c.nLayers; l++) {
      const tasks: number[] = [];
      for (let g = 0; g < c.nKvHeads; g++) {
        const s = cache.slot(l, g), pos = cache.positions[s];
        for (let t = 0; t < cache.counts[s] && pos[t] < P; t++) {
          tasks.push(cache.bases[s] + t, s * P + pos[t]);
        }
      }
      if (tasks.length === 0) continue;
      const taskBuf = emptyBuffer(d, tasks.length * 4, STORAGE, "tasks");
      d.queue.writeBuffer(taskBuf, 0, new Uint32Array(tasks));
      temps.push(taskBuf);
      const off = rec.param({ rows: tasks.length / 2, pos0: 0, step: 0 });
      const group = bindGroup(d, k, [this.params, taskBuf, cache.k[l], out], this.stride);
      rec.dispatch(k, group, off, Math.ceil(tasks.length / 2 / 64));
    }
    try {
      return new Float32Array(await this.readback(rec, out, 0, outLen * 4));
    } finally {
      for (const b of temps) b.destroy();
    }
  }

  // deno-lint-ignore require-await
  async keepPositions(kept: Int32Array[][], promptLength: number): Promise<void> {
    this.check();
    const c = this.config, cache = this.cache;
    const keep: number[][] = [];
    const caps = new Int32Array(cache.slots);
    for (let l = 0; l < c.nLayers; l++) {
      for (let g = 0; g < c.nKvHeads; g++) {
        const s = cache.slot(l, g), pos = cache.positions[s];
        const set = new Set(kept[l][g]);
        const idx: number[] = [];
        for (let t = 0; t < cache.counts[s]; t++) if (pos[t] >= promptLength || set.has(pos[t])) idx.push(t);
        keep.push(idx);
        caps[s] = Math.min(this.capacity, idx.length + COMPACT_HEADROOM);
      }
    }
    this.relayout(caps, keep);
  }

  // deno-lint-ignore require-await
  async truncateFrom(position: number): Promise<void> {
    this.check();
    const cache = this.cache;
    for (let s = 0; s < cache.slots; s++) cache.counts[s] = cache.upperBound(s, position - 1);
    cache.metaDirty = true;
    this.nextPosition = position;
  }

  mark(): CacheMark {
    return { counts: this.cache.counts.slice(), nextPosition: this.nextPosition };
  }

  // deno-lint-ignore require-await
  async rewind(mark: CacheMark): Promise<void> {
    this.check();
    const cache = this.cache;
    // Entries are only ever appended after a mark, so restoring the counts restores the cache.
    for (let s = 0; s < mark.counts.length; s++) {
      if (mark.counts[s] > cache.counts[s]) throw new Error("rewind: cache was pruned after the mark");
    }
    cache.counts.set(mark.counts);
    cache.metaDirty = true;
    this.nextPosition = mark.nextPosition;
  }

  async currentLogits(): Promise<Float32Array> {
    this.check();
    if (this.curRow < 0) throw new Error("no current logits");
    const V = this.config.vocabSize;
    return new Float32Array(await this.readback(this.recorder(), this.logits, this.curRow * V * 4, V * 4));
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
    return this.cache.entries() * this.config.headDim * 2 * 4;
  }

  /** The cached keys and values per (layer, KV head), [count][headDim] each (tests, debugging). */
  async readCache(): Promise<{ keys: Float32Array[]; values: Float32Array[] }> {
    this.check();
    const c = this.config, cache = this.cache, hd = c.headDim;
    const keys: Float32Array[] = [], values: Float32Array[] = [];
    for (let l = 0; l < c.nLayers; l++) {
      const k = new Float32Array(await this.readback(this.recorder(), cache.k[l], 0, cache.k[l].size));
      const v = new Float32Array(await this.readback(this.recorder(), cache.v[l], 0, cache.v[l].size));
      for (let g = 0; g < c.nKvHeads; g++) {
        const s = cache.slot(l, g), from = cache.bases[s] * hd, to = from + cache.counts[s] * hd;
        keys.push(k.slice(from, to));
        values.push(v.slice(from, to));
      }
    }
    return { keys, values };
  }

  /** Bytes of K/V actually allocated on the GPU (kept entries plus decode headroom). */
  allocatedKvBytes(): number {
    return this.cache.allocatedBytes();
  }

  clone(): Promise<KvSession> {
    this.check();
    const copy = new GpuSession(this.ex, this.capacity, this.cache.caps.slice());
    const rec = this.recorder();
    for (let l = 0; l < this.config.nLayers; l++) {
      rec.copy(this.cache.k[l], 0, copy.cache.k[l], 0, this.cache.k[l].size);
      rec.copy(this.cache.v[l], 0, copy.cache.v[l], 0, this.cache.v[l].size);
    }
    if (this.curRow >= 0) {
      const bytes = this.config.vocabSize * 4;
      rec.copy(this.logits, this.curRow * bytes, copy.logits, this.curRow * bytes, bytes);
    }
    rec.flush();
    copy.cache.counts.set(this.cache.counts);
    this.cache.positions.forEach((p, s) => copy.cache.positions[s].set(p));
    copy.cache.metaDirty = true;
    copy.nextPosition = this.nextPosition;
    copy.curRow = this.curRow;
    return Promise.resolve(copy);
  }

  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.cache.dispose();
    for (
      const b of [
        this.params,
        this.x,
        this.q,
        this.att,
        this.h,
        this.logits,
        this.toks,
        this.sampling,
        this.rng,
        this.prob,
        this.partML,
        this.partO,
      ]
    ) b.destroy();
    if (this.xn !== this.x) this.xn.destroy();
  }
}
