/**
 * Reading results back to the CPU: the one place a session waits on the GPU (a "sync"). A readback
 * races the device's loss, so a lost device fails the call instead of hanging it.
 */
import { JudgeQError } from "../core/errors.ts";
import { READBACK } from "./buffers.ts";
import type { GpuModel } from "./model.ts";
import type { Recorder } from "./recorder.ts";

export class Readback {
  /** Total queue syncs (readbacks) performed. */
  syncs = 0;

  constructor(private readonly model: GpuModel) {}

  /** Copies `bytes` of `src` back to the CPU after submitting everything recorded: one sync. */
  async copy(rec: Recorder, src: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    const staging = this.model.pool.acquire(bytes, READBACK);
    rec.copy(src, offset, staging, 0, bytes);
    rec.flush();
    return await this.map(staging, bytes);
  }

  /** Maps a READBACK buffer (from the model's pool, released here) once the queue reaches it. */
  async map(staging: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    const ctx = this.model.ctx;
    this.syncs++;
    try {
      await Promise.race([
        staging.mapAsync(GPUMapMode.READ, 0, bytes),
        // device.ts sets ctx.lost from the same promise (registered first, so it is set by now).
        ctx.device.lost.then(() => {
          throw ctx.lost ?? new JudgeQError("device_lost", "GPU device lost");
        }),
      ]);
    } catch (e) {
      if (ctx.lost) throw ctx.lost;
      if (e instanceof JudgeQError) throw e;
      throw new JudgeQError("internal", `GPU readback failed: ${(e as Error).message}`);
    }
    const out = staging.getMappedRange(0, bytes).slice(0);
    staging.unmap();
    this.model.pool.release(staging);
    this.model.check();
    return out;
  }
}
