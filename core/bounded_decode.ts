/**
 * Decoding with the cache bounded (core/decode_compression.ts says what is kept): the output is decoded in
 * segments of plain `decode` calls; whenever a KV head's cache reaches `budget + interval` entries, every
 * cached entry is scored by the method's registered `score` and each head pruned back to its budget.
 * Decoding then continues at the next position (positions keep increasing). Nothing here needs more from
 * an executor than the KvSession interface.
 */
import type { ModelConfig } from "./config.ts";
import {
  budgetAt,
  type DecodeCompression,
  type DecodeCompressionEvent,
  ROW_SOURCES,
  selectHeld,
  standInFrom,
} from "./decode_compression.ts";
import type { KvSession, QueryRows } from "./executor.ts";
import { METHODS } from "./methods/registry.ts";
import type { ScoreInputs } from "./methods/types.ts";
import { softPass, softRows } from "./soft_pass.ts";

/** Attention mass of query rows accumulated by absolute position, [layer][queryHead][stride]. */
class MassSums {
  readonly sums: Float32Array;
  constructor(readonly c: ModelConfig, readonly stride: number) {
    this.sums = new Float32Array(c.nLayers * c.nHeads * stride);
  }
  async add(s: KvSession, rows: QueryRows) {
    const P = s.nextPosition;
    try {
      this.addMass(await s.attentionMass(rows, P), P);
    } finally {
      rows.dispose();
    }
  }
  /** Adds attention already summed, [layer][queryHead][P]. */
  addMass(m: Float32Array, P: number) {
    const n = this.c.nLayers * this.c.nHeads;
    for (let r = 0; r < n; r++) {
      for (let t = 0; t < P; t++) this.sums[r * this.stride + t] += m[r * P + t];
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
  /**
   * The attention of a prompt's stand-in rows, [layer][queryHead][promptLength] (see `standInFrom`,
   * `prefillForBoundedDecode`): they score a compression due before any token is decoded.
   */
  promptMass?: Float32Array | null;
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
  const needsRows = ROW_SOURCES.includes(dc.source);
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
      // Nothing decoded yet: the prompt's own rows stand in (with none, every row score would be 0).
      if (tokens.length === 0 && mass && ctx.promptMass) {
        mass.addMass(ctx.promptMass, ctx.promptMass.length / (c.nLayers * c.nHeads));
      }
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

/** Scores every position below the next one with the method's registered scorer: [layer][kvHead][P]. */
async function scoreCached(
  s: KvSession,
  dc: DecodeCompression,
  mass: MassSums | null,
  ctx: BoundedDecodeContext,
  event: number,
): Promise<Float32Array> {
  const P = s.nextPosition;
  const inputs: ScoreInputs = { config: s.config, length: P, mass: null, firstRow: 0, keyNorms: null };
  if (dc.source === "soft") {
    inputs.mass = await softPass(
      s,
      softRows(dc.randomSoft, ctx.softEmbeddings, ctx.randomSoft),
      dc.softCount,
    );
  } else if (mass) inputs.mass = mass.view(P);
  else if (dc.source === "keys") inputs.keyNorms = await s.keyNorms(P);
  // Each compression draws its own random scores: the seed plus the compression's index.
  return METHODS[dc.method].score(inputs, { ...dc.options, seed: dc.options.seed + event });
}

/**
 * Runs a prompt on an empty session before `boundedDecode`, returning its stand-in rows' attention for
 * `BoundedDecodeContext.promptMass` (null when the first compression will not need them).
 */
export async function prefillForBoundedDecode(
  s: KvSession,
  tokens: number[],
  dc: DecodeCompression,
): Promise<Float32Array | null> {
  const from = standInFrom(dc, tokens.length, tokens.length);
  if (from === null) {
    await s.forward({ kind: "tokens", tokens }, { logits: "last" });
    return null;
  }
  if (from > 0) await s.forward({ kind: "tokens", tokens: tokens.slice(0, from) }, { logits: "none" });
  const r = await s.forward({ kind: "tokens", tokens: tokens.slice(from) }, {
    logits: "last",
    captureQueries: true,
  });
  try {
    return await s.attentionMass(r.queries!, tokens.length);
  } finally {
    r.queries!.dispose();
  }
}
