/**
 * How a request's job gets to run: the one admission line in front of the batch scheduler. At most
 * `streams` jobs run at once (their rows share each step of server/batch_scheduler.ts); up to `maxWaiting`
 * more wait in arrival order, and one past that is a 429, decided synchronously so that a handler knows
 * before it commits to a streaming 200. A running job checks, between decode steps and prefill chunks,
 * whether its client left or its time is up; a stream whose client is not reading parks: it gives its slot
 * to the next job waiting until the client reads, then takes one again ahead of the line.
 */
import { Cancelled, HttpError, isDeviceLost, Stalled } from "./errors.ts";
import type { ServerMetrics } from "./metrics.ts";

/**
 * How often the executor lets the event loop poll I/O (accept requests, read bodies, flush streams, notice
 * disconnects). Only a timer does: setImmediate and message channels run before the poll and starve the
 * server. A timer turn costs 1-2 ms, so yielding every 16 ms of executor time costs about a tenth of it.
 */
export const YIELD_EVERY_MS = 16;

/** What a job over its time limit had produced, for the error it ends with. */
export interface PartialWork {
  outputs: { text: string; completion_tokens: number }[];
  completion_tokens: number;
}

/** A job ran past the per-request time limit: a 422 carrying what it had done. */
export class TimeLimitExceeded extends HttpError {
  set partial(p: PartialWork) {
    this.details = { partial: p };
  }
  constructor(readonly limitMs: number, readonly usedMs: number) {
    super(
      422,
      `the request used ${
        Math.round(usedMs)
      } ms of executor time, over this server's limit of ${limitMs} ms ` +
        "per request; ask for fewer tokens or questions",
      "max_tokens",
    );
  }
}

/** One job at a time on a resource (a kept context's session), in arrival order. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  /** Resolves with the release function once the lock is held. */
  lock(): Promise<() => void> {
    let release!: () => void;
    const held = new Promise<void>((r) => release = r);
    const before = this.tail;
    this.tail = before.then(() => held);
    return before.then(() => release);
  }
}

export interface Timed<T> {
  value: T;
  queueMs: number;
  runMs: number;
}

/**
 * A job's work. `pass` is its check point between decode steps and prefill chunks: it rejects with
 * Cancelled once the client left, or TimeLimitExceeded past the limit. `park` waits for `wait` (a stream's
 * client to read) off its slot.
 */
export type Work<T> = (pass: () => Promise<void>, park: (wait: Promise<void>) => Promise<void>) => Promise<T>;

export interface JobLimits {
  /** Jobs running at once (streams in the batch). */
  streams: number;
  /** Jobs that may wait for a slot; one more is a 429. */
  maxWaiting: number;
  /** Wall time a job may run, less its time parked; null: no limit. */
  maxRequestMs: number | null;
  /** How long a parked stream may wait for its client before it is cut (Stalled); null: no limit. */
  streamStallMs: number | null;
}

export class Jobs {
  private readonly waiting: { run: () => void }[] = [];
  private running = 0;
  /** Jobs that gave their slot up while they wait (a stream whose client is not reading). */
  private parked = 0;
  private idleResolvers: (() => void)[] = [];
  /** Streams parked now, waiting for their client to read. */
  stalledNow = 0;
  /** Set by the first device loss a job reports. */
  deviceLost = false;

  constructor(readonly limits: JobLimits, private readonly metrics: ServerMetrics) {}

  /** Jobs waiting for a slot. */
  get depth(): number {
    return this.waiting.length;
  }

  /** Jobs running now (parked ones not counted). */
  get inFlight(): number {
    return this.running;
  }

  /**
   * The admission check, before any work is spent on a request: a 429 (counted) when a job submitted now
   * would find no slot and no place in the line.
   */
  admit() {
    if (this.running >= this.limits.streams && this.waiting.length >= this.limits.maxWaiting) {
      this.metrics.rejected.inc();
      throw new HttpError(429, `the queue is full (${this.limits.maxWaiting} waiting); retry later`, null, {
        "retry-after": "1",
      });
    }
  }

  /**
   * Runs `work` once a slot is free (429 thrown synchronously when the line is full), after `exclusive`
   * (a kept context's lock), and records its outcome. A job whose client left rejects with Cancelled;
   * one aborted while waiting leaves the line.
   */
  run<T>(signal: AbortSignal, work: Work<T>, exclusive?: Mutex): Promise<Timed<T>> {
    if (signal.aborted) return Promise.reject(new Cancelled());
    const queued = performance.now();
    const job = async (): Promise<Timed<T>> => {
      const started = performance.now();
      this.metrics.queueWait.observe((started - queued) / 1000);
      const unlock = exclusive ? await exclusive.lock() : null;
      try {
        if (signal.aborted) throw new Cancelled();
        let parkedMs = 0; // waiting for a slow client is not the job's time
        const value = await work(
          () => this.pass(signal, started + parkedMs),
          async (wait) => {
            const t = performance.now();
            try {
              await this.park(wait, signal);
            } finally {
              parkedMs += performance.now() - t;
            }
          },
        );
        this.metrics.jobs.inc({ outcome: "ok" });
        return { value, queueMs: started - queued, runMs: performance.now() - started };
      } catch (e) {
        const cancelled = !(e instanceof Stalled) && (e instanceof Cancelled || signal.aborted);
        const outcome = e instanceof Stalled
          ? "stalled"
          : cancelled
          ? "cancelled"
          : e instanceof TimeLimitExceeded
          ? "time_limit"
          : "error";
        this.metrics.jobs.inc({ outcome });
        if (isDeviceLost(e)) this.deviceLost = true;
        throw cancelled ? new Cancelled() : e;
      } finally {
        unlock?.();
      }
    };
    if (this.running < this.limits.streams) return this.start(job);
    this.admit();
    return new Promise<Timed<T>>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(new Cancelled());
      };
      const waiter = {
        run: () => {
          signal.removeEventListener("abort", onAbort);
          this.start(job).then(resolve, reject);
        },
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  /** Resolves once nothing runs, is parked or waits (graceful shutdown). */
  idle(): Promise<void> {
    if (this.running === 0 && this.parked === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleResolvers.push(r));
  }

  /**
   * A job's check point: its rows share every step with the others', so there is no turn to offer; it
   * stops when its client left, or once its wall time since it started (less time parked) passes the
   * per-request limit.
   */
  private pass(signal: AbortSignal, since: number): Promise<void> {
    if (signal.aborted) return Promise.reject(new Cancelled());
    const limit = this.limits.maxRequestMs, used = performance.now() - since;
    if (limit !== null && used > limit) return Promise.reject(new TimeLimitExceeded(limit, used));
    return Promise.resolve();
  }

  /**
   * A job waits for `wait` off its slot (the next job in line takes it), then takes a slot again ahead of
   * the line. Past --stream-stall-timeout it ends with Stalled; a client gone ends the wait at once (the
   * decode loop then sees its signal).
   */
  private async park(wait: Promise<void>, signal: AbortSignal) {
    const limit = this.limits.streamStallMs;
    this.stalledNow++;
    this.running--;
    this.parked++;
    this.waiting.shift()?.run();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gone = Promise.withResolvers<void>();
    const onAbort = () => gone.resolve();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      await Promise.race([
        wait,
        gone.promise,
        ...(limit === null ? [] : [
          new Promise<void>((_, reject) => timer = setTimeout(() => reject(new Stalled(limit)), limit)),
        ]),
      ]);
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      this.stalledNow--;
      await new Promise<void>((resolve) => {
        const resume = () => {
          this.parked--;
          this.running++;
          resolve();
        };
        if (this.running < this.limits.streams) resume();
        else this.waiting.unshift({ run: resume });
      });
    }
  }

  private async start<T>(job: () => Promise<T>): Promise<T> {
    this.running++;
    try {
      return await job();
    } finally {
      this.running--;
      const next = this.waiting.shift();
      if (next) next.run();
      else if (this.running === 0 && this.parked === 0) {
        for (const r of this.idleResolvers.splice(0)) r();
      }
    }
  }
}
