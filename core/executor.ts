/**
 * The executor interface: what a plan interpreter needs from a backend (CPU reference or WebGPU).
 * A session owns one KV cache. Every KV head of every layer holds its own list of entries, so heads
 * may keep different numbers of prompt positions after pruning (real memory savings, no masking).
 */
import type { ModelConfig } from "./config.ts";

export type ForwardInput =
  | { kind: "tokens"; tokens: number[] }
  /** Input vectors fed in place of token embeddings (Judge Q soft tokens), `count` rows of `dim`. */
  | { kind: "embeddings"; rows: Float32Array; count: number };

/**
 * The rows of a forward input, checked against the model: token ids inside the vocabulary, enough embedding
 * values for `count` rows. Throws a RangeError saying what is wrong.
 */
export function forwardRows(input: ForwardInput, c: ModelConfig): number {
  if (input.kind === "tokens") {
    for (const t of input.tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) {
        throw new RangeError(`token id ${t} out of range`);
      }
    }
    return input.tokens.length;
  }
  if (input.rows.length < input.count * c.dim) {
    throw new RangeError(`embeddings: ${input.rows.length} values for ${input.count} rows of ${c.dim}`);
  }
  return input.count;
}

/** Post-RoPE query vectors of some rows, kept for attention scoring. Opaque to the core. */
export interface QueryRows {
  /** Absolute positions of the rows, ascending. */
  readonly positions: number[];
  dispose(): void;
}

export interface ForwardOptions {
  /**
   * "last": logits of the last row; "all": every row. Either way the last row's logits become the
   * session's current logits (where decoding starts); "none" leaves them as they were.
   */
  logits?: "none" | "last" | "all";
  /** Keep the rows' queries for `attentionMass`. */
  captureQueries?: boolean;
  /**
   * Awaited between chunks of a long forward (every `Executor.forwardChunkRows` rows, FORWARD_CHUNK_ROWS on
   * the CPU executors; a WebGPU
   * prefill is recorded whole and never calls it): a scheduler runs other jobs there, and may throw to stop
   * this one (the rows before stay in the cache). Between chunks nothing of the pass is pending.
   */
  between?: () => Promise<void>;
}

/** Rows between two `between` calls of a forward pass on the CPU executors. */
export const FORWARD_CHUNK_ROWS = 128;

export interface ForwardResult {
  /** [rows][vocab] for "all", [vocab] for "last", null for "none". */
  logits: Float32Array | null;
  queries: QueryRows | null;
}

export interface SamplingOptions {
  /** 0 means greedy. */
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
}

/**
 * The decode parameters, once: length, sampling and stop tokens. A plan's decode steps carry them
 * (core/plan.ts), every executor's decode takes them (DecodeOptions), and requests give them flat with
 * defaults (core/engine.ts DecodeParams, derived from this).
 */
export interface DecodeSpec {
  maxTokens: number;
  sampling: SamplingOptions;
  stopTokenIds: number[];
}

/** A decode on an executor: the spec, and what the caller wants back or told along the way. */
export interface DecodeOptions extends DecodeSpec {
  /** Return the logits of every step (before sampling), for fidelity metrics. */
  returnLogits?: boolean;
  captureQueries?: boolean;
  /** Called with each batch of new tokens as they are known (streaming). */
  onTokens?: (ids: number[]) => void | Promise<void>;
  signal?: AbortSignal;
}

export interface DecodeResult {
  tokens: number[];
  finishReason: "stop" | "length" | "aborted";
  logits: Float32Array[] | null;
  queries: QueryRows | null;
  /** GPU readbacks or queue syncs performed (0 on the CPU). */
  syncs: number;
}

/** Restores the cache to an earlier state: per-head entry counts and the next position. */
export interface CacheMark {
  readonly counts: Int32Array;
  readonly nextPosition: number;
}

/**
 * A session's whole state, executor-neutral: per slot (layer * nKvHeads + head) its entries' positions
 * (ascending) and their keys and values (count x headDim floats, f32 as every executor stores them),
 * the next position, and the current logits (null when none). Restoring it on any executor gives a
 * session that continues exactly as the exported one would on that executor.
 */
export interface CacheSnapshot {
  readonly nLayers: number;
  readonly nKvHeads: number;
  readonly headDim: number;
  readonly nextPosition: number;
  readonly positions: Int32Array[];
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  readonly logits: Float32Array | null;
}

export interface KvSession {
  readonly config: ModelConfig;
  /** Position the next input row gets. */
  readonly nextPosition: number;
  /** Runs rows at positions nextPosition.., appending their K/V to every head. */
  forward(input: ForwardInput, options?: ForwardOptions): Promise<ForwardResult>;
  /**
   * Sums, over the given query rows, their causal softmax attention (softmax over every cached entry at a
   * position <= the row's) restricted to prompt positions < promptLength.
   * Returns [layer][queryHead][promptLength] flattened.
   */
  attentionMass(queries: QueryRows, promptLength: number): Promise<Float32Array>;
  /** L2 norm of every cached key at prompt positions < promptLength: [layer][kvHead][promptLength]. */
  keyNorms(promptLength: number): Promise<Float32Array>;
  /**
   * Keeps, per layer and KV head, only the listed prompt positions (< promptLength, ascending) and
   * every entry at a position >= promptLength; the rest is freed.
   */
  keepPositions(kept: Int32Array[][], promptLength: number): Promise<void>;
  /** Drops every entry at a position >= position and continues from it (strips soft tokens). */
  truncateFrom(position: number): Promise<void>;
  mark(): CacheMark;
  /** Restores the cache to the mark; the current logits are unspecified until the next forward pass. */
  rewind(mark: CacheMark): Promise<void>;
  /** Samples from the current logits, feeds the token back, and repeats. */
  decode(options: DecodeOptions): Promise<DecodeResult>;
  /** Current logits (of the last row run with logits "last", or of the last decoded step). */
  currentLogits(): Promise<Float32Array>;
  /** Positions held per layer and KV head, ascending. */
  positions(): Promise<Int32Array[][]>;
  /** Bytes of K and V held (entries x headDim x 2 x 4 bytes, f32). */
  kvBytes(): number;
  /**
   * Bytes this session holds allocated: its cache's storage (room included) and current logits, the figure a
   * memory cap must count. Storage grows as entries are appended and is cut back to what the heads hold
   * after `keepPositions`, `truncateFrom` and `rewind`, so a compressed cache holds only what it keeps.
   */
  allocatedBytes(): number;
  /**
   * Optional: lays the storage out now for exactly `rows` more entries per head than each layer's fullest
   * head holds (none past the capacity, no growth slack), so that appending up to `rows` entries allocates
   * nothing: a scheduler can then reserve exactly `allocatedBytes()` for a decode of `rows` tokens.
   */
  reserveRoom?(rows: number): Promise<void>;
  /** A deep copy with its own cache. */
  clone(): Promise<KvSession>;
  /** The cache and current logits, copied out (see CacheSnapshot). */
  exportCache(): Promise<CacheSnapshot>;
  dispose(): void;
}

/** One session's rows in a batched step (see `Executor.forwardBatch`). */
export interface BatchItem {
  session: KvSession;
  input: ForwardInput;
  options?: Omit<ForwardOptions, "between">;
}

export interface Executor {
  readonly kind: "cpu" | "gpu" | "wasm" | "native";
  readonly config: ModelConfig;
  /**
   * Rows a forward pass runs as one piece, `between` being awaited between pieces (FORWARD_CHUNK_ROWS when
   * absent). A forward's numbers do not depend on whether `between` is given.
   */
  readonly forwardChunkRows?: number;
  /**
   * True where a session's own `decode` runs several steps per host round trip (WebGPU: tokens sampled on
   * the device, batches pipelined), so a scheduler without `forwardBatch` lets a stream decode through it
   * rather than one forward per token.
   */
  readonly decodesAhead?: boolean;
  /** Human-readable backend description (adapter, features). */
  readonly description: string;
  /** True once the device behind the executor is lost (GPU); requests then fail until a new one is made. */
  readonly lost?: boolean;
  /**
   * Runs several sessions' rows (decode steps, prefill chunks) as one step: every projection one matrix
   * product over all the rows, attention per session and KV head over that session's own cache. Each
   * result is what `item.session.forward(item.input, item.options)` would give (the same logits within the
   * executor's rounding). The sessions must be distinct and this executor's. Absent: see `forwardBatch`.
   */
  forwardBatch?(items: BatchItem[]): Promise<ForwardResult[]>;
  /** A new empty cache able to hold `capacity` positions per head. */
  createSession(capacity: number): KvSession;
  /**
   * A new session holding a snapshot (from any executor of the same model), able to hold `capacity`
   * positions per head; throws when the snapshot's shape is not this model's or it does not fit.
   */
  restoreSession(snapshot: CacheSnapshot, capacity: number): Promise<KvSession>;
  dispose(): void;
}

/** A batched step on any executor: its own `forwardBatch`, else each item's forward in turn. */
export async function forwardBatch(ex: Executor, items: BatchItem[]): Promise<ForwardResult[]> {
  if (ex.forwardBatch) return await ex.forwardBatch(items);
  const out: ForwardResult[] = [];
  for (const it of items) out.push(await it.session.forward(it.input, it.options));
  return out;
}
