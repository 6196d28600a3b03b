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
