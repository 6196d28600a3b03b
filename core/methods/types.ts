/** What a KV-compression method is: where its scores come from, how it scores, how it allocates. */
import type { ModelConfig } from "../config.ts";
import { aggregateGqa, type GqaAggregation, type Pooling, poolRows } from "../scoring.ts";

/** Every option a method may read, resolved (defaults applied, budget in tokens). */
export interface MethodOptions {
  /** Prompt entries kept per KV head per layer, window included. */
  budget: number;
  /** The last `window` prompt positions are always kept (and are SnapKV's observation window). */
  window: number;
  pooling: Pooling;
  kernel: number;
  gqa: GqaAggregation;
  /** StreamingLLM attention sinks. */
  sinks: number;
  /** H2O: divide each key's attention sum by the number of scoring rows that see it. */
  normalize: boolean;
  seed: number;
  /** PyramidKV. */
  beta: number;
  /** AdaKV: share of each head's free budget it is guaranteed. */
  floor: number;
  /** Lookahead: pseudo tokens decoded from the draft-compressed cache. */
  lookaheadTokens: number;
  /**
   * How the total budget is shared out: the same per KV head (`uniform`), per layer (`pyramid`,
   * PyramidKV), or across the heads of a layer (`adaptive`, AdaKV). A wrapper over any scorer with
   * `allocatable` set, as kvpress's `AdaKVPress(press=...)`.
   */
  allocation: Allocation;
}

/**
 * Which query rows produce the attention the method scores with:
 * `none` (no attention), `keys` (key norms), `rows` (prompt rows from `from` on: observation window,
 * last token, or all rows), `soft` (Judge Q soft tokens), `lookahead` (window rows plus pseudo tokens).
 */
export type ScoreSource =
  | { kind: "none" }
  | { kind: "keys" }
  | { kind: "rows"; from: number }
  | { kind: "soft" }
  | { kind: "lookahead"; from: number };

export interface ScoreInputs {
  config: ModelConfig;
  length: number;
  /** Summed attention of the scoring rows, [layer][queryHead][length]; null for non-attention methods. */
  mass: Float32Array | null;
  /** First prompt row whose attention is in `mass` (for H2O's normalisation). */
  firstRow: number;
  /** Key L2 norms, [layer][kvHead][length], for methods with source `keys`. */
  keyNorms: Float32Array | null;
}

/**
 * Which attention scores cached entries during decoding (core/bounded_decode.ts): `rows` the rows run since
 * the last compression (SnapKV's observation window), `last_row` the last row run (TOVA), `running` every
 * row run since decoding began (H2O's running sums), `soft` the soft tokens appended after the cache
 * (Judge Q), `keys` key norms, `none` no attention (scores from positions or a seed).
 */
export type DecodeSource = "rows" | "last_row" | "running" | "soft" | "keys" | "none";

export const ALLOCATIONS = ["uniform", "pyramid", "adaptive"] as const;
export type Allocation = typeof ALLOCATIONS[number];

export interface Method {
  name: string;
  description: string;
  /** Defaults for this method, over the global ones. */
  defaults: Partial<MethodOptions>;
  /** The window when the request sets none, if it depends on the budget. */
  windowFor?(budget: number, o: MethodOptions): number;
  /** Set when the window is derived and a requested one would contradict the method. */
  fixedWindow?: string;
  source(o: MethodOptions, length: number): ScoreSource;
  /**
   * Set for a method that can compress during decoding: where its attention comes from there. Its `score`
   * then ranks every cached entry (length = the next position), as kvpress's DecodingPress wraps a scorer.
   */
  decoding?: DecodeSource;
  /** Scores [layer][kvHead][length]; higher is kept first. */
  score(inputs: ScoreInputs, o: MethodOptions): Float32Array;
  /**
   * Set for the attention-based scorers, whose per-head scores are comparable across heads and layers,
   * so any allocation applies to them. Without it a request's `allocation` is refused.
   */
  allocatable?: true;
}

/** The common attention path: pool each query head's mass outside the window, then combine GQA groups. */
export function scoreFromMass(inputs: ScoreInputs, o: MethodOptions, mass = inputs.mass!): Float32Array {
  const c = inputs.config, L = inputs.length;
  const pooled = poolRows(mass, c.nLayers * c.nHeads, L, L - Math.min(o.window, L), o.pooling, o.kernel);
  return aggregateGqa(pooled, c.nLayers, c.nHeads, c.nKvHeads, L, o.gqa);
}
