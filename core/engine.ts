/**
 * Text in, text out: tokenises a request, compiles its plan, runs it on an executor and decodes the
 * outputs. Shared by the CLI, the HTTP server and the evaluation scripts.
 */
import * as E from "fp-ts/Either";
import type { Adapter } from "./adapter.ts";
import type { ModelConfig } from "./config.ts";
import { JudgeQError } from "./errors.ts";
import type { DecodeSpec, Executor, KvSession, SamplingOptions } from "./executor.ts";
import type { DecodeCompressionRequest, DecodeCompressionStats } from "./decode_compression.ts";
import { type PlanResult, runOnSession, runPlan } from "./interpret.ts";
import { compilePlan, type CompressionRequest, type GenerateRequest, type Plan } from "./plan.ts";
import { decodeContinuation, type TextTokenizer } from "./tokenizer.ts";

export interface Model {
  name: string;
  config: ModelConfig;
  tokenizer: TextTokenizer;
  executor: Executor;
  adapter: Adapter | null;
  tokenEmbeddings: Float32Array;
  /** Token ids that end generation (eos, plus generation_config's). */
  stopTokenIds: number[];
}

/**
 * How a request decodes: DecodeSpec (core/executor.ts) given flat, its sampling optional (greedy by
 * default), `stopTokenIds` the request's extra stops (the model's are always on unless ignoreEos).
 * `decodeSpecOf` fills in the rest.
 */
export type DecodeParams =
  & Pick<DecodeSpec, "maxTokens">
  & Partial<SamplingOptions>
  & Partial<Pick<DecodeSpec, "stopTokenIds">>
  & { ignoreEos?: boolean };

/** How text is read: special-token text ("</s>") is plain text unless allowSpecialTokens (core/tokenizer.ts). */
export interface TextOptions {
  allowSpecialTokens?: boolean;
}

export interface TextRequest extends DecodeParams, TextOptions {
  /** Text, or token ids already encoded (a chat template's: see encodeTemplate). */
  prompt?: string | readonly number[];
  context?: string;
  questions?: string[];
  compression?: CompressionRequest | null;
}

/** The core's decode step for a request: greedy by default, the model's stop tokens unless ignoreEos. */
export function decodeSpecOf(model: Model, r: DecodeParams): DecodeSpec {
  return {
    maxTokens: r.maxTokens,
    sampling: { temperature: r.temperature ?? 0, topP: r.topP ?? 1, topK: r.topK ?? 0, seed: r.seed ?? 0 },
    stopTokenIds: [...(r.ignoreEos ? [] : model.stopTokenIds), ...(r.stopTokenIds ?? [])],
  };
}

export interface TextOutput {
  text: string;
  tokens: number[];
  finishReason: string;
}

export interface TextResult {
  plan: Plan;
  promptTokens: number[];
  questionTokens: number[][];
  outputs: TextOutput[];
  run: PlanResult;
}

/** Tokenises a text request into the core's token-level request. */
export function tokenizeRequest(model: Model, r: TextRequest): E.Either<JudgeQError, GenerateRequest> {
  const tok = model.tokenizer;
  const decode = decodeSpecOf(model, r);
  const allowSpecial = r.allowSpecialTokens ?? false;
  if (r.prompt !== undefined && r.context !== undefined) {
    return E.left(
      new JudgeQError("invalid_request", "give prompt, or context with questions, not both", "prompt"),
    );
  }
  if (r.context !== undefined) {
    return E.right({
      input: {
        kind: "context",
        context: tok.encode(r.context, { addBos: true, allowSpecial }),
        questions: (r.questions ?? []).map((q) => tok.encode(q, { addBos: false, allowSpecial })),
      },
      compression: r.compression,
      decode,
    });
  }
  if (r.prompt === undefined) {
    return E.left(new JudgeQError("invalid_request", "prompt or context is required", "prompt"));
  }
  return E.right({
    input: {
      kind: "prompt",
      tokens: typeof r.prompt === "string"
        ? tok.encode(r.prompt, { addBos: true, allowSpecial })
        : [...r.prompt],
    },
    compression: r.compression,
    decode,
  });
}

export interface RunHooks {
  onTokens?: (index: number, ids: number[]) => void | Promise<void>;
  signal?: AbortSignal;
  /** Awaited between chunks of a long prefill: a scheduler's yield point (RunContext.between). */
  between?: () => Promise<void>;
}

/** Compiles a token-level request against the model, or a specific error. */
export function planFor(model: Model, req: GenerateRequest): E.Either<JudgeQError, Plan> {
  return compilePlan(req, { config: model.config, adapterTokens: model.adapter?.n ?? null });
}

export async function generateTokens(model: Model, req: GenerateRequest, hooks: RunHooks = {}) {
  const plan = planFor(model, req);
  if (E.isLeft(plan)) throw plan.left;
  const run = await runPlan(plan.right, {
    executor: model.executor,
    softEmbeddings: model.adapter?.softEmbeddings ?? null,
    tokenEmbeddings: model.tokenEmbeddings,
    ...hooks,
  });
  return { plan: plan.right, run };
}

/** The whole text path; throws JudgeQError for bad requests. */
export async function generateText(model: Model, r: TextRequest, hooks: RunHooks = {}): Promise<TextResult> {
  const req = tokenizeRequest(model, r);
  if (E.isLeft(req)) throw req.left;
  const plan = planFor(model, req.right);
  if (E.isLeft(plan)) throw plan.left;
  return await runCompiled(model, req.right, plan.right, hooks);
}

/**
 * Runs a request already tokenized and compiled (`tokenizeRequest`, `planFor`): the server checks a request
 * before it queues it, and runs what it checked rather than tokenizing and compiling it again.
 */
export async function runCompiled(
  model: Model,
  req: GenerateRequest,
  plan: Plan,
  hooks: RunHooks = {},
): Promise<TextResult> {
  const run = await runPlan(plan, {
    executor: model.executor,
    softEmbeddings: model.adapter?.softEmbeddings ?? null,
    tokenEmbeddings: model.tokenEmbeddings,
    ...hooks,
  });
  const input = req.input;
  return {
    plan,
    promptTokens: input.kind === "prompt" ? input.tokens : input.context,
    questionTokens: input.kind === "context" ? input.questions : [],
    outputs: run.outputs.map((o, i) => ({
      text: decodeContinuation(
        model.tokenizer,
        input.kind === "prompt" ? input.tokens : input.questions[i],
        o.tokens,
      ),
      tokens: o.tokens,
      finishReason: o.finishReason,
    })),
    run,
  };
}

/** A compressed context kept alive to answer many questions (kvpress's compress-once pipeline). */
export interface CompressedContext {
  plan: Plan;
  session: KvSession;
  contextTokens: number[];
  stats: PlanResult["compression"];
  timings: Record<string, number>;
  /** Decode-time compression of its answers unless a question asks otherwise (kv_compression.decode). */
  decode: DecodeCompressionRequest | null;
}

/**
 * The decode-time compression of an answer against a kept context: the request's own, else the context's.
 * Without a method it takes the context's compression method.
 */
export function answerDecode(
  ctx: Pick<CompressedContext, "decode" | "plan">,
  requested: DecodeCompressionRequest | null | undefined,
): DecodeCompressionRequest | null {
  const d = requested ?? ctx.decode;
  return d ? { ...d, method: d.method ?? ctx.plan.method } : null;
}

/**
 * Positions per head a kept context's session holds: room for questions and answers up to the model's
 * context after the compressed prompt, plus the soft rows Judge Q appends on top of a full cache when it
 * compresses during an answer.
 */
export function contextCapacity(model: Model, planCapacity: number): number {
  const softRows = (model.adapter?.softEmbeddings.length ?? 0) / model.config.dim;
  return Math.max(planCapacity, model.config.maxSeqLen + 1 + softRows);
}

/** A context's decode-time compression for its answers: the request's, its method defaulting to the prefill's. */
export function contextDecode(compression: CompressionRequest | null): DecodeCompressionRequest | null {
  const d = compression?.decode;
  return d ? { ...d, method: d.method ?? compression!.method } : null;
}

/** Compresses a context once; the caller owns the returned session (dispose it when done). */
export async function compressContext(
  model: Model,
  context: string | readonly number[],
  compression: CompressionRequest | null,
  hooks: RunHooks = {},
  text: TextOptions = {},
  compiled?: Plan,
): Promise<CompressedContext> {
  const allowSpecial = text.allowSpecialTokens ?? false;
  // Ids: a context the caller tokenized already (the server, when it checked the request).
  const tokens = typeof context === "string"
    ? model.tokenizer.encode(context, { addBos: true, allowSpecial })
    : [...context];
  // The caller's plan for this context and `compression` (its questions' steps are dropped), or one with a
  // placeholder question, which sizes nothing: the plan is run without its answer steps.
  const plan = compiled ? E.right(compiled) : planFor(model, {
    input: { kind: "context", context: tokens, questions: [[model.tokenizer.bosId ?? 0]] },
    compression,
    decode: decodeSpecOf(model, { maxTokens: 0 }),
  });
  if (E.isLeft(plan)) throw plan.left;
  const compressOnly = { ...plan.right, steps: plan.right.steps.filter((s) => s.op !== "answer") };
  const session = model.executor.createSession(contextCapacity(model, plan.right.capacity));
  try {
    const run = await runOnSession(compressOnly, {
      executor: model.executor,
      softEmbeddings: model.adapter?.softEmbeddings ?? null,
      tokenEmbeddings: model.tokenEmbeddings,
      ...hooks,
    }, session);
    return {
      plan: compressOnly,
      session,
      contextTokens: tokens,
      stats: run.compression,
      timings: run.timings,
      decode: contextDecode(compression),
    };
  } catch (e) {
    session.dispose();
    throw e;
  }
}

export interface AnswerRequest extends DecodeParams, TextOptions {
  /** Text, or ids the caller tokenized already (without BOS). */
  question: string | readonly number[];
  /**
   * The answer's plan, when the caller compiled it already (`answerPlan`, with this question, the context's
   * tokens, `answerCompression(ctx, decodeCompression)` and these decode parameters).
   */
  plan?: Plan;
  /** Decode-time compression for this answer (default: the context's, see `answerDecode`). */
  decodeCompression?: DecodeCompressionRequest | null;
}

/** Answers one question against a compressed context; the cache is left exactly as before. */
export async function answerOnContext(
  model: Model,
  ctx: CompressedContext,
  r: AnswerRequest,
  hooks: RunHooks = {},
): Promise<TextOutput & { questionTokens: number[]; decode: DecodeCompressionStats | null }> {
  const question = typeof r.question === "string"
    ? model.tokenizer.encode(r.question, { addBos: false, allowSpecial: r.allowSpecialTokens ?? false })
    : [...r.question];
  const plan = r.plan
    ? E.right(r.plan)
    : answerPlan(model, ctx.contextTokens, question, answerCompression(ctx, r.decodeCompression), r);
  if (E.isLeft(plan)) throw plan.left;
  const run = await runOnSession(plan.right, {
    executor: model.executor,
    softEmbeddings: null,
    tokenEmbeddings: model.tokenEmbeddings,
    ...hooks,
  }, ctx.session);
  const o = run.outputs[0];
  return {
    text: decodeContinuation(model.tokenizer, question, o.tokens),
    tokens: o.tokens,
    finishReason: o.finishReason,
    questionTokens: question,
    decode: run.compression.decode ?? null,
  };
}

/**
 * The plan of one answer on a context of `contextTokens`: its decode-time compression, if any, and the
 * answer (`compression` as `answerCompression` gives it).
 */
export function answerPlan(
  model: Model,
  contextTokens: number[],
  question: number[],
  compression: CompressionRequest | null,
  r: DecodeParams,
): E.Either<JudgeQError, Plan> {
  const plan = planFor(model, {
    input: { kind: "context", context: contextTokens, questions: [question] },
    compression,
    decode: decodeSpecOf(model, r),
  });
  if (E.isLeft(plan)) return plan;
  return E.right({
    ...plan.right,
    steps: plan.right.steps.filter((s) => s.op === "answer" || s.op === "bound_decode"),
  });
}

/** The compression request an answer compiles with: nothing but its decode-time compression, if any. */
export function answerCompression(
  ctx: Pick<CompressedContext, "decode" | "plan">,
  requested?: DecodeCompressionRequest | null,
): CompressionRequest | null {
  const decode = answerDecode(ctx, requested);
  return decode ? { method: "full", decode } : null;
}
