/**
 * Context blobs in Redis (ioredis): one key per context, `judgeq:ctx:<id>`, with the context's TTL as
 * PX. Bounded everywhere: a connect timeout, a command timeout, no offline queue and no retries of a
 * command, so a request meets "unavailable" at once while Redis is down instead of hanging; the client
 * reconnects in the background (every 0.2 s to 2 s) and the next request finds it back.
 */
import { Buffer } from "node:buffer";
import { Redis } from "ioredis";
import type { SharedBlobs } from "./kept.ts";

export const KEY_PREFIX = "judgeq:ctx:";

export interface RedisOptions {
  connectTimeoutMs?: number;
  commandTimeoutMs?: number;
  log?: (message: string) => void;
}

/** Whether `url` names a Redis server (redis:// or rediss://). */
export const isRedisUrl = (url: string) => /^rediss?:\/\/[^/\s]+/.test(url);

export class RedisBlobs implements SharedBlobs {
  readonly kind = "redis";
  private readonly client: Redis;
  private lastError = "";

  constructor(readonly url: string, o: RedisOptions = {}) {
    const log = o.log ?? console.error;
    this.client = new Redis(url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      enableReadyCheck: true,
      connectTimeout: o.connectTimeoutMs ?? 1000,
      commandTimeout: o.commandTimeoutMs ?? 2000,
      maxRetriesPerRequest: 0,
      retryStrategy: (times: number) => Math.min(200 * times, 2000),
    });
    // Log each distinct failure once (a down Redis would otherwise log every reconnect attempt).
    this.client.on("error", (e: Error) => {
      if (e.message !== this.lastError) log(`context store ${redact(url)}: ${e.message}`);
      this.lastError = e.message;
    });
    this.client.on("ready", () => {
      if (this.lastError) log(`context store ${redact(url)}: connected again`);
      this.lastError = "";
    });
    this.client.connect().catch(() => {}); // reported by the error handler; retried in the background
  }

  get ready(): boolean {
    return this.client.status === "ready";
  }

  async put(id: string, blob: Uint8Array, ttlMs: number): Promise<void> {
    await this.client.set(
      KEY_PREFIX + id,
      Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength),
      "PX",
      ttlMs,
    );
  }

  async get(id: string): Promise<Uint8Array | null> {
    const b = await this.client.getBuffer(KEY_PREFIX + id);
    return b ? new Uint8Array(b.buffer, b.byteOffset, b.byteLength) : null;
  }

  async touch(id: string, ttlMs: number): Promise<boolean> {
    return (await this.client.pexpire(KEY_PREFIX + id, ttlMs)) === 1;
  }

  async delete(id: string): Promise<boolean> {
    return (await this.client.del(KEY_PREFIX + id)) > 0;
  }

  /** Overwrites a stored blob's bytes keeping its TTL (tests: corrupting a blob). */
  async overwrite(id: string, blob: Uint8Array): Promise<void> {
    await this.client.set(KEY_PREFIX + id, Buffer.from(blob), "KEEPTTL");
  }

  close(): Promise<void> {
    this.client.disconnect(false);
    return Promise.resolve();
  }
}

/** The URL without its password, for logs. */
export const redact = (url: string) => url.replace(/\/\/([^@/]*):[^@/]*@/, "//$1:***@");
