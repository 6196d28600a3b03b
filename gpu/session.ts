/**
 * A WebGPU session: one KV cache plus activation buffers, implementing KvSession exactly like the CPU
 * reference. Thin glue: the forward pass is encoded by forward.ts, decoding is scheduled by decode.ts,
 * scoring lives in scoring.ts, and the cache (kv_cache.ts) owns its layout. Prefill runs in row chunks
 * (tiled projections, row-parallel flash attention); tokens past a decode stop are discarded and, since
 * the CPU mirror of the entry counts only advances over accepted tokens, the K/V they wrote is rolled
 * back for free.
 */
import type { ModelConfig } from "../core/config.ts";
import { JudgeQError } from "../core/errors.ts";
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
import { emptyBuffer, READBACK, STORAGE } from "./buffers.ts";
import { decode, type DecodeHost, LogitsRegions, Samplers } from "./decode.ts";
import { ForwardPass } from "./forward.ts";
import { GpuKvCache } from "./kv_cache.ts";
import type { GpuModel } from "./model.ts";
import { Readback } from "./readback.ts";
import { ParamRecords } from "./recorder.ts";
import { attentionMass, GpuQueryRows, keyNorms } from "./scoring.ts";

export { GpuQueryRows } from "./scoring.ts";

/** Records in the parameter buffer: enough for a few decode batches or many prefill chunks. */
const PARAM_RECORDS = 512;

export class GpuSession implements KvSession, DecodeHost {
  readonly config: ModelConfig;
  nextPosition = 0;
  /** Row of the forward pass's logits holding the current logits; -1 when none yet. */
  logitsRow = -1;
  readonly records: ParamRecords;
  readonly cache: GpuKvCache;
  readonly fwd: ForwardPass;
  readonly samplers: Samplers;
  readonly readback: Readback;
  private disposed = false;

  /** A new, empty session, or (with `from`) a copy of `from`'s cache and current logits. */
  constructor(readonly model: GpuModel, readonly capacity: number, from?: GpuSession) {
    const c = model.config, batch = model.options.decodeBatch;
    this.config = c;
    this.records = new ParamRecords(model.device, PARAM_RECORDS);
    const rec = from ? this.records.recorder() : null;
    this.cache = from && rec ? from.cache.clone(this.records, rec) : new GpuKvCache(
      this.records,
      model.kernels.gather,
      { nLayers: c.nLayers, nKvHeads: c.nKvHeads, headDim: c.headDim, capacity },
    );
    this.fwd = new ForwardPass(model, this.records, this.cache, {
      capacity,
      logitsRows: new LogitsRegions(batch).rows,
      tokens: Math.max(capacity, 2 * batch) + batch + 4,
    });
    this.samplers = new Samplers(model, this.records, this.fwd);
    this.readback = new Readback(model);
    if (from && rec) {
      if (from.logitsRow >= 0) {
        const bytes = c.vocabSize * 4, at = from.logitsRow * bytes;
        rec.copy(from.fwd.logits, at, this.fwd.logits, at, bytes);
      }
      rec.flush();
      this.nextPosition = from.nextPosition;
      this.logitsRow = from.logitsRow;
    }
  }

  /** Total queue syncs (readbacks) this session performed. */
  get syncs(): number {
    return this.readback.syncs;
  }

  private check() {
    if (this.disposed) throw new JudgeQError("internal", "the session was disposed");
    this.model.check();
  }

  async forward(input: ForwardInput, options: ForwardOptions = {}): Promise<ForwardResult> {
    this.check();
    const c = this.config, rows = input.kind === "tokens" ? input.tokens.length : input.count;
    const want = options.logits ?? "last";
    if (input.kind === "tokens") {
      for (const t of input.tokens) {
        if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) {
          throw new JudgeQError("invalid_request", `token id ${t} out of range`);
        }
      }
    } else if (input.rows.length < rows * c.dim) {
      throw new JudgeQError(
        "invalid_request",
        `embeddings: ${input.rows.length} floats for ${rows} rows of ${c.dim}`,
      );
    }
    if (rows === 0) {
      const last = want === "last" && this.logitsRow >= 0;
      return {
        logits: want === "all" ? new Float32Array(0) : last ? await this.currentLogits() : null,
        queries: options.captureQueries ? new GpuQueryRows([], null, 0, this.model) : null,
      };
    }
    return await this.prefill(input, rows, want, options.captureQueries ?? false);
  }

  /** Appends `rows` rows: the pass in chunks of rows, then the logits asked for. */
  private async prefill(
    input: ForwardInput,
    rows: number,
    want: NonNullable<ForwardOptions["logits"]>,
    captureQueries: boolean,
  ): Promise<ForwardResult> {
    const c = this.config, m = this.model, fwd = this.fwd, V = c.vocabSize, first = this.nextPosition;
    this.cache.ensureRoom(rows);
    m.ensureRope(first + rows);
    this.cache.writeMeta();
    let embIn: GPUBuffer | null = null;
    if (input.kind === "tokens") m.device.queue.writeBuffer(fwd.toks, 0, new Uint32Array(input.tokens));
    else {
      embIn = m.pool.acquire(rows * c.dim * 4, STORAGE);
      m.device.queue.writeBuffer(embIn, 0, input.rows, 0, rows * c.dim);
    }
    const qBytes = c.nHeads * c.headDim * 4;
    const capture = captureQueries
      ? emptyBuffer(m.device, c.nLayers * rows * qBytes, STORAGE, "queries")
      : null;
    const all = want === "all" ? m.pool.acquire(rows * V * 4, READBACK) : null;
    // "all" logits go through a chunk buffer that fits one binding.
    const lmRows = Math.max(1, Math.min(fwd.chunk, Math.floor(m.ctx.maxBinding / (V * 4))));
    const allChunk = all ? m.pool.acquire(lmRows * V * 4, STORAGE) : null;
    const allGroups = allChunk ? fwd.lmGroups(allChunk) : null;
    const rec = this.records.recorder();
    let last = 0;
    for (let c0 = 0; c0 < rows; c0 += fwd.chunk) {
      const n = Math.min(fwd.chunk, rows - c0);
      last = n;
      const splits = fwd.splits(rows);
      const off = rec.param({ rows: n, pos0: first + c0, step: c0, a: splits });
      if (embIn) rec.copy(embIn, c0 * c.dim * 4, fwd.x, 0, n * c.dim * 4);
      const cap = capture ? { buf: capture, stride: rows, row: c0 } : null;
      fwd.encode(rec, off, n, { embedded: embIn !== null, capture: cap, splits, lmHead: false });
      for (let r0 = 0; all && allChunk && allGroups && r0 < n; r0 += lmRows) {
        const k = Math.min(lmRows, n - r0);
        fwd.encodeLmHead(
          rec,
          allGroups,
          rec.param({ rows: k, pos0: 0, step: 0, rowStart: r0, outRow: 0 }),
          k,
        );
        rec.copy(allChunk, 0, all, (c0 + r0) * V * 4, k * V * 4);
      }
    }
    if (want !== "none") {
      const o = rec.param({ rows: 1, pos0: 0, step: 0, rowStart: last - 1, outRow: 0 });
      fwd.encodeLmHead(rec, fwd.lmGroups(fwd.logits), o, 1);
      this.logitsRow = 0;
    }
    this.cache.append(first, rows);
    this.nextPosition += rows;
    const positions = Array.from({ length: rows }, (_, i) => first + i);
    const queries = capture ? new GpuQueryRows(positions, capture, rows, m) : null;
    let logits: Float32Array | null = null;
    try {
      if (all) {
        rec.flush();
        logits = new Float32Array(await this.readback.map(all, rows * V * 4));
      } else if (want === "last") {
        logits = new Float32Array(await this.readback.copy(rec, fwd.logits, 0, V * 4));
      } else rec.flush();
    } finally {
      if (embIn) m.pool.release(embIn);
      if (allChunk) m.pool.release(allChunk);
    }
    return { logits, queries };
  }

  // deno-lint-ignore require-await
  async decode(o: DecodeOptions): Promise<DecodeResult> {
    this.check();
    if (this.logitsRow < 0) {
      throw new JudgeQError("invalid_request", "decode: no current logits (run a forward pass first)");
    }
    return decode(this, o);
  }

  // deno-lint-ignore require-await
  async attentionMass(queries: QueryRows, promptLength: number): Promise<Float32Array> {
    this.check();
    return attentionMass(this, queries, promptLength);
  }

  // deno-lint-ignore require-await
  async keyNorms(promptLength: number): Promise<Float32Array> {
    this.check();
    return keyNorms(this, promptLength);
  }

  // deno-lint-ignore require-await
  async keepPositions(kept: Int32Array[][], promptLength: number): Promise<void> {
    this.check();
    this.cache.keep(kept, promptLength);
  }

  // deno-lint-ignore require-await
  async truncateFrom(position: number): Promise<void> {
    this.check();
    this.cache.truncate(position);
    this.nextPosition = position;
  }

  mark(): CacheMark {
    return { counts: this.cache.mark(), nextPosition: this.nextPosition };
  }

  // deno-lint-ignore require-await
  async rewind(mark: CacheMark): Promise<void> {
    this.check();
    this.cache.rewind(mark.counts);
    this.nextPosition = mark.nextPosition;
  }

  async currentLogits(): Promise<Float32Array> {
    this.check();
    if (this.logitsRow < 0) throw new JudgeQError("invalid_request", "no current logits");
    const bytes = this.config.vocabSize * 4, rec = this.records.recorder();
    return new Float32Array(await this.readback.copy(rec, this.fwd.logits, this.logitsRow * bytes, bytes));
  }

  positions(): Promise<Int32Array[][]> {
    const c = this.config, cache = this.cache;
    return Promise.resolve(
      Array.from(
        { length: c.nLayers },
        (_, l) => Array.from({ length: c.nKvHeads }, (_, g) => cache.positionsOf(cache.slot(l, g)).slice()),
      ),
    );
  }

  kvBytes(): number {
    return this.cache.entries() * this.config.headDim * 2 * 4;
  }

  /** GPU: K/V segments (headroom included) and the pass's buffers; host: the positions mirror. */
  allocatedBytes(): number {
    if (this.disposed) return 0;
    return this.cache.allocatedBytes() + this.fwd.bytes() + this.cache.slots * this.capacity * 4;
  }

  /** The cached keys and values per (layer, KV head), [count][headDim] each (tests, debugging). */
  async readCache(): Promise<{ keys: Float32Array[]; values: Float32Array[] }> {
    this.check();
    const c = this.config, cache = this.cache, hd = c.headDim;
    const keys: Float32Array[] = [], values: Float32Array[] = [];
    const read = async (b: GPUBuffer) =>
      new Float32Array(await this.readback.copy(this.records.recorder(), b, 0, b.size));
    for (let l = 0; l < c.nLayers; l++) {
      const k = await read(cache.keys(l)), v = await read(cache.values(l));
      for (let g = 0; g < c.nKvHeads; g++) {
        const s = cache.slot(l, g), from = cache.base(s) * hd, to = from + cache.count(s) * hd;
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
    return Promise.resolve(new GpuSession(this.model, this.capacity, this));
  }

  async exportCache(): Promise<CacheSnapshot> {
    this.check();
    const c = this.config, cache = this.cache;
    const { keys, values } = await this.readCache();
    return {
      nLayers: c.nLayers,
      nKvHeads: c.nKvHeads,
      headDim: c.headDim,
      nextPosition: this.nextPosition,
      positions: Array.from({ length: cache.slots }, (_, s) => cache.positionsOf(s).slice()),
      keys,
      values,
      logits: this.logitsRow >= 0 ? await this.currentLogits() : null,
    };
  }

  /** Fills this new, empty session with a (checked) snapshot; its logits become row 0's. */
  load(snap: CacheSnapshot) {
    this.check();
    this.cache.load(snap.positions, snap.keys, snap.values);
    this.nextPosition = snap.nextPosition;
    if (snap.logits) {
      this.model.device.queue.writeBuffer(this.fwd.logits, 0, snap.logits);
      this.logitsRow = 0;
    } else this.logitsRow = -1;
  }

  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.cache.dispose();
    this.fwd.dispose();
    this.samplers.dispose();
    this.records.dispose();
  }
}
