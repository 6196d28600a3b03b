/**
 * Kept contexts: compressed contexts held between requests (POST /v1/contexts), by this replica alone or
 * shared between replicas. The service reads them through `KeptContexts` and never asks which.
 *
 * How server/contexts/ is laid out (imports point down this list):
 *   kept.ts    KeptContexts, every context the service can answer on: LocalOnlyContexts (the default:
 *              this replica's LocalContexts alone) or SharedContexts (--context-store redis://...: each
 *              context also written to a SharedBlobs store with its TTL, restored by any replica on first
 *              use, the local LRU in front)
 *   redis.ts   RedisBlobs: SharedBlobs in Redis, every command bounded in time (a 503 while it is down).
 *              Not re-exported here: main.ts imports it alone, so an embedded app never loads ioredis
 *   codec.ts   a kept context as a blob and back, stamped with the model's and the adapter's fingerprints
 *   local.ts   LocalContexts: the contexts this replica holds live, an LRU under a TTL and a cap on the
 *              bytes their sessions hold allocated
 */
export { CONTEXT_ID, LocalContexts, newContextId, type StoredContext } from "./local.ts";
export {
  type KeptContexts,
  LocalOnlyContexts,
  type SharedBlobs,
  SharedContexts,
  STORE_RETRY_AFTER_S,
} from "./kept.ts";
export { CorruptContext, decodeContext, encodeContext, identityOf } from "./codec.ts";
