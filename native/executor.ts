/**
 * The native executor: the model's forward pass as ggml graphs (llama.cpp's own CPU kernels, through Deno
 * FFI), weights in f32, f16, Q8_0 or Q4_0, the KV cache in f32 or f16, any model size the machine's memory
 * holds (nothing here lives in a WebAssembly memory). Same sessions, same contract as every executor.
 */
import { checkSnapshot } from "../core/cache_snapshot.ts";
import type { ModelConfig } from "../core/config.ts";
import type { BatchItem, CacheSnapshot, Executor, ForwardResult, KvSession } from "../core/executor.ts";
import { dropBatchGraph, nativeForwardBatch } from "./batch.ts";
import type { ModelWeights } from "../core/weights.ts";
import { type KvType, NativeKvCache } from "./kv_cache.ts";
import { loadGgml } from "./library.ts";
import { NativeRuntime } from "./runtime.ts";
import { NATIVE_CHUNK_ROWS, NativeSession } from "./session.ts";
import type { NativeWeightFormat } from "../core/weight_formats.ts";
import { NativeWeights } from "./weights.ts";

export interface NativeExecutorOptions {
  /** Threads of ggml's CPU backend (default: the cores available). */
  threads?: number;
  /** Matrix storage (default f32). */
  weightFormat?: NativeWeightFormat;
  /** KV cache storage (default f32). */
  kvType?: KvType;
  /** Where load notes go (matrices kept in another format); console.warn by default. */
  warn?: (message: string) => void;
}

export class NativeExecutor implements Executor {
  readonly kind = "native" as const;
  readonly forwardChunkRows = NATIVE_CHUNK_ROWS;
  readonly config: ModelConfig;
  readonly description: string;

  private constructor(readonly rt: NativeRuntime, readonly kvType: KvType) {
    this.config = rt.config;
    const w = rt.weights;
    this.description =
      `${rt.g.description}, ${rt.threads} thread${rt.threads > 1 ? "s" : ""}, ${w.format} weights, ` +
      `${kvType} KV cache`;
  }

  static async create(weights: ModelWeights, o: NativeExecutorOptions = {}): Promise<NativeExecutor> {
    const g = await loadGgml();
    const threads = o.threads ?? navigator.hardwareConcurrency ?? 1;
    const w = NativeWeights.create(g, weights, o.weightFormat ?? "f32");
    if (w.notes.length > 0) {
      (o.warn ?? console.warn)(
        `native executor: ${w.notes.length} matrices kept f16, their rows not whole blocks of 32: ${
          w.notes.join(", ")
        }`,
      );
    }
    return new NativeExecutor(new NativeRuntime(g, w, threads), o.kvType ?? "f32");
  }

  createSession(capacity: number): NativeSession {
    return new NativeSession(this.rt, new NativeKvCache(this.rt.g, this.config, capacity, this.kvType));
  }

  forwardBatch(items: BatchItem[]): Promise<ForwardResult[]> {
    return nativeForwardBatch(this.rt, items);
  }

  restoreSession(snapshot: CacheSnapshot, capacity: number): Promise<KvSession> {
    checkSnapshot(snapshot, this.config, capacity);
    const s = this.createSession(capacity);
    s.restoreFrom(snapshot);
    return Promise.resolve(s);
  }

  dispose() {
    dropBatchGraph(this.rt);
    this.rt.dispose();
  }
}
