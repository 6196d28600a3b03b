/**
 * Held-out evaluation through the executor API, as the product runs it: prefill, score (SnapKV window
 * rows or Judge Q soft rows via attentionMass), keep top-B per KV head, strip the soft tokens, then
 * teacher-force the full-cache response and compare with the full cache: critical-KV hit rate,
 * KL(full || pruned) of the next-token distributions after each response token, and top-1 agreement.
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import type { KvSession, QueryRows } from "../core/executor.ts";
import type { ModelWeights } from "../core/weights.ts";
import type { Sample } from "./data.ts";
import { hitRate, oraclePositions, type Selection, selectPositions } from "./select.ts";

export interface SoftTokens {
  /** Method name in the report, e.g. "Judge Q (kl)" or "random soft tokens". */
  method: string;
  /** [n, dim] row-major. */
  e: Float32Array;
}

/** Variants compared by default: SnapKV's kept window 16/32, Judge Q's 0/16; each pooled (k7) and not. */
export const SNAPKV_VARIANTS: Selection[] = [16, 32].flatMap((window) =>
  [1, 7].map((kernel) => ({ window, kernel }))
);
export const JUDGEQ_VARIANTS: Selection[] = [0, 16].flatMap((window) =>
  [1, 7].map((kernel) => ({ window, kernel }))
);

export interface EvalPlan {
  softs: SoftTokens[];
  snapkv: Selection[];
  judgeq: Selection[];
  budgets: number[];
}

export interface Measure {
  method: string;
  window: number;
  kernel: number;
  budget: number;
  hit: number;
  kl: number;
  top1: number;
}

/** Mean KL(ref || got) and argmax agreement over rows of logits [rows, vocab]. */
export function fidelity(ref: Float32Array, got: Float32Array, vocab: number): { kl: number; top1: number } {
  const rows = ref.length / vocab;
  let kl = 0, agree = 0;
  const logSoftmax = (x: Float32Array, o: number) => {
    let max = -Infinity, arg = 0;
    for (let i = 0; i < vocab; i++) if (x[o + i] > max) [max, arg] = [x[o + i], i];
    let sum = 0;
    for (let i = 0; i < vocab; i++) sum += Math.exp(x[o + i] - max);
    return { shift: max + Math.log(sum), arg };
  };
  for (let r = 0; r < rows; r++) {
    const o = r * vocab, a = logSoftmax(ref, o), b = logSoftmax(got, o);
    for (let i = 0; i < vocab; i++) {
      const lp = ref[o + i] - a.shift, lq = got[o + i] - b.shift;
      kl += Math.exp(lp) * (lp - lq);
    }
    if (a.arg === b.arg) agree++;
  }
  return { kl: kl / rows, top1: agree / rows };
}

/** Prefill that captures the query rows of each SnapKV window; returns their summed attention per window. */
async function prefillWithWindows(s: KvSession, prompt: number[], windows: number[]) {
  const L = prompt.length;
  const starts = [...new Set(windows.map((w) => Math.max(0, L - w)))].sort((a, b) => a - b);
  const chunks: { start: number; queries: QueryRows }[] = [];
  if (starts.length === 0 || starts[0] > 0) {
    await s.forward({ kind: "tokens", tokens: prompt.slice(0, starts[0] ?? L) }, { logits: "last" });
  }
  for (let i = 0; i < starts.length; i++) {
    const end = starts[i + 1] ?? L;
    const r = await s.forward({ kind: "tokens", tokens: prompt.slice(starts[i], end) }, {
      logits: "last",
      captureQueries: true,
    });
    chunks.push({ start: starts[i], queries: r.queries! });
  }
  const scores = new Map<number, Float32Array>();
  const masses = await Promise.all(chunks.map((c) => s.attentionMass(c.queries, L)));
  for (const w of windows) {
    const sum = new Float32Array(masses[0]?.length ?? 0);
    chunks.forEach((c, i) => {
      if (c.start >= L - w) { for (let j = 0; j < sum.length; j++) sum[j] += masses[i][j]; }
    });
    scores.set(w, sum);
  }
  return scores;
}

export async function evaluateSample(w: ModelWeights, sample: Sample, plan: EvalPlan): Promise<Measure[]> {
  const c = w.config, L = sample.prompt.length, response = sample.response;
  const base = new CpuExecutor(w).createSession(c.maxSeqLen);
  const snapScores = await prefillWithWindows(base, sample.prompt, plan.snapkv.map((s) => s.window));
  const full = await base.clone();
  const ref = await full.forward({ kind: "tokens", tokens: response }, {
    logits: "all",
    captureQueries: true,
  });
  const oracleScores = await full.attentionMass(ref.queries!, L);
  const oracle = new Map(
    plan.budgets.map((b) => [b, oraclePositions(c, oracleScores, L, b)]),
  );
  const out: Measure[] = [];
  // Prune a copy of `scored` to the selection, strip rows past the prompt, teacher-force the response.
  const measure = async (
    method: string,
    scorer: "snapkv" | "judgeq",
    scored: KvSession,
    mass: Float32Array,
    sel: Selection,
  ) => {
    for (const budget of plan.budgets) {
      const kept = selectPositions(c, scorer, mass, L, budget, sel);
      const s = await scored.clone();
      await s.keepPositions(kept, L);
      await s.truncateFrom(L);
      const got = await s.forward({ kind: "tokens", tokens: response }, { logits: "all" });
      const f = fidelity(ref.logits!, got.logits!, c.vocabSize);
      out.push({ method, ...sel, budget, hit: hitRate(kept, oracle.get(budget)!), ...f });
    }
  };
  for (const sel of plan.snapkv) await measure("SnapKV", "snapkv", base, snapScores.get(sel.window)!, sel);
  for (const soft of plan.softs) {
    const s = await base.clone();
    const r = await s.forward({ kind: "embeddings", rows: soft.e, count: soft.e.length / c.dim }, {
      logits: "none",
      captureQueries: true,
    });
    const mass = await s.attentionMass(r.queries!, L);
    for (const sel of plan.judgeq) await measure(soft.method, "judgeq", s, mass, sel);
  }
  return out;
}
