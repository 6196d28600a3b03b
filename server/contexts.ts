/**
 * Compressed contexts kept between requests. Each holds a KV session, so the store bounds them twice:
 * a sliding TTL, and a cap on their KV bytes with least-recently-used eviction. An entry in use by a
 * running job is only unlisted when evicted; its session is disposed when the job lets go of it.
 */
import type { CompressedContext } from "../core/engine.ts";
import { HttpError } from "./errors.ts";

export interface StoredContext {
  readonly id: string;
  readonly ctx: CompressedContext;
  readonly bytes: number;
  readonly createdAt: number;
  lastUsed: number;
  users: number;
  removed: boolean;
}

/** A fresh context id: "ctx_" and 32 hex digits. */
export const newContextId = () => `ctx_${crypto.randomUUID().replaceAll("-", "")}`;

/** What an id must look like to be looked up in a shared store (anything else is simply unknown). */
export const CONTEXT_ID = /^ctx_[0-9a-f]{32}$/;

export interface ContextStoreOptions {
  ttlMs: number;
  maxBytes: number;
  /** Clock, for tests. */
  now?: () => number;
  /** How often expired entries are swept (0: only on access). */
  sweepMs?: number;
}

export class ContextStore {
  private readonly entries = new Map<string, StoredContext>(); // in LRU order: oldest first
  private readonly now: () => number;
  private timer: ReturnType<typeof setInterval> | null = null; // a number, or a Timeout under Node typings
  evicted = 0;
  expired = 0;

  constructor(readonly opts: ContextStoreOptions) {
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

  /** KV bytes of the listed contexts. */
  get bytes(): number {
    let b = 0;
    for (const e of this.entries.values()) b += e.bytes;
    return b;
  }

  expiresAt(e: StoredContext): number {
    return e.lastUsed + this.opts.ttlMs;
  }

  /**
   * Lists a new context, evicting the least recently used until it fits; 422 if it cannot fit alone.
   * `as` lists it under a known id and creation time (a context restored from a shared store).
   */
  add(ctx: CompressedContext, as?: { id: string; createdAt: number }): StoredContext {
    const bytes = ctx.session.kvBytes();
    if (bytes > this.opts.maxBytes) {
      ctx.session.dispose();
      throw new HttpError(
        422,
        `the compressed context holds ${bytes} KV bytes, over the server's cap of ${this.opts.maxBytes}; compress harder`,
        "kv_compression.budget",
      );
    }
    this.sweep();
    while (this.bytes + bytes > this.opts.maxBytes) {
      const oldest = this.entries.values().next().value!;
      this.remove(oldest);
      this.evicted++;
    }
    const t = this.now();
    if (as) this.delete(as.id);
    const e: StoredContext = {
      id: as?.id ?? newContextId(),
      ctx,
      bytes,
      createdAt: as?.createdAt ?? t,
      lastUsed: t,
      users: 0,
      removed: false,
    };
    this.entries.set(e.id, e);
    return e;
  }

  /** Takes a context for a job (404 when unknown or expired); `release` it when done. */
  acquire(id: string): StoredContext {
    this.sweep();
    const e = this.entries.get(id);
    if (!e) {
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
    else if (!e.removed) this.touch(e);
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
    this.entries.delete(e.id);
    e.removed = true;
    if (e.users === 0) e.ctx.session.dispose();
  }
}
