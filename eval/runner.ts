/**
 * Runs one sample: builds its prompt tokens, the full-cache reference (greedy response, its
 * teacher-forced next-token logits, the response rows' attention for the oracle), then every
 * (variant, budget) cell through the product path (compilePlan + runOnSession) and scores it.
 */
import * as E from "fp-ts/Either";
import type { KvSession } from "../core/executor.ts";
import { type PlanResult, runOnSession } from "../core/interpret.ts";
import { compilePlan, type CompressionRequest, type GenerateRequest } from "../core/plan.ts";
import { GREEDY } from "../core/sampling.ts";
import {
  budgetLabel,
  type BudgetSpec,
  nominalBudget,
  type SuiteConfig,
  type TaskPlan,
  type Variant,
} from "./config.ts";
import {
  commonPrefix,
  fidelity,
  greedyPrefixFromLogits,
  hitRate,
  oracleSets,
  spanRetention,
} from "./metrics.ts";
import { encodeContinuation, encodePrompt, type EvalModel, outputText, tokenSpan } from "./model.ts";
import { mulberry32, randInt, streamSeed } from "../core/random.ts";
import { scoreOutput } from "./scores.ts";
import { buildNameRecall } from "./stories.ts";
import type { Corpus } from "./tasks/haystack.ts";
import { passageCount, passageRetrieval } from "./tasks/longbench.ts";
import { nameRecallSpec } from "./tasks/name_recall.ts";
import { gridSize, needleInstance } from "./tasks/needle.ts";
import { RULER_TASKS } from "./tasks/ruler.ts";
import { assemble, type GenContext, type Generator, type Metric, type Placement } from "./tasks/types.ts";

/** Text tasks by name (name_recall and needle are built separately). */
export const TEXT_TASKS: Record<string, Generator> = {
  ...RULER_TASKS,
  passage_count: (c, i, t) => passageCount(c, i, t),
  passage_retrieval: (c, i, t) => passageRetrieval(c, i, t),
};
export const TASK_NAMES = ["name_recall", ...Object.keys(TEXT_TASKS), "needle"];
/** Tasks whose samples carry evidence spans (their evidence retention must be computed). */
export const EVIDENCE_TASKS = new Set([
  "name_recall",
  "niah_single_noise",
  "niah_single_essay",
  "niah_multikey",
  "niah_multivalue",
  "niah_multiquery",
  "vt",
  "passage_retrieval",
  "needle",
]);
export const ESSAY_TASKS = new Set([
  "niah_single_essay",
  "niah_multikey",
  "niah_multivalue",
  "niah_multiquery",
  "passage_count",
  "passage_retrieval",
  "needle",
]);

/** One prompt, ready to run. */
export interface Sample {
  id: string;
  task: string;
  index: number;
  placement: Placement;
  /** Tokens compressed as a whole (BOS first). */
  compress: number[];
  /** Tokens run after compression (the question, placement "after"), else empty. */
  append: number[];
  answers: string[];
  /** Token spans [start, end) of the evidence inside `compress` (needles, the named introduction). */
  evidence: [number, number][];
  metric: Metric;
  meta: Record<string, number | string>;
  responseTokens: number;
}

export const sampleId = (task: string, index: number, placement: Placement) =>
  `${task}/${index}/${placement}`;

/** Samples of a task plan (needle: the grid size). */
export const sampleCount = (
  cfg: SuiteConfig,
  p: TaskPlan,
) => (p.task === "needle" ? gridSize(cfg.needle) : p.samples);

/** Builds sample `index` of a task in each of the plan's placements. */
export async function buildSamples(
  m: EvalModel,
  cfg: SuiteConfig,
  p: TaskPlan,
  index: number,
  corpus: Corpus | null,
): Promise<Sample[]> {
  const base = { task: p.task, index, responseTokens: p.responseTokens };
  if (p.task === "name_recall") {
    const story = await buildNameRecall(
      m,
      nameRecallSpec(cfg.seed, index, cfg.nameRecall),
      cfg.nameRecall,
      p.responseTokens,
    );
    return [{
      ...base,
      id: sampleId(p.task, index, "none"),
      placement: "none",
      compress: story.tokens,
      append: [],
      answers: [story.name],
      evidence: [story.intro],
      metric: "name_recall",
      meta: story.meta,
    }];
  }
  const ctx: GenContext = { seed: cfg.seed, count: (t) => encodePrompt(m.model, t).length, corpus };
  const target = randInt(
    mulberry32(streamSeed(cfg.seed, `${p.task}/length`, index)),
    p.minTokens,
    p.maxTokens,
  );
  const inst = p.task === "needle"
    ? needleInstance(cfg.needle, ctx, index)
    : TEXT_TASKS[p.task]?.(ctx, index, target);
  if (!inst) throw new Error(`unknown task ${p.task} (known: ${TASK_NAMES.join(", ")})`);
  return p.placements.map((placement) => {
    const text = assemble(inst, placement);
    const compress = encodePrompt(m.model, text.compress);
    return {
      ...base,
      id: sampleId(p.task, index, placement),
      placement,
      compress,
      append: text.append === null ? [] : encodeContinuation(m.model, text.append),
      answers: inst.answers,
      evidence: inst.evidence.map((e) => tokenSpan(m.model, compress, e)).filter((s) => s !== null),
      metric: inst.metric,
      meta: inst.meta,
    };
  });
}

/** The full-cache reference of one sample. */
export interface Reference {
  /** Greedy response tokens (no stop tokens: a fixed horizon). */
  tokens: number[];
  text: string;
  /** Next-token logits computed after compression would apply, along `tokens` (teacher-forced). */
  steps: Float32Array[];
  /** Response rows' summed attention over the compressed prompt, [layer][queryHead][L]. */
  mass: Float32Array;
  /** Leading response tokens decided before compression (1 when the question is inside the prompt). */
  given: number;
}

/** Compresses the sample's prompt with `compression` through the product's plan, then runs `append`. */
async function compressed(
  m: EvalModel,
  s: Sample,
  compression: CompressionRequest,
): Promise<{ session: KvSession; run: PlanResult }> {
  const md = m.model;
  const req: GenerateRequest = {
    input: s.append.length > 0
      ? { kind: "context", context: s.compress, questions: [s.append] }
      : { kind: "prompt", tokens: s.compress },
    compression,
    decode: { maxTokens: s.responseTokens, sampling: GREEDY, stopTokenIds: [] },
  };
  const plan = compilePlan(req, { config: md.config, adapterTokens: md.adapter?.n ?? null });
  if (E.isLeft(plan)) throw plan.left;
  // Decoding is done here, teacher-forced and greedy, so the plan stops after compression.
  const steps = plan.right.steps.filter((st) => st.op !== "decode" && st.op !== "answer");
  const session = md.executor.createSession(md.config.maxSeqLen + 1);
  try {
    const run = await runOnSession({ ...plan.right, steps }, {
      executor: md.executor,
      softEmbeddings: md.adapter?.softEmbeddings ?? null,
      tokenEmbeddings: md.tokenEmbeddings,
    }, session);
    if (s.append.length > 0) await session.forward({ kind: "tokens", tokens: s.append }, { logits: "last" });
    return { session, run };
  } catch (e) {
    session.dispose();
    throw e;
  }
}

function checkFits(m: EvalModel, s: Sample) {
  const total = s.compress.length + s.append.length + s.responseTokens;
  if (total > m.model.config.maxSeqLen) {
    throw new Error(
      `${s.id}: ${s.compress.length}+${s.append.length} prompt + ${s.responseTokens} response tokens exceed the context of ${m.model.config.maxSeqLen}`,
    );
  }
}

/** Teacher-forces `tokens` on a copy of the session: the logits after compression along them. */
async function teacherForce(session: KvSession, tokens: number[], withFirst: boolean, capture: boolean) {
  const first = withFirst ? [await session.currentLogits()] : [];
  const copy = await session.clone();
  try {
    const r = await copy.forward({ kind: "tokens", tokens }, { logits: "all", captureQueries: capture });
    const V = r.logits!.length / tokens.length;
    const rows = Array.from({ length: tokens.length }, (_, i) => r.logits!.slice(i * V, (i + 1) * V));
    return { steps: [...first, ...rows], copy, queries: r.queries };
  } catch (e) {
    copy.dispose();
    throw e;
  }
}

export async function buildReference(m: EvalModel, s: Sample): Promise<Reference> {
  checkFits(m, s);
  const { session } = await compressed(m, s, { method: "full" });
  try {
    const clone = await session.clone();
    let tokens: number[];
    try {
      tokens =
        (await clone.decode({ maxTokens: s.responseTokens, sampling: GREEDY, stopTokenIds: [] })).tokens;
    } finally {
      clone.dispose();
    }
    const withFirst = s.append.length > 0;
    const tf = await teacherForce(session, tokens, withFirst, true);
    try {
      const mass = await tf.copy.attentionMass(tf.queries!, s.compress.length);
      return { tokens, text: outputText(m.model, tokens), steps: tf.steps, mass, given: withFirst ? 0 : 1 };
    } finally {
      tf.queries?.dispose();
      tf.copy.dispose();
    }
  } finally {
    session.dispose();
  }
}

/** One finished cell: a variant at a budget on a sample. Fractions in [0, 1]; KL in nats. */
export interface CellResult {
  key: string;
  task: string;
  index: number;
  placement: Placement;
  variant: string;
  budget: string;
  /** Nominal budget in tokens (the oracle's size). */
  B: number;
  /** Compressed prompt tokens. */
  L: number;
  compressed: boolean;
  hit: number;
  kl: number;
  top1: number;
  /** Exactly matching greedy prefix, tokens. */
  prefix: number;
  /** Response tokens (the fidelity horizon). */
  n: number;
  /** Task score in [0, 1], null when the sample cannot be scored. */
  score: number | null;
  /** Share of the evidence positions (needles, the named introduction) kept; null without evidence. */
  evidence: number | null;
  /** KV bytes after / before compression. */
  kv: number;
  ms: number;
}

export interface SkippedCell {
  key: string;
  task: string;
  placement: Placement;
  variant: string;
  budget: string;
  reason: string;
}

/** The identity of a cell, stable across runs: resumed runs skip keys they have. */
export function cellKey(sampleKey: string, v: Variant, b: BudgetSpec, adapterId: string | null): string {
  return `${sampleKey}|${v.id}${v.needsAdapter ? `@${adapterId}` : ""}|${budgetLabel(b)}`;
}

export interface CellSpec {
  variant: Variant;
  budget: BudgetSpec;
  key: string;
}

interface Computed {
  kept: number[][][];
  kl: number;
  top1: number;
  prefix: number;
  text: string;
  compressed: boolean;
  kv: number;
  ms: number;
}

async function computeCell(
  m: EvalModel,
  s: Sample,
  ref: Reference,
  request: CompressionRequest,
): Promise<Computed> {
  const t0 = performance.now();
  const { session, run } = await compressed(m, s, request);
  try {
    const tf = await teacherForce(session, ref.tokens, s.append.length > 0, false);
    tf.copy.dispose();
    const f = fidelity(ref.steps, tf.steps);
    // Greedy decoding follows the reference while the teacher-forced argmax does; decode only past that.
    const agreed = greedyPrefixFromLogits(tf.steps, ref.tokens, ref.given);
    const tokens = agreed === ref.tokens.length
      ? ref.tokens
      : (await session.decode({ maxTokens: s.responseTokens, sampling: GREEDY, stopTokenIds: [] })).tokens;
    const c = run.compression;
    return {
      kept: c.kept,
      kl: f.kl,
      top1: f.top1,
      prefix: commonPrefix(tokens, ref.tokens),
      text: outputText(m.model, tokens),
      compressed: c.kvBytesAfter < c.kvBytesBefore || (c.budget !== null && c.budget < c.promptTokens),
      kv: c.kvBytesAfter / c.kvBytesBefore,
      ms: performance.now() - t0,
    };
  } finally {
    session.dispose();
  }
}

/** Runs the cells of one sample; cells that resolve to the same compression are computed once. */
export async function evaluateCells(
  m: EvalModel,
  s: Sample,
  ref: Reference,
  cells: CellSpec[],
  onCell?: (r: CellResult | SkippedCell) => void,
): Promise<(CellResult | SkippedCell)[]> {
  const L = s.compress.length;
  const oracles = new Map<number, number[][][]>();
  const memo = new Map<string, Computed>();
  const out: (CellResult | SkippedCell)[] = [];
  for (const { variant: v, budget: b, key } of cells) {
    const base = { key, task: s.task, placement: s.placement, variant: v.id, budget: budgetLabel(b) };
    if (v.needsAdapter && !m.model.adapter) {
      const r: SkippedCell = { ...base, reason: `no Judge Q adapter (${m.adapterPath} is absent)` };
      out.push(r);
      onCell?.(r);
      continue;
    }
    const B = nominalBudget(b, L);
    const request: CompressionRequest = v.request.method === "full"
      ? { ...v.request }
      : b.kind === "tokens"
      ? { ...v.request, budget: b.value }
      : { ...v.request, compression_ratio: b.value };
    // Uncompressed runs are all the full cache; others are identified by their resolved budget.
    const memoKey = v.request.method === "full" || B >= L ? "full" : JSON.stringify({ ...v.request, B });
    let c = memo.get(memoKey);
    const reused = c !== undefined;
    if (!c) {
      c = await computeCell(m, s, ref, memoKey === "full" ? { method: "full" } : request);
      memo.set(memoKey, c);
    }
    if (!oracles.has(B)) oracles.set(B, oracleSets(ref.mass, m.model.config, L, B));
    const r: CellResult = {
      ...base,
      index: s.index,
      B,
      L,
      compressed: c.compressed,
      hit: hitRate(c.kept, oracles.get(B)!, B),
      kl: c.kl,
      top1: c.top1,
      prefix: c.prefix,
      n: ref.tokens.length,
      score: scoreOutput(s.metric, c.text, s.answers, ref.text),
      evidence: spanRetention(c.kept, s.evidence),
      kv: c.kv,
      ms: reused ? 0 : c.ms,
    };
    out.push(r);
    onCell?.(r);
  }
  return out;
}
