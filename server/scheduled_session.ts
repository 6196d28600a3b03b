/**
 * A request's session under the batch scheduler (server/batch_scheduler.ts): its forwards and decode rows go
 * through the scheduler's steps, its other work on the cache runs between steps, and its KV reservation
 * follows the rule in server/kv_ledger.ts (the plan's peak until it decodes, then exactly what it holds).
 */
import { decodeTokens } from "../core/decode_loop.ts";
import type {
  CacheMark,
  CacheSnapshot,
  DecodeOptions,
  DecodeResult,
  ForwardInput,
  ForwardOptions,
  ForwardResult,
  KvSession,
  QueryRows,
} from "../core/executor.ts";
import type { BatchScheduler } from "./batch_scheduler.ts";
import { Cancelled } from "./errors.ts";

export const rowsOf = (i: ForwardInput) => (i.kind === "tokens" ? i.tokens.length : i.count);

/** Query rows captured over several steps; attention mass is a sum over rows, so parts add up. */
export class MergedRows implements QueryRows {
  readonly positions: number[];
  constructor(readonly parts: QueryRows[]) {
    this.positions = parts.flatMap((p) => p.positions);
  }
  dispose() {
    for (const p of this.parts) p.dispose();
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
    const inner = this.inner;
    if (inner.reserveRoom) {
      // Room for exactly the tokens to come (it fits the bound just reserved), then the reservation drops
      // to the bytes held: the decode appends at most maxTokens entries, so nothing grows past it.
      await s.exclusive(() => inner.reserveRoom!(o.maxTokens));
      await s.reserve(this, inner.allocatedBytes(), true);
    }
    if (s.executor.decodesAhead && !s.executor.forwardBatch) {
      s.noteDecoding(this, true);
      try {
        return await this.decodeAhead(o);
      } finally {
        s.noteDecoding(this, false);
      }
    }
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

  /**
   * The executor's own decode (several tokens per host round trip), holding the executor while it runs and
   * handing it over between its batches, when new tokens are known: other streams take their turn there.
   */
  private async decodeAhead(o: DecodeOptions): Promise<DecodeResult> {
    let release = await this.scheduler.hold();
    try {
      return await this.inner.decode({
        ...o,
        onTokens: async (ids) => {
          release();
          await o.onTokens?.(ids);
          release = await this.scheduler.hold();
        },
      });
    } finally {
      release();
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
