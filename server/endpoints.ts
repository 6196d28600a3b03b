/**
 * The native endpoints: /v1/generate, the kept contexts, /v1/models, /healthz and /metrics.
 */
import { DECODE_METHOD_NAMES, type DecodeCompressionRequest } from "../core/decode_compression.ts";
import { answerCompression, compressContext } from "../core/engine.ts";
import { METHOD_NAMES } from "../core/methods/registry.ts";
import type { CompressionRequest } from "../core/plan.ts";
import type { StoredContext } from "./contexts/mod.ts";
import { Cancelled, HttpError, jsonResponse } from "./errors.ts";
import { principalOf } from "./keys.ts";
import {
  type JobResult,
  precheck,
  precheckContext,
  type Prepared,
  runAnswers,
  runContext,
  runPrompt,
} from "./generation.ts";
import { type Envelope, newEnvelope, usageOf } from "./openai.ts";
import { contextCreateSchema, contextGenerateSchema, generateSchema } from "./schemas.ts";
import type { Service, Shape } from "./service.ts";
import { compressionJson, timingsJson } from "./wire.ts";

export type Handler = (req: Request, params: string[]) => Promise<Response>;

/** The JSON and stream shape of /v1/generate and of a kept context's generate. */
function generateShape(
  svc: Service,
  env: Envelope,
  questions: string[] | null,
  b: { return_tokens?: boolean | null; return_positions?: boolean | null },
  contextId: string | null = null,
): Shape {
  const body = (r: JobResult, queueMs: number, runMs: number) => ({
    ...env,
    object: "generation",
    ...(contextId ? { context_id: contextId } : {}),
    executor: svc.model.executor.kind,
    ...(questions ? {} : { text: r.outputs[0].text, finish_reason: r.outputs[0].finishReason }),
    outputs: r.outputs.map((out, index) => ({
      index,
      ...(questions ? { question: questions[index] } : {}),
      text: out.text,
      finish_reason: out.finishReason,
      ...(b.return_tokens ? { tokens: out.tokens } : {}),
    })),
    usage: usageOf(r.promptTokens, r.completionTokens),
    compression: compressionJson(r.compression, b.return_positions ?? false),
    timings_ms: timingsJson(r.timings, queueMs, runMs),
  });
  return {
    body,
    streamText(sse, index, text, ids) {
      if (!text && !b.return_tokens) return;
      sse.send({
        ...env,
        object: "generation.chunk",
        index,
        text,
        ...(b.return_tokens ? { tokens: ids } : {}),
      });
    },
    streamEnd(sse, r, queueMs, runMs) {
      sse.send({ ...body(r, queueMs, runMs), object: "generation.done" });
    },
  };
}

/** POST /v1/generate: a prompt, or a context with questions; compressed as kv_compression asks. */
export const generate = (svc: Service): Handler => async (req) => {
  const b = await svc.parse(req, generateSchema);
  svc.checkModel(b.model);
  if (b.prompt !== undefined && b.context !== undefined) {
    throw new HttpError(400, "give prompt, or context with questions, not both", "context");
  }
  if (b.prompt === undefined && b.context === undefined) {
    throw new HttpError(400, "prompt or context is required", "prompt");
  }
  if (b.prompt !== undefined && b.questions) {
    throw new HttpError(400, "questions need a context, not a prompt", "questions");
  }
  if (b.context !== undefined && !b.questions) {
    throw new HttpError(400, "a context needs questions", "questions");
  }
  svc.admit([
    ...(b.prompt !== undefined ? [{ text: b.prompt, param: "prompt" }] : []),
    ...(b.context !== undefined ? [{ text: b.context, param: "context" }] : []),
    ...(b.questions ?? []).map((text, i) => ({ text, param: `questions.${i}` })),
  ], b.allow_special_tokens ?? false);
  const model = svc.model;
  const p = svc.decodeParams(b, { maxTokens: 64, temperature: 0, outputs: b.questions?.length ?? 1 });
  const compression = (b.kv_compression ?? null) as CompressionRequest | null;
  const env = newEnvelope("gen", model.name);
  const input = b.prompt !== undefined
    ? { prompt: b.prompt }
    : { context: b.context!, questions: b.questions! };
  const prepared = precheck(model, input, compression, p);
  const shape = generateShape(svc, env, b.prompt !== undefined ? null : b.questions!, b);
  const stream = b.stream ?? false;
  if (prepared.kind === "prompt") {
    return svc.respond(req, stream, (h) => runPrompt(model, prepared, h), shape);
  }
  if (prepared.kind === "context") {
    return svc.respond(req, stream, (h) => runContext(model, prepared, h), shape);
  }
  throw new Error("a prompt or context request prepared as answers");
};

const contextJson = (svc: Service, e: StoredContext, withPositions: boolean) => ({
  id: e.id,
  object: "context",
  model: svc.model.name,
  created: Math.floor(e.createdAt / 1000),
  expires_at: Math.floor(svc.contexts.expiresAt(e) / 1000),
  context_tokens: e.ctx.contextTokens.length,
  kv_bytes: e.ctx.session.kvBytes(),
  allocated_bytes: e.bytes,
  compression: compressionJson(e.ctx.stats, withPositions),
});

/** POST /v1/contexts: compress once, keep the cache, return its id and stats. */
export const createContext = (svc: Service): Handler => async (req) => {
  const b = await svc.parse(req, contextCreateSchema);
  svc.checkModel(b.model);
  const compression = (b.kv_compression ?? null) as CompressionRequest | null;
  const allowSpecialTokens = b.allow_special_tokens ?? false;
  svc.admit([{ text: b.context, param: "context" }], allowSpecialTokens);
  const { tokens, plan } = precheckContext(svc.model, b.context, compression, allowSpecialTokens);
  const signal = req.signal;
  const { value: ctx, queueMs, runMs } = await svc.run(
    signal,
    (pass) => compressContext(svc.model, tokens, compression, { signal, between: pass }, {}, plan),
  );
  if (signal.aborted) {
    ctx.session.dispose();
    throw new Cancelled();
  }
  svc.scheduler.settle(ctx.session); // a kept context reserves what it holds, not its whole capacity
  svc.metrics.promptTokens.inc({}, ctx.contextTokens.length);
  svc.metrics.kvBytesSaved.inc({}, ctx.stats.kvBytesBefore - ctx.stats.kvBytesAfter);
  // May evict older contexts, refuse one over the cap (422), or fail while a shared store is down (503).
  const entry = await svc.contexts.create(ctx, principalOf(req));
  return jsonResponse({
    ...contextJson(svc, entry, b.return_positions ?? false),
    timings_ms: timingsJson(ctx.timings, queueMs, runMs),
  });
};

/** POST /v1/contexts/{id}/generate: questions answered after the kept context, which stays as it was. */
export const contextGenerate = (svc: Service): Handler => async (req, [id]) => {
  const b = await svc.parse(req, contextGenerateSchema);
  svc.checkModel(b.model);
  if (b.question !== undefined && b.questions !== undefined) {
    throw new HttpError(400, "give question or questions, not both", "questions");
  }
  const questions = b.questions ?? (b.question !== undefined ? [b.question] : null);
  if (!questions) throw new HttpError(400, "question is required", "question");
  svc.admit(
    questions.map((text, i) => ({ text, param: b.questions ? `questions.${i}` : "question" })),
    b.allow_special_tokens ?? false,
  );
  const p = svc.decodeParams(b, { maxTokens: 64, temperature: 0, outputs: questions.length });
  // Held until the job ends, so eviction cannot free it mid-answer; restored from a shared store if need be.
  // Another key's context is a 404 like an unknown one.
  const entry = await svc.contexts.acquire(id, principalOf(req));
  const decode = (b.kv_compression?.decode ?? null) as DecodeCompressionRequest | null;
  let prepared: Prepared;
  try {
    const compression = answerCompression(entry.ctx, decode);
    prepared = precheck(svc.model, { contextTokens: entry.ctx.contextTokens, questions }, compression, p);
  } catch (e) {
    svc.contexts.release(entry);
    throw e;
  }
  const { p: decided, questions: ids, plans } = prepared as Extract<Prepared, { kind: "answers" }>;
  return svc.respond(
    req,
    b.stream ?? false,
    (h) => runAnswers(svc.model, entry.ctx, ids, decided, h, {}, decode, plans),
    generateShape(svc, newEnvelope("gen", svc.model.name), questions, b, id),
    () => svc.contexts.release(entry),
    entry.lock,
  );
};

/**
 * A context another key created answers as an unknown one does (404, same message): a key can neither
 * use, delete nor learn of another's contexts.
 */
export const getContext = (svc: Service): Handler => async (req, [id]) => {
  const e = await svc.contexts.info(id, principalOf(req));
  if (!e) throw new HttpError(404, `no context ${JSON.stringify(id)}`, "id");
  return jsonResponse(contextJson(svc, e, false));
};

export const deleteContext = (svc: Service): Handler => async (req, [id]) => {
  if (!(await svc.contexts.delete(id, principalOf(req)))) {
    throw new HttpError(404, `no context ${JSON.stringify(id)}`, "id");
  }
  return jsonResponse({ id, object: "context.deleted", deleted: true });
};

export const models = (svc: Service): Handler => () => {
  const m = svc.model;
  return Promise.resolve(jsonResponse({
    object: "list",
    data: [{
      id: m.name,
      object: "model",
      created: 0,
      owned_by: "judgeq",
      context_length: m.config.maxSeqLen,
      vocab_size: m.config.vocabSize,
      executor: m.executor.kind,
      executor_description: m.executor.description,
      judgeq_adapter: m.adapter ? { soft_tokens: m.adapter.n } : null,
      methods: METHOD_NAMES,
      decode_methods: DECODE_METHOD_NAMES,
    }],
  }));
};

/** GET /healthz: 200 while serving; 503 while draining or once the device is lost. */
export const healthz = (svc: Service): Handler => () => {
  const status = svc.deviceLost() ? "device_lost" : svc.draining ? "draining" : "ok";
  return Promise.resolve(jsonResponse({
    status,
    model: svc.model.name,
    executor: svc.model.executor.kind,
    queue_depth: svc.jobs.depth,
    in_flight: svc.jobs.inFlight,
    contexts: svc.local.size,
    // Generation does not need the shared store: a replica with it down still serves (and stays healthy).
    context_store: { kind: svc.contexts.kind, status: svc.contexts.health() },
  }, status === "ok" ? 200 : 503));
};

export const metrics = (svc: Service): Handler => () =>
  Promise.resolve(
    new Response(svc.metrics.render(), {
      headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
    }),
  );
