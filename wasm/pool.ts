/**
 * Runs kernels on the main thread plus `threads - 1` workers sharing one memory. A dispatch is a list
 * of jobs, cut into `chunks` pieces (kernel calls with thread index c of `chunks`; every job's chunk c
 * runs in order on one thread, so a later job may read what an earlier one wrote in the same chunk).
 * Threads claim chunks until none is left; the dispatch returns when all are done (a barrier). Small
 * work runs on the main thread alone. Idle workers sleep; they are stopped by
 * `dispose`, or after a quiet spell so that a forgotten executor never keeps a process alive.
 */
import type { Arena } from "./arena.ts";
import { instantiate, KERNEL_NAMES, type KernelName, type Kernels } from "./kernel_abi.ts";
import {
  CHUNKS,
  CLAIM,
  claimChunk,
  FAILED,
  FINISHED,
  GENERATION,
  JOB_SLOTS,
  JOB_TABLE_BYTES,
  JOBS,
  MAX_JOBS,
  runChunk,
  SPINS,
  STOP,
  type WorkerInit,
} from "./pool_protocol.ts";

export interface Job {
  kernel: KernelName;
  args: number[];
}

/** Multiply-adds below which a dispatch is not worth waking the workers for. */
export const PARALLEL_MIN_WORK = 1 << 16;
const IDLE_STOP_MS = 3000;

/** Chunks per dispatch for a thread count: kernels' per-thread scratch is sized by this. */
export function chunksFor(threads: number): number {
  return threads === 1 ? 1 : threads * 4;
}

export class ThreadPool {
  readonly kernels: Kernels;
  private workers: Worker[] = [];
  private starting: Promise<void> | null = null;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly ctrl: Int32Array;
  /** The job table: below any growth of the memory, so one view serves for good (as in the workers). */
  private readonly table: Float64Array;
  private readonly fns: ((...a: number[]) => void)[];
  private disposed = false;
  /** Chunks per dispatch: a few per thread, so a late thread's share is taken over by the others. */
  readonly chunks: number;
  /** Dispatches run so far, and those of them split over the threads (each one ends in a barrier). */
  readonly counts = { dispatches: 0, barriers: 0 };

  constructor(
    private readonly module: WebAssembly.Module,
    private readonly arena: Arena,
    readonly threads: number,
    private readonly minWork = PARALLEL_MIN_WORK,
  ) {
    this.kernels = instantiate(module, arena.memory);
    this.ctrl = new Int32Array(arena.memory.buffer, 0, 16);
    this.table = new Float64Array(arena.memory.buffer, JOB_TABLE_BYTES, MAX_JOBS * JOB_SLOTS);
    this.fns = KERNEL_NAMES.map((n) => this.kernels[n]);
    this.chunks = chunksFor(threads);
  }

  /** Starts the workers (if stopped); dispatches wait for this. */
  ready(): Promise<void> {
    if (this.threads === 1 || this.workers.length > 0) return Promise.resolve();
    this.starting ??= this.start().finally(() => (this.starting = null));
    return this.starting;
  }

  private async start() {
    Atomics.store(this.ctrl, STOP, 0);
    const workers = Array.from(
      { length: this.threads - 1 },
      () => new Worker(new URL("./worker.ts", import.meta.url), { type: "module" }),
    );
    await Promise.all(workers.map((w) =>
      new Promise<void>((resolve, reject) => {
        w.onmessage = () => resolve();
        w.onerror = (e) => {
          e.preventDefault();
          reject(new Error(`worker failed to start: ${e.message}`));
        };
        const init: WorkerInit = { module: this.module, memory: this.arena.memory };
        w.postMessage(init);
      })
    ));
    this.workers = workers;
  }

  /** Told of every dispatch and its wall time (bench/wasm_decode_profile.ts); null: nothing timed. */
  observer: ((jobs: Job[], ms: number) => void) | null = null;

  /** Runs the jobs on every thread (or on this one when `work` is small) and returns when all are done. */
  run(jobs: Job[], work: number) {
    const observer = this.observer;
    if (observer === null) return this.dispatch(jobs, work);
    const t = performance.now();
    this.dispatch(jobs, work);
    observer(jobs, performance.now() - t);
  }

  private dispatch(jobs: Job[], work: number) {
    if (this.disposed) throw new Error("thread pool disposed");
    this.counts.dispatches++;
    if (this.threads === 1 || work < this.minWork || this.workers.length === 0) {
      for (const j of jobs) this.kernels[j.kernel](...j.args, 0, 1);
      return;
    }
    if (jobs.length > MAX_JOBS) throw new RangeError(`at most ${MAX_JOBS} jobs per dispatch`);
    this.counts.barriers++;
    const table = this.table;
    jobs.forEach((j, i) => {
      table[i * JOB_SLOTS] = KERNEL_NAMES.indexOf(j.kernel);
      table[i * JOB_SLOTS + 1] = j.args.length;
      table.set(j.args, i * JOB_SLOTS + 2);
    });
    const ctrl = this.ctrl, chunks = this.chunks;
    const generation = (Atomics.load(ctrl, GENERATION) + 1) | 0;
    Atomics.store(ctrl, JOBS, jobs.length);
    Atomics.store(ctrl, CHUNKS, chunks);
    Atomics.store(ctrl, FINISHED, 0);
    Atomics.store(ctrl, FAILED, 0);
    Atomics.store(ctrl, CLAIM, (generation & 0xffff) << 16);
    Atomics.store(ctrl, GENERATION, generation);
    Atomics.notify(ctrl, GENERATION);
    let failure: unknown = null;
    for (let c = claimChunk(ctrl, generation); c >= 0; c = claimChunk(ctrl, generation)) {
      try {
        runChunk(this.fns, table, jobs.length, c, chunks);
      } catch (e) {
        failure ??= e;
      }
      Atomics.add(ctrl, FINISHED, 1);
    }
    let spins = 0;
    for (let done = Atomics.load(ctrl, FINISHED); done < chunks; done = Atomics.load(ctrl, FINISHED)) {
      if (++spins > SPINS) Atomics.wait(ctrl, FINISHED, done, 1);
    }
    const failed = Atomics.load(ctrl, FAILED);
    if (failure || failed) {
      const what = jobs.map((j) => j.kernel).join(", ");
      throw new Error(
        `wasm kernel failed (${what}): ${
          failure ? (failure as Error).message : `in a worker, chunk ${failed - 1}`
        }`,
      );
    }
    this.armIdleStop();
  }

  private armIdleStop() {
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    const timer = setTimeout(() => this.stopWorkers(), IDLE_STOP_MS);
    this.idleTimer = timer;
    // Deno: the timer alone does not keep the process alive (idle workers do, until it fires).
    (globalThis as { Deno?: { unrefTimer?(id: unknown): void } }).Deno?.unrefTimer?.(timer);
  }

  private stopWorkers() {
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (this.workers.length === 0) return;
    Atomics.store(this.ctrl, STOP, 1);
    Atomics.add(this.ctrl, GENERATION, 1);
    Atomics.notify(this.ctrl, GENERATION);
    for (const w of this.workers) w.terminate();
    this.workers = [];
  }

  dispose() {
    this.stopWorkers();
    this.disposed = true;
  }
}
