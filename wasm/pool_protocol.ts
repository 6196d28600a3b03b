/**
 * The layout of the thread pool's control block, at address 0 of the shared memory, shared by the pool
 * (main thread) and its workers. A dispatch splits its jobs into chunks that threads claim one at a
 * time, so a thread the OS has descheduled only delays the chunk it holds, never the dispatch.
 */
/** Int32 slots. */
export const GENERATION = 0; // bumped once per dispatch; workers sleep on it
/** (generation & 0xffff) << 16 | next chunk: claims carry the dispatch they belong to. */
export const CLAIM = 1;
export const FINISHED = 2; // chunks completed in the current dispatch
export const STOP = 3; // 1: workers exit
export const JOBS = 4; // jobs in the current dispatch
export const CHUNKS = 5; // chunks in the current dispatch
export const FAILED = 6; // 1 + the index of a chunk whose kernel threw (a trap) in the current dispatch
/** Float64 job table: per job, the kernel index, the argument count, then the arguments. */
export const JOB_TABLE_BYTES = 64;
export const JOB_SLOTS = 24;
export const MAX_JOBS = 8;
export const CONTROL_BYTES = JOB_TABLE_BYTES + MAX_JOBS * JOB_SLOTS * 8;
/** Spins before a waiting thread sleeps: dispatches follow each other within microseconds. */
export const SPINS = 4000;

export interface WorkerInit {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
}

/** Claims the next chunk of dispatch `generation`, or returns -1 when none is left (or it is over). */
export function claimChunk(ctrl: Int32Array, generation: number): number {
  for (;;) {
    const v = Atomics.load(ctrl, CLAIM);
    if (v >>> 16 !== (generation & 0xffff) || (v & 0xffff) >= Atomics.load(ctrl, CHUNKS)) return -1;
    if (Atomics.compareExchange(ctrl, CLAIM, v, v + 1) === v) return v & 0xffff;
  }
}

/** Runs chunk c of every job in the table (kernel calls with thread index c of `chunks`). */
export function runChunk(
  fns: ((...a: number[]) => void)[],
  table: Float64Array,
  jobs: number,
  c: number,
  chunks: number,
) {
  for (let j = 0; j < jobs; j++) {
    const o = j * JOB_SLOTS, n = table[o + 1];
    const args: number[] = new Array(n + 2);
    for (let i = 0; i < n; i++) args[i] = table[o + 2 + i];
    args[n] = c;
    args[n + 1] = chunks;
    fns[table[o]](...args);
  }
}
