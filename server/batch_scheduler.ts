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
import {
  type BatchItem,
  type Executor,
  forwardBatch,
  type ForwardInput,
  type ForwardOptions,
  type ForwardResult,
  type KvSession,
} from "../core/executor.ts";
import { Cancelled, type HttpError } from "./errors.ts";
import { kvBoundBytes, KvLedger } from "./kv_ledger.ts";
import { rowsOf, ScheduledSession } from "./scheduled_session.ts";
import { YIELD_EVERY_MS } from "./jobs.ts";

export { ScheduledSession } from "./scheduled_session.ts";

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
  /** The KV reservations (kv_ledger.ts: the admission rule). */
  readonly ledger: KvLedger<ScheduledSession>;
  private running = false;
  private lastYield = performance.now();
  /** A 0 ms timer set before each step; it fires only if the event loop turns (see `loop`). */
  private marker: ReturnType<typeof setTimeout> | null = null;
  /** The marker fired: the event loop has polled I/O since it was set. */
  private polled = false;
  /** Steps run, rows run, since start. */
  steps = 0;
  rows = 0;
  last: StepInfo = { streams: 0, decodeRows: 0, rows: 0, ms: 0 };
  /** Called after every step (tests check invariants there). */
  onStep: ((info: StepInfo) => void) | null = null;

  constructor(readonly executor: Executor, readonly limits: BatchLimits) {
    if (!(limits.maxBatchTokens >= 1)) throw new RangeError("maxBatchTokens must be at least 1");
    this.ledger = new KvLedger(limits.kvCapBytes);
  }

  /** Bytes reserved by live sessions. */
  get kvReserved(): number {
    return this.ledger.reserved;
  }

  /** Bytes live sessions hold allocated now (never above `kvReserved`). */
  kvAllocated(): number {
    let n = 0;
    for (const s of this.sessions) n += s.inner.allocatedBytes();
    return n;
  }

  /** Sessions waiting for KV room. */
  get kvWaiting(): number {
    return this.ledger.waiting;
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
    return this.ledger.refusal(bytes);
  }

  /** Wraps an executor session; `firstReserve` is reserved before its first forward. */
  adopt(inner: KvSession, capacity: number, firstReserve: number): ScheduledSession {
    const s = new ScheduledSession(this, inner, capacity, firstReserve);
    this.sessions.add(s);
    return s;
  }

  /** Bytes a session's cache may hold allocated with at most `entries` entries per head (kv_ledger.ts). */
  boundBytes(entries: number, capacity = entries): number {
    return kvBoundBytes(this.executor.config, entries, capacity);
  }

  /** The bound for `s` holding `extra` more entries per head than its fullest head does now. */
  boundFor(s: ScheduledSession, extra: number): number {
    const most = s.inner.mark().counts.reduce((m, n) => Math.max(m, n), 0);
    return this.boundBytes(Math.min(s.capacity, most + extra), s.capacity);
  }

  /** Sets `s`'s reservation (see KvLedger.reserve). */
  reserve(
    s: ScheduledSession,
    bytes: number,
    lower = false,
    check: (() => Promise<void>) | null = null,
  ): Promise<void> {
    return this.ledger.reserve(s, bytes, lower, check);
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
    this.ledger.set(s, 0);
  }

  /** Runs `fn` between steps (a request's own work on its cache: scoring, pruning, copying). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.ops.push(() => fn().then(resolve, reject));
      this.kick();
    });
  }

  /** Holds the executor between steps until the returned function is called. */
  async hold(): Promise<() => void> {
    let release!: () => void;
    const released = new Promise<void>((r) => release = r);
    await new Promise<void>((held) => {
      this.exclusive(() => {
        held();
        return released;
      });
    });
    return release;
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
        this.marker ??= setTimeout(() => {
          this.marker = null;
          this.polled = true;
        }, 0);
        await this.run(step);
        if (this.polled) {
          // The step awaited work off this thread (native graphs), and the event loop polled I/O meanwhile:
          // no timer needed, and no extra sleep and wake-up per step, which a busy machine makes costly.
          this.polled = false;
          this.lastYield = performance.now();
        } else if (performance.now() - this.lastYield >= YIELD_EVERY_MS) {
          // Only a timer lets the event loop poll I/O (see jobs.ts): requests, disconnects, stream writes.
          await new Promise((r) => setTimeout(r, 0));
          this.polled = false;
          this.lastYield = performance.now();
        }
      }
    } finally {
      this.running = false;
      if (this.marker !== null) clearTimeout(this.marker);
      this.marker = null;
      this.polled = false;
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
