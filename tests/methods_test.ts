/**
 * Every method's kept set against a brute-force reference computed in the test from full attention
 * matrices (naive softmax over the captured queries and cached keys), on the real stories260K.
 */
import * as E from "fp-ts/Either";
import { CpuExecutor, type CpuSession } from "../core/cpu/executor.ts";
import { runPlan } from "../core/interpret.ts";
import { compilePlan, type CompressionRequest } from "../core/plan.ts";
import { pyramidBudgets } from "../core/selection.ts";
import { randomSoftTokens } from "../core/soft_tokens.ts";
import { GREEDY } from "../core/sampling.ts";
import { assert, assertEquals, embeddedModel, right } from "./helpers.ts";

const L = 72;
const PROMPT = Array.from({ length: L }, (_, i) => (i === 0 ? 1 : 3 + ((i * 37 + (i * i) % 11) % 500)));

/** Full attention probabilities of every captured row: [layer][qHead][row][key position]. */
async function attentionMatrices(rows: Float32Array | null) {
  const { weights } = await embeddedModel();
  const c = weights.config;
  const s = new CpuExecutor(weights).createSession(L + 40) as CpuSession;
  const r1 = await s.forward({ kind: "tokens", tokens: PROMPT }, { captureQueries: true });
  const qs = [...(r1.queries as unknown as { data: Float32Array[] }).data];
  if (rows) {
    const r2 = await s.forward({ kind: "embeddings", rows, count: rows.length / c.dim }, {
      captureQueries: true,
      logits: "none",
    });
    qs.push(...(r2.queries as unknown as { data: Float32Array[] }).data);
  }
  const n = qs.length, hd = c.headDim, group = c.nHeads / c.nKvHeads;
  const A: number[][][][] = [];
  for (let l = 0; l < c.nLayers; l++) {
    A.push([]);
    for (let h = 0; h < c.nHeads; h++) {
      const slot = s.cache.slot(l, Math.floor(h / group));
      const keys = s.cache.keys[slot];
      const m: number[][] = [];
      for (let r = 0; r < n; r++) {
        const q = qs[r].subarray((l * c.nHeads + h) * hd, (l * c.nHeads + h + 1) * hd);
        const logits = Array.from({ length: r + 1 }, (_, t) => {
          let d = 0;
          for (let i = 0; i < hd; i++) d += q[i] * keys[t * hd + i];
          return d / Math.sqrt(hd);
        });
        const mx = Math.max(...logits);
        const e = logits.map((x) => Math.exp(x - mx));
        const z = e.reduce((a, b) => a + b, 0);
        m.push(e.map((x) => x / z));
      }
      A[l].push(m);
    }
  }
  const norms = Array.from({ length: c.nLayers }, (_, l) =>
    Array.from({ length: c.nKvHeads }, (_, g) => {
      const keys = s.cache.keys[s.cache.slot(l, g)];
      return Array.from({ length: L }, (_, t) => Math.hypot(...keys.subarray(t * hd, (t + 1) * hd)));
    }));
  return { A, norms, c };
}

/** Top `k` of `scores` over positions [0, span), ties to the earlier; plus [span, L) kept. */
function naiveTop(scores: number[], k: number, span: number): number[] {
  const idx = [...Array(span).keys()].sort((a, b) => scores[b] - scores[a] || a - b).slice(0, k);
  for (let t = span; t < L; t++) idx.push(t);
  return idx.sort((a, b) => a - b);
}

function naiveMaxPool(v: number[], kernel: number): number[] {
  const half = Math.floor(kernel / 2);
  return v.map((_, t) => Math.max(...v.slice(Math.max(0, t - half), Math.min(v.length, t + kernel - half))));
}

/** Per KV head: mean over its query heads of the summed attention of rows [from, to) to keys < L. */
function groupedMass(
  A: number[][][][],
  c: { nHeads: number; nKvHeads: number },
  l: number,
  g: number,
  from: number,
  to: number,
  span: number,
  pool: (v: number[]) => number[] = (v) => v,
) {
  const group = c.nHeads / c.nKvHeads;
  const out = Array(L).fill(0);
  for (let j = 0; j < group; j++) {
    const m = A[l][g * group + j];
    const col = Array.from(
      { length: span },
      (_, t) => m.slice(from, to).reduce((a, row) => a + (row[t] ?? 0), 0),
    );
    const pooled = pool(col);
    for (let t = 0; t < span; t++) out[t] += pooled[t] / group;
  }
  return out;
}

async function keptBy(compression: CompressionRequest, softRows: Float32Array | null = null) {
  const { weights } = await embeddedModel();
  const plan = right(compilePlan(
    {
      input: { kind: "prompt", tokens: PROMPT },
      compression,
      decode: { maxTokens: 0, sampling: GREEDY, stopTokenIds: [] },
    },
    { config: weights.config, adapterTokens: softRows ? softRows.length / weights.config.dim : null },
  ));
  const r = await runPlan(plan, {
    executor: new CpuExecutor(weights),
    softEmbeddings: softRows,
    tokenEmbeddings: weights.embed,
  });
  return r.compression.kept;
}

const B = 24;

Deno.test("snapkv (pooled and unpooled) keeps the brute-force top positions plus the window", async () => {
  const { A, c } = await attentionMatrices(null);
  for (const [w, kernel, pooling] of [[16, 7, "max"], [8, 1, "none"]] as const) {
    const kept = await keptBy({ method: "snapkv", budget: B, window: w, pooling, kernel });
    for (let l = 0; l < c.nLayers; l++) {
      for (let g = 0; g < c.nKvHeads; g++) {
        const s = groupedMass(
          A,
          c,
          l,
          g,
          L - w,
          L,
          L - w,
          (v) => (pooling === "max" ? naiveMaxPool(v, kernel) : v),
        );
        assertEquals(kept[l][g], naiveTop(s, B - w, L - w), `layer ${l} head ${g} w${w} k${kernel}`);
      }
    }
  }
});

Deno.test("h2o keeps heavy hitters by column sums (raw and normalised) plus half the budget recent", async () => {
  const { A, c } = await attentionMatrices(null);
  for (const normalize of [false, true]) {
    const kept = await keptBy({ method: "h2o", budget: B, normalize });
    const w = B / 2;
    for (let l = 0; l < c.nLayers; l++) {
      for (let g = 0; g < c.nKvHeads; g++) {
        const s = groupedMass(A, c, l, g, 0, L, L, (v) => (normalize ? v.map((x, t) => x / (L - t)) : v));
        assertEquals(kept[l][g], naiveTop(s, B - w, L - w), `layer ${l} head ${g} normalize ${normalize}`);
      }
    }
  }
});

Deno.test("tova keeps the last token's most attended positions", async () => {
  const { A, c } = await attentionMatrices(null);
  const kept = await keptBy({ method: "tova", budget: B });
  for (let l = 0; l < c.nLayers; l++) {
    for (let g = 0; g < c.nKvHeads; g++) {
      assertEquals(kept[l][g], naiveTop(groupedMass(A, c, l, g, L - 1, L, L), B, L));
    }
  }
});

Deno.test("knorm keeps the lowest key norms; streaming_llm equals a sliding window with sinks", async () => {
  const { norms, c } = await attentionMatrices(null);
  const kn = await keptBy({ method: "knorm", budget: B });
  const st = await keptBy({ method: "streaming_llm", budget: B });
  const sliding = [0, 1, 2, 3, ...Array.from({ length: B - 4 }, (_, i) => L - (B - 4) + i)];
  for (let l = 0; l < c.nLayers; l++) {
    for (let g = 0; g < c.nKvHeads; g++) {
      assertEquals(kn[l][g], naiveTop(norms[l][g].map((x) => -x), B, L));
      assertEquals(st[l][g], sliding);
    }
  }
});

Deno.test("judgeq scores with the soft rows' attention over the prompt (soft rows see earlier soft rows)", async () => {
  const { weights } = await embeddedModel();
  const soft = randomSoftTokens(weights.embed, weights.config.dim, 8, 5);
  const { A, c } = await attentionMatrices(soft);
  for (const window of [0, 8]) {
    const kept = await keptBy({ method: "judgeq", budget: B, window }, soft);
    for (let l = 0; l < c.nLayers; l++) {
      for (let g = 0; g < c.nKvHeads; g++) {
        assertEquals(
          kept[l][g],
          naiveTop(groupedMass(A, c, l, g, L, L + 8, L - window), B - window, L - window),
        );
      }
    }
  }
});

Deno.test("pyramidkv follows the pyramid formula per layer and sums to the total", async () => {
  const { A, c } = await attentionMatrices(null);
  const kept = await keptBy({ method: "pyramidkv", budget: B, window: 8 });
  const budgets = pyramidBudgets(c.nLayers, L, B, 8, 20);
  assertEquals(budgets.reduce((a, b) => a + b, 0), c.nLayers * B, "sum");
  // The formula: min = (B - w) / beta, max = 2(B - w) - min, arithmetic steps from the first layer down.
  const min = Math.floor((B - 8) / 20),
    max = 2 * (B - 8) - min,
    step = Math.floor((max - min) / (c.nLayers - 1));
  budgets.forEach((b, l) => assert(Math.abs(b - (max - l * step + 8)) <= 1, `layer ${l} budget ${b}`));
  assert(budgets[0] > budgets[c.nLayers - 1], "decreasing");
  for (let l = 0; l < c.nLayers; l++) {
    for (let g = 0; g < c.nKvHeads; g++) {
      assertEquals(kept[l][g], naiveTop(groupedMass(A, c, l, g, L - 8, L, L - 8), budgets[l] - 8, L - 8));
    }
  }
});

Deno.test("adakv respects the floor per head and the layer total, picking the best scores across heads", async () => {
  const { A, c } = await attentionMatrices(null);
  const floor = 0.2, w = 8;
  const kept = await keptBy({ method: "adakv", budget: B, window: w, floor });
  const free = B - w, guaranteed = Math.floor(floor * free);
  let heterogeneous = false;
  for (let l = 0; l < c.nLayers; l++) {
    const counts = kept[l].map((k) => k.length);
    assertEquals(counts.reduce((a, b) => a + b, 0), c.nKvHeads * B, `layer ${l} total`);
    if (new Set(counts).size > 1) heterogeneous = true;
    const scores = Array.from({ length: c.nKvHeads }, (_, g) => groupedMass(A, c, l, g, L - w, L, L - w));
    // Brute force: each head's top `guaranteed`, then the best remaining (head, position) pairs.
    const chosen = scores.map((s) => new Set(naiveTop(s, guaranteed, L - w).filter((t) => t < L - w)));
    const rest = scores.flatMap((s, g) =>
      [...Array(L - w).keys()].filter((t) => !chosen[g].has(t)).map((t) => ({ g, t, v: s[t] }))
    );
    rest.sort((a, b) => b.v - a.v || a.t - b.t || a.g - b.g);
    for (const p of rest.slice(0, c.nKvHeads * (free - guaranteed))) chosen[p.g].add(p.t);
    for (let g = 0; g < c.nKvHeads; g++) {
      assert(kept[l][g].length >= guaranteed + w, "floor");
      const expect = [...chosen[g], ...Array.from({ length: w }, (_, i) => L - w + i)].sort((a, b) => a - b);
      assertEquals(kept[l][g], expect, `layer ${l} head ${g}`);
    }
  }
  assert(heterogeneous, "head budgets should differ somewhere");
});

Deno.test("random is seeded and lookahead keeps its window; every method keeps exactly the budget", async () => {
  const a = await keptBy({ method: "random", budget: B, seed: 3 });
  assertEquals(await keptBy({ method: "random", budget: B, seed: 3 }), a);
  assert(
    JSON.stringify(await keptBy({ method: "random", budget: B, seed: 4 })) !== JSON.stringify(a),
    "seed matters",
  );
  const la = await keptBy({ method: "lookahead", budget: B });
  for (const heads of la) {
    for (const k of heads) for (let t = L - 8; t < L; t++) assert(k.includes(t), "window kept");
  }
  for (const method of ["random", "streaming_llm", "h2o", "snapkv", "tova", "knorm", "lookahead"]) {
    const kept = await keptBy({ method, budget: B });
    for (const heads of kept) for (const k of heads) assertEquals(k.length, B, method);
  }
});

Deno.test("a budget at or above the prompt length is bitwise identical to the full cache", async () => {
  const { weights } = await embeddedModel();
  const run = async (compression: CompressionRequest | null) => {
    const plan = right(compilePlan(
      {
        input: { kind: "prompt", tokens: PROMPT },
        compression,
        decode: { maxTokens: 12, sampling: GREEDY, stopTokenIds: [] },
      },
      { config: weights.config, adapterTokens: null },
    ));
    const s = new CpuExecutor(weights).createSession(plan.capacity);
    const r = await runPlan(plan, {
      executor: { ...new CpuExecutor(weights), createSession: () => s } as never,
      softEmbeddings: null,
      tokenEmbeddings: weights.embed,
    });
    return { tokens: r.outputs[0].tokens, logits: Array.from(await s.currentLogits()) };
  };
  const full = await run(null);
  for (const method of ["snapkv", "h2o", "judgeq", "streaming_llm", "adakv", "pyramidkv", "lookahead"]) {
    const same = await run({ method, budget: L, random_soft: method === "judgeq" ? true : undefined });
    assertEquals(same, full, method);
  }
  assert(
    E.isRight(
      compilePlan({
        input: { kind: "prompt", tokens: PROMPT },
        compression: { method: "snapkv", compression_ratio: 0 },
        decode: { maxTokens: 1, sampling: GREEDY, stopTokenIds: [] },
      }, { config: weights.config, adapterTokens: null }),
    ),
  );
});
