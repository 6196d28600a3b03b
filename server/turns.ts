/**
 * Fair use of the one executor by the jobs the queue admitted. A job computes only while it holds the
 * turn; it offers the turn back between decode batches (every token on the CPU executors, every batch on
 * the GPU), and the turn goes round-robin to the jobs waiting for it: a long generation can no longer
 * make a short one wait for all of it. A long prefill offers it between chunks of rows too
 * (ForwardOptions.between). Each job's time holding the turn is its executor time, checked against the
 * per-request limit whenever it offers the turn.
 */
import { HttpError } from "./errors.ts";

/**
 * How often the executor lets the event loop poll I/O (accept requests, read bodies, flush streams, notice
 * disconnects). Only a timer does: setImmediate and message channels run before the poll and starve the
 * server. A timer turn costs 1-2 ms, so yielding every 16 ms of executor time costs about a tenth of it.
 * It is one clock for all jobs: a job that yielded on its own clock would hold the turn while it slept, and
 * with several jobs the executor would sleep several times as often.
 */
export const YIELD_EVERY_MS = 16;

/** What a job over its time limit had produced, for the error it ends with. */
export interface PartialWork {
  outputs: { text: string; completion_tokens: number }[];
  completion_tokens: number;
}

/** A job ran past the per-request executor time limit: a 422 carrying what it had done. */
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

export class Ticket {
  /** Milliseconds this job has held the turn. */
  heldMs = 0;
  since = 0;
  wake: (() => void) | null = null;
  constructor(readonly limitMs: number | null) {}
}

export class Turns {
  private holder: Ticket | null = null;
  private readonly waiting: Ticket[] = [];
  private lastYield = performance.now();
  /** Times the turn went from a job to another one waiting (a measure of interleaving). */
  handovers = 0;

  /** Jobs waiting for the turn. */
  get depth(): number {
    return this.waiting.length;
  }

  /** Resolves once `t` holds the turn. */
  take(t: Ticket): Promise<void> {
    if (this.holder === null) {
      this.grant(t);
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      t.wake = resolve;
      this.waiting.push(t);
    });
  }

  /** Gives the turn up for good (the job is over); the next waiting job gets it. */
  release(t: Ticket) {
    const i = this.waiting.indexOf(t);
    if (i >= 0) {
      this.waiting.splice(i, 1); // never got it
      return;
    }
    if (this.holder !== t) return;
    t.heldMs += performance.now() - t.since;
    this.holder = null;
    const next = this.waiting.shift();
    if (next) this.grant(next);
  }

  /**
   * Between decode batches: throws TimeLimitExceeded past the job's limit; else, when others wait, goes to
   * the back of the line and resolves when the turn comes round again.
   */
  async offer(t: Ticket): Promise<void> {
    if (this.holder !== t) return;
    const now = performance.now(), used = t.heldMs + now - t.since;
    if (t.limitMs !== null && used > t.limitMs) throw new TimeLimitExceeded(t.limitMs, used);
    if (now - this.lastYield >= YIELD_EVERY_MS) {
      // The turn stays held: a job resumed now would compute before the poll and starve it again.
      await new Promise((r) => setTimeout(r, 0));
      this.lastYield = performance.now();
    }
    if (this.waiting.length === 0) return;
    this.handovers++;
    this.release(t);
    await this.take(t);
  }

  private grant(t: Ticket) {
    this.holder = t;
    t.since = performance.now();
    const wake = t.wake;
    t.wake = null;
    wake?.();
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
