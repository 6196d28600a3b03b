/**
 * The jobs the server runs on the executor, shaped for HTTP: a prompt, a context with questions, or
 * questions against a kept context. Each output streams through an OutputText (stop strings end its
 * decode early), and the decode loop yields to the event loop now and then so that, even on the
 * synchronous CPU executor, the server keeps accepting requests and noticing disconnects.
 */
import * as E from "fp-ts/Either";
import {
  answerOnContext,
  compressContext,
  type CompressedContext,
  type DecodeParams,
  decodeSpecOf,
  generateText,
  type Model,
  planFor,
  type TextOptions,
  tokenizeRequest,
} from "../core/engine.ts";
import type { DecodeCompressionRequest, DecodeCompressionStats } from "../core/decode_compression.ts";
import type { CompressionStats } from "../core/interpret.ts";
import { fail } from "../core/errors.ts";
import type { CompressionRequest } from "../core/plan.ts";
import { refuseUnfitting } from "./batch_scheduler.ts";
import { Cancelled, HttpError } from "./errors.ts";
import { OutputText } from "./output.ts";
import { type PartialWork, TimeLimitExceeded, YIELD_EVERY_MS } from "./turns.ts";

export { Cancelled };

/**
 * A job's decode: the core's DecodeParams and TextOptions (core/engine.ts) with every default filled in
 * (Service.decodeParams), plus what only text decoding has: stop strings.
 */
export interface JobDecodeParams extends Required<DecodeParams>, Required<TextOptions> {
  stopStrings: string[];
  /**
   * The field that asked for maxTokens when it must fit the model's context (a 400 naming it if not);
   * null when it may be cut at the context's end (a default, or `truncate_max_tokens: true`).
   */
  maxTokensParam?: string | null;
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
   * Offers the executor to other jobs between decode batches (fair scheduling, see turns.ts); rejects
   * with TimeLimitExceeded once the job is over its executor time.
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
 * A job's hooks: passes the executor between decode batches (which also lets the event loop poll I/O,
 * see turns.ts), tracks outputs and first-token time.
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
      // Outside the service's turns (no scheduler): yield to the event loop now and then all the same.
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

  /** Between chunks of a long prefill: the executor's turn is offered as between decode batches. */
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
 * Refuses a text that cannot fit the model's context without tokenizing all of it: a body-sized text
 * (a megabyte) takes seconds to tokenize, on the event loop. A text longer than the context could hold
 * four times over, were every token the vocabulary's longest, has its first that many characters
 * tokenized alone: over twice the context there, the whole cannot fit (422 naming the field, as the
 * core's own check). Shorter texts, and long ones the tokenizer shrinks, are left to the core.
 */
export function refuseOverlong(model: Model, text: string, param: string, allowSpecial: boolean) {
  const tok = model.tokenizer, context = model.config.maxSeqLen;
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
 * Checks a request against the model before it is queued (so 400/422 come before any streamed 200).
 * Throws the core's JudgeQError.
 */
export function precheck(
  model: Model,
  input: { prompt: string | number[] } | { context: string; questions: string[] } | {
    contextTokens: number[];
    questions: string[];
  },
  compression: CompressionRequest | null,
  p: JobDecodeParams,
) {
  const special = p.allowSpecialTokens;
  if ("prompt" in input && typeof input.prompt === "string") {
    refuseOverlong(model, input.prompt, "prompt", special);
  }
  if ("context" in input) refuseOverlong(model, input.context, "context", special);
  if ("questions" in input) {
    input.questions.forEach((q, i) => refuseOverlong(model, q, `questions.${i}`, special));
  }
  if ("contextTokens" in input) {
    const questions = input.questions.map((q) =>
      model.tokenizer.encode(q, { addBos: false, allowSpecial: p.allowSpecialTokens })
    );
    const plan = planFor(model, {
      input: { kind: "context", context: input.contextTokens, questions },
      compression, // an answer's: its decode-time compression alone (answerCompression)
      decode: decodeSpecOf(model, p),
    });
    if (E.isLeft(plan)) throw plan.left;
    refuseUnfitting(model.executor, plan.right.capacity);
    checkRoom(model, input.contextTokens.length + Math.max(...questions.map((q) => q.length)), p, true);
    return;
  }
  const req = tokenizeRequest(model, { ...input, compression, ...coreParams(p) });
  if (E.isLeft(req)) throw req.left;
  const plan = planFor(model, req.right);
  if (E.isLeft(plan)) throw plan.left;
  refuseUnfitting(model.executor, plan.right.capacity);
  const i = req.right.input;
  const used = i.kind === "prompt"
    ? i.tokens.length
    : i.context.length + Math.max(...i.questions.map((q) => q.length));
  checkRoom(model, used, p, i.kind === "context");
}

/**
 * An explicit max_tokens must fit what the prompt leaves of the model's context (as OpenAI's
 * "maximum context length" 400): the core would otherwise cut it silently. A request that opts in
 * (`truncate_max_tokens: true`) and a default max_tokens stop at the context's end instead.
 */
function checkRoom(model: Model, used: number, p: JobDecodeParams, withContext: boolean) {
  const n = model.config.maxSeqLen, room = n - used;
  if (!p.maxTokensParam || used >= n || p.maxTokens <= room) return; // used >= n: the core's 422
  const what = withContext ? "context and question tokens" : "prompt tokens";
  throw new HttpError(
    400,
    `${p.maxTokensParam} ${p.maxTokens} does not fit the model's context of ${n} tokens: ${used} ${what} + ` +
      `${p.maxTokens} = ${used + p.maxTokens}; at most ${room} can be generated (or send ` +
      `"truncate_max_tokens": true to stop at the context's end)`,
    p.maxTokensParam,
  );
}

/** Checks a context to keep (POST /v1/contexts) as compressContext will compile it. */
export function precheckContext(
  model: Model,
  context: string,
  compression: CompressionRequest | null,
  allowSpecial = false,
) {
  refuseOverlong(model, context, "context", allowSpecial);
  const plan = planFor(model, {
    input: {
      kind: "context",
      context: model.tokenizer.encode(context, { addBos: true, allowSpecial }),
      questions: [[model.tokenizer.bosId ?? 0]],
    },
    compression,
    decode: decodeSpecOf(model, { maxTokens: 0 }),
  });
  if (E.isLeft(plan)) throw plan.left;
}

/** Compress-then-generate from one prompt (text, or ids already encoded: a chat's). */
export async function runPrompt(
  model: Model,
  prompt: string | number[],
  compression: CompressionRequest | null,
  p: JobDecodeParams,
  hooks: JobHooks,
): Promise<JobResult> {
  const job = new JobRun(model, p, hooks);
  const promptIds = typeof prompt === "string"
    ? model.tokenizer.encode(prompt, { addBos: true, allowSpecial: p.allowSpecialTokens })
    : prompt;
  const { signal } = job.open(promptIds);
  const r = await generateText(model, { prompt: promptIds, compression, ...coreParams(p) }, {
    onTokens: job.onTokens,
    between: job.between,
    signal,
  });
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
  questions: string[],
  p: JobDecodeParams,
  hooks: JobHooks,
  compressTimings: Record<string, number> = {},
  decode: DecodeCompressionRequest | null = null,
): Promise<JobResult> {
  const job = new JobRun(model, p, hooks);
  const outputs: JobOutput[] = [];
  let decodeStats: DecodeCompressionStats | null = null;
  let promptTokens = 0;
  const answerStart = performance.now();
  for (const question of questions) {
    if (hooks.signal.aborted) throw new Cancelled();
    const qIds = model.tokenizer.encode(question, { addBos: false, allowSpecial: p.allowSpecialTokens });
    promptTokens += qIds.length;
    const { index, signal } = job.open(qIds);
    const onTokens = (_: number, ids: number[]) => job.onTokens(index, ids);
    const a = await answerOnContext(
      model,
      ctx,
      { question, decodeCompression: decode, ...coreParams(p) },
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

/** Compresses a context once, answers every question after it, then frees it. */
export async function runContext(
  model: Model,
  context: string,
  questions: string[],
  compression: CompressionRequest | null,
  p: JobDecodeParams,
  hooks: JobHooks,
): Promise<JobResult> {
  const job = new JobRun(model, p, hooks);
  const ctx = await compressContext(model, context, compression, {
    signal: hooks.signal,
    between: job.between,
  }, p);
  try {
    if (hooks.signal.aborted) throw new Cancelled();
    const r = await runAnswers(model, ctx, questions, p, hooks, ctx.timings);
    return { ...r, promptTokens: r.promptTokens + ctx.contextTokens.length };
  } finally {
    ctx.session.dispose();
  }
}
