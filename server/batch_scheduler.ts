/**
 * Batched decoding across requests (issue #22). Every request's session is wrapped (`ScheduledSession`),
 * so the engine's plans run unchanged while their executor work goes through one loop: each step gathers
 * the decode rows of the streams that are decoding, then chunks of prompts waiting for prefill, up to
 * `maxBatchTokens` rows, and runs them as ONE `forwardBatch` call. Each stream samples its next token
 * (core/decode_loop.ts, the same sampler as a stream alone) and streams it out as soon as its step ends.
 * A request's other work on its cache (Judge Q's scoring, pruning, stripping, decode-time compression)
 * runs between steps, for that request alone.
 *
 * KV bytes are the admission currency: a session reserves an upper bound of what its cache will hold
 * (the plan's capacity until it starts decoding, then what it holds plus its tokens to come) before it
 * runs, waiting in line while the reservations of all live sessions would pass `kvCapBytes`. What pruning
 * frees is given back when decoding starts; a cancelled stream gives everything back at once.
 */
import { decodeTokens } from "../core/decode_loop.ts";
import {
  type BatchItem,
  type CacheMark,
  type CacheSnapshot,
  type DecodeOptions,
  type DecodeResult,
  type Executor,
  forwardBatch,
  type ForwardInput,
  type ForwardOptions,
  type ForwardResult,
  type KvSession,
  type QueryRows,
} from "../core/executor.ts";
import { Cancelled, HttpError } from "./errors.ts";
import { YIELD_EVERY_MS } from "./jobs.ts";

export interface BatchLimits {
  /** Rows (decode tokens + prefill tokens) one step runs at most. */
  maxBatchTokens: number;
  /** Cap on the KV bytes reserved by every live session (streams and kept contexts); null: none. */
  kvCapBytes: number | null;
}

/** What one step ran, for gauges and tests. */
export interface StepInfo {
  /** Sessions in the step. */
  streams: number;
  /** Of which decode rows (one each). */
  decodeRows: number;
  rows: number;
  ms: number;
}

/** A forward waiting for a step. */
interface Pending {
  owner: ScheduledSession;
  input: ForwardInput;
  options: Omit<ForwardOptions, "between">;
  /** Tokens of a splittable prefill not yet run; null for an item that runs whole. */
  rest: number[] | null;
  signal: AbortSignal | null;
  /** A decode row (one per stream and step). */
  decode: boolean;
  /** The request's hook between chunks of a split prefill: it may throw to stop it (cancelled, time limit). */
  between: (() => Promise<void>) | null;
  resolve(r: ForwardResult | null): void;
  reject(e: unknown): void;
  done: boolean;
}

/** One piece of a step: an item's rows, or the next chunk of a prefill. */
interface Piece {
  p: Pending;
  input: ForwardInput;
  options: Omit<ForwardOptions, "between">;
  last: boolean;
}

const rowsOf = (i: ForwardInput) => (i.kind === "tokens" ? i.tokens.length : i.count);

/** Query rows captured over several steps; attention mass is a sum over rows, so parts add up. */
class MergedRows implements QueryRows {
  readonly positions: number[];
  constructor(readonly parts: QueryRows[]) {
    this.positions = parts.flatMap((p) => p.positions);
  }
  dispose() {
    for (const p of this.parts) p.dispose();
  }
}

/** How often a request waiting for KV room is asked whether it should stop (client gone, time limit). */
const CHECK_EVERY_MS = 20;

/** The scheduler behind each wrapped executor. */
const schedulers = new WeakMap<Executor, BatchScheduler>();

/**
 * Before a request is queued: a plan of `capacity` positions per head whose cache can never fit the KV cap
 * of the scheduler behind `executor` (if any) is refused now, a 422 naming the cap, not after a stream began.
 */
export function refuseUnfitting(executor: Executor, capacity: number) {
  const s = schedulers.get(executor);
  const refused = s?.refusal(s.boundBytes(capacity));
  if (refused) throw refused;
}

export class BatchScheduler {
  /** Live sessions (created and not disposed). */
  readonly sessions = new Set<ScheduledSession>();
  /** Sessions inside `decode`: a step waits briefly for their next row. */
  private readonly decoding = new Set<ScheduledSession>();
  private readonly decodes: Pending[] = [];
  private readonly prefills: Pending[] = [];
  private readonly ops: (() => Promise<void>)[] = [];
  private readonly kvWaiters: { s: ScheduledSession; bytes: number; wake: () => void }[] = [];
  private running = false;
  private lastYield = performance.now();
  private reservedTotal = 0;
  /** Steps run, rows run, since start. */
  steps = 0;
  rows = 0;
  last: StepInfo = { streams: 0, decodeRows: 0, rows: 0, ms: 0 };
  /** Called after every step (tests check invariants there). */
  onStep: ((info: StepInfo) => void) | null = null;

  constructor(readonly executor: Executor, readonly limits: BatchLimits) {
    if (!(limits.maxBatchTokens >= 1)) throw new RangeError("maxBatchTokens must be at least 1");
  }

  /** Bytes reserved by live sessions. */
  get kvReserved(): number {
    return this.reservedTotal;
  }

  /** Bytes live sessions hold allocated now (never above `kvReserved`). */
  kvAllocated(): number {
    let n = 0;
    for (const s of this.sessions) n += s.inner.allocatedBytes();
    return n;
  }

  /** Sessions waiting for KV room. */
  get kvWaiting(): number {
    return this.kvWaiters.length;
  }

  /** An executor whose sessions run through this scheduler (what a request's model uses). */
  wrap(): Executor {
    const ex = this.executor;
    const wrapped: Executor = {
      kind: ex.kind,
      config: ex.config,
      description: ex.description,
      get lost() {
        return ex.lost;
      },
      forwardChunkRows: ex.forwardChunkRows,
      createSession: (capacity) =>
        this.adopt(ex.createSession(capacity), capacity, this.boundBytes(capacity)),
      restoreSession: async (snapshot, capacity) => {
        const inner = await this.exclusive(() => ex.restoreSession(snapshot, capacity));
        const s = this.adopt(inner, capacity, 0);
        try {
          await this.reserve(s, inner.allocatedBytes());
        } catch (e) {
          s.dispose();
          throw e;
        }
        return s;
      },
      dispose: () => {},
    };
    schedulers.set(wrapped, this);
    return wrapped;
  }

  /** The 422 for a cache of `bytes` that no waiting can make fit, or null. */
  refusal(bytes: number): HttpError | null {
    const cap = this.limits.kvCapBytes;
    if (cap === null || bytes <= cap) return null;
    return new HttpError(
      422,
      `the request's KV cache needs up to ${bytes} bytes, over this server's --kv-cache-mb cap of ${cap} bytes; ` +
        "ask for a shorter prompt, fewer max_tokens or a smaller compression budget",
      "kv_cache",
    );
  }

  /** Wraps an executor session; `firstReserve` is reserved before its first forward. */
  adopt(inner: KvSession, capacity: number, firstReserve: number): ScheduledSession {
    const s = new ScheduledSession(this, inner, capacity, firstReserve);
    this.sessions.add(s);
    return s;
  }

  /**
   * Bytes a session's cache may hold allocated with at most `entries` entries per head: storage grows by
   * half again (at least 16 entries, at most the capacity) on every executor; each entry holds K and V
   * (f32 at most) and its position; plus the current logits.
   */
  boundBytes(entries: number, capacity = entries): number {
    const c = this.executor.config;
    const room = Math.min(capacity, Math.max(16, Math.ceil(entries * 1.5)));
    return room * c.nLayers * c.nKvHeads * (2 * c.headDim * 4 + 4) + c.vocabSize * 4;
  }

  /** The bound for `s` holding `extra` more entries per head than its fullest head does now. */
  boundFor(s: ScheduledSession, extra: number): number {
    const most = s.inner.mark().counts.reduce((m, n) => Math.max(m, n), 0);
    return this.boundBytes(Math.min(s.capacity, most + extra), s.capacity);
  }

  /**
   * Sets `s`'s reservation to `bytes`: lowering is at once (waiters may then fit); raising waits in line
   * until the reservations fit the cap, polling `check` meanwhile (the request's hook: it throws once the
   * client left or the time limit passed, and the wait then ends with its error). A reservation that can
   * never fit is a 422 naming the cap.
   */
  async reserve(
    s: ScheduledSession,
    bytes: number,
    lower = false,
    check: (() => Promise<void>) | null = null,
  ): Promise<void> {
    if (bytes <= s.reserved) {
      if (lower && bytes < s.reserved) this.setReserved(s, bytes);
      return;
    }
    const cap = this.limits.kvCapBytes, refused = this.refusal(bytes);
    if (refused) throw refused;
    if (cap !== null && (this.kvWaiters.length > 0 || this.reservedTotal - s.reserved + bytes > cap)) {
      await new Promise<void>((resolve, reject) => {
        const poll = check
          ? setInterval(() =>
            check().catch((e) => {
              const i = this.kvWaiters.indexOf(waiter);
              if (i < 0) return; // granted meanwhile: the request's own code sees the error next
              this.kvWaiters.splice(i, 1);
              clearInterval(poll);
              reject(e);
              this.grant(); // those behind it may fit now
            }), CHECK_EVERY_MS)
          : undefined;
        const waiter = {
          s,
          bytes,
          wake: () => {
            clearInterval(poll);
            resolve();
          },
        };
        this.kvWaiters.push(waiter);
      });
      return;
    }
    this.setReserved(s, bytes);
  }

  private setReserved(s: ScheduledSession, bytes: number) {
    this.reservedTotal += bytes - s.reserved;
    s.reserved = bytes;
    this.grant();
  }

  /** Wakes waiters in arrival order while they fit (the first that does not fit keeps its place). */
  private grant() {
    const cap = this.limits.kvCapBytes ?? Infinity;
    while (this.kvWaiters.length > 0) {
      const w = this.kvWaiters[0];
      if (this.reservedTotal - w.s.reserved + w.bytes > cap) return;
      this.kvWaiters.shift();
      this.reservedTotal += w.bytes - w.s.reserved;
      w.s.reserved = w.bytes;
      w.wake();
    }
  }

  /** Lowers an idle session's reservation (a kept context's) to what it holds. */
  settle(s: KvSession) {
    if (s instanceof ScheduledSession) s.settle();
  }

  /** Forgets a disposed session: its reservation goes back at once. */
  release(s: ScheduledSession) {
    this.sessions.delete(s);
    this.decoding.delete(s);
    for (const q of [this.decodes, this.prefills]) {
      for (let i = q.length - 1; i >= 0; i--) {
        if (q[i].owner === s) this.cancel(q.splice(i, 1)[0]);
      }
    }
    this.setReserved(s, 0);
  }

  /** Runs `fn` between steps (a request's own work on its cache: scoring, pruning, copying). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.ops.push(() => fn().then(resolve, reject));
      this.kick();
    });
  }

  /** Queues rows of `s` for a step; resolves with their result, or null when `signal` aborted first. */
  submit(
    s: ScheduledSession,
    input: ForwardInput,
    options: Omit<ForwardOptions, "between">,
    signal: AbortSignal | null,
    decode: boolean,
    between: (() => Promise<void>) | null = null,
  ): Promise<ForwardResult | null> {
    if (signal?.aborted) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const splittable = input.kind === "tokens" && input.tokens.length > 1 && !options.captureQueries &&
        options.logits !== "all";
      const p: Pending = {
        owner: s,
        input,
        options,
        rest: splittable ? [...(input as { tokens: number[] }).tokens] : null,
        signal,
        decode,
        between,
        resolve: (r) => {
          p.done = true;
          signal?.removeEventListener("abort", onAbort);
          resolve(r);
        },
        reject: (e) => {
          p.done = true;
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
        done: false,
      };
      const onAbort = () => {
        for (const q of [this.decodes, this.prefills]) {
          const i = q.indexOf(p);
          if (i >= 0) q.splice(i, 1);
        }
        if (!p.done) p.resolve(null);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      (decode ? this.decodes : this.prefills).push(p);
      this.kick();
    });
  }

  private cancel(p: Pending) {
    if (!p.done) p.reject(new Cancelled());
  }

  noteDecoding(s: ScheduledSession, on: boolean) {
    if (on) this.decoding.add(s);
    else this.decoding.delete(s);
  }

  private kick() {
    if (this.running) return;
    this.running = true;
    queueMicrotask(() => this.loop());
  }

  private async loop() {
    try {
      for (;;) {
        await this.gatherReady();
        while (this.ops.length > 0) await this.ops.shift()!();
        const step = this.gather();
        if (step.length === 0) {
          if (this.ops.length > 0) continue;
          return; // `running` is cleared below with no await in between: no submission is missed
        }
        await this.run(step);
        if (performance.now() - this.lastYield >= YIELD_EVERY_MS) {
          // Only a timer lets the event loop poll I/O (see jobs.ts): requests, disconnects, stream writes.
          await new Promise((r) => setTimeout(r, 0));
          this.lastYield = performance.now();
        }
      }
    } finally {
      this.running = false;
    }
  }

  /**
   * Lets streams that just got their token submit their next row, so that a step carries every stream
   * that is ready: a stream still busy after that (a slow hook, its own scoring) joins the next step.
   */
  private async gatherReady() {
    for (let i = 0; i < 64; i++) {
      let missing = false;
      for (const s of this.decoding) {
        if (!this.decodes.some((p) => p.owner === s)) {
          missing = true;
          break;
        }
      }
      if (!missing) return;
      await Promise.resolve();
    }
  }

  /** Decode rows first (running streams are never held back), then prefill chunks, up to the budget. */
  private gather(): Piece[] {
    const budget = this.limits.maxBatchTokens;
    const step: Piece[] = [];
    let rows = 0;
    while (this.decodes.length > 0 && rows < budget) {
      const p = this.decodes.shift()!;
      step.push({ p, input: p.input, options: p.options, last: true });
      rows++;
    }
    let i = 0, prefilled = false;
    while (i < this.prefills.length && rows < budget) {
      const p = this.prefills[i];
      if (p.rest) {
        const n = Math.min(budget - rows, p.rest.length);
        const last = n === p.rest.length;
        const options = last ? p.options : { logits: "none" as const };
        step.push({ p, input: { kind: "tokens", tokens: p.rest.slice(0, n) }, options, last });
        rows += n;
        if (last) this.prefills.splice(i, 1);
        else {
          p.rest = p.rest.slice(n);
          i++;
        }
      } else {
        const n = rowsOf(p.input);
        // An item that cannot be split runs whole: alone over the budget only as the first prefill.
        if (rows + n > budget && prefilled) {
          i++;
          continue;
        }
        step.push({ p, input: p.input, options: p.options, last: true });
        rows += n;
        this.prefills.splice(i, 1);
      }
      prefilled = true;
    }
    return step;
  }

  private async run(step: Piece[]) {
    const items: BatchItem[] = step.map((t) => ({
      session: t.p.owner.inner,
      input: t.input,
      options: t.options,
    }));
    for (const t of step) t.p.owner.busy++;
    const t0 = performance.now();
    let results: ForwardResult[];
    try {
      results = await forwardBatch(this.executor, items);
    } catch (e) {
      for (const t of step) {
        const i = this.prefills.indexOf(t.p);
        if (i >= 0) this.prefills.splice(i, 1);
        if (!t.p.done) t.p.reject(e);
      }
      return;
    } finally {
      for (const t of step) t.p.owner.idle();
    }
    const rows = step.reduce((n, t) => n + rowsOf(t.input), 0);
    const decodeRows = step.filter((t) => t.p.decode).length;
    this.last = { streams: step.length, decodeRows, rows, ms: performance.now() - t0 };
    this.steps++;
    this.rows += rows;
    step.forEach((t, i) => {
      if (t.p.done) return;
      if (t.last) t.p.resolve(results[i]);
      else if (t.p.between) {
        // Between chunks of a long prefill: the request may stop here (the rows before stay cached).
        t.p.between().catch((e) => {
          const at = this.prefills.indexOf(t.p);
          if (at >= 0) this.prefills.splice(at, 1);
          if (!t.p.done) t.p.reject(e);
        });
      }
    });
    this.onStep?.(this.last);
  }
}

/**
 * A request's session as the engine sees it: forwards and decodes go through the scheduler's steps, other
 * work on the cache runs between steps. The inner session is the executor's own.
 */
export class ScheduledSession implements KvSession {
  reserved = 0;
  /** Steps in flight that include this session (its disposal waits for them). */
  busy = 0;
  private disposed = false;
  private freeLater = false;

  constructor(
    readonly scheduler: BatchScheduler,
    readonly inner: KvSession,
    readonly capacity: number,
    private firstReserve: number,
  ) {}

  get config() {
    return this.inner.config;
  }

  get nextPosition(): number {
    return this.inner.nextPosition;
  }

  /** Reserves what the rows may add (the plan's whole capacity before the first forward). */
  private async room(rows: number, check: (() => Promise<void>) | null) {
    const first = this.firstReserve;
    this.firstReserve = 0;
    await this.scheduler.reserve(this, Math.max(first, this.scheduler.boundFor(this, rows)), false, check);
  }

  async forward(input: ForwardInput, options: ForwardOptions = {}): Promise<ForwardResult> {
    this.live();
    const { between, ...rest } = options;
    await this.room(rowsOf(input), between ?? null);
    const r = await this.scheduler.submit(this, input, rest, null, false, between ?? null);
    if (r === null) throw new Cancelled();
    return r;
  }

  async decode(o: DecodeOptions): Promise<DecodeResult> {
    this.live();
    const s = this.scheduler;
    // What pruning freed goes back now: from here on the cache holds at most what it has plus the tokens.
    this.firstReserve = 0;
    await s.reserve(this, s.boundFor(this, o.maxTokens), true);
    let current = await s.exclusive(() => this.inner.currentLogits());
    const signal = o.signal ?? null;
    s.noteDecoding(this, true);
    try {
      return await decodeTokens({ ...o, signal: signal ?? undefined }, {
        logits: () => current,
        feed: async (token, capture) => {
          const r = await s.submit(
            this,
            { kind: "tokens", tokens: [token] },
            {
              logits: "last",
              captureQueries: capture,
            },
            signal,
            true,
          );
          if (r === null) return null; // aborted: the loop sees it and ends
          current = o.returnLogits ? r.logits!.slice() : r.logits!;
          return r.queries;
        },
      }, (rows) => new MergedRows(rows));
    } finally {
      s.noteDecoding(this, false);
    }
  }

  async attentionMass(queries: QueryRows, promptLength: number): Promise<Float32Array> {
    const parts = queries instanceof MergedRows ? queries.parts : [queries];
    return await this.scheduler.exclusive(async () => {
      let sum: Float32Array | null = null;
      for (const q of parts) {
        const m = await this.inner.attentionMass(q, promptLength);
        if (!sum) sum = m;
        else for (let i = 0; i < m.length; i++) sum[i] += m[i];
      }
      return sum ?? new Float32Array(0);
    });
  }

  keyNorms(promptLength: number): Promise<Float32Array> {
    return this.scheduler.exclusive(() => this.inner.keyNorms(promptLength));
  }

  keepPositions(kept: Int32Array[][], promptLength: number): Promise<void> {
    return this.scheduler.exclusive(() => this.inner.keepPositions(kept, promptLength));
  }

  truncateFrom(position: number): Promise<void> {
    return this.scheduler.exclusive(() => this.inner.truncateFrom(position));
  }

  mark(): CacheMark {
    return this.inner.mark();
  }

  /** After a rewind (an answer's end) the cache holds what it held before: its reservation follows. */
  async rewind(mark: CacheMark): Promise<void> {
    await this.scheduler.exclusive(() => this.inner.rewind(mark));
    this.settle();
  }

  currentLogits(): Promise<Float32Array> {
    return this.scheduler.exclusive(() => this.inner.currentLogits());
  }

  positions(): Promise<Int32Array[][]> {
    return this.scheduler.exclusive(() => this.inner.positions());
  }

  kvBytes(): number {
    return this.inner.kvBytes();
  }

  allocatedBytes(): number {
    return this.inner.allocatedBytes();
  }

  async clone(): Promise<KvSession> {
    const inner = await this.scheduler.exclusive(() => this.inner.clone());
    const copy = this.scheduler.adopt(inner, this.capacity, 0);
    await this.scheduler.reserve(copy, inner.allocatedBytes()).catch((e) => {
      copy.dispose();
      throw e;
    });
    return copy;
  }

  exportCache(): Promise<CacheSnapshot> {
    return this.scheduler.exclusive(() => this.inner.exportCache());
  }

  /** An idle session (a kept context between answers) reserves what it holds, no more. */
  settle() {
    if (this.disposed) return;
    this.firstReserve = 0;
    void this.scheduler.reserve(this, this.inner.allocatedBytes(), true);
  }

  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.scheduler.release(this);
    if (this.busy > 0) this.freeLater = true;
    else this.inner.dispose();
  }

  /** A step that included this session ended. */
  idle() {
    this.busy--;
    if (this.busy === 0 && this.freeLater) {
      this.freeLater = false;
      this.inner.dispose();
    }
  }

  private live() {
    if (this.disposed) throw new Error("the session was disposed");
  }
}
