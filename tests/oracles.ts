/**
 * Brute-force oracles for the tests: what a compression should keep, recomputed here from first principles
 * and never through core/selection.ts, core/scoring.ts, core/methods/ or core/decode_compression.ts.
 *
 * Attention rows come from the CPU reference's own queries and cached keys (post-RoPE, as the model runs
 * them: that forward pass is anchored to llama2.c's logits elsewhere), with a naive float64 softmax
 * over every entry a row sees. Pooling, GQA aggregation and top-B are written out below, plainly.
 */
import type { ModelConfig } from "../core/config.ts";
import type { CpuSession } from "../core/cpu/executor.ts";
import type { QueryRows } from "../core/executor.ts";
import { assertEquals } from "./helpers.ts";

/** The CPU reference's captured queries: [row] -> [layer][queryHead][headDim]. */
const queryData = (q: QueryRows) => (q as unknown as { data: Float32Array[] }).data;

/**
 * Adds the attention probabilities of every captured row to `into` ([layer][queryHead][stride], by
 * absolute position), for keys at positions < `limit`. Each row's softmax runs over every entry of the
 * session's cache at a position up to the row's own (causal), whatever was evicted before.
 */
export function addBruteMass(
  s: CpuSession,
  queries: QueryRows,
  limit: number,
  into: Float64Array,
  stride: number,
) {
  const c = s.config, hd = c.headDim, group = c.nHeads / c.nKvHeads;
  const data = queryData(queries);
  queries.positions.forEach((pos, r) => {
    for (let l = 0; l < c.nLayers; l++) {
      for (let h = 0; h < c.nHeads; h++) {
        const slot = s.cache.slot(l, Math.floor(h / group));
        const n = s.cache.counts[slot], keys = s.cache.keys[slot], kpos = s.cache.positions[slot];
        const q = data[r].subarray((l * c.nHeads + h) * hd, (l * c.nHeads + h + 1) * hd);
        const seen: { t: number; logit: number }[] = [];
        for (let e = 0; e < n; e++) {
          if (kpos[e] > pos) continue;
          let dot = 0;
          for (let i = 0; i < hd; i++) dot += q[i] * keys[e * hd + i];
          seen.push({ t: kpos[e], logit: dot / Math.sqrt(hd) });
        }
        const top = Math.max(...seen.map((x) => x.logit));
        const z = seen.reduce((a, x) => a + Math.exp(x.logit - top), 0);
        for (const x of seen) {
          if (x.t < limit) into[(l * c.nHeads + h) * stride + x.t] += Math.exp(x.logit - top) / z;
        }
      }
    }
  });
}

/** L2 norm of every cached key, by absolute position: [layer][kvHead][stride] (0 where nothing is held). */
export function bruteKeyNorms(s: CpuSession, stride: number): Float64Array {
  const c = s.config, hd = c.headDim, out = new Float64Array(c.nLayers * c.nKvHeads * stride);
  for (let slot = 0; slot < c.nLayers * c.nKvHeads; slot++) {
    for (let e = 0; e < s.cache.counts[slot]; e++) {
      const t = s.cache.positions[slot][e];
      if (t < stride) {
        out[slot * stride + t] = Math.hypot(...s.cache.keys[slot].subarray(e * hd, (e + 1) * hd));
      }
    }
  }
  return out;
}

export interface ScoreShape {
  pooling: "max" | "avg" | "none";
  kernel: number;
  gqa: "mean" | "max" | "sum";
}

/**
 * Per KV head scores [layer][kvHead][P] from per query head masses [layer][queryHead][stride]: each query
 * head's values over positions [0, span) pooled over a centred kernel (max: over the neighbours that
 * exist; avg: their mean), positions from `span` on left as they are, then the GQA group combined.
 */
export function bruteHeadScores(
  mass: Float64Array,
  stride: number,
  c: ModelConfig,
  P: number,
  span: number,
  o: ScoreShape,
): Float64Array {
  const group = c.nHeads / c.nKvHeads, half = Math.floor(o.kernel / 2);
  const out = new Float64Array(c.nLayers * c.nKvHeads * P);
  for (let l = 0; l < c.nLayers; l++) {
    for (let g = 0; g < c.nKvHeads; g++) {
      const perHead: number[][] = [];
      for (let j = 0; j < group; j++) {
        const row = Array.from(mass.subarray((l * c.nHeads + g * group + j) * stride).subarray(0, P));
        perHead.push(row.map((v, t) => {
          if (o.pooling === "none" || o.kernel <= 1 || t >= span) return v;
          const near = row.slice(Math.max(0, t - half), Math.min(span, t - half + o.kernel));
          return o.pooling === "max" ? Math.max(...near) : near.reduce((a, b) => a + b, 0) / near.length;
        }));
      }
      for (let t = 0; t < P; t++) {
        const vals = perHead.map((r) => r[t]);
        const sum = vals.reduce((a, b) => a + b, 0);
        out[(l * c.nKvHeads + g) * P + t] = o.gqa === "max"
          ? Math.max(...vals)
          : o.gqa === "sum"
          ? sum
          : sum / group;
      }
    }
  }
  return out;
}

/**
 * The `budget` positions a head keeps out of `held`: every position `forced` says must stay, then the rest
 * by descending score, the earlier position first among equal scores. Ascending.
 */
export function bruteKeep(
  held: ArrayLike<number>,
  budget: number,
  score: (t: number) => number,
  forced: (t: number) => boolean,
): number[] {
  const all = Array.from(held);
  if (all.length <= budget) return all;
  const must = all.filter(forced);
  const rest = all.filter((t) => !forced(t));
  // A selection sort, deliberately not Array.prototype.sort with a comparator.
  const picked: number[] = [];
  while (picked.length < budget - must.length && rest.length > 0) {
    let best = 0;
    for (let i = 1; i < rest.length; i++) {
      if (
        score(rest[i]) > score(rest[best]) || (score(rest[i]) === score(rest[best]) && rest[i] < rest[best])
      ) {
        best = i;
      }
    }
    picked.push(rest.splice(best, 1)[0]);
  }
  return [...must, ...picked].sort((a, b) => a - b);
}

/**
 * Scores closer than this (relative to the larger, at least absolute) are a tie: the code under test
 * scores in float32 and sums rows in another order, so it may order them either way.
 */
export const TIE_REL = 1e-5;
const tied = (a: number, b: number) => Math.abs(a - b) <= TIE_REL * Math.max(1, Math.abs(a), Math.abs(b));

/**
 * Per head: the same count, and the same positions except among ties (the positions kept by one side only
 * must all have oracle scores tied with each other). Returns the number of heads that differed by ties.
 */
export function assertKeptLike(
  got: ArrayLike<number>[][],
  want: number[][],
  score: (slot: number, t: number) => number,
  label: string,
): number {
  let ties = 0;
  want.forEach((w, slot) => {
    const g = Array.from(got.flat()[slot]);
    if (JSON.stringify(g) === JSON.stringify(w)) return;
    assertEquals(g.length, w.length, `${label}: slot ${slot} kept count`);
    const a = new Set(g), b = new Set(w);
    const differ = [...g.filter((t) => !b.has(t)), ...w.filter((t) => !a.has(t))].map((t) => score(slot, t));
    const lo = Math.min(...differ), hi = Math.max(...differ);
    if (!tied(lo, hi)) {
      assertEquals(g, w, `${label}: slot ${slot} kept (oracle scores of the difference ${differ})`);
    }
    ties++;
  });
  return ties;
}

/** Index of the largest logit, the first among equals. */
export function bruteArgmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

// ---- a whole prefill compression, brute force ---------------------------------------------------------

/** Captured rows from `from` on (the CPU reference's QueryRows are plain arrays). */
export function rowsFrom(q: QueryRows, from: number): QueryRows {
  const i = q.positions.indexOf(from);
  return {
    positions: q.positions.slice(i),
    data: queryData(q).slice(i),
    dispose() {},
  } as unknown as QueryRows;
}

/**
 * PyramidKV's per-layer budgets, restated from KVCache-Factory: min = (B - w) / beta, max = 2(B - w) - min
 * (capped at L - w, then min = 2(B - w) - max), layer l gets max - l x step + w with step = (max - min) /
 * (layers - 1), all integer divisions; what that leaves of layers x B goes one entry at a time to the
 * earliest layers, cycling, never below w nor above L.
 */
export function brutePyramid(layers: number, L: number, B: number, w: number, beta: number): number[] {
  if (layers === 1 || B >= L) return Array(layers).fill(Math.min(B, L));
  let lo = Math.floor((B - w) / beta), hi = 2 * (B - w) - lo;
  if (hi >= L - w) [hi, lo] = [L - w, 2 * (B - w) - (L - w)];
  const step = Math.floor((hi - lo) / (layers - 1));
  const out = Array.from({ length: layers }, (_, l) => hi - l * step + w);
  let left = layers * B - out.reduce((a, b) => a + b, 0);
  for (let l = 0; left !== 0; l = (l + 1) % layers) {
    const next = out[l] + Math.sign(left);
    if (next >= w && next <= L) [out[l], left] = [next, left - Math.sign(left)];
  }
  return out;
}

/** What a prefill compression must keep: [layer][kvHead] ascending, and the scores it ranked by. */
export interface BruteCompression {
  kept: number[][][];
  /** [layer][kvHead][L]; null when nothing is scored (full, streaming_llm). */
  scores: Float64Array | null;
}

/** The resolved options a brute-force compression reads (core/methods/types.ts's MethodOptions). */
export interface BruteOptions extends ScoreShape {
  budget: number;
  window: number;
  sinks: number;
  normalize: boolean;
  seed: number;
  beta: number;
  floor: number;
  lookaheadTokens: number;
  allocation: "uniform" | "pyramid" | "adaptive";
}

/**
 * Every method's prefill selection from first principles, on a CPU reference session holding the whole
 * prompt with every row's queries captured (`rows`). `soft` are the soft rows Judge Q scores with; `uniform`
 * is the seeded stream `random` ranks by (sampling.ts's generator: a definition, not a computation).
 */
export async function bruteCompression(
  s: CpuSession,
  rows: QueryRows,
  method: string,
  o: BruteOptions,
  soft: Float32Array | null,
  uniform: (seed: number, n: number) => Float64Array,
): Promise<BruteCompression> {
  const c = s.config, L = s.nextPosition, B = o.budget, w = o.window, nKv = c.nKvHeads;
  const heads = (f: (l: number, g: number) => number[]) =>
    Array.from({ length: c.nLayers }, (_, l) => Array.from({ length: nKv }, (_, g) => f(l, g)));
  const range = (a: number, b: number) => Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i);
  if (method === "full" || B >= L) return { kept: heads(() => range(0, L)), scores: null };
  if (method === "streaming_llm") {
    return { kept: heads(() => [...range(0, o.sinks), ...range(L - (B - o.sinks), L)]), scores: null };
  }
  const massOf = (q: QueryRows, session = s) => {
    const m = new Float64Array(c.nLayers * c.nHeads * L);
    addBruteMass(session, q, L, m, L);
    return m;
  };
  let scores: Float64Array;
  if (method === "random") scores = uniform(o.seed, c.nLayers * nKv * L);
  else if (method === "knorm") scores = bruteKeyNorms(s, L).map((n) => -n);
  else if (method === "h2o") {
    const m = massOf(rows);
    if (o.normalize) m.forEach((v, k) => (m[k] = v / (L - (k % L)))); // key t is seen by rows t..L-1
    scores = bruteHeadScores(m, L, c, L, L - w, o);
  } else if (method === "tova") scores = bruteHeadScores(massOf(rowsFrom(rows, L - 1)), L, c, L, L - w, o);
  else if (["snapkv", "pyramidkv", "adakv"].includes(method)) {
    scores = bruteHeadScores(massOf(rowsFrom(rows, L - w)), L, c, L, L - w, o);
  } else if (method === "judgeq") {
    const t = (await s.clone()) as CpuSession;
    const r = await t.forward({ kind: "embeddings", rows: soft!, count: soft!.length / c.dim }, {
      captureQueries: true,
      logits: "none",
    });
    scores = bruteHeadScores(massOf(r.queries!, t), L, c, L, L - w, o);
    t.dispose();
  } else if (method === "lookahead") {
    // A draft holding SnapKV's choice decodes pseudo tokens; their queries and the window's score the prompt.
    const draftScores = bruteHeadScores(massOf(rowsFrom(rows, L - w)), L, c, L, L - w, o);
    const draftKept = heads((l, g) =>
      bruteKeep(range(0, L), B, (t) => draftScores[(l * nKv + g) * L + t], (t) => t >= L - w)
    );
    const d = (await s.clone()) as CpuSession;
    await d.keepPositions(draftKept.map((hs) => hs.map((h) => Int32Array.from(h))), L);
    const pseudo = await d.decode({
      maxTokens: o.lookaheadTokens,
      sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
      stopTokenIds: [],
      captureQueries: true,
    });
    d.dispose();
    const m = massOf(rowsFrom(rows, L - w));
    addBruteMass(s, pseudo.queries!, L, m, L); // against the whole prompt, not the draft
    scores = bruteHeadScores(m, L, c, L, L - w, o);
  } else throw new Error(`no brute-force oracle for ${method}`);
  const score = (l: number, g: number) => (t: number) => scores[(l * nKv + g) * L + t];
  const windowed = (t: number) => t >= L - w;
  if (o.allocation === "pyramid") {
    const budgets = brutePyramid(c.nLayers, L, B, w, o.beta);
    return { kept: heads((l, g) => bruteKeep(range(0, L), budgets[l], score(l, g), windowed)), scores };
  }
  if (o.allocation === "adaptive") {
    const free = B - w, sure = Math.floor(o.floor * free);
    const kept = heads((l, g) => bruteKeep(range(0, L - w), sure, score(l, g), () => false));
    for (let l = 0; l < c.nLayers; l++) {
      // The layer's other entries: the best (score, then earlier position, then lower head) across heads.
      const pool = kept[l].flatMap((k, g) =>
        range(0, L - w).filter((t) => !k.includes(t)).map((t) => ({ g, t }))
      );
      const v = (p: { g: number; t: number }) => score(l, p.g)(p.t);
      for (let n = 0; n < nKv * (free - sure); n++) {
        let best = 0;
        for (let i = 1; i < pool.length; i++) {
          const a = pool[i], b = pool[best];
          if (v(a) > v(b) || (v(a) === v(b) && (a.t < b.t || (a.t === b.t && a.g < b.g)))) best = i;
        }
        kept[l][pool[best].g].push(pool.splice(best, 1)[0].t);
      }
      kept[l] = kept[l].map((k) => [...k, ...range(L - w, L)].sort((a, b) => a - b));
    }
    return { kept, scores };
  }
  return { kept: heads((l, g) => bruteKeep(range(0, L), B, score(l, g), windowed)), scores };
}
