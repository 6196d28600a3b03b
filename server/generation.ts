/**
 * The jobs the server runs on the executor, shaped for HTTP: a prompt, a context with questions, or
 * questions against a kept context. Each output streams through an OutputText (stop strings end its
 * decode early), and the decode loop yields to the event loop now and then so that, even on the
 * synchronous CPU executor, the server keeps accepting requests and noticing disconnects.
 */
import * as E from "fp-ts/Either";
import {
  answerCompression,
  answerOnContext,
  answerPlan,
  compressContext,
  type CompressedContext,
  contextDecode,
  type DecodeParams,
  type Model,
  planFor,
  runCompiled,
  type TextOptions,
  tokenizeRequest,
} from "../core/engine.ts";
import type { DecodeCompressionRequest, DecodeCompressionStats } from "../core/decode_compression.ts";
import type { CompressionStats } from "../core/interpret.ts";
import { fail, type JudgeQError } from "../core/errors.ts";
import { decideMaxTokens, type MaxTokensAsk } from "../core/max_tokens.ts";
import type { CompressionRequest, GenerateRequest, Plan } from "../core/plan.ts";
import { refuseUnfitting } from "./batch_scheduler.ts";
import { Cancelled } from "./errors.ts";
import { OutputText } from "./output.ts";
import { type PartialWork, TimeLimitExceeded, YIELD_EVERY_MS } from "./jobs.ts";

export { Cancelled };

/**
 * A job's decode: the core's DecodeParams and TextOptions (core/engine.ts) with every default filled in
 * (Service.decodeParams), plus what only text decoding has: stop strings.
 */
export interface JobDecodeParams extends Required<DecodeParams>, Required<TextOptions> {
  stopStrings: string[];
  /**
   * How maxTokens is to be decided once the request is tokenized (core/max_tokens.ts); `precheck` sets
   * maxTokens from it. Absent: maxTokens is final.
   */
  ask?: MaxTokensAsk;
}

export interface JobHooks {
  /** Aborted when the client goes away. */
  signal: AbortSignal;
  /** New text of output `index` (streaming); `ids` are the tokens that produced it. */
  onText?: (index: number, text: string, ids: number[]) => void;
  /**
   * Resolves once the output's consumer has room for more (a stream's buffer), waiting off the executor
   * meanwhile; called after each batch of text.
   */
  backpressure?: () => Promise<void>;
  /**
   * The job's check point between decode steps and prefill chunks (server/jobs.ts): rejects with
   * Cancelled once the client left, TimeLimitExceeded once the job is over its time.
   */
  pass?: () => Promise<void>;
}

export interface JobOutput {
  text: string;
  tokens: number[];
  finishReason: "stop" | "length";
}

export interface JobResult {
  outputs: JobOutput[];
  promptTokens: number;
  completionTokens: number;
  compression: CompressionStats;
  /** Milliseconds per plan step, plus first_token. */
  timings: Record<string, number>;
}

/**
 * A job's hooks: its check point between decode steps (server/jobs.ts), tracks outputs and first-token
 * time.
 */
class JobRun {
  private lastYield = performance.now();
  private readonly t0 = performance.now();
  firstTokenMs: number | null = null;
  readonly outputs: OutputText[] = [];
  readonly stopControllers: AbortController[] = [];

  constructor(readonly model: Model, readonly p: JobDecodeParams, readonly hooks: JobHooks) {}

  /** A new output whose decode a matched stop string (or the client) can end. */
  open(prefixIds: readonly number[]): { out: OutputText; signal: AbortSignal; index: number } {
    const out = new OutputText(this.model.tokenizer, prefixIds, this.p.stopStrings);
    const stop = new AbortController();
    this.outputs.push(out);
    this.stopControllers.push(stop);
    return { out, signal: AbortSignal.any([this.hooks.signal, stop.signal]), index: this.outputs.length - 1 };
  }

  onTokens = async (index: number, ids: number[]) => {
    this.firstTokenMs ??= performance.now() - this.t0;
    const out = this.outputs[index];
    for (const id of ids) {
      if (out.stopped) break; // decode runs on a step past the stop; that token is not part of the output
      const text = out.push(id); // not inside `onText?.(...)`: optional calls skip their arguments
      this.hooks.onText?.(index, text, [id]);
    }
    if (out.stopped) this.stopControllers[index].abort();
    await this.hooks.backpressure?.();
    if (!this.hooks.pass) {
      // Outside the service (no check point): yield to the event loop now and then all the same.
      if (performance.now() - this.lastYield >= YIELD_EVERY_MS) {
        await new Promise((r) => setTimeout(r, 0));
        this.lastYield = performance.now();
      }
      return;
    }
    try {
      await this.hooks.pass();
    } catch (e) {
      if (e instanceof TimeLimitExceeded) e.partial = this.partial();
      throw e;
    }
  };

  /** Between chunks of a long prefill: the same check point as between decode steps. */
  between = async () => {
    try {
      await this.hooks.pass?.();
    } catch (e) {
      if (e instanceof TimeLimitExceeded) e.partial = this.partial();
      throw e;
    }
  };

  /** What the outputs hold so far. */
  partial(): PartialWork {
    const outputs = this.outputs.map((o) => ({ text: o.text, completion_tokens: o.tokens.length }));
    return { outputs, completion_tokens: outputs.reduce((n, o) => n + o.completion_tokens, 0) };
  }

  /** Closes output `index` after its decode ended with the core's finish reason. */
  close(index: number, coreReason: string): JobOutput {
    if (this.hooks.signal.aborted) throw new Cancelled();
    const out = this.outputs[index];
    const tail = out.finish();
    if (tail) this.hooks.onText?.(index, tail, []);
    return {
      text: out.text,
      tokens: out.tokens,
      finishReason: out.stopped || coreReason === "stop" ? "stop" : "length",
    };
  }

  timings(steps: Record<string, number>): Record<string, number> {
    const t: Record<string, number> = { ...steps };
    if (this.firstTokenMs !== null) t.first_token = this.firstTokenMs;
    return t;
  }
}

/** The part of a job's parameters the core reads (stop strings are the job's own: OutputText). */
const coreParams = (p: JobDecodeParams): DecodeParams & TextOptions => ({
  maxTokens: p.maxTokens,
  temperature: p.temperature,
  topP: p.topP,
  topK: p.topK,
  seed: p.seed,
  stopTokenIds: p.stopTokenIds,
  ignoreEos: p.ignoreEos,
  allowSpecialTokens: p.allowSpecialTokens,
});

/**
 * Admission by length, the one measure before a text is tokenized whole: 422 naming `param` for a text
 * that cannot fit the model's context. First a lower bound on its tokens found from its length alone
 * (TextTokenizer.minTokens: a megabyte prompt costs nothing). Then a text longer than the context could
 * hold four times over, were every token the vocabulary's longest, has its first that many characters
 * tokenized alone (a body-sized text takes seconds to tokenize, on the event loop): over twice the context
 * there, the whole cannot fit. Shorter texts, and long ones the tokenizer shrinks, are left to the core.
 */
export function refuseOverlong(model: Model, text: string, param: string, allowSpecial: boolean) {
  const tok = model.tokenizer, context = model.config.maxSeqLen;
  const least = tok.minTokens(text);
  if (least > context) {
    throw fail(
      "unprocessable",
      `${text.length} characters are at least ${least} tokens, over the model's context of ${context}`,
      param,
    );
  }
  // A token covers at most the longest piece's UTF-8 bytes, so at most as many UTF-16 units of text.
  let end = 4 * context * Math.max(1, tok.longestPieceBytes());
  if (text.length <= end) return; // Infinity (a vocabulary with no bound): left to the core
  const high = text.charCodeAt(end - 1);
  if (high >= 0xd800 && high <= 0xdbff) end--; // not half a surrogate pair
  const n = tok.encode(text.slice(0, end), { addBos: false, allowSpecial }).length;
  if (n > 2 * context) {
    throw fail(
      "unprocessable",
      `at least ${n} tokens (in its first ${end} of ${text.length} characters) leave no room in the model's context of ${context}`,
      param,
    );
  }
}

/**
 * A request checked, tokenized and compiled before it is queued: what its job runs, so that nothing is
 * tokenized or compiled again. `p.maxTokens` is decided (core/max_tokens.ts).
 */
export type Prepared =
  | { kind: "prompt"; p: JobDecodeParams; req: GenerateRequest; plan: Plan }
  | {
    kind: "context";
    p: JobDecodeParams;
    /** The whole request's plan: its compression steps run as compiled. */
    plan: Plan;
    /** Each question's answer plan, as on a kept context of this compression. */
    answers: Plan[];
    context: number[];
    questions: number[][];
    compression: CompressionRequest | null;
  }
  /** Questions on a kept context: one plan each, compiled here and run as compiled. */
  | { kind: "answers"; p: JobDecodeParams; questions: number[][]; plans: Plan[] };

/** maxTokens decided for a prompt taking `used` positions; a 400 when the request asks what cannot be. */
function decided(model: Model, p: JobDecodeParams, used: number, withContext: boolean): JobDecodeParams {
  if (!p.ask) return p;
  const what = withContext ? "context and question tokens" : "prompt tokens";
  const n = decideMaxTokens(p.ask, { size: model.config.maxSeqLen, used, what });
  if (E.isLeft(n)) throw n.left;
  return { ...p, maxTokens: n.right };
}

/** Each question's answer plan on a context (`compression`: an answer's), refused now if it can never fit. */
function answerPlans(
  model: Model,
  context: number[],
  questions: number[][],
  compression: CompressionRequest | null,
  p: JobDecodeParams,
): Plan[] {
  return questions.map((q, i) => {
    const plan = answerPlan(model, context, q, compression, coreParams(p));
    if (E.isLeft(plan)) throw questionParam(plan.left, i);
    refuseUnfitting(model.executor, plan.right.capacity);
    return plan.right;
  });
}

/** A one-question plan's error about its question, named as the request's question `i`. */
function questionParam(e: JudgeQError, i: number): JudgeQError {
  if (e.param !== "questions.0" || i === 0) return e;
  return fail(e.kind, e.message.slice("questions.0: ".length), `questions.${i}`);
}

/** A compiled plan, refused (422) now if its cache can never fit the server's KV cap. */
function compiled(model: Model, req: GenerateRequest): Plan {
  const plan = planFor(model, req);
  if (E.isLeft(plan)) throw plan.left;
  refuseUnfitting(model.executor, plan.right.capacity);
  return plan.right;
}

/**
 * Checks a request against the model before it is queued (so 400/422 come before any streamed 200),
 * tokenizing and compiling it once: the job runs what this returns. The texts passed admission
 * (`refuseOverlong`) already. Throws the core's JudgeQError.
 */
export function precheck(
  model: Model,
  input: { prompt: string | number[] } | { context: string; questions: string[] } | {
    contextTokens: number[];
    questions: string[];
  },
  compression: CompressionRequest | null,
  p0: JobDecodeParams,
): Prepared {
  const allowSpecial = p0.allowSpecialTokens;
  if ("contextTokens" in input) {
    const questions = input.questions.map((q) => model.tokenizer.encode(q, { addBos: false, allowSpecial }));
    const used = input.contextTokens.length + Math.max(...questions.map((q) => q.length));
    const p = decided(model, p0, used, true);
    // `compression` is an answer's: its decode-time compression alone (answerCompression).
    const plans = answerPlans(model, input.contextTokens, questions, compression, p);
    return { kind: "answers", p, questions, plans };
  }
  const tokenized = tokenizeRequest(model, { ...input, compression, ...coreParams(p0) });
  if (E.isLeft(tokenized)) throw tokenized.left;
  const i = tokenized.right.input;
  const used = i.kind === "prompt"
    ? i.tokens.length
    : i.context.length + Math.max(...i.questions.map((q) => q.length));
  const p = decided(model, p0, used, i.kind === "context");
  const req = { ...tokenized.right, decode: { ...tokenized.right.decode, maxTokens: p.maxTokens } };
  const plan = compiled(model, req);
  if (i.kind === "prompt") return { kind: "prompt", p, req, plan };
  const asKept = answerCompression({ decode: contextDecode(compression), plan }, null);
  const answers = answerPlans(model, i.context, i.questions, asKept, p);
  return { kind: "context", p, plan, answers, context: i.context, questions: i.questions, compression };
}

/**
 * Checks a context to keep (POST /v1/contexts) as compressContext compiles it; returns its ids and plan
 * (the job compresses these, without tokenizing or compiling again).
 */
export function precheckContext(
  model: Model,
  context: string,
  compression: CompressionRequest | null,
  allowSpecial = false,
): { tokens: number[]; plan: Plan } {
  const tokens = model.tokenizer.encode(context, { addBos: true, allowSpecial });
  const plan = planFor(model, {
    input: { kind: "context", context: tokens, questions: [[model.tokenizer.bosId ?? 0]] },
    compression,
    decode: { maxTokens: 0, sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 }, stopTokenIds: [] },
  });
  if (E.isLeft(plan)) throw plan.left;
  return { tokens, plan: plan.right };
}

/** Compress-then-generate from one prompt, as `precheck` tokenized and compiled it. */
export async function runPrompt(
  model: Model,
  prepared: Extract<Prepared, { kind: "prompt" }>,
  hooks: JobHooks,
): Promise<JobResult> {
  const { p, req, plan } = prepared;
  const job = new JobRun(model, p, hooks);
  const promptIds = req.input.kind === "prompt" ? req.input.tokens : [];
  const { signal } = job.open(promptIds);
  const r = await runCompiled(model, req, plan, { onTokens: job.onTokens, between: job.between, signal });
  const output = job.close(0, r.outputs[0]?.finishReason ?? "length");
  return {
    outputs: [output],
    promptTokens: r.promptTokens.length,
    completionTokens: output.tokens.length,
    compression: r.run.compression,
    timings: job.timings(r.run.timings),
  };
}

/** Questions against an already compressed context; the context is left as it was. */
export async function runAnswers(
  model: Model,
  ctx: CompressedContext,
  questions: number[][],
  p: JobDecodeParams,
  hooks: JobHooks,
  compressTimings: Record<string, number> = {},
  decode: DecodeCompressionRequest | null = null,
  /** Each question's plan, compiled by `precheck` (absent: each answer compiles its own). */
  plans: Plan[] | null = null,
): Promise<JobResult> {
  const job = new JobRun(model, p, hooks);
  const outputs: JobOutput[] = [];
  let decodeStats: DecodeCompressionStats | null = null;
  let promptTokens = 0;
  const answerStart = performance.now();
  for (const question of questions) {
    if (hooks.signal.aborted) throw new Cancelled();
    promptTokens += question.length;
    const { index, signal } = job.open(question);
    const onTokens = (_: number, ids: number[]) => job.onTokens(index, ids);
    const a = await answerOnContext(
      model,
      ctx,
      { question, decodeCompression: decode, plan: plans?.[index], ...coreParams(p) },
      { onTokens, signal },
    );
    outputs.push(job.close(index, a.finishReason));
    if (a.decode) {
      decodeStats ??= { ...a.decode, events: [], kvBytesEnd: [] };
      decodeStats.events.push(...a.decode.events.map((e) => ({ ...e, output: index })));
      decodeStats.kvBytesEnd.push(...a.decode.kvBytesEnd);
    }
  }
  return {
    outputs,
    promptTokens,
    completionTokens: outputs.reduce((n, o) => n + o.tokens.length, 0),
    compression: decodeStats ? { ...ctx.stats, decode: decodeStats } : ctx.stats,
    timings: job.timings({ ...compressTimings, answer: performance.now() - answerStart }),
  };
}

/** Compresses a context once (as `precheck` tokenized it), answers every question after it, then frees it. */
export async function runContext(
  model: Model,
  prepared: Extract<Prepared, { kind: "context" }>,
  hooks: JobHooks,
): Promise<JobResult> {
  const { p, plan, answers, context, questions, compression } = prepared;
  const job = new JobRun(model, p, hooks);
  const hooksOf = { signal: hooks.signal, between: job.between };
  const ctx = await compressContext(model, context, compression, hooksOf, p, plan);
  try {
    if (hooks.signal.aborted) throw new Cancelled();
    const r = await runAnswers(model, ctx, questions, p, hooks, ctx.timings, null, answers);
    return { ...r, promptTokens: r.promptTokens + ctx.contextTokens.length };
  } finally {
    ctx.session.dispose();
  }
}
