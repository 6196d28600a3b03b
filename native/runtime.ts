/**
 * What every session of one native executor shares: the opened ggml, the model's weights on the backend,
 * one graph allocator (its buffer reused from graph to graph), the thread count, and a lock, since the
 * sessions of an executor compute one graph at a time through that allocator.
 */
import type { ModelConfig } from "../core/config.ts";
import { graphSizeFor } from "./graph.ts";
import { type Ggml, GGML_TYPE } from "./library.ts";
import type { KvType } from "./kv_cache.ts";
import type { NativeWeights } from "./weights.ts";

export class NativeRuntime {
  readonly config: ModelConfig;
  readonly allocator: Deno.PointerValue;
  /** Tensors and nodes one graph of this model may need. */
  readonly graphSize: number;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(readonly g: Ggml, readonly weights: NativeWeights, readonly threads: number) {
    this.config = weights.config;
    this.allocator = g.sym.ggml_gallocr_new(g.bufferType);
    this.graphSize = graphSizeFor(this.config.nLayers, this.config.nKvHeads);
  }

  /** Runs `fn` after every graph queued before it has finished. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => {});
    return run;
  }

  /** Bytes of the graph allocator's buffer (the largest graph's intermediates so far). */
  computeBytes(): number {
    return Number(this.g.sym.ggml_gallocr_get_buffer_size(this.allocator, 0));
  }

  /** f32 values in the cache's storage type. */
  encodeKv(values: Float32Array, type: KvType): Uint8Array {
    if (type === "f32") return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    const out = new Uint8Array(values.length * 2);
    this.g.sym.ggml_quantize_chunk(
      GGML_TYPE.f16,
      values as Float32Array<ArrayBuffer>,
      out,
      0n,
      1n,
      BigInt(values.length),
      null,
    );
    return out;
  }

  dispose() {
    this.g.sym.ggml_gallocr_free(this.allocator);
    this.weights.dispose();
  }
}
