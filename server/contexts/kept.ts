/**
 * Where kept contexts live. `LocalOnlyContexts` (the default): in this process only, the LocalContexts LRU.
 * `SharedContexts` (--context-store redis://...): every context is also serialised into a shared blob
 * store with its TTL, so any replica answers on it; each replica keeps the contexts it has loaded in its
 * own LRU under its memory cap, and restores the others from the store on first use.
 */
import { type CompressedContext, contextCapacity, type Model } from "../../core/engine.ts";
import { decodeContext, encodeContext, type Identity, identityOf } from "./codec.ts";
import { CONTEXT_ID, type LocalContexts, newContextId, type StoredContext } from "./local.ts";
import { HttpError } from "../errors.ts";

export interface KeptContexts {
  readonly kind: "memory" | "redis";
  /** The contexts this replica holds live (gauges, /healthz). */
  readonly local: LocalContexts;
  /**
   * Lists a freshly compressed context (taking ownership of its session), owned by the label of the API
   * key that made it (null: no keys). Every other call takes the caller's label: another owner's context
   * is treated exactly as an unknown one.
   */
  create(ctx: CompressedContext, owner: string | null): Promise<StoredContext>;
  /** Takes a context for a job (404 unknown or expired, 409 another model's, 503 store down); release it. */
  acquire(id: string, owner: string | null): Promise<StoredContext>;
  release(e: StoredContext): void;
  /** A context's entry for its stats (loading it if need be), or undefined. */
  info(id: string, owner: string | null): Promise<StoredContext | undefined>;
  delete(id: string, owner: string | null): Promise<boolean>;
  expiresAt(e: StoredContext): number;
  /** Contexts restored from the shared store so far (0 in memory). */
  readonly restored: number;
  /** "ok", or why contexts cannot be served now (for /healthz). */
  health(): string;
  close(): Promise<void>;
}

/** Blobs by id with a TTL: Redis (redis.ts), or anything that keeps bytes the same way. */
export interface SharedBlobs {
  readonly kind: string;
  readonly ready: boolean;
  put(id: string, blob: Uint8Array, ttlMs: number): Promise<void>;
  get(id: string): Promise<Uint8Array | null>;
  /** Restarts the TTL; false when the id is not stored (expired, deleted, never made). */
  touch(id: string, ttlMs: number): Promise<boolean>;
  delete(id: string): Promise<boolean>;
  close(): Promise<void>;
}

export class LocalOnlyContexts implements KeptContexts {
  readonly kind = "memory";
  readonly restored = 0;
  constructor(readonly local: LocalContexts) {}
  create(ctx: CompressedContext, owner: string | null): Promise<StoredContext> {
    try {
      return Promise.resolve(this.local.add(ctx, owner));
    } catch (e) {
      return Promise.reject(e);
    }
  }
  acquire(id: string, owner: string | null): Promise<StoredContext> {
    try {
      return Promise.resolve(this.local.acquire(id, owner));
    } catch (e) {
      return Promise.reject(e);
    }
  }
  release(e: StoredContext) {
    this.local.release(e);
  }
  info(id: string, owner: string | null): Promise<StoredContext | undefined> {
    const e = this.local.peek(id);
    return Promise.resolve(e?.owner === owner ? e : undefined);
  }
  delete(id: string, owner: string | null): Promise<boolean> {
    return Promise.resolve(this.local.peek(id)?.owner === owner && this.local.delete(id));
  }
  expiresAt(e: StoredContext): number {
    return this.local.expiresAt(e);
  }
  health(): string {
    return "ok";
  }
  close(): Promise<void> {
    this.local.close();
    return Promise.resolve();
  }
}

/** Seconds a client is told to wait while the shared store is unreachable. */
export const STORE_RETRY_AFTER_S = 2;

const unknown = (id: string) =>
  new HttpError(404, `no context ${JSON.stringify(id)} (unknown, deleted or expired)`, "id");

export class SharedContexts implements KeptContexts {
  readonly kind = "redis";
  private identity: Promise<Identity> | null = null;
  /** Restores in progress, so concurrent first uses of one id restore it once. */
  private readonly loading = new Map<string, Promise<StoredContext>>();
  restored = 0;

  constructor(
    readonly local: LocalContexts,
    private readonly blobs: SharedBlobs,
    private readonly model: Model,
    private readonly ttlMs: number,
    /** Runs work alone on the executor (the job queue): exporting and restoring caches. */
    private readonly exclusive: <T>(work: () => Promise<T>) => Promise<T>,
  ) {}

  private who(): Promise<Identity> {
    return (this.identity ??= identityOf(this.model));
  }

  /** A store call; any failure of the store itself is a 503 with Retry-After. */
  private async store<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (e) {
      throw new HttpError(
        503,
        `the context store (${this.blobs.kind}) is unavailable: cannot ${what} (${(e as Error).message}); ` +
          `plain generation still works`,
        null,
        { "retry-after": String(STORE_RETRY_AFTER_S) },
      );
    }
  }

  async create(ctx: CompressedContext, owner: string | null): Promise<StoredContext> {
    const createdAt = Date.now(), id = newContextId();
    let blob: Uint8Array;
    try {
      if (!this.blobs.ready) {
        await this.store("store the context", () => Promise.reject(new Error("not connected")));
      }
      const who = await this.who(), capacity = contextCapacity(this.model, ctx.plan.capacity);
      blob = await this.exclusive(() => encodeContext(ctx, who, createdAt, capacity, owner));
    } catch (e) {
      ctx.session.dispose();
      throw e;
    }
    // Listed here first: a context over this replica's cap is refused (422) before it is stored.
    const entry = this.local.add(ctx, owner, { id, createdAt });
    try {
      await this.store("store the context", () => this.blobs.put(id, blob, this.ttlMs));
    } catch (e) {
      this.local.delete(id);
      throw e;
    }
    return entry;
  }

  async acquire(id: string, owner: string | null): Promise<StoredContext> {
    if (!CONTEXT_ID.test(id)) throw unknown(id);
    // The store is the truth: a context deleted or expired there is gone here too.
    if (!(await this.store("look the context up", () => this.blobs.touch(id, this.ttlMs)))) {
      this.local.delete(id);
      throw unknown(id);
    }
    if (!this.local.peek(id)) {
      let load = this.loading.get(id);
      if (!load) {
        load = this.load(id).finally(() => this.loading.delete(id));
        this.loading.set(id, load);
      }
      await load;
    }
    return this.local.acquire(id, owner);
  }

  private async load(id: string): Promise<StoredContext> {
    const bytes = await this.store("read the context", () => this.blobs.get(id));
    if (!bytes) throw unknown(id);
    const who = await this.who();
    try {
      const { ctx, createdAt, owner } = await this.exclusive(() => decodeContext(id, bytes, this.model, who));
      const entry = this.local.add(ctx, owner, { id, createdAt });
      this.restored++;
      return entry;
    } catch (e) {
      if (e instanceof HttpError && e.status === 422 && e.param === "id") {
        await this.blobs.delete(id).catch(() => {}); // corrupt: deleted, as the message says
      }
      throw e;
    }
  }

  release(e: StoredContext) {
    this.local.release(e);
  }

  async info(id: string, owner: string | null): Promise<StoredContext | undefined> {
    try {
      const e = await this.acquire(id, owner);
      this.local.release(e);
      return e;
    } catch (e) {
      if (e instanceof HttpError && e.status === 404) return undefined;
      throw e;
    }
  }

  async delete(id: string, owner: string | null): Promise<boolean> {
    if (!(await this.info(id, owner))) return false; // unknown, expired, or another key's
    const here = this.local.delete(id);
    if (!CONTEXT_ID.test(id)) return here;
    return (await this.store("delete the context", () => this.blobs.delete(id))) || here;
  }

  expiresAt(e: StoredContext): number {
    return this.local.expiresAt(e);
  }

  health(): string {
    return this.blobs.ready ? "ok" : "unavailable";
  }

  async close(): Promise<void> {
    this.local.close();
    await this.blobs.close();
  }
}
