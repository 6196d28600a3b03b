/**
 * Held-out evaluation for the training report, through the product path and the evaluation harness's
 * metrics, so a cell gets the same number here as in `deno task eval`: each (method, variant, budget)
 * is a compression request compiled by `compilePlan` and run by `runOnSession` (prefill, score,
 * select, prune, strip); the full-cache response is then teacher-forced on the pruned cache and scored
 * with eval/metrics.ts (critical-KV oracle and hit rate, KL(full || pruned) and top-1 agreement).
 */
import * as E from "fp-ts/Either";
import { CpuExecutor } from "../core/cpu/executor.ts";
import type { Executor } from "../core/executor.ts";
import { runOnSession } from "../core/interpret.ts";
import { compilePlan, type CompressionRequest } from "../core/plan.ts";
import { GREEDY } from "../core/sampling.ts";
import type { ModelWeights } from "../core/weights.ts";
import { fidelity, hitRate, oracleSets } from "../eval/metrics.ts";
import type { Sample } from "./data.ts";

export interface SoftTokens {
  /** Method name in the report, e.g. "Judge Q (kl)" or "random soft tokens". */
  method: string;
  /** [n, dim] row-major. */
  e: Float32Array;
}

export interface Selection {
  /** Prompt positions always kept at the end of the prompt (counted in the budget). */
  window: number;
  /** Max-pool kernel over positions (1: none). */
  kernel: number;
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

/** The `kv_compression` request of a report variant: the same object the HTTP API and the harness take. */
export function requestFor(method: "snapkv" | "judgeq", sel: Selection, budget: number): CompressionRequest {
  return {
    method,
    budget,
    // A window wider than the budget keeps the budget's last positions (the plan refuses window > budget).
    window: Math.min(sel.window, budget),
    pooling: sel.kernel > 1 ? "max" : "none",
    kernel: sel.kernel,
  };
}

/**
 * One cell: compresses the prompt with `request` through the compiled plan (decoding left out), then
 * teacher-forces the response on the pruned cache. Returns the kept positions, the logits after each
 * response token and, with `captureMass`, the response rows' summed attention over the prompt
 * ([layer][queryHead][L]: the oracle's input when the request is `full`).
 */
export async function compressAndForce(
  ex: Executor,
  sample: Sample,
  request: CompressionRequest,
  soft: Float32Array | null,
  tokenEmbeddings: Float32Array,
  captureMass = false,
): Promise<{ kept: number[][][]; steps: Float32Array[]; mass: Float32Array | null }> {
  const c = ex.config;
  const plan = compilePlan({
    input: { kind: "prompt", tokens: sample.prompt },
    compression: request,
    decode: { maxTokens: 0, sampling: GREEDY, stopTokenIds: [] },
  }, { config: c, adapterTokens: soft ? soft.length / c.dim : null });
  if (E.isLeft(plan)) throw plan.left;
  const steps = plan.right.steps.filter((st) => st.op !== "decode" && st.op !== "answer");
  const s = ex.createSession(c.maxSeqLen + 1);
  try {
    const run = await runOnSession({ ...plan.right, steps }, {
      executor: ex,
      softEmbeddings: soft,
      tokenEmbeddings,
    }, s);
    const r = await s.forward({ kind: "tokens", tokens: sample.response }, {
      logits: "all",
      captureQueries: captureMass,
    });
    let mass: Float32Array | null = null;
    if (captureMass) {
      mass = await s.attentionMass(r.queries!, sample.prompt.length);
      r.queries!.dispose();
    }
    const V = c.vocabSize;
    return {
      kept: run.compression.kept,
      steps: sample.response.map((_, i) => r.logits!.slice(i * V, (i + 1) * V)),
      mass,
    };
  } finally {
    s.dispose();
  }
}

export async function evaluateSample(w: ModelWeights, sample: Sample, plan: EvalPlan): Promise<Measure[]> {
  const c = w.config, L = sample.prompt.length;
  const ex = new CpuExecutor(w);
  // The full-cache reference runs the same plan path as every cell, as the harness's does.
  const ref = await compressAndForce(ex, sample, { method: "full" }, null, w.embed, true);
  const oracles = new Map(plan.budgets.map((B) => [B, oracleSets(ref.mass!, c, L, Math.min(B, L))]));
  const out: Measure[] = [];
  const measure = async (
    method: string,
    scorer: "snapkv" | "judgeq",
    soft: Float32Array | null,
    sel: Selection,
  ) => {
    for (const budget of plan.budgets) {
      const got = await compressAndForce(ex, sample, requestFor(scorer, sel, budget), soft, w.embed);
      const f = fidelity(ref.steps, got.steps);
      const hit = hitRate(got.kept, oracles.get(budget)!, Math.min(budget, L));
      out.push({ method, ...sel, budget, hit, ...f });
    }
  };
  for (const sel of plan.snapkv) await measure("SnapKV", "snapkv", null, sel);
  for (const soft of plan.softs) {
    for (const sel of plan.judgeq) await measure(soft.method, "judgeq", soft.e, sel);
  }
  return out;
}
