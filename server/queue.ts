/**
 * One executor, one job at a time: a bounded FIFO in front of it. Admission is decided synchronously, so
 * a handler knows whether it got a place (or a 429) before it commits to a streaming 200.
 */
import { HttpError } from "./errors.ts";

export class JobQueue {
  private readonly waiting: { run: () => void }[] = [];
  private running = 0;
  /** Jobs that gave their slot up while they wait (a stream whose client is not reading). */
  private parked = 0;
  private idleResolvers: (() => void)[] = [];
  /** Jobs refused because the queue was full, since start. */
  rejected = 0;

  constructor(readonly maxWaiting: number, readonly concurrency = 1) {}

  /** Jobs waiting for the executor. */
  get depth(): number {
    return this.waiting.length;
  }

  /** Jobs running on the executor now. */
  get inFlight(): number {
    return this.running;
  }

  /** Whether a job submitted now would be refused (429). */
  get full(): boolean {
    return this.running >= this.concurrency && this.waiting.length >= this.maxWaiting;
  }

  /** The 429 for a job refused because the queue is full (counted in `rejected`). */
  refusal(): HttpError {
    this.rejected++;
    return new HttpError(429, `the queue is full (${this.maxWaiting} waiting); retry later`, null, {
      "retry-after": "1",
    });
  }

  /**
   * Queues `job`; throws a 429 HttpError right away when the queue is full. A job whose signal aborts
   * while it waits leaves the queue and its promise rejects with the signal's reason.
   */
  submit<T>(job: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.running < this.concurrency) return this.start(job);
    if (this.waiting.length >= this.maxWaiting) throw this.refusal();
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal!.reason);
      };
      const waiter = {
        run: () => {
          signal?.removeEventListener("abort", onAbort);
          this.start(job).then(resolve, reject);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  /**
   * A running job gives its slot to the next job waiting until `wait` settles, then waits for a slot
   * again, ahead of the jobs queued: a job blocked on its client does not hold a place on the executor.
   */
  async park<T>(wait: Promise<T>): Promise<T> {
    this.running--;
    this.parked++;
    this.waiting.shift()?.run();
    try {
      return await wait;
    } finally {
      await new Promise<void>((resolve) => {
        const resume = () => {
          this.parked--;
          this.running++;
          resolve();
        };
        if (this.running < this.concurrency) resume();
        else this.waiting.unshift({ run: resume });
      });
    }
  }

  /** Resolves once nothing runs or waits (graceful shutdown). */
  idle(): Promise<void> {
    if (this.running === 0 && this.parked === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleResolvers.push(r));
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
