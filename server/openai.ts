/**
 * The OpenAI-compatible surface: /v1/completions and /v1/chat/completions, chat prompts rendered with
 * the model's Jinja template (or a plain one), and the response and stream-chunk shapes.
 */
import { Environment, Interpreter, Template } from "@huggingface/jinja";
import { fail, JudgeQError } from "../core/errors.ts";
import type { CompressionRequest } from "../core/plan.ts";
import { encodeTemplate, type TextTokenizer } from "../core/tokenizer.ts";
import { HttpError } from "./errors.ts";
import { type JobOutput, type JobResult, precheck, type Prepared, runPrompt } from "./generation.ts";
import { type ChatMessage, chatSchema, completionSchema, type DecodeFields } from "./schemas.ts";
import type { Service, Shape } from "./service.ts";
import { compressionJson } from "./wire.ts";

const textOf = (c: ChatMessage["content"]): string =>
  c === null ? "" : typeof c === "string" ? c : c.map((p) => p.text).join("");

const templates = new Map<string, Template>();

/**
 * Bounds on one chat-template render. @huggingface/jinja has none: `range(1000000000)` builds the whole
 * list, nested loops or a macro that calls itself twice run for minutes, and `{% set s = s + s %}` in a
 * loop grows a string to gigabytes, all on the event loop. A real template takes a few steps per message.
 */
export const TEMPLATE_LIMITS = { steps: 250_000, rangeItems: 100_000, chars: 4 << 20 };

/** A template that went past TEMPLATE_LIMITS (a 422, not the template's own refusal). */
class TemplateLimitError extends Error {}

/** Jinja's range(), refusing more than TEMPLATE_LIMITS.rangeItems items before it builds them. */
function boundedRange(start: unknown, stop?: unknown, step: unknown = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (typeof start !== "number" || typeof stop !== "number" || typeof step !== "number") {
    throw new Error("range() takes numbers");
  }
  if (step === 0) throw new Error("range() step must not be zero");
  const n = Math.ceil((stop - start) / step);
  if (!(n <= TEMPLATE_LIMITS.rangeItems)) {
    throw new TemplateLimitError(`calls range() for ${n} items (at most ${TEMPLATE_LIMITS.rangeItems})`);
  }
  return Array.from({ length: Math.max(0, n) }, (_, i) => start + i * step);
}

const pad2 = (n: number) => String(n).padStart(2, "0");
/** Jinja's strftime_now(): the same directives as @huggingface/jinja's (%Y %m %d %b %B %H %M %%). */
function strftimeNow(format: unknown): string {
  const d = new Date();
  const month = (style: "long" | "short") => new Intl.DateTimeFormat(undefined, { month: style }).format(d);
  return String(format).replace(/%[YmdbBHM%]/g, (t) =>
    ({
      "%Y": String(d.getFullYear()),
      "%m": pad2(d.getMonth() + 1),
      "%d": pad2(d.getDate()),
      "%b": month("short"),
      "%B": month("long"),
      "%H": pad2(d.getHours()),
      "%M": pad2(d.getMinutes()),
    })[t] ?? "%");
}

/**
 * Renders a parsed template as Template.render does (the same globals), but counting evaluation steps
 * and checking the size of every string and list it makes against TEMPLATE_LIMITS.
 */
function renderBounded(t: Template, items: Record<string, unknown>): string {
  const env = new Environment();
  const globals: Record<string, unknown> = {
    false: false,
    true: true,
    none: null,
    False: false,
    True: true,
    None: null,
    raise_exception: (message: unknown) => {
      throw new Error(String(message));
    },
    range: boundedRange,
    strftime_now: strftimeNow,
  };
  for (const [k, v] of Object.entries({ ...globals, ...items })) env.set(k, v);
  const it = new Interpreter(env);
  // evaluate() and evaluateBlock() are private in the typings; every node goes through the first and
  // every loop iteration through the second (this.evaluate...), so wrapping them on the instance sees all.
  type Step = (node: unknown, env: unknown) => { value?: unknown };
  const self = it as unknown as { evaluate: Step; evaluateBlock: Step };
  const evaluate = self.evaluate.bind(it), evaluateBlock = self.evaluateBlock.bind(it);
  let steps = 0;
  const step = () => {
    if (++steps > TEMPLATE_LIMITS.steps) {
      throw new TemplateLimitError(`did not finish within ${TEMPLATE_LIMITS.steps} steps`);
    }
  };
  self.evaluateBlock = (node, scope) => (step(), evaluateBlock(node, scope));
  self.evaluate = (node, scope) => {
    step();
    const v = evaluate(node, scope);
    const size = (v?.value as { length?: unknown } | null | undefined)?.length;
    if (typeof size === "number" && size > TEMPLATE_LIMITS.chars) {
      throw new TemplateLimitError(
        `made a value of ${size} characters or items (at most ${TEMPLATE_LIMITS.chars})`,
      );
    }
    return v;
  };
  return String(it.run(t.parsed).value);
}

/**
 * The prompt for a chat. With a chat_template (tokenizer_config.json) it is rendered as transformers
 * does, generation prompt on. Without one (base models such as stories260K) the messages' contents are
 * joined one per line, so the model simply continues the conversation's text.
 */
export function renderChat(
  tok: TextTokenizer,
  messages: ChatMessage[],
  hide: (value: string) => string = (v) => v,
): string {
  const flat = messages.map((m) => ({
    role: m.role,
    content: hide(textOf(m.content)),
    ...(m.name ? { name: hide(m.name) } : {}),
  }));
  if (!tok.chatTemplate) return flat.map((m) => m.content).join("\n");
  try {
    let t = templates.get(tok.chatTemplate);
    if (!t) templates.set(tok.chatTemplate, t = new Template(tok.chatTemplate));
    return renderBounded(t, {
      messages: flat,
      bos_token: tok.bosToken ?? "",
      eos_token: tok.eosToken ?? "",
      add_generation_prompt: true,
    });
  } catch (e) {
    if (e instanceof TemplateLimitError) {
      throw new HttpError(422, `the chat template ${e.message}`, "messages");
    }
    // Templates refuse conversations they cannot format (raise_exception): the client's to fix.
    throw new HttpError(400, `the chat template rejected the messages: ${(e as Error).message}`, "messages");
  }
}

/**
 * A chat's prompt ids. The template's own special tokens are control tokens; special-token text in the
 * messages stays text (a "</s>" or "<|im_start|>" typed by a user ends no turn) unless `allowSpecial`.
 */
export function encodeChat(tok: TextTokenizer, messages: ChatMessage[], allowSpecial: boolean): number[] {
  let text = "";
  const ids = allowSpecial || !tok.chatTemplate
    ? tok.encode(text = renderChat(tok, messages), { addBos: true, allowSpecial })
    : encodeTemplate(tok, (hide) => text = renderChat(tok, messages, hide), { addBos: true });
  if (text === "") throw new HttpError(400, "the messages render to an empty prompt", "messages");
  return ids;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export const usageOf = (prompt: number, completion: number): Usage => ({
  prompt_tokens: prompt,
  completion_tokens: completion,
  total_tokens: prompt + completion,
});

/** Fields every response and chunk of one request shares. */
export interface Envelope {
  id: string;
  created: number;
  model: string;
}

export const newEnvelope = (prefix: string, model: string): Envelope => ({
  id: `${prefix}-${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`,
  created: Math.floor(Date.now() / 1000),
  model,
});

export function completionBody(env: Envelope, out: JobOutput, usage: Usage, extra: Record<string, unknown>) {
  return {
    ...env,
    object: "text_completion",
    choices: [{ index: 0, text: out.text, finish_reason: out.finishReason, logprobs: null }],
    usage,
    ...extra,
  };
}

export function completionChunk(env: Envelope, text: string, finishReason: string | null) {
  return {
    ...env,
    object: "text_completion",
    choices: [{ index: 0, text, finish_reason: finishReason, logprobs: null }],
  };
}

export function chatBody(env: Envelope, out: JobOutput, usage: Usage, extra: Record<string, unknown>) {
  return {
    ...env,
    object: "chat.completion",
    choices: [{
      index: 0,
      message: { role: "assistant", content: out.text, refusal: null },
      finish_reason: out.finishReason,
      logprobs: null,
    }],
    usage,
    ...extra,
  };
}

export function chatChunk(env: Envelope, delta: Record<string, unknown>, finishReason: string | null) {
  return {
    ...env,
    object: "chat.completion.chunk",
    choices: [{ index: 0, delta, finish_reason: finishReason, logprobs: null }],
  };
}

/** The last chunk of a stream with `stream_options.include_usage`: no choices, only usage. */
export function usageChunk(env: Envelope, object: string, usage: Usage) {
  return { ...env, object, choices: [], usage };
}

type Handler = (req: Request) => Promise<Response>;

/** POST /v1/completions (one prompt). */
export const completions = (svc: Service): Handler => async (req) => {
  const b = await svc.parse(req, completionSchema);
  svc.checkModel(b.model);
  svc.admit(
    [{ text: typeof b.prompt === "string" ? b.prompt : b.prompt[0], param: "prompt" }],
    b.allow_special_tokens ?? false,
  );
  return run(svc, req, b, typeof b.prompt === "string" ? b.prompt : b.prompt[0], false);
};

/** POST /v1/chat/completions. */
export const chat = (svc: Service): Handler => async (req) => {
  const b = await svc.parse(req, chatSchema);
  svc.checkModel(b.model);
  const special = b.allow_special_tokens ?? false;
  // The messages' text (names only where a template renders them), before the template renders it all.
  const named = svc.model.tokenizer.chatTemplate !== null;
  const texts = b.messages.flatMap((m) => [textOf(m.content), named ? m.name ?? "" : ""]);
  svc.admit([{ text: texts.join("\n"), param: "messages" }], special);
  const prompt = encodeChat(svc.model.tokenizer, b.messages, special);
  const maxTokensParam = b.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  return run(
    svc,
    req,
    { ...b, max_tokens: b.max_completion_tokens ?? b.max_tokens },
    prompt,
    true,
    maxTokensParam,
  );
};

interface OpenAiFields extends DecodeFields {
  stream_options?: { include_usage?: boolean | null } | null;
  kv_compression?: CompressionRequest | null;
}

function run(
  svc: Service,
  req: Request,
  b: OpenAiFields,
  prompt: string | number[],
  isChat: boolean,
  maxTokensParam = "max_tokens",
): Promise<Response> {
  // Chat runs to the end of the context by default (OpenAI sets no limit); completions default to 16.
  const p = svc.decodeParams(b, { maxTokens: isChat ? null : 16, temperature: 1, maxTokensParam });
  const compression = (b.kv_compression ?? null) as CompressionRequest | null;
  let prepared: Prepared;
  try {
    prepared = precheck(svc.model, { prompt }, compression, p);
  } catch (e) {
    // A chat has no `prompt` field: its rendered messages are the prompt.
    if (isChat && e instanceof JudgeQError && e.param === "prompt") throw fail(e.kind, e.message, "messages");
    throw e;
  }
  const env = newEnvelope(isChat ? "chatcmpl" : "cmpl", svc.model.name);
  const usage = (r: JobResult) => usageOf(r.promptTokens, r.completionTokens);
  const extra = (r: JobResult) => ({ compression: compressionJson(r.compression, false) });
  const shape: Shape = {
    body: (r) => (isChat ? chatBody : completionBody)(env, r.outputs[0], usage(r), extra(r)),
    streamStart: isChat
      ? (sse) => sse.send(chatChunk(env, { role: "assistant", content: "" }, null))
      : undefined,
    streamText(sse, _index, text) {
      if (text) sse.send(isChat ? chatChunk(env, { content: text }, null) : completionChunk(env, text, null));
    },
    streamEnd(sse, r) {
      const reason = r.outputs[0].finishReason;
      sse.send(isChat ? chatChunk(env, {}, reason) : completionChunk(env, "", reason));
      if (b.stream_options?.include_usage) {
        sse.send(usageChunk(env, isChat ? "chat.completion.chunk" : "text_completion", usage(r)));
      }
    },
  };
  if (prepared.kind !== "prompt") throw new Error("a prompt prepared as another kind");
  return svc.respond(req, b.stream ?? false, (h) => runPrompt(svc.model, prepared, h), shape);
}
