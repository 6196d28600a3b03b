/**
 * KV bytes as the admission currency of batched decoding (issue #22): every live session holds a
 * reservation, the sum of reservations never passes the cap, and a session whose reservation must rise
 * waits in line (arrival order) until it fits. Lowering is at once and wakes whoever then fits.
 *
 * The rule the scheduler follows with it (server/batch_scheduler.ts, scheduled_session.ts):
 * - Before its first forward a session reserves its transient peak: the plan's whole capacity (the prompt,
 *   Judge Q's 32 soft rows, the tokens to come), as its cache may grow to that while it prefills and scores.
 * - When it starts decoding, its cache has been pruned and stripped: it then lays its room out for exactly
 *   what it holds plus its `max_tokens` (executors with `reserveRoom`) and its reservation drops to exactly
 *   the bytes it holds, so a stream that keeps 25% of its prompt holds about a quarter of the bytes and
 *   more streams decode at once. Executors without `reserveRoom` keep the growth bound (half again).
 * - The peaks of streams prefilling at once are thus reserved beside the decoding streams' holds: the
 *   prefill headroom is whatever the decoding streams leave free, shared in arrival order, and the sum of
 *   peaks and holds never passes the cap, so neither does what is allocated.
 */
import type { ModelConfig } from "../core/config.ts";
import { HttpError } from "./errors.ts";

/** What holds a reservation. */
export interface Holder {
  reserved: number;
}

/** How often a request waiting for KV room is asked whether it should stop (client gone, time limit). */
const CHECK_EVERY_MS = 20;

/**
 * Bytes a session's cache may hold allocated with at most `entries` entries per head when its storage
 * grows by half again (at least 16 entries, at most the capacity), as every executor's does; each entry
 * holds K and V (f32 at most) and its position; plus the current logits.
 */
export function kvBoundBytes(c: ModelConfig, entries: number, capacity = entries): number {
  const room = Math.min(capacity, Math.max(16, Math.ceil(entries * 1.5)));
  return room * c.nLayers * c.nKvHeads * (2 * c.headDim * 4 + 4) + c.vocabSize * 4;
}

export class KvLedger<S extends Holder> {
  private readonly waiters: { s: S; bytes: number; wake: () => void }[] = [];
  private total = 0;

  constructor(readonly capBytes: number | null) {}

  /** Bytes reserved by every holder. */
  get reserved(): number {
    return this.total;
  }

  /** Holders waiting for room. */
  get waiting(): number {
    return this.waiters.length;
  }

  /** The 422 for a cache of `bytes` that no waiting can make fit, or null. */
  refusal(bytes: number): HttpError | null {
    const cap = this.capBytes;
    if (cap === null || bytes <= cap) return null;
    return new HttpError(
      422,
      `the request's KV cache needs up to ${bytes} bytes, over this server's --kv-cache-mb cap of ${cap} bytes; ` +
        "ask for a shorter prompt, fewer max_tokens or a smaller compression budget",
      "kv_cache",
    );
  }

  /**
   * Sets `s`'s reservation to `bytes`: lowering (with `lower`) is at once; raising waits in line until the
   * reservations fit the cap, polling `check` meanwhile (the request's hook: it throws once the client left
   * or the time limit passed, and the wait then ends with its error). One that can never fit is a 422.
   */
  async reserve(
    s: S,
    bytes: number,
    lower = false,
    check: (() => Promise<void>) | null = null,
  ): Promise<void> {
    if (bytes <= s.reserved) {
      if (lower && bytes < s.reserved) this.set(s, bytes);
      return;
    }
    const cap = this.capBytes, refused = this.refusal(bytes);
    if (refused) throw refused;
    if (cap !== null && (this.waiters.length > 0 || this.total - s.reserved + bytes > cap)) {
      await new Promise<void>((resolve, reject) => {
        const poll = check
          ? setInterval(() =>
            check().catch((e) => {
              const i = this.waiters.indexOf(waiter);
              if (i < 0) return; // granted meanwhile: the request's own code sees the error next
              this.waiters.splice(i, 1);
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
        this.waiters.push(waiter);
      });
      return;
    }
    this.set(s, bytes);
  }

  /** Sets a reservation now (lowering, or releasing with 0); waiters that then fit are woken. */
  set(s: S, bytes: number) {
    this.total += bytes - s.reserved;
    s.reserved = bytes;
    this.grant();
  }

  /** Wakes waiters in arrival order while they fit (the first that does not fit keeps its place). */
  private grant() {
    const cap = this.capBytes ?? Infinity;
    while (this.waiters.length > 0) {
      const w = this.waiters[0];
      if (this.total - w.s.reserved + w.bytes > cap) return;
      this.waiters.shift();
      this.total += w.bytes - w.s.reserved;
      w.s.reserved = w.bytes;
      w.wake();
    }
  }
}
