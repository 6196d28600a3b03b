/**
 * Compress-then-generate as data. A request (token ids already) is checked against the model and
 * compiled into a Plan: a JSON-serialisable list of steps that an executor-backed interpreter runs.
 */
import * as E from "fp-ts/Either";
import type { ModelConfig } from "./config.ts";
import {
  type DecodeCompression,
  type DecodeCompressionRequest,
  decodePeak,
  resolveDecodeCompression,
  standInFrom,
} from "./decode_compression.ts";
import { fail, type JudgeQError } from "./errors.ts";
import type { DecodeSpec } from "./executor.ts";
import { decideMaxTokens } from "./max_tokens.ts";
import { GLOBAL_DEFAULTS, METHOD_NAMES, METHODS } from "./methods/registry.ts";
import { type Allocation, ALLOCATIONS, type MethodOptions } from "./methods/types.ts";
import { pyramidBudgets } from "./selection.ts";

/**
 * The `kv_compression` object of a request (snake_case, as on the wire; its zod schema, with the
 * ranges a schema can check, is server/schemas.ts's `compressionSchema`). A type, not an interface,
 * so that it reads as a Record<string, unknown> where method options are looked up by name.
 */
export type CompressionRequest = {
  method: string;
  budget?: number;
  compression_ratio?: number;
  window?: number;
  pooling?: "max" | "avg" | "none";
  kernel?: number;
  gqa?: "mean" | "max" | "sum";
  sinks?: number;
  normalize?: boolean;
  seed?: number;
  beta?: number;
  floor?: number;
  lookahead_tokens?: number;
  /**
   * `uniform` (default), `pyramid` or `adaptive`: how an attention method's budget is shared out over
   * layers and heads. Checked by `resolveOptions` (400 naming `kv_compression.allocation`).
   */
  allocation?: string;
  /** Judge Q ablation: untrained soft tokens (mean embedding plus seeded noise). */
  random_soft?: boolean;
  /** Compression during decoding: the cache bounded to budget + interval entries per KV head. */
  decode?: DecodeCompressionRequest;
};

export type PlanInput =
  | { kind: "prompt"; tokens: number[] }
  /** Only the context is compressed; each question is appended after, positions continuing. */
  | { kind: "context"; context: number[]; questions: number[][] };

export interface GenerateRequest {
  input: PlanInput;
  compression?: CompressionRequest | null;
  decode: DecodeSpec;
}

export type Step =
  /**
   * Runs the prompt; rows from `scoreFrom` on add their attention to the score mass, `chunk` at a time;
   * rows from `standInFrom` on (see decode_compression.ts's `standInFrom`) to the decode-time stand-in.
   */
  | { op: "prefill"; scoreFrom: number | null; standInFrom: number | null; chunk: number }
  /**
   * Runs the adapter's soft tokens after the prompt, adds their attention to the score mass, and removes
   * their entries again (core/soft_pass.ts): decoding resumes at the prompt length.
   */
  | { op: "append_soft"; count: number; randomSoft: boolean; seed: number }
  /** Decodes pseudo tokens from a SnapKV draft of the cache and adds their attention to the mass. */
  | { op: "lookahead"; tokens: number; draftBudget: number; draftWindow: number }
  | { op: "key_norms" }
  | { op: "score"; method: string; options: MethodOptions }
  | {
    op: "select";
    allocation: Allocation;
    budget: number;
    window: number;
    floor: number;
    beta: number;
  }
  /** Frees every prompt entry not selected, per KV head. */
  | { op: "prune" }
  /** Bounds the cache of every later decode and answer: compress during decoding (see decode_compression.ts). */
  | { op: "bound_decode"; compression: DecodeCompression }
  | { op: "decode"; decode: DecodeSpec }
  /** Appends a question after the compressed context, decodes, then cuts its entries off again. */
  | { op: "answer"; question: number[]; decode: DecodeSpec };

export interface Plan {
  promptLength: number;
  input: PlanInput;
  method: string;
  /** Resolved options; null when nothing is compressed. */
  options: MethodOptions | null;
  /** True when the prompt is longer than the budget, so entries are really evicted. */
  compressed: boolean;
  /** Positions per head the session must hold at its peak. */
  capacity: number;
  steps: Step[];
}

export interface ModelFacts {
  config: ModelConfig;
  /** The loaded Judge Q adapter's soft-token count, if any. */
  adapterTokens: number | null;
}

/** Chunk of prompt rows whose queries are held at once while summing attention (H2O). */
export const SCORE_CHUNK = 128;

/** Soft tokens Judge Q appends without an adapter (the random-soft ablation). */
export const DEFAULT_SOFT_TOKENS = 32;

/**
 * The adapter rule, for the prefill and for decoding: Judge Q appends the adapter's soft tokens, or with
 * `random_soft` (the ablation) as many random ones (DEFAULT_SOFT_TOKENS without an adapter); without
 * either, the model cannot serve it (naming `param`).
 */
export function softTokenCount(
  model: ModelFacts,
  randomSoft: boolean,
  param: string,
): E.Either<JudgeQError, number> {
  if (!randomSoft && model.adapterTokens === null) {
    return unprocessable(
      "judgeq needs a Judge Q adapter for this model (or random_soft: true for the ablation)",
      param,
    );
  }
  return E.right(model.adapterTokens ?? DEFAULT_SOFT_TOKENS);
}

const invalid = (message: string, param: string) => E.left(fail("invalid_request", message, param));
const unprocessable = (message: string, param: string) => E.left(fail("unprocessable", message, param));

/**
 * Why `allocation` cannot go with `method` (an unknown value, a method that does not score by
 * attention, an alias fixed to another allocation), or null when it can. Shared by the compiler and
 * the server's request schema.
 */
export function allocationError(methodName: string, allocation: string): string | null {
  if (!(ALLOCATIONS as readonly string[]).includes(allocation)) {
    return `unknown allocation ${JSON.stringify(allocation)} (known: ${ALLOCATIONS.join(", ")})`;
  }
  const method = METHODS[methodName];
  if (!method) return null;
  if (!method.allocatable) {
    const names = METHOD_NAMES.filter((n) => METHODS[n].allocatable);
    return `method ${methodName} does not score by attention, so it has no allocation (methods with one: ${
      names.join(", ")
    })`;
  }
  const fixed = method.defaults.allocation;
  if (fixed !== undefined && allocation !== fixed) {
    return `${methodName} is snapkv with allocation ${fixed}; for allocation ${allocation} use method snapkv`;
  }
  return null;
}

/** Resolves the method's options: global defaults, then the method's, then the request's. */
export function resolveOptions(
  c: CompressionRequest,
  promptLength: number,
): E.Either<JudgeQError, { options: MethodOptions; compressed: boolean }> {
  const method = METHODS[c.method];
  if (!method) {
    return invalid(
      `unknown method ${JSON.stringify(c.method)} (known: ${METHOD_NAMES.join(", ")})`,
      "kv_compression.method",
    );
  }
  if (c.budget !== undefined && c.compression_ratio !== undefined) {
    return invalid("give budget or compression_ratio, not both", "kv_compression.budget");
  }
  let budget: number;
  if (c.method === "full") {
    budget = promptLength;
  } else if (c.budget !== undefined) {
    if (!Number.isInteger(c.budget) || c.budget < 1) {
      return invalid("budget must be a positive integer", "kv_compression.budget");
    }
    budget = c.budget;
  } else if (c.compression_ratio !== undefined) {
    if (!(c.compression_ratio >= 0 && c.compression_ratio < 1)) {
      return invalid("compression_ratio must be in [0, 1)", "kv_compression.compression_ratio");
    }
    budget = Math.max(1, Math.floor(promptLength * (1 - c.compression_ratio)));
  } else {
    return invalid(`method ${c.method} needs budget or compression_ratio`, "kv_compression.budget");
  }
  const base = { ...GLOBAL_DEFAULTS, ...method.defaults };
  const options: MethodOptions = {
    ...base,
    budget,
    pooling: c.pooling ?? base.pooling,
    kernel: c.kernel ?? base.kernel,
    gqa: c.gqa ?? base.gqa,
    sinks: c.sinks ?? base.sinks,
    normalize: c.normalize ?? base.normalize,
    seed: c.seed ?? base.seed,
    beta: c.beta ?? base.beta,
    floor: c.floor ?? base.floor,
    lookaheadTokens: c.lookahead_tokens ?? base.lookaheadTokens,
    allocation: base.allocation,
  };
  if (c.allocation !== undefined) {
    const refused = allocationError(c.method, c.allocation);
    if (refused) return invalid(refused, "kv_compression.allocation");
    options.allocation = c.allocation as Allocation;
  }
  if (c.window !== undefined) {
    if (method.fixedWindow) return invalid(method.fixedWindow, "kv_compression.window");
    if (!Number.isInteger(c.window) || c.window < 0) {
      return invalid("window must be a non-negative integer", "kv_compression.window");
    }
    if (c.window > budget) {
      return invalid(`window ${c.window} is larger than the budget ${budget}`, "kv_compression.window");
    }
    options.window = c.window;
  } else {
    // Defaults shrink to fit a small budget instead of failing.
    options.window = Math.min(method.windowFor ? method.windowFor(budget, options) : base.window, budget);
  }
  // SnapKV's window rows are its queries (and Lookahead's draft's): none means nothing to score with.
  const source = method.source(options, promptLength);
  const windowless = (source.kind === "rows" && source.from >= promptLength) ||
    (source.kind === "lookahead" && options.window < 1);
  if (budget < promptLength && windowless) {
    return invalid(
      `window ${options.window} leaves ${c.method} no observation rows to score with (at least 1)`,
      "kv_compression.window",
    );
  }
  if (c.method === "streaming_llm" && options.sinks > budget) {
    return invalid(`sinks ${options.sinks} exceed the budget ${budget}`, "kv_compression.sinks");
  }
  return E.right({ options, compressed: budget < promptLength });
}

function checkTokens(tokens: number[], vocab: number, param: string): E.Either<JudgeQError, number[]> {
  const bad = tokens.findIndex((t) => !Number.isInteger(t) || t < 0 || t >= vocab);
  return bad >= 0
    ? invalid(`token ${tokens[bad]} at ${bad} is outside the vocabulary`, param)
    : E.right(tokens);
}

/** Compiles a request into a plan, or a specific error naming the field at fault. */
export function compilePlan(req: GenerateRequest, model: ModelFacts): E.Either<JudgeQError, Plan> {
  const c = model.config;
  const prompt = req.input.kind === "prompt" ? req.input.tokens : req.input.context;
  const promptParam = req.input.kind === "prompt" ? "prompt" : "context";
  if (prompt.length === 0) return invalid("must not be empty", promptParam);
  const tokensOk = checkTokens(prompt, c.vocabSize, promptParam);
  if (E.isLeft(tokensOk)) return tokensOk;
  const L = prompt.length;
  const d = req.decode;
  if (!Number.isInteger(d.maxTokens) || d.maxTokens < 0) {
    return invalid("must be a non-negative integer", "max_tokens");
  }
  if (!(d.sampling.temperature >= 0) || !Number.isFinite(d.sampling.temperature)) {
    return invalid("must be >= 0", "temperature");
  }
  if (!(d.sampling.topP > 0 && d.sampling.topP <= 1)) return invalid("must be in (0, 1]", "top_p");
  const questions = req.input.kind === "context" ? req.input.questions : [];
  if (req.input.kind === "context" && questions.length === 0) {
    return invalid("give at least one question", "questions");
  }
  for (let i = 0; i < questions.length; i++) {
    if (questions[i].length === 0) return invalid("must not be empty", `questions.${i}`);
    const ok = checkTokens(questions[i], c.vocabSize, `questions.${i}`);
    if (E.isLeft(ok)) return ok;
  }
  const longestQuestion = Math.max(0, ...questions.map((q) => q.length));
  if (L + longestQuestion >= c.maxSeqLen) {
    return unprocessable(
      `${L + longestQuestion} tokens leave no room in the model's context of ${c.maxSeqLen}`,
      promptParam,
    );
  }
  // Generation stops at the context's end: cut rather than refuse (the one max_tokens decision).
  const cut = decideMaxTokens(
    { asked: d.maxTokens, fallback: null, outputs: 1, perRequest: null, strict: null },
    { size: c.maxSeqLen, used: L + longestQuestion, what: "prompt tokens" },
  );
  if (E.isLeft(cut)) return cut;
  const decode = { ...d, maxTokens: cut.right };

  const comp = req.compression ?? { method: "full" };
  const resolved = resolveOptions(comp, L);
  if (E.isLeft(resolved)) return resolved;
  let bounded: DecodeCompression | null = null;
  if (comp.decode) {
    const d = resolveDecodeCompression(
      comp.decode,
      comp,
      (param) => softTokenCount(model, comp.random_soft === true, param),
    );
    if (E.isLeft(d)) return d;
    bounded = d.right;
  }
  const { options, compressed } = resolved.right;
  const method = METHODS[comp.method];
  const steps: Step[] = [];
  // A prompt that holds budget + interval entries when decoding begins is compressed before any token: its
  // own rows score that compression (at most this many entries are held: the prefill's largest budget).
  const held = !compressed || options.allocation === "adaptive"
    ? L
    : options.allocation === "pyramid"
    ? Math.max(...pyramidBudgets(c.nLayers, L, options.budget, options.window, options.beta))
    : options.budget;
  const standIn = bounded && req.input.kind === "prompt" ? standInFrom(bounded, L, held) : null;
  const prefill = (scoreFrom: number | null): Step => ({
    op: "prefill",
    scoreFrom,
    standInFrom: standIn,
    chunk: SCORE_CHUNK,
  });
  let extra = 0;
  if (!compressed) {
    steps.push(prefill(null));
  } else {
    const source = method.source(options, L);
    if (source.kind === "soft") {
      const n = softTokenCount(model, comp.random_soft === true, "kv_compression.method");
      if (E.isLeft(n)) return n;
      const count = n.right;
      if (L + count > c.maxSeqLen) {
        return unprocessable(
          `prompt plus ${count} soft tokens exceed the context of ${c.maxSeqLen}`,
          promptParam,
        );
      }
      extra = count;
      steps.push(prefill(null));
      steps.push({ op: "append_soft", count, randomSoft: comp.random_soft === true, seed: options.seed });
    } else if (source.kind === "rows" || source.kind === "lookahead") {
      steps.push(prefill(source.from));
      if (source.kind === "lookahead") {
        extra = options.lookaheadTokens;
        steps.push({
          op: "lookahead",
          tokens: options.lookaheadTokens,
          draftBudget: options.budget,
          draftWindow: options.window,
        });
      }
    } else {
      steps.push(prefill(null));
      if (source.kind === "keys") steps.push({ op: "key_norms" });
    }
    steps.push({ op: "score", method: method.name, options });
    steps.push({
      op: "select",
      allocation: options.allocation,
      budget: options.budget,
      window: options.window,
      floor: options.floor,
      beta: options.beta,
    });
    steps.push({ op: "prune" });
  }
  if (bounded) steps.push({ op: "bound_decode", compression: bounded });
  if (req.input.kind === "prompt") steps.push({ op: "decode", decode });
  else for (const question of questions) steps.push({ op: "answer", question, decode });
  const unbounded = L + longestQuestion + decode.maxTokens;
  const decoding = bounded
    ? Math.min(unbounded + bounded.softCount, decodePeak(bounded, L + longestQuestion, unbounded))
    : unbounded;
  return E.right({
    promptLength: L,
    input: req.input,
    method: method.name,
    options: compressed ? options : null,
    compressed,
    capacity: Math.max(L + extra, decoding) + 1,
    steps,
  });
}
