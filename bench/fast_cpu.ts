/**
 * The fast CPU executor's benchmark, against llama.cpp on the same weights in the same run: prefill of a
 * whole prompt of each context length, greedy decode that ends at that length (the prompt's last
 * `decodeTokens` entries are dropped first, as the llama.cpp peer erases its last cells), and Judge Q's
 * overhead (append 32 soft rows, score them, keep the budget, strip them) as a multiple of 32 / L of the
 * prefill time. Decode figures are medians of several runs from the same cache (rewound each time).
 */
import type { DecodeOptions, KvSession } from "../core/executor.ts";
import { aggregateGqa } from "../core/scoring.ts";
import { topPerHead } from "../core/selection.ts";
import type { ModelWeights } from "../core/weights.ts";
import { promptTokens } from "../fixtures/testing.ts";
import { WasmExecutor, type WasmQueryRows } from "../wasm/mod.ts";
import type { WasmWeightFormat as WeightFormat } from "../core/weight_formats.ts";
import { median } from "../core/percentile.ts";

const greedy = (maxTokens: number): DecodeOptions => ({
  maxTokens,
  sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
  stopTokenIds: [],
});
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

export interface FastCpuContext {
  context: number;
  prefillTokPerS: number;
  decodeTokPerS: number;
  decodeRuns: number[];
  /**
   * Judge Q's soft-token append and scoring (forward of the 32 soft rows, their attention mass), in ms and
   * as a multiple of (32 / L) x the prefill time; then with the selection, prune and strip added.
   */
  judgeqOverheadMs: number;
  judgeqOverheadOverShare: number;
  judgeqWithPruneMs: number;
}

export interface FastCpuResult {
  description: string;
  format: WeightFormat;
  threads: number;
  contexts: FastCpuContext[];
}

/**
 * Judge Q's extra steps after a prefill of L, what a compress-then-generate request adds to prefill: the
 * append and scoring, and the whole (with the top-B selection, prune and strip), in ms.
 */
async function judgeqOverhead(
  s: KvSession,
  w: ModelWeights,
  L: number,
  budget: number,
): Promise<{ scoring: number; total: number }> {
  const c = w.config, n = 32;
  const rows = new Float32Array(n * c.dim).map((_, i) => Math.sin(i) * 0.5);
  const t = performance.now();
  const r = await s.forward({ kind: "embeddings", rows, count: n }, { logits: "none", captureQueries: true });
  const mass = await s.attentionMass(r.queries as WasmQueryRows, L);
  const scoring = performance.now() - t;
  // Keep the top `budget` positions of every KV head (GQA mean over its query heads), then strip.
  const scores = aggregateGqa(mass, c.nLayers, c.nHeads, c.nKvHeads, L, "mean");
  const kept = topPerHead(scores, c.nLayers, c.nKvHeads, L, () => budget, 0);
  await s.keepPositions(kept, L);
  await s.truncateFrom(L);
  return { scoring, total: performance.now() - t };
}

export async function benchFastCpu(
  w: ModelWeights,
  o: { contexts: number[]; decodeTokens: number; threads: number; format: WeightFormat; runs: number },
  log: (m: string) => void,
): Promise<FastCpuResult> {
  const x = await WasmExecutor.create(w, { threads: o.threads, weightFormat: o.format });
  log(`  ${x.description}`);
  const out: FastCpuContext[] = [];
  try {
    // Warm-up: compiles the kernels' hot paths and starts the workers.
    const warm = x.createSession(160);
    await warm.forward({ kind: "tokens", tokens: promptTokens(128, w.config.vocabSize) });
    await warm.decode(greedy(8));
    warm.dispose();
    for (const L of o.contexts) {
      const s = x.createSession(L + 64);
      const toks = promptTokens(L, w.config.vocabSize, L);
      let t = performance.now();
      await s.forward({ kind: "tokens", tokens: toks }, { logits: "last" });
      const prefillMs = performance.now() - t;
      const judgeq = await judgeqOverhead(await s.clone(), w, L, Math.round(L / 10));
      // Decoding ends at L: drop the prompt's last rows, keep a mark before the last kept one, and
      // before each run rewind and run that row again, so every run starts from the same logits.
      const start = L - o.decodeTokens;
      await s.truncateFrom(start - 1);
      const mark = s.mark();
      const runs: number[] = [];
      for (let i = 0; i < o.runs; i++) {
        await s.rewind(mark);
        await s.forward({ kind: "tokens", tokens: [toks[start - 1]] });
        t = performance.now();
        const r = await s.decode(greedy(o.decodeTokens));
        runs.push(r.tokens.length / ((performance.now() - t) / 1000));
      }
      s.dispose();
      const row: FastCpuContext = {
        context: L,
        prefillTokPerS: round(L / (prefillMs / 1000)),
        decodeTokPerS: round(median(runs)),
        decodeRuns: runs.map((r) => round(r)),
        judgeqOverheadMs: round(judgeq.scoring),
        judgeqOverheadOverShare: round(judgeq.scoring / (prefillMs * 32 / L), 3),
        judgeqWithPruneMs: round(judgeq.total),
      };
      log(
        `  wasm ${o.format} @${L}: prefill ${row.prefillTokPerS} tok/s, decode ${row.decodeTokPerS} tok/s ` +
          `(${
            runs.map((r) => r.toFixed(1)).join(" ")
          }), judgeq append + scoring ${row.judgeqOverheadMs} ms = ` +
          `${row.judgeqOverheadOverShare} x (32/L) of prefill (${row.judgeqWithPruneMs} ms with select, prune, strip)`,
      );
      out.push(row);
    }
  } finally {
    x.dispose();
  }
  return { description: x.description, format: o.format, threads: o.threads, contexts: out };
}
