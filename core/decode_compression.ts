/**
 * Compression during decoding: a bounded KV cache for long outputs. The output is decoded in segments;
 * whenever a KV head's cache reaches `budget + interval` entries, every cached entry is scored and each
 * KV head is pruned back to its best `budget` entries, the last `buffer` positions always kept. Decoding
 * then continues at the next position (positions keep increasing). Nothing here needs more from an
 * executor than the KvSession interface: segments are plain `decode` calls.
 */
import * as E from "fp-ts/Either";
import type { ModelConfig } from "./config.ts";
import { fail, type JudgeQError } from "./errors.ts";
import type { KvSession, QueryRows } from "./executor.ts";
import { GLOBAL_DEFAULTS, METHODS } from "./methods/registry.ts";
import { type MethodOptions, scoreFromMass } from "./methods/types.ts";
import { nextUniform, seedState } from "./sampling.ts";

/**
 * `kv_compression.decode` as on the wire (ranges checked by `resolveDecodeCompression`; its zod
 * schema is server/schemas.ts's `decodeCompressionWireSchema`).
 */
export type DecodeCompressionRequest = {
  /** Defaults to the prefill method (kv_compression.method) when that one can run at decode time. */
  method?: string;
  /** Entries kept per KV head per layer after each compression (prompt and generated together). */
  budget?: number;
  /** The budget as a share of all positions seen so far, in (0, 1]. */
  fraction?: number;
  /** Tokens generated between compressions: a head never holds more than budget + interval entries. */
  interval: number;
  /** The most recent positions never evicted (default min(8, budget - 1)). */
  buffer?: number;
};

/** Where a method's decode-time scores come from. */
export type DecodeSource = "soft" | "rows" | "last_row" | "running" | "keys" | "sinks" | "random";

/** Methods that can compress during decoding, and their score source there. */
export const DECODE_SOURCES: Record<string, DecodeSource> = {
  judgeq: "soft",
  snapkv: "rows",
  pyramidkv: "rows",
  adakv: "rows",
  tova: "last_row",
  h2o: "running",
  streaming_llm: "sinks",
  knorm: "keys",
  random: "random",
};
export const DECODE_METHOD_NAMES = Object.keys(DECODE_SOURCES);

/** A resolved decode-time compression: plain data, part of the plan. */
export interface DecodeCompression {
  method: string;
  source: DecodeSource;
  /** Absolute budget, or null when `fraction` sets it. */
  budget: number | null;
  fraction: number | null;
  interval: number;
  buffer: number;
  /** Judge Q: soft tokens appended at each compression. */
  softCount: number;
  randomSoft: boolean;
  options: MethodOptions;
}

const invalid = (message: string, param: string) =>
  E.left(fail("invalid_request", message, `kv_compression.decode.${param}`));

/** Checks `kv_compression.decode` and resolves its defaults (method, buffer, method options). */
export function resolveDecodeCompression(
  d: DecodeCompressionRequest,
  prefill: { method: string; random_soft?: boolean } & Record<string, unknown>,
  adapterTokens: number | null,
): E.Either<JudgeQError, DecodeCompression> {
  const method = d.method ?? prefill.method;
  const source = DECODE_SOURCES[method];
  if (!source) {
    return invalid(
      d.method === undefined
        ? `kv_compression.method ${
          JSON.stringify(method)
        } cannot compress during decoding; give decode.method (one of: ${DECODE_METHOD_NAMES.join(", ")})`
        : `unknown decode method ${JSON.stringify(method)} (known: ${DECODE_METHOD_NAMES.join(", ")})`,
      "method",
    );
  }
  if (!Number.isInteger(d.interval) || d.interval < 1) {
    return invalid("interval must be a positive integer", "interval");
  }
  if ((d.budget === undefined) === (d.fraction === undefined)) {
    return invalid("give budget or fraction (exactly one)", "budget");
  }
  if (d.budget !== undefined && (!Number.isInteger(d.budget) || d.budget < 1)) {
    return invalid("budget must be a positive integer", "budget");
  }
  if (d.fraction !== undefined && !(d.fraction > 0 && d.fraction <= 1)) {
    return invalid("fraction must be in (0, 1]", "fraction");
  }
  let buffer: number;
  if (d.buffer !== undefined) {
    if (!Number.isInteger(d.buffer) || d.buffer < 0) {
      return invalid("buffer must be a non-negative integer", "buffer");
    }
    if (d.budget !== undefined && d.buffer >= d.budget) {
      return invalid(`buffer ${d.buffer} must be smaller than the budget ${d.budget}`, "buffer");
    }
    buffer = d.buffer;
  } else {
    buffer = d.budget !== undefined ? Math.min(8, d.budget - 1) : 8;
  }
  if (source === "soft" && prefill.random_soft !== true && adapterTokens === null) {
    return invalid("judgeq needs a Judge Q adapter for this model (or random_soft: true)", "method");
  }
  const m = METHODS[method];
  const base = { ...GLOBAL_DEFAULTS, ...m.defaults };
  const pick = <K extends keyof MethodOptions>(k: K, wire: string) =>
    (prefill[wire] as MethodOptions[K] | undefined) ?? base[k];
  const options: MethodOptions = {
    ...base,
    budget: d.budget ?? 0,
    window: buffer,
    pooling: pick("pooling", "pooling"),
    kernel: pick("kernel", "kernel"),
    gqa: pick("gqa", "gqa"),
    sinks: pick("sinks", "sinks"),
    normalize: false,
    seed: pick("seed", "seed"),
  };
  if (source === "sinks" && d.budget !== undefined && options.sinks + buffer > d.budget) {
    return invalid(`sinks ${options.sinks} plus buffer ${buffer} exceed the budget ${d.budget}`, "buffer");
  }
  return E.right({
    method,
    source,
    budget: d.budget ?? null,
    fraction: d.fraction ?? null,
    interval: d.interval,
    buffer,
    softCount: source === "soft" ? adapterTokens ?? 32 : 0,
    randomSoft: prefill.random_soft === true,
    options,
  });
}

/** The budget when `positions` positions have been seen: never below buffer + 1. */
export const budgetAt = (dc: DecodeCompression, positions: number) =>
  dc.budget ?? Math.max(dc.buffer + 1, Math.floor(dc.fraction! * positions));

/** An upper bound on the entries a head holds while decoding from `held` entries up to `positionsAtEnd` positions. */
export function decodePeak(dc: DecodeCompression, held: number, positionsAtEnd: number): number {
  return Math.max(held, budgetAt(dc, positionsAtEnd) + dc.interval) + dc.softCount;
}

/** One decode-time compression. */
export interface DecodeCompressionEvent {
  /** Output index (questions of a context are outputs 0, 1, ...). */
  output: number;
  /** Tokens generated before it. */
  step: number;
  /** Next position when it ran: every entry below it was a candidate. */
  position: number;
  /** Most entries any KV head held before and after. */
  entriesBefore: number;
  entriesAfter: number;
  ms: number;
}

export interface DecodeCompressionStats {
  method: string;
  budget: number | null;
  fraction: number | null;
  interval: number;
  buffer: number;
  events: DecodeCompressionEvent[];
  /** KV bytes held at the end of each output's decode. */
  kvBytesEnd: number[];
}

/**
 * Picks, per layer and KV head, the `budget` best held positions (scores [layer][kvHead][P]), always
 * keeping the held positions >= P - buffer. Ties go to the earlier position; lists are ascending.
 */
export function selectHeld(
  scores: Float32Array,
  held: Int32Array[][],
  P: number,
  budget: number,
  buffer: number,
): Int32Array[][] {
  const nKv = held[0].length;
  return held.map((heads, l) =>
    heads.map((positions, g) => {
      if (positions.length <= budget) return positions.slice();
      const off = (l * nKv + g) * P;
      const forced: number[] = [], rest: number[] = [];
      for (const p of positions) (p >= P - buffer ? forced : rest).push(p);
      rest.sort((a, b) => scores[off + b] - scores[off + a] || a - b);
      return Int32Array.from([...forced, ...rest.slice(0, Math.max(0, budget - forced.length))]).sort();
    })
  );
}

/** Attention mass of query rows accumulated by absolute position, [layer][queryHead][stride]. */
class MassSums {
  readonly sums: Float32Array;
  constructor(readonly c: ModelConfig, readonly stride: number) {
    this.sums = new Float32Array(c.nLayers * c.nHeads * stride);
  }
  async add(s: KvSession, rows: QueryRows) {
    const P = s.nextPosition;
    try {
      const m = await s.attentionMass(rows, P);
      const n = this.c.nLayers * this.c.nHeads;
      for (let r = 0; r < n; r++) {
        for (let t = 0; t < P; t++) this.sums[r * this.stride + t] += m[r * P + t];
      }
    } finally {
      rows.dispose();
    }
  }
  /** [layer][queryHead][P]. */
  view(P: number): Float32Array {
    const n = this.c.nLayers * this.c.nHeads, out = new Float32Array(n * P);
    for (let r = 0; r < n; r++) out.set(this.sums.subarray(r * this.stride, r * this.stride + P), r * P);
    return out;
  }
  clear() {
    this.sums.fill(0);
  }
}

export interface BoundedDecodeContext {
  softEmbeddings: Float32Array | null;
  /** Random soft tokens for the ablation (already generated). */
  randomSoft: () => Float32Array;
  onTokens?: (ids: number[]) => void | Promise<void>;
  signal?: AbortSignal;
  /** Called at each segment boundary, before any compression (tests assert the cap here). */
  onBoundary?: (session: KvSession, generated: number) => void | Promise<void>;
  /** Called after each compression with the kept positions per layer and KV head (evaluation). */
  onCompress?: (event: Omit<DecodeCompressionEvent, "output">, kept: Int32Array[][]) => void;
  /**
   * Teacher forcing (evaluation): these tokens are fed instead of sampled, with the same segments and
   * compressions, and the next-token logits before each of them are returned.
   */
  forced?: number[];
}

export interface BoundedDecodeResult {
  tokens: number[];
  finishReason: "stop" | "length" | "aborted";
  syncs: number;
  events: Omit<DecodeCompressionEvent, "output">[];
  kvBytesEnd: number;
  /** With `forced`: the logits before each forced token (computed on the bounded cache). */
  logits: Float32Array[] | null;
}

const maxCount = (held: Int32Array[][]) => Math.max(...held.flatMap((hs) => hs.map((p) => p.length)));

/**
 * Decodes with the cache bounded: segments of plain `decode` calls, each ending when a head would pass
 * `budget + interval` entries; between them the last sampled token is run and the cache compressed.
 * `initialRows` (the question's queries, say) seed the row-based scores before the first segment.
 */
export async function boundedDecode(
  s: KvSession,
  spec: {
    maxTokens: number;
    sampling: { temperature: number; topP: number; topK: number; seed: number };
    stopTokenIds: number[];
  },
  dc: DecodeCompression,
  ctx: BoundedDecodeContext,
  initialRows: QueryRows | null = null,
): Promise<BoundedDecodeResult> {
  const c = s.config;
  const needsRows = dc.source === "rows" || dc.source === "running" || dc.source === "last_row";
  // Row-based scores only: attention sums by absolute position (never past the last decoded one).
  const mass = needsRows ? new MassSums(c, s.nextPosition + spec.maxTokens + 1) : null;
  if (initialRows) {
    if (mass) await mass.add(s, initialRows);
    else initialRows.dispose();
  }
  const forced = ctx.forced ? ctx.forced.slice(0, spec.maxTokens) : null;
  if (forced) spec = { ...spec, maxTokens: forced.length };
  const logits: Float32Array[] | null = forced ? [await s.currentLogits()] : null;
  const tokens: number[] = [];
  const events: BoundedDecodeResult["events"] = [];
  let finishReason: BoundedDecodeResult["finishReason"] = "length";
  let syncs = 0, segment = 0;
  while (tokens.length < spec.maxTokens) {
    let held = await s.positions();
    await ctx.onBoundary?.(s, tokens.length);
    let budget = budgetAt(dc, s.nextPosition);
    if (maxCount(held) >= budget + dc.interval) {
      const t0 = performance.now(), before = maxCount(held), P = s.nextPosition;
      const scores = await scoreCached(s, dc, mass, ctx, events.length);
      const kept = selectHeld(scores, held, P, budget, dc.buffer);
      await s.keepPositions(kept, P);
      if (dc.source === "rows") mass!.clear();
      held = kept;
      const event = {
        step: tokens.length,
        position: P,
        entriesBefore: before,
        entriesAfter: maxCount(kept),
        ms: performance.now() - t0,
      };
      events.push(event);
      ctx.onCompress?.(event, kept);
      budget = budgetAt(dc, P);
    }
    const length = Math.min(budget + dc.interval - maxCount(held), spec.maxTokens - tokens.length);
    const start = s.nextPosition;
    // Segment 0 samples exactly as an unbounded decode would; later segments get their own seeds.
    const seed = segment === 0
      ? spec.sampling.seed
      : (spec.sampling.seed + Math.imul(segment, 0x9e3779b1)) | 0;
    const captureQueries = dc.source === "rows" || dc.source === "running";
    const d = forced
      ? await forcedSegment(s, forced.slice(tokens.length, tokens.length + length), captureQueries, logits!)
      : await s.decode({
        maxTokens: length,
        sampling: { ...spec.sampling, seed },
        stopTokenIds: spec.stopTokenIds,
        captureQueries,
        onTokens: ctx.onTokens,
        signal: ctx.signal,
      });
    segment++;
    syncs += d.syncs;
    tokens.push(...d.tokens);
    if (d.queries) await mass!.add(s, d.queries);
    if (d.finishReason !== "length") {
      finishReason = d.finishReason;
      break;
    }
    if (tokens.length >= spec.maxTokens) break;
    // The segment's last token was sampled but not run: run it, so the next segment continues from it.
    const pending = d.tokens.slice(s.nextPosition - start);
    if (pending.length > 0) {
      const r = await s.forward({ kind: "tokens", tokens: pending }, {
        logits: "last",
        captureQueries: needsRows,
      });
      logits?.push(r.logits!);
      if (r.queries) {
        if (dc.source === "last_row") mass!.clear();
        await mass!.add(s, r.queries);
      }
    }
  }
  return { tokens, finishReason, syncs, events, kvBytesEnd: s.kvBytes(), logits };
}

/** A teacher-forced segment: runs all but the last token (as `decode` would), keeping their logits. */
async function forcedSegment(s: KvSession, seg: number[], captureQueries: boolean, logits: Float32Array[]) {
  let queries: QueryRows | null = null;
  if (seg.length > 1) {
    const r = await s.forward({ kind: "tokens", tokens: seg.slice(0, -1) }, {
      logits: "all",
      captureQueries,
    });
    const V = s.config.vocabSize;
    for (let i = 0; i < seg.length - 1; i++) logits.push(r.logits!.slice(i * V, (i + 1) * V));
    queries = r.queries;
  }
  return { tokens: seg, finishReason: "length" as const, queries, syncs: 0 };
}

/** Scores every position below the next one: [layer][kvHead][P]. */
async function scoreCached(
  s: KvSession,
  dc: DecodeCompression,
  mass: MassSums | null,
  ctx: BoundedDecodeContext,
  event: number,
): Promise<Float32Array> {
  const c = s.config, P = s.nextPosition;
  const inputs = { config: c, length: P, mass: null as Float32Array | null, firstRow: 0, keyNorms: null };
  let scores: Float32Array;
  switch (dc.source) {
    case "soft": {
      const rows = dc.randomSoft || !ctx.softEmbeddings ? ctx.randomSoft() : ctx.softEmbeddings;
      const r = await s.forward({ kind: "embeddings", rows, count: dc.softCount }, {
        logits: "none",
        captureQueries: true,
      });
      try {
        inputs.mass = await s.attentionMass(r.queries!, P);
      } finally {
        r.queries!.dispose();
      }
      await s.truncateFrom(P);
      scores = scoreFromMass(inputs, dc.options);
      break;
    }
    case "rows":
    case "running":
    case "last_row":
      inputs.mass = mass!.view(P);
      scores = scoreFromMass(inputs, dc.options);
      break;
    case "keys":
      scores = (await s.keyNorms(P)).map((n) => -n);
      break;
    case "sinks":
      // StreamingLLM: the sinks first, then the most recent.
      scores = new Float32Array(c.nLayers * c.nKvHeads * P);
      for (let k = 0; k < scores.length; k++) {
        const t = k % P;
        scores[k] = t < dc.options.sinks ? 1e9 : t;
      }
      break;
    case "random": {
      scores = new Float32Array(c.nLayers * c.nKvHeads * P);
      let state = seedState(dc.options.seed + event);
      for (let k = 0; k < scores.length; k++) [scores[k], state] = nextUniform(state);
      break;
    }
  }
  // Only held entries are candidates (selectHeld iterates them), so the others need no masking.
  return scores;
}
