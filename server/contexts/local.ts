/**
 * Compressed contexts kept between requests. Each holds a KV session, so the store bounds them twice:
 * a sliding TTL, and a cap on the bytes their sessions hold allocated (storage as allocated, not entries
 * kept: `KvSession.allocatedBytes`) with least-recently-used eviction. An entry in use by a running job is
 * only unlisted when evicted; its session is disposed when the job lets go of it, and re-measured when
 * released (an answer grows the cache for a while; the room it took is given back on rewind).
 */
import type { CompressedContext } from "../../core/engine.ts";
import { HttpError } from "../errors.ts";
import { Mutex } from "../jobs.ts";

export interface StoredContext {
  readonly id: string;
  readonly ctx: CompressedContext;
  /** Bytes its session holds allocated, as last measured (when listed, and when a job releases it). */
  bytes: number;
  readonly createdAt: number;
  /** The label of the API key that created it (null: the server has no keys); others see a 404. */
  readonly owner: string | null;
  lastUsed: number;
  users: number;
  removed: boolean;
  /** Answers take turns on the one session (each appends, decodes and rewinds). */
  readonly lock: Mutex;
}

/** A fresh context id: "ctx_" and 32 hex digits. */
export const newContextId = () => `ctx_${crypto.randomUUID().replaceAll("-", "")}`;

/** What an id must look like to be looked up in a shared store (anything else is simply unknown). */
export const CONTEXT_ID = /^ctx_[0-9a-f]{32}$/;

export interface LocalContextsOptions {
  ttlMs: number;
  maxBytes: number;
  /** Clock, for tests. */
  now?: () => number;
  /** How often expired entries are swept (0: only on access). */
  sweepMs?: number;
}

export class LocalContexts {
  private readonly entries = new Map<string, StoredContext>(); // in LRU order: oldest first
  /** Sum of the listed entries' bytes (the cap is checked against it on every add and release). */
  private total = 0;
  private readonly now: () => number;
  private timer: ReturnType<typeof setInterval> | null = null; // a number, or a Timeout under Node typings
  evicted = 0;
  expired = 0;

  constructor(readonly opts: LocalContextsOptions) {
    this.now = opts.now ?? Date.now;
    if (opts.sweepMs) {
      const timer = setInterval(() => this.sweep(), opts.sweepMs);
      // Never keeps the process alive on its own: Deno's unrefTimer, Node's timer.unref(); a browser or
      // an edge runtime has neither and needs neither.
      const deno = (globalThis as { Deno?: { unrefTimer?: (id: number) => void } }).Deno;
      if (typeof timer === "number") deno?.unrefTimer?.(timer);
      else (timer as { unref?: () => void }).unref?.();
      this.timer = timer;
    }
  }

  get size(): number {
    return this.entries.size;
  }

  /** Bytes allocated by the listed contexts' sessions: what the cap counts (kept as entries come and go). */
  get bytes(): number {
    return this.total;
  }

  expiresAt(e: StoredContext): number {
    return e.lastUsed + this.opts.ttlMs;
  }

  /**
   * Lists a new context, evicting the least recently used until it fits; 422 if it cannot fit alone.
   * `as` lists it under a known id and creation time (a context restored from a shared store).
   */
  add(
    ctx: CompressedContext,
    owner: string | null = null,
    as?: { id: string; createdAt: number },
  ): StoredContext {
    const bytes = ctx.session.allocatedBytes();
    if (bytes > this.opts.maxBytes) {
      ctx.session.dispose();
      throw new HttpError(
        422,
        `the compressed context holds ${bytes} bytes, over the server's cap of ${this.opts.maxBytes}; compress harder`,
        "kv_compression.budget",
      );
    }
    this.sweep();
    this.makeRoom(bytes);
    const t = this.now();
    if (as) this.delete(as.id);
    const e: StoredContext = {
      id: as?.id ?? newContextId(),
      ctx,
      bytes,
      createdAt: as?.createdAt ?? t,
      owner,
      lastUsed: t,
      users: 0,
      removed: false,
      lock: new Mutex(),
    };
    this.entries.set(e.id, e);
    this.total += bytes;
    return e;
  }

  /**
   * Takes a context for a job (404 when unknown, expired or another owner's: the same answer); `release`
   * it when done.
   */
  acquire(id: string, owner: string | null = null): StoredContext {
    this.sweep();
    const e = this.entries.get(id);
    if (!e || e.owner !== owner) {
      throw new HttpError(
        404,
        `no context ${JSON.stringify(id)} (unknown, deleted, expired or evicted)`,
        "id",
      );
    }
    e.users++;
    this.touch(e);
    return e;
  }

  /** A listed, unexpired context without touching it (stats), or undefined. */
  peek(id: string): StoredContext | undefined {
    this.sweep();
    return this.entries.get(id);
  }

  release(e: StoredContext) {
    e.users--;
    if (e.removed && e.users === 0) e.ctx.session.dispose();
    else if (!e.removed) {
      this.touch(e);
      // Still over the cap after the answer gave its room back (a GPU keeps some headroom): evict others.
      const bytes = e.ctx.session.allocatedBytes();
      this.total += bytes - e.bytes;
      e.bytes = bytes;
      this.makeRoom(0, e);
    }
  }

  /** Evicts least recently used contexts until `bytes` more fit under the cap (never `keep`). */
  private makeRoom(bytes: number, keep?: StoredContext) {
    for (const e of [...this.entries.values()]) {
      if (this.bytes + bytes <= this.opts.maxBytes) return;
      if (e === keep) continue;
      this.remove(e);
      this.evicted++;
    }
  }

  /** Unlists a context; false when it was not listed. */
  delete(id: string): boolean {
    const e = this.entries.get(id);
    if (!e) return false;
    this.remove(e);
    return true;
  }

  /** Drops expired contexts; returns how many. */
  sweep(): number {
    const t = this.now();
    let n = 0;
    for (const e of [...this.entries.values()]) {
      if (this.expiresAt(e) <= t) {
        this.remove(e);
        n++;
      }
    }
    this.expired += n;
    return n;
  }

  /** Disposes every context (shutdown); ones still in use go when released. */
  close() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    for (const e of [...this.entries.values()]) this.remove(e);
  }

  private touch(e: StoredContext) {
    e.lastUsed = this.now();
    this.entries.delete(e.id); // re-insert: Map order is the LRU order
    this.entries.set(e.id, e);
  }

  private remove(e: StoredContext) {
    if (this.entries.delete(e.id)) this.total -= e.bytes;
    e.removed = true;
    if (e.users === 0) e.ctx.session.dispose();
  }
}
