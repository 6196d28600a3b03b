/// <reference lib="deno.worker" />
/**
 * A pool thread: sleeps until a dispatch, claims and runs its chunks until none is left, repeats.
 */
import { instantiate, KERNEL_NAMES } from "./kernel_abi.ts";
import {
  CHUNKS,
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

self.onmessage = (e: MessageEvent<WorkerInit>) => {
  const { module, memory } = e.data;
  const kernels = instantiate(module, memory);
  const fns = KERNEL_NAMES.map((n) => kernels[n]);
  const ctrl = new Int32Array(memory.buffer, 0, 16);
  // The job table sits below any growth of the memory, so one view serves for good.
  const table = new Float64Array(memory.buffer, JOB_TABLE_BYTES, MAX_JOBS * JOB_SLOTS);
  self.postMessage("ready");
  let seen = Atomics.load(ctrl, GENERATION);
  for (;;) {
    let spins = 0;
    while (Atomics.load(ctrl, GENERATION) === seen) {
      if (++spins > SPINS) Atomics.wait(ctrl, GENERATION, seen);
    }
    seen = Atomics.load(ctrl, GENERATION);
    if (Atomics.load(ctrl, STOP)) break;
    for (let c = claimChunk(ctrl, seen); c >= 0; c = claimChunk(ctrl, seen)) {
      try {
        runChunk(fns, table, Atomics.load(ctrl, JOBS), c, Atomics.load(ctrl, CHUNKS));
      } catch {
        // Counted as finished all the same, so the dispatch ends; the main thread raises the failure.
        Atomics.compareExchange(ctrl, FAILED, 0, c + 1);
      }
      if (Atomics.add(ctrl, FINISHED, 1) + 1 === Atomics.load(ctrl, CHUNKS)) Atomics.notify(ctrl, FINISHED);
    }
  }
  self.close();
};
