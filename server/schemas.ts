/**
 * Request bodies as zod schemas. Shape and range errors are 400s naming the field; what only the model
 * can judge (context length, budget against window, a missing adapter) is left to the core's compiler.
 */
import { z } from "zod";
import { MAX_QUESTIONS } from "../core/max_tokens.ts";
import { METHOD_NAMES } from "../core/methods/registry.ts";
import { DECODE_METHOD_NAMES, type DecodeCompressionRequest } from "../core/decode_compression.ts";
import { allocationError, type CompressionRequest } from "../core/plan.ts";

/** Upper bound on any count a client sends: far above any context, far below float trouble. */
const BIG = 1_000_000_000;
const count = () => z.number().int().min(0).max(BIG);

/** `kv_compression.decode` as core/decode_compression.ts reads it (ranges: decodeCompressionWireSchema). */
export const decodeCompressionSchema = z.object({
  /** Defaults to the prefill method (kv_compression.method) when that one can run at decode time. */
  method: z.string().optional(),
  /** Entries kept per KV head per layer after each compression (prompt and generated together). */
  budget: z.number().optional(),
  /** The budget as a share of all positions seen so far, in (0, 1]. */
  fraction: z.number().optional(),
  /** Tokens generated between compressions: a head never holds more than budget + interval entries. */
  interval: z.number(),
  /** The most recent positions never evicted (default min(8, budget - 1)). */
  buffer: z.number().optional(),
}).strict();

/**
 * The `kv_compression` object of a request (snake_case, as on the wire): what core/plan.ts reads as a
 * CompressionRequest. Requests are checked with kvCompressionSchema, which adds the method names and
 * the ranges of budget, compression_ratio, window and decode.
 */
export const compressionSchema = z.object({
  method: z.string(),
  budget: z.number().optional(),
  compression_ratio: z.number().optional(),
  window: z.number().optional(),
  pooling: z.enum(["max", "avg", "none"]).optional(),
  kernel: z.number().int().min(1).max(63).optional(),
  gqa: z.enum(["mean", "max", "sum"]).optional(),
  sinks: z.number().int().min(0).optional(),
  normalize: z.boolean().optional(),
  seed: z.number().int().optional(),
  beta: z.number().positive().optional(),
  floor: z.number().min(0).max(1).optional(),
  lookahead_tokens: z.number().int().min(1).max(64).optional(),
  /**
   * `uniform` (default), `pyramid` or `adaptive`: how an attention method's budget is shared out over
   * layers and heads. Checked by `resolveOptions` (400 naming `kv_compression.allocation`).
   */
  allocation: z.string().optional(),
  /** Judge Q ablation: untrained soft tokens (mean embedding plus seeded noise). */
  random_soft: z.boolean().optional(),
  /** Compression during decoding: the cache bounded to budget + interval entries per KV head. */
  decode: decodeCompressionSchema.optional(),
}).strict();

/** The schemas and the core's types describe the same objects (a compile-time check). */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const _sameShapes: [
  Same<z.infer<typeof compressionSchema>, CompressionRequest>,
  Same<z.infer<typeof decodeCompressionSchema>, DecodeCompressionRequest>,
] = [true, true];

/** `kv_compression.decode`: compression during decoding, the same shape on every endpoint. */
export const decodeCompressionWireSchema = z.object({
  method: z.enum(DECODE_METHOD_NAMES as [string, ...string[]]).optional(),
  budget: z.number().int().min(1).max(BIG).optional(),
  fraction: z.number().gt(0).max(1).optional(),
  interval: z.number().int().min(1).max(BIG),
  buffer: count().optional(),
}).strict().superRefine((d, ctx) => {
  if (d.budget !== undefined && d.fraction !== undefined) {
    ctx.addIssue({ code: "custom", message: "give budget or fraction, not both", path: ["budget"] });
  } else if (d.budget === undefined && d.fraction === undefined) {
    ctx.addIssue({ code: "custom", message: "give budget or fraction", path: ["budget"] });
  } else if (d.budget !== undefined && d.buffer !== undefined && d.buffer >= d.budget) {
    ctx.addIssue({
      code: "custom",
      message: `buffer ${d.buffer} must be smaller than the budget ${d.budget}`,
      path: ["buffer"],
    });
  }
});

/** The core's kv_compression object with the ranges a schema can check made explicit. */
export const kvCompressionSchema = compressionSchema.extend({
  method: z.enum(METHOD_NAMES as [string, ...string[]]),
  budget: z.number().int().min(1).max(BIG).optional(),
  compression_ratio: z.number().min(0).lt(1).optional(),
  window: count().optional(),
  decode: decodeCompressionWireSchema.optional(),
}).strict().superRefine((c, ctx) => {
  const refused = c.allocation === undefined ? null : allocationError(c.method, c.allocation);
  if (refused) ctx.addIssue({ code: "custom", message: refused, path: ["allocation"] });
});

/** kv_compression of an answer against a kept context: the context is compressed already, decoding is not. */
export const answerCompressionSchema = z.object({ decode: decodeCompressionWireSchema.nullish() }).strict();

/** `stop`: a string or a list of strings and token ids (OpenAI allows strings only; ids are ours). */
export const stopSchema = z.union([
  z.string().min(1),
  z.array(z.union([z.string().min(1), count()])).max(16),
]);

/** Sampling and decoding fields shared by every generating endpoint. */
const decodeFields = {
  max_tokens: count().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: count().nullish(),
  seed: z.number().int().nullish(),
  stop: stopSchema.nullish(),
  stream: z.boolean().nullish(),
  /** Decode to max_tokens even past the model's end-of-sequence token (benchmarks). */
  ignore_eos: z.boolean().nullish(),
  /** Read special-token text ("</s>") in the request's text as control tokens (default: as plain text). */
  allow_special_tokens: z.boolean().nullish(),
  /** An explicit max_tokens past the model's context stops at its end instead of a 400. */
  truncate_max_tokens: z.boolean().nullish(),
};
/** The decode fields as the wire has them (Service.decodeParams reads them). */
export type DecodeFields = z.infer<z.ZodObject<typeof decodeFields>>;

const extras = {
  model: z.string().nullish(),
  /** Include generated token ids in the outputs. */
  return_tokens: z.boolean().nullish(),
  /** Include the kept prompt positions per layer and KV head in `compression`. */
  return_positions: z.boolean().nullish(),
};

/** POST /v1/generate: a prompt, or a context (compressed) with questions answered after it. */
export const generateSchema = z.object({
  prompt: z.string().min(1).optional(),
  context: z.string().min(1).optional(),
  questions: z.array(z.string().min(1)).min(1).max(MAX_QUESTIONS).optional(),
  kv_compression: kvCompressionSchema.nullish(),
  ...decodeFields,
  ...extras,
}).strict();
export type GenerateBody = z.infer<typeof generateSchema>;

/** POST /v1/contexts: compress once. */
export const contextCreateSchema = z.object({
  context: z.string().min(1),
  allow_special_tokens: z.boolean().nullish(),
  kv_compression: kvCompressionSchema.nullish(),
  model: z.string().nullish(),
  return_positions: z.boolean().nullish(),
}).strict();
export type ContextCreateBody = z.infer<typeof contextCreateSchema>;

/** POST /v1/contexts/{id}/generate: one question (or several) against a kept context. */
export const contextGenerateSchema = z.object({
  question: z.string().min(1).optional(),
  kv_compression: answerCompressionSchema.nullish(),
  questions: z.array(z.string().min(1)).min(1).max(MAX_QUESTIONS).optional(),
  ...decodeFields,
  ...extras,
}).strict();
export type ContextGenerateBody = z.infer<typeof contextGenerateSchema>;

/** A field accepted only at its no-op values: anything else is a 400 naming it (the output would differ). */
const noOp =
  <T extends z.ZodType>(schema: T, isNoOp: (v: z.infer<T>) => boolean, noOpText: string) => (name: string) =>
    schema.nullish().refine((v) => v === null || v === undefined || isNoOp(v as z.infer<T>), {
      message: `${name} is not supported by this server (only ${noOpText} is accepted)`,
    });
const zero = noOp(z.number(), (v) => v === 0, "0");
const noneOrAuto = noOp(z.unknown(), (v) => v === "none" || v === "auto", '"none" or "auto"');
const emptyList = noOp(z.array(z.unknown()), (v) => v.length === 0, "an empty list");
const absent = noOp(z.unknown(), () => false, "null");

/** Fields of the OpenAI API (and of common OpenAI-compatible servers) that change outputs and are not implemented. */
const UNSUPPORTED = {
  logit_bias: noOp(z.record(z.string(), z.number()), (v) => Object.values(v).every((x) => x === 0), "{}"),
  presence_penalty: zero,
  frequency_penalty: zero,
  response_format: noOp(
    z.object({ type: z.string() }).passthrough(),
    (v) => v.type === "text",
    '{"type": "text"}',
  ),
  tools: emptyList,
  tool_choice: noneOrAuto,
  functions: emptyList,
  function_call: noneOrAuto,
  audio: absent,
  modalities: noOp(z.array(z.string()), (v) => v.every((m) => m === "text"), '["text"]'),
  web_search_options: absent,
  repetition_penalty: noOp(z.number(), (v) => v === 1, "1"),
  min_p: zero,
  min_tokens: zero,
  guided_json: absent,
  guided_regex: absent,
  guided_choice: absent,
  guided_grammar: absent,
};
const unsupportedFields = Object.fromEntries(
  Object.entries(UNSUPPORTED).map(([name, field]) => [name, field(name)]),
) as { [K in keyof typeof UNSUPPORTED]: ReturnType<(typeof UNSUPPORTED)[K]> };

/**
 * OpenAI bodies are not strict: clients send fields we do not use (user, metadata, store, ...).
 * Those that would change the result and are not implemented are refused explicitly.
 */
const openaiFields = {
  ...unsupportedFields,
  ...decodeFields,
  model: z.string().nullish(),
  n: z.literal(1, { message: "only n = 1 is supported" }).nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  kv_compression: kvCompressionSchema.nullish(),
  logprobs: z.union([z.literal(false), z.null()], { message: "logprobs are not supported" }).optional(),
};

export const completionSchema = z.object({
  ...openaiFields,
  prompt: z.union([z.string().min(1), z.array(z.string().min(1)).length(1, "give exactly one prompt")]),
  echo: z.literal(false, { message: "echo is not supported" }).nullish(),
  best_of: z.literal(1, { message: "only best_of = 1 is supported" }).nullish(),
  suffix: z.null({ message: "suffix is not supported" }).optional(),
});
export type CompletionBody = z.infer<typeof completionSchema>;

const textPart = z.object({ type: z.literal("text"), text: z.string() });
export const chatMessageSchema = z.object({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z.union([z.string(), z.array(textPart), z.null()]),
  name: z.string().optional(),
});
export type ChatMessage = z.infer<typeof chatMessageSchema>;

export const chatSchema = z.object({
  ...openaiFields,
  messages: z.array(chatMessageSchema).min(1).max(1024),
  max_completion_tokens: count().nullish(),
  top_logprobs: z.null({ message: "logprobs are not supported" }).optional(),
});
export type ChatBody = z.infer<typeof chatSchema>;
