/**
 * The decode scheduler. Decode runs in batches of steps recorded into one submission; the sampled
 * tokens stay on the GPU (each step's token is the next step's input) and are read back once per batch.
 * Batches are pipelined: batch k+1 is recorded and submitted (speculatively, continuing from batch k's
 * last token on the GPU) before batch k's tokens are read back, and batch k's readback is started
 * before that submit, so the readback latency (and, where submit is synchronous, the GPU time of the
 * next batch) overlaps. Batch k+1 writes its K/V after batch k's (step offsets) and its logits to the
 * next of three logits regions; when batch k stops, batch k+1 is discarded: its K/V entries lie past
 * the mirrored counts (invisible, overwritten later) and the logits rows batch k read are intact.
 */
import type { DecodeOptions, DecodeResult } from "../core/executor.ts";
import { seedState } from "../core/sampling.ts";
import { emptyBuffer, READBACK, STORAGE, UNIFORM } from "./buffers.ts";
import type { ForwardPass } from "./forward.ts";
import type { GpuKvCache } from "./kv_cache.ts";
import type { GpuModel } from "./model.ts";
import type { Readback } from "./readback.ts";
import type { ParamRecords } from "./recorder.ts";
import { GpuQueryRows } from "./scoring.ts";

/** Most estimated milliseconds of a speculative decode batch (the work wasted when the one before stops). */
const SPECULATE_MS = 250;

/** What the scheduler decodes with: a session's model, cache, pass and position state. */
export interface DecodeHost {
  readonly model: GpuModel;
  readonly cache: GpuKvCache;
  readonly fwd: ForwardPass;
  readonly records: ParamRecords;
  readonly readback: Readback;
  readonly samplers: Samplers;
  readonly capacity: number;
  /** Position of the next token fed; advanced over accepted tokens. */
  nextPosition: number;
  /** Row of the logits buffer holding the current logits (-1: none). */
  logitsRow: number;
}

/**
 * The logits buffer is three regions of batch + 1 rows, used in turn by decode batches: a batch's step s
 * samples from row base + s and writes row base + s + 1 (its first step reads the previous batch's last
 * row). A batch launched while its predecessor is in flight takes the region after the one holding the
 * row its predecessor's first step samples from, so it never overwrites it.
 */
export class LogitsRegions {
  static readonly COUNT = 3;
  readonly size: number;
  constructor(batch: number) {
    this.size = batch + 1;
  }
  get rows(): number {
    return LogitsRegions.COUNT * this.size;
  }
  /** First row of the region after the one holding `row`. */
  after(row: number): number {
    return ((Math.floor(row / this.size) + 1) % LogitsRegions.COUNT) * this.size;
  }
}

/**
 * Milliseconds per decode step, last measured on a model (launch to readback: an overestimate when the
 * next batch ran meanwhile). Shared by the model's sessions, so a new session knows whether batches are
 * cheap enough to speculate.
 */
const stepMs = new WeakMap<GpuModel, number>();

/** The samplers' buffers and bind groups (greedy argmax, or temperature / top-k / top-p). */
export class Samplers {
  private readonly settings: GPUBuffer;
  private readonly rng: GPUBuffer;
  private readonly prob: GPUBuffer;
  readonly argmax: GPUBindGroup;
  readonly sample: GPUBindGroup;

  constructor(private readonly model: GpuModel, records: ParamRecords, fwd: ForwardPass) {
    const d = model.device, k = model.kernels;
    this.settings = emptyBuffer(d, 16, UNIFORM, "sampling");
    this.rng = emptyBuffer(d, 16, STORAGE, "rng");
    this.prob = emptyBuffer(d, model.config.vocabSize * 4, STORAGE, "prob");
    this.argmax = records.bind(k.argmax, { L: fwd.logits, TOK: fwd.toks });
    this.sample = records.bind(k.sample, {
      SP: this.settings,
      L: fwd.logits,
      TOK: fwd.toks,
      RNG: this.rng,
      PROB: this.prob,
    });
  }

  /** Writes the sampling settings and the seeded generator state. */
  configure(s: DecodeOptions["sampling"]) {
    const sp = new DataView(new ArrayBuffer(16));
    sp.setFloat32(0, s.temperature, true);
    sp.setFloat32(4, s.topP, true);
    sp.setUint32(8, Math.max(0, Math.floor(s.topK)), true);
    this.model.device.queue.writeBuffer(this.settings, 0, sp.buffer);
    this.model.device.queue.writeBuffer(this.rng, 0, new Uint32Array([seedState(s.seed), 0, 0, 0]));
  }

  dispose() {
    for (const b of [this.settings, this.rng, this.prob]) b.destroy();
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

export function decode(host: DecodeHost, o: DecodeOptions): Promise<DecodeResult> {
  return new DecodeScheduler(host, o).run();
}

class DecodeScheduler {
  private readonly greedy: boolean;
  private readonly batch: number;
  private readonly regions: LogitsRegions;
  private readonly tokens: number[] = [];
  private readonly logits: Float32Array[] | null;
  private readonly capture: GPUBuffer | null;
  private readonly capStride: number;
  /** Positions of the captured query rows. */
  private readonly captured: number[] = [];
  private finishReason: DecodeResult["finishReason"] = "length";
  /** Steps of the next batch: streaming callers get a first small batch quickly, then full batches. */
  private size: number;
  /** Logits row the next batch's first step samples from (on the GPU once its producer ran). */
  private prevRow: number;
  private inflight: DecodeBatch | null = null;
  /** Tokens submitted (accepted or in flight) so far. */
  private planned = 0;

  constructor(private readonly host: DecodeHost, private readonly o: DecodeOptions) {
    const c = host.model.config;
    this.greedy = o.sampling.temperature <= 0;
    this.batch = host.model.options.decodeBatch;
    this.regions = new LogitsRegions(this.batch);
    this.logits = o.returnLogits ? [] : null;
    this.capStride = Math.max(o.maxTokens, 1);
    const qBytes = c.nHeads * c.headDim * 4;
    this.capture = o.captureQueries
      ? emptyBuffer(host.model.device, c.nLayers * this.capStride * qBytes, STORAGE, "queries")
      : null;
    this.size = o.onTokens ? Math.min(4, this.batch) : this.batch;
    this.prevRow = host.logitsRow;
  }

  async run(): Promise<DecodeResult> {
    const host = this.host, o = this.o, syncs0 = host.readback.syncs;
    if (!this.greedy) host.samplers.configure(o.sampling);
    try {
      this.inflight = this.launch();
      while (this.inflight) {
        const cur: DecodeBatch = this.inflight;
        // Speculate: submit the next batch before reading this one back (null when out of budget, or
        // when it would need the cache to grow while this batch's entries are not yet mirrored).
        this.inflight = this.launch();
        const data = await cur.data;
        stepMs.set(host.model, (performance.now() - cur.t0) / cur.B);
        if (await this.accept(cur, data)) break;
        if (o.signal?.aborted) {
          this.finishReason = "aborted";
          break;
        }
        this.inflight ??= this.launch();
      }
    } finally {
      // A speculative batch past a stop (or an error) is discarded once its readback settles.
      if (this.inflight) await this.inflight.data.catch(() => undefined);
    }
    if (o.signal?.aborted && this.finishReason === "length" && this.tokens.length < o.maxTokens) {
      this.finishReason = "aborted";
    }
    return {
      tokens: this.tokens,
      finishReason: this.finishReason,
      logits: this.logits,
      queries: this.capture
        ? new GpuQueryRows(this.captured, this.capture, this.capStride, host.model)
        : null,
      syncs: host.readback.syncs - syncs0,
    };
  }

  /** Accepts a batch's tokens up to a stop or the budget (true when decoding is done). */
  private async accept(cur: DecodeBatch, data: ArrayBuffer): Promise<boolean> {
    const host = this.host, o = this.o, V = host.model.config.vocabSize;
    const ids = new Uint32Array(data, 0, cur.B);
    // `fed` of the accepted tokens had their K/V appended.
    const fresh: number[] = [];
    let fed = cur.F, done = false;
    host.logitsRow = cur.lastOut;
    for (let s = 0; s < cur.B; s++) {
      this.logits?.push(new Float32Array(data, cur.tokBytes + s * V * 4, V).slice());
      const t = ids[s];
      const stop = o.stopTokenIds.includes(t);
      if (stop) this.finishReason = "stop";
      else {
        this.tokens.push(t);
        fresh.push(t);
      }
      if (stop || this.tokens.length === o.maxTokens) {
        done = true;
        fed = s;
        host.logitsRow = cur.inRows[s];
        break;
      }
    }
    for (let s = 0; s < fed; s++) this.captured.push(host.nextPosition + s);
    host.cache.append(host.nextPosition, fed);
    host.nextPosition += fed;
    if (fresh.length) await o.onTokens?.(fresh);
    return done;
  }

  /** Makes room for a batch of F fed steps after `pending` in-flight ones; false when it should wait. */
  private reserve(B: number, F: number, pending: number, remaining: number): boolean {
    const cache = this.host.cache;
    if (this.inflight) {
      // A speculative batch is wasted work when the one before it stops: only speculate when a batch
      // is cheap (where submit is synchronous, as on GL, the waste is paid before the stop is seen).
      if (!((stepMs.get(this.host.model) ?? Infinity) * B <= SPECULATE_MS)) return false;
      if (cache.needsGrowth(pending + F)) return false; // growing moves the cache: drain first
      cache.ensureRoom(pending + F);
      return true;
    }
    // Room for this batch and, where capacity allows, the next one (so it needs no growth).
    const next = Math.max(0, Math.min(Math.min(this.size * 2, this.batch), remaining - B));
    const most = this.host.capacity - cache.maxCount();
    cache.ensureRoom(F + next <= most ? F + next : F);
    return true;
  }

  /** Records and submits the next batch (null when out of budget or not worth speculating). */
  private launch(): DecodeBatch | null {
    const host = this.host, o = this.o, V = host.model.config.vocabSize;
    const remaining = o.maxTokens - this.planned;
    if (remaining <= 0 || o.signal?.aborted) return null;
    const B = Math.min(this.size, remaining);
    // The last token of the whole decode is sampled but not fed (as the reference does).
    const F = B < remaining ? B : B - 1;
    const pending = this.inflight ? this.inflight.F : 0;
    if (!this.reserve(B, F, pending, remaining)) return null;
    this.size = Math.min(this.size * 2, this.batch);
    this.planned += B;
    const t0 = performance.now();
    host.model.ensureRope(host.nextPosition + pending + F);
    host.cache.writeMeta();
    const rec = host.records.recorder();
    if (!rec.fits(B)) rec.flush();
    const splits = host.fwd.splits(pending + B);
    const base = this.regions.after(this.prevRow);
    const inRows: number[] = [];
    for (let s = 0; s < B; s++) {
      const inRow = s === 0 ? this.prevRow : base + s;
      inRows.push(inRow);
      const step = pending + s;
      const off = rec.param({
        rows: 1,
        pos0: host.nextPosition + step,
        step,
        inRow,
        outRow: base + s + 1,
        a: splits,
      });
      // Sample this step's token from its logits row, then (unless it is the last) feed it.
      const k = host.model.kernels;
      if (this.greedy) rec.dispatch(k.argmax, host.samplers.argmax, off, 1);
      else rec.dispatch(k.sample, host.samplers.sample, off, 1);
      if (s >= F) continue;
      const capture = this.capture
        ? { buf: this.capture, stride: this.capStride, row: this.captured.length + step }
        : null;
      host.fwd.encode(rec, off, 1, { capture, splits, lmHead: true });
    }
    const tokBytes = Math.ceil((B * 4) / 16) * 16;
    const bytes = tokBytes + (this.logits ? B * V * 4 : 0);
    const staging = host.model.pool.acquire(bytes, READBACK);
    rec.copy(host.fwd.toks, pending * 4, staging, 0, B * 4);
    if (this.logits) {
      const logits = host.fwd.logits;
      rec.copy(logits, this.prevRow * V * 4, staging, tokBytes, V * 4);
      if (B > 1) rec.copy(logits, (base + 1) * V * 4, staging, tokBytes + V * 4, (B - 1) * V * 4);
    }
    rec.flush();
    this.prevRow = base + B;
    // Start the readback now: its latency overlaps the next batch's recording and submission.
    return { B, F, inRows, lastOut: base + B, tokBytes, t0, data: host.readback.map(staging, bytes) };
  }
}
