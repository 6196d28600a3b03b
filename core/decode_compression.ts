/**
 * Compression during decoding, as plan data: the request (`kv_compression.decode`), its resolved form, the
 * budget it allows at each position, and which held entries a compression keeps. A bounded KV cache for
 * long outputs: whenever a KV head's cache reaches `budget + interval` entries, every cached entry is scored
 * by the method's registered `score` (core/methods/) and each KV head is pruned back to its best `budget`
 * entries, the last `buffer` positions always kept. core/bounded_decode.ts runs it on any KvSession.
 */
import * as E from "fp-ts/Either";
import { fail, type JudgeQError } from "./errors.ts";
import { GLOBAL_DEFAULTS, METHOD_NAMES, METHODS } from "./methods/registry.ts";
import type { DecodeSource, MethodOptions } from "./methods/types.ts";

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

/** Methods that can compress during decoding (those with `decoding` in the registry). */
export const DECODE_METHOD_NAMES = METHOD_NAMES.filter((n) => METHODS[n].decoding !== undefined);

/** A resolved decode-time compression: plain data, part of the plan. */
export interface DecodeCompression {
  method: string;
  source: DecodeSource;
  /** Absolute budget, or null when `fraction` sets it. */
  budget: number | null;
  fraction: number | null;
  interval: number;
  buffer: number;
  /** Judge Q: soft tokens appended at each compression (the count plan.ts's adapter rule gives). */
  softCount: number;
  randomSoft: boolean;
  options: MethodOptions;
}

const invalid = (message: string, param: string) =>
  E.left(fail("invalid_request", message, `kv_compression.decode.${param}`));

/**
 * Checks `kv_compression.decode` and resolves its defaults (method, buffer, method options). `softTokens`
 * is plan.ts's adapter rule: the soft-token count for Judge Q, or the error naming `param`.
 */
export function resolveDecodeCompression(
  d: DecodeCompressionRequest,
  prefill: { method: string; random_soft?: boolean } & Record<string, unknown>,
  softTokens: (param: string) => E.Either<JudgeQError, number>,
): E.Either<JudgeQError, DecodeCompression> {
  const method = d.method ?? prefill.method;
  const source = METHODS[method]?.decoding;
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
  let softCount = 0;
  if (source === "soft") {
    const n = softTokens("kv_compression.decode.method");
    if (E.isLeft(n)) return n;
    softCount = n.right;
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
  if (method === "streaming_llm" && d.budget !== undefined && options.sinks + buffer > d.budget) {
    return invalid(`sinks ${options.sinks} plus buffer ${buffer} exceed the budget ${d.budget}`, "buffer");
  }
  return E.right({
    method,
    source,
    budget: d.budget ?? null,
    fraction: d.fraction ?? null,
    interval: d.interval,
    buffer,
    softCount,
    randomSoft: prefill.random_soft === true,
    options,
  });
}

/** The budget when `positions` positions have been seen: never below buffer + 1. */
export const budgetAt = (dc: DecodeCompression, positions: number) =>
  dc.budget ?? Math.max(dc.buffer + 1, Math.floor(dc.fraction! * positions));

/**
 * The first prompt row whose attention scores a compression due before any token is decoded (a prompt
 * that alone holds `budget + interval` entries in some head when decoding begins: `held`, the most entries
 * a head holds then), or null when none is due or the method scores without rows. These rows stand in for
 * the rows run since decoding began: the method's own prefill rows, with `interval` rows as SnapKV's
 * observation window (SnapKV, PyramidKV, AdaKV: the last `interval`; TOVA: the last; H2O: all).
 */
export function standInFrom(dc: DecodeCompression, promptLength: number, held: number): number | null {
  if (!ROW_SOURCES.includes(dc.source) || held < budgetAt(dc, promptLength) + dc.interval) return null;
  const source = METHODS[dc.method].source({ ...dc.options, window: dc.interval }, promptLength);
  return source.kind === "rows" ? source.from : null;
}

/** Decode sources that score with the attention of rows run (kept between compressions). */
export const ROW_SOURCES: readonly DecodeSource[] = ["rows", "running", "last_row"];

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
