/**
 * Sweep configuration: the method variants, budget specs, and the quick and full suites. Everything
 * that changes a result is in SuiteConfig, and its fingerprint guards resumed runs.
 */
import type { CompressionRequest } from "../core/plan.ts";
import type { NeedleGrid } from "./tasks/needle.ts";
import { NAME_RECALL_DEFAULTS, type NameRecallOptions } from "./tasks/name_recall.ts";
import type { Placement } from "./tasks/types.ts";

/** One row of the results: a method with fixed options; the budget comes from the sweep. */
export interface Variant {
  id: string;
  label: string;
  request: Omit<CompressionRequest, "budget" | "compression_ratio">;
  /** Needs the trained Judge Q adapter; skipped with a reason when the model has none. */
  needsAdapter?: boolean;
}

const k7 = { pooling: "max", kernel: 7 } as const;

/**
 * Every variant. Attention methods come unpooled (the project default, better on stories260K per
 * FINDINGS.md) and max-pooled with kernel 7 (the published SnapKV default), so both can be reported.
 */
export const VARIANTS: Variant[] = [
  { id: "full", label: "Full cache", request: { method: "full" } },
  { id: "streaming_llm", label: "StreamingLLM (4 sinks + recent)", request: { method: "streaming_llm" } },
  { id: "random", label: "Random", request: { method: "random" } },
  { id: "knorm", label: "K-norm", request: { method: "knorm" } },
  { id: "tova", label: "TOVA", request: { method: "tova" } },
  { id: "h2o", label: "H2O (raw sums, recent B/2)", request: { method: "h2o" } },
  { id: "h2o_norm", label: "H2O (normalised, recent B/2)", request: { method: "h2o", normalize: true } },
  { id: "snapkv", label: "SnapKV w16 k1", request: { method: "snapkv" } },
  { id: "snapkv_k7", label: "SnapKV w16 k7", request: { method: "snapkv", ...k7 } },
  { id: "pyramidkv", label: "PyramidKV w16 k1", request: { method: "pyramidkv" } },
  { id: "pyramidkv_k7", label: "PyramidKV w16 k7", request: { method: "pyramidkv", ...k7 } },
  { id: "adakv", label: "AdaKV w16 k1", request: { method: "adakv" } },
  { id: "adakv_k7", label: "AdaKV w16 k7", request: { method: "adakv", ...k7 } },
  { id: "lookahead", label: "Lookahead Q-Cache w8 k1", request: { method: "lookahead" } },
  {
    id: "judgeq_random",
    label: "Judge Q, untrained soft tokens, w0 k1",
    request: { method: "judgeq", random_soft: true },
  },
  {
    id: "judgeq_random_k7",
    label: "Judge Q, untrained soft tokens, w0 k7",
    request: { method: "judgeq", random_soft: true, ...k7 },
  },
  { id: "judgeq", label: "Judge Q w0 k1", request: { method: "judgeq" }, needsAdapter: true },
  {
    id: "judgeq_w16",
    label: "Judge Q w16 k1",
    request: { method: "judgeq", window: 16 },
    needsAdapter: true,
  },
  { id: "judgeq_k7", label: "Judge Q w0 k7", request: { method: "judgeq", ...k7 }, needsAdapter: true },
];

export const VARIANT_IDS = VARIANTS.map((v) => v.id);
export const variantById = (id: string): Variant => {
  const v = VARIANTS.find((x) => x.id === id);
  if (!v) throw new Error(`unknown variant ${id} (known: ${VARIANT_IDS.join(", ")})`);
  return v;
};

/** A budget in tokens per KV head, or a compression ratio (fraction removed, kvpress convention). */
export type BudgetSpec = { kind: "tokens"; value: number } | { kind: "ratio"; value: number };

export const budgetLabel = (b: BudgetSpec) => (b.kind === "tokens" ? String(b.value) : `r${b.value}`);

/** "64" -> 64 tokens, "r0.5" or "0.5" -> ratio 0.5. */
export function parseBudget(s: string): BudgetSpec {
  const t = s.trim();
  const ratio = t.startsWith("r") ? t.slice(1) : t.includes(".") ? t : null;
  const n = Number(ratio ?? t);
  if (t === "" || !Number.isFinite(n)) {
    throw new Error(`budget '${s}': expected tokens (64) or a ratio (r0.5)`);
  }
  if (ratio !== null) {
    if (!(n >= 0 && n < 1)) throw new Error(`budget '${s}': a ratio must be in [0, 1)`);
    return { kind: "ratio", value: n };
  }
  if (!Number.isInteger(n) || n < 1) throw new Error(`budget '${s}': tokens must be a positive integer`);
  return { kind: "tokens", value: n };
}

/** Prompt entries per KV head the spec means for a prompt of L tokens (core/plan.ts's rule). */
export const nominalBudget = (b: BudgetSpec, L: number) =>
  Math.min(L, b.kind === "tokens" ? b.value : Math.max(1, Math.floor(L * (1 - b.value))));

export interface TaskPlan {
  task: string;
  samples: number;
  placements: Placement[];
  budgets: BudgetSpec[];
  variants: string[];
  /** Greedy response tokens (the fidelity horizon). */
  responseTokens: number;
  /** Prompt length range in tokens (ignored by the needle grid, which sets its own). */
  minTokens: number;
  maxTokens: number;
}

export interface SuiteConfig {
  name: string;
  seed: number;
  tasks: TaskPlan[];
  nameRecall: NameRecallOptions;
  needle: NeedleGrid;
}

const T = (...xs: number[]): BudgetSpec[] => xs.map((value) => ({ kind: "tokens", value }));
const R = (...xs: number[]): BudgetSpec[] => xs.map((value) => ({ kind: "ratio", value }));

const ALL = VARIANT_IDS;
/** The variants worth running where the table is secondary (question tasks, the needle grid). */
const CORE = [
  "full",
  "streaming_llm",
  "random",
  "knorm",
  "tova",
  "h2o_norm",
  "snapkv",
  "snapkv_k7",
  "pyramidkv",
  "adakv",
  "lookahead",
  "judgeq_random",
  "judgeq",
  "judgeq_k7",
];

const QUESTION_TASKS = [
  "niah_single_noise",
  "niah_single_essay",
  "niah_multikey",
  "niah_multivalue",
  "niah_multiquery",
  "vt",
  "cwe",
  "fwe",
  "passage_count",
  "passage_retrieval",
];

/** Checks the harness end to end in about a minute: short prompts, one sample per task. */
export function quickSuite(seed = 0): SuiteConfig {
  const q = (task: string, placements: Placement[]): TaskPlan => ({
    task,
    samples: 1,
    placements,
    budgets: [...T(32), ...R(0.5)],
    variants: ALL,
    responseTokens: 16,
    minTokens: 200,
    maxTokens: 240,
  });
  return {
    name: "quick",
    seed,
    tasks: [
      { ...q("name_recall", ["none"]), responseTokens: 24, minTokens: 112, maxTokens: 128 },
      q("niah_single_essay", ["end", "start", "after"]),
      ...QUESTION_TASKS.filter((t) => t !== "niah_single_essay").map((t) => ({
        ...q(t, ["end"]),
        variants: ["full", "snapkv", "judgeq_random"],
        budgets: T(32),
      })),
      { ...q("needle", ["end"]), variants: ["full", "snapkv", "judgeq_random"], budgets: T(32) },
    ],
    nameRecall: { ...NAME_RECALL_DEFAULTS, minTokens: 112, maxTokens: 128, attempts: 6 },
    needle: { lengths: [192, 256], depths: [0, 50, 100], repeats: 1 },
  };
}

/** The full sweep on stories260K: prompts of 256-400 tokens, 64-token greedy responses on stories. */
export function fullSuite(seed = 0): SuiteConfig {
  const budgets = [...T(32, 64, 128), ...R(0.5, 0.75, 0.9)];
  return {
    name: "full",
    seed,
    tasks: [
      {
        task: "name_recall",
        samples: 12,
        placements: ["none"],
        budgets,
        variants: ALL,
        responseTokens: 64,
        minTokens: 256,
        maxTokens: 400,
      },
      ...QUESTION_TASKS.map((task): TaskPlan => ({
        task,
        samples: 4,
        placements: task === "niah_single_essay" ? ["end", "start", "after"] : ["end", "start"],
        budgets: task === "niah_single_essay" ? [...T(32, 64, 128), ...R(0.5)] : T(32, 64, 128),
        variants: task === "niah_single_essay" ? ALL : CORE,
        responseTokens: 32,
        minTokens: 256,
        maxTokens: 400,
      })),
      {
        task: "needle",
        samples: 0, // the grid decides
        placements: ["end"],
        budgets: T(64),
        variants: ["full", "streaming_llm", "snapkv", "snapkv_k7", "h2o_norm", "judgeq_random", "judgeq"],
        responseTokens: 32,
        minTokens: 0,
        maxTokens: 0,
      },
    ],
    nameRecall: NAME_RECALL_DEFAULTS,
    needle: { lengths: [160, 240, 320, 400, 464], depths: [0, 25, 50, 75, 100], repeats: 1 },
  };
}

export const SUITES: Record<string, (seed?: number) => SuiteConfig> = { quick: quickSuite, full: fullSuite };
