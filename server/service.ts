/**
 * What every endpoint shares: the model, the one way requests run (admission in server/jobs.ts, then the
 * batch scheduler's steps, server/batch_scheduler.ts), the kept contexts, the metrics, and the way a job
 * answers (as JSON or as server-sent events).
 */
import type { z } from "zod";
import type { Model } from "../core/engine.ts";
import { MAX_QUESTIONS } from "../core/max_tokens.ts";
import { type Executor, FORWARD_CHUNK_ROWS } from "../core/executor.ts";
import {
  type KeptContexts,
  LocalContexts,
  LocalOnlyContexts,
  type SharedBlobs,
  SharedContexts,
} from "./contexts/mod.ts";
import { Cancelled, errorBody, HttpError, jsonResponse, Stalled, toHttpError } from "./errors.ts";
import { type JobDecodeParams, type JobHooks, type JobResult, refuseOverlong } from "./generation.ts";
import { parseBody } from "./http.ts";
import type { ApiKey } from "./keys.ts";
import { batchGauges, ServerMetrics } from "./metrics.ts";
import { BatchScheduler } from "./batch_scheduler.ts";
import { Jobs, type Mutex, type Timed, type Work } from "./jobs.ts";
import type { DecodeFields } from "./schemas.ts";
import { createSse, type SseStream } from "./sse.ts";
import { clientFull } from "./front/client_flow.ts";

export type { Timed };

export interface AppOptions {
  /** Required as `Authorization: Bearer KEY` (or `x-api-key`) on every route but /healthz. */
  apiKey: string | null;
  /** Several keys, each with a label (--api-keys-file); with apiKey too, that one is labelled "default". */
  apiKeys: ApiKey[];
  /** Largest request body accepted, bytes (413 above). */
  maxBodyBytes: number;
  /** Time a request body may take to arrive (408 after). */
  bodyTimeoutMs: number;
  /** Jobs that may wait for a stream slot (429 beyond). */
  queueSize: number;
  /**
   * Streams that run at once, their rows sharing each forward step of the batch scheduler; null: chosen
   * from the executor (`batchDefaults`).
   */
  maxStreams: number | null;
  /** Rows (decode tokens + prefill chunks) one step runs at most; null: chosen from the executor. */
  maxBatchTokens: number | null;
  /** Cap on the KV bytes of every live stream and kept context (--kv-cache-mb); null: none. */
  kvCapBytes: number | null;
  /** Executor time one request may use (422 with what it produced, beyond); null: no limit. */
  maxRequestMs: number | null;
  /** Idle time after which a kept context expires. */
  contextTtlMs: number;
  /** Cap on the KV bytes of kept contexts this replica holds live (least recently used evicted first). */
  contextMaxBytes: number;
  /**
   * Where contexts are shared between replicas (server/contexts/redis.ts's RedisBlobs), or null for this
   * process only. The app closes it.
   */
  sharedStore: SharedBlobs | null;
  /** Tokens one request may generate over all its outputs (max_tokens x questions); null: no limit. */
  maxTokensPerRequest: number | null;
  /** Questions one request may ask (at most MAX_QUESTIONS, core/max_tokens.ts). */
  maxQuestions: number;
  /**
   * How long a stream may wait for its client to read (its buffer full) before it is cut; meanwhile its
   * slot is given to others. null: no limit.
   */
  streamStallMs: number | null;
  /** Reports whether the executor's device is lost (503 while so); defaults to the executor's `lost`. */
  deviceLost: () => boolean;
  log: (message: string) => void;
}

export const DEFAULT_OPTIONS: Omit<AppOptions, "deviceLost" | "log"> = {
  apiKey: null,
  apiKeys: [],
  maxBodyBytes: 1 << 20,
  bodyTimeoutMs: 30_000,
  queueSize: 32,
  maxStreams: null,
  maxBatchTokens: null,
  kvCapBytes: null,
  maxRequestMs: 120_000,
  contextTtlMs: 10 * 60_000,
  contextMaxBytes: 256 << 20,
  sharedStore: null,
  maxTokensPerRequest: null,
  maxQuestions: MAX_QUESTIONS,
  streamStallMs: 30_000,
};

/**
 * Streams and step rows when not given: executors with a batched forward (native) run 16 streams in
 * steps of up to 256 rows; the others (wasm, WebGPU, the reference) run a step's rows one session after
 * another, so more streams only divide each one's rate: 4, with a prefill chunk of FORWARD_CHUNK_ROWS.
 */
export function batchDefaults(ex: Executor): { maxStreams: number; maxBatchTokens: number } {
  return ex.forwardBatch
    ? { maxStreams: 16, maxBatchTokens: 256 }
    : { maxStreams: 4, maxBatchTokens: ex.forwardChunkRows ?? FORWARD_CHUNK_ROWS };
}

/** An endpoint's defaults: ours are greedy; OpenAI's sample at temperature 1. */
export interface DecodeDefaults {
  /** Tokens per output without max_tokens; null: up to the context's end (chat). */
  maxTokens: number | null;
  temperature: number;
  /** Outputs the request asks for (its questions; default 1): the per-request limits count them. */
  outputs?: number;
  /** The name max_tokens has in this request (chat's max_completion_tokens), for errors. */
  maxTokensParam?: string;
}

/** What an endpoint makes of a job: its JSON body, and its stream events. */
export interface Shape {
  body(r: JobResult, queueMs: number, runMs: number): unknown;
  streamStart?(sse: SseStream): void;
  streamText(sse: SseStream, index: number, text: string, ids: number[]): void;
  streamEnd(sse: SseStream, r: JobResult, queueMs: number, runMs: number): void;
}

export class Service {
  readonly metrics = new ServerMetrics();
  /** The model the endpoints run: its executor's sessions go through the scheduler. */
  readonly model: Model;
  readonly scheduler: BatchScheduler;
  /** Admission: stream slots and the waiting line in front of the scheduler. */
  readonly jobs: Jobs;
  /** The contexts this replica holds live. */
  readonly local: LocalContexts;
  /** Every kept context: `local` alone, or `local` in front of a shared store. */
  readonly contexts: KeptContexts;
  draining = false;
  /** Streaming responses, to the promise of their end (latency is measured to the last byte). */
  readonly streams = new WeakMap<Response, Promise<unknown>>();

  constructor(model: Model, readonly o: AppOptions) {
    const d = batchDefaults(model.executor);
    const maxStreams = o.maxStreams ?? d.maxStreams, maxBatchTokens = o.maxBatchTokens ?? d.maxBatchTokens;
    this.scheduler = new BatchScheduler(model.executor, { maxBatchTokens, kvCapBytes: o.kvCapBytes });
    this.model = { ...model, executor: this.scheduler.wrap() };
    this.jobs = new Jobs({
      streams: maxStreams,
      maxWaiting: o.queueSize,
      maxRequestMs: o.maxRequestMs,
      streamStallMs: o.streamStallMs,
    }, this.metrics);
    batchGauges(this.metrics, this.scheduler, maxStreams);
    this.local = new LocalContexts({ ttlMs: o.contextTtlMs, maxBytes: o.contextMaxBytes, sweepMs: 30_000 });
    this.contexts = o.sharedStore === null ? new LocalOnlyContexts(this.local) : new SharedContexts(
      this.local,
      o.sharedStore,
      model,
      o.contextTtlMs,
      async (work) => (await this.run(new AbortController().signal, () => work())).value,
    );
  }

  deviceLost(): boolean {
    return this.jobs.deviceLost || this.o.deviceLost();
  }

  parse<S extends z.ZodType>(req: Request, schema: S): Promise<z.infer<S>> {
    return parseBody(req, schema, { maxBytes: this.o.maxBodyBytes, timeoutMs: this.o.bodyTimeoutMs });
  }

  /** Requests may name the model; only the one loaded at start-up is served. */
  checkModel(name: string | null | undefined) {
    if (name !== null && name !== undefined && name !== this.model.name) {
      const message = `model ${
        JSON.stringify(name)
      } is not served here (this server serves ${this.model.name})`;
      throw new HttpError(404, message, "model");
    }
  }

  /**
   * The request's sampling and stops. Its max_tokens is decided once the prompt is tokenized (`precheck`,
   * core/max_tokens.ts); the number of outputs is checked here, before any work (--max-questions).
   */
  decodeParams(b: DecodeFields, d: DecodeDefaults): JobDecodeParams {
    const stops = b.stop === null || b.stop === undefined
      ? []
      : typeof b.stop === "string"
      ? [b.stop]
      : b.stop;
    const stopTokenIds: number[] = [];
    const stopStrings: string[] = [];
    stops.forEach((s, i) => {
      if (typeof s === "string") stopStrings.push(s);
      else if (s >= this.model.config.vocabSize) {
        throw new HttpError(400, `token id ${s} is outside the vocabulary`, `stop.${i}`);
      } else stopTokenIds.push(s);
    });
    const outputs = d.outputs ?? 1, maxQuestions = this.o.maxQuestions;
    if (outputs > maxQuestions) {
      throw new HttpError(
        400,
        `${outputs} questions exceed this server's limit of ${maxQuestions} per request`,
        "questions",
      );
    }
    const temperature = b.temperature ?? d.temperature;
    const asked = b.max_tokens ?? null;
    return {
      maxTokens: asked ?? d.maxTokens ?? this.model.config.maxSeqLen, // decided by precheck
      temperature,
      topP: b.top_p ?? 1,
      topK: b.top_k ?? 0,
      // Sampling without a seed should vary between calls; greedy ignores it.
      seed: b.seed ?? (temperature > 0 ? crypto.getRandomValues(new Uint32Array(1))[0] : 0),
      stopStrings,
      stopTokenIds,
      ignoreEos: b.ignore_eos ?? false,
      allowSpecialTokens: b.allow_special_tokens ?? false,
      ask: {
        asked,
        fallback: d.maxTokens,
        outputs,
        perRequest: this.o.maxTokensPerRequest,
        // An explicit max_tokens must fit the context (400 naming it) unless truncation is asked for.
        strict: asked !== null && !b.truncate_max_tokens ? d.maxTokensParam ?? "max_tokens" : null,
      },
    };
  }

  /** 503 while the server drains or after its device was lost. */
  private checkAvailable() {
    if (this.draining) throw new HttpError(503, "the server is shutting down");
    if (this.deviceLost()) throw new HttpError(503, "the GPU device was lost; restart the server");
  }

  /**
   * Admission, before any work is spent on a request: 503 while draining or lost, 429 when the waiting
   * line is full (server/jobs.ts), and 422 for a text that cannot fit the model's context by its length
   * (generation.ts refuseOverlong). Then the request is tokenized and compiled, once (`precheck`).
   */
  admit(texts: { text: string; param: string }[], allowSpecial: boolean) {
    this.checkAvailable();
    this.jobs.admit();
    for (const { text, param } of texts) refuseOverlong(this.model, text, param, allowSpecial);
  }

  /**
   * Runs `work` through the admission line (429 and 503 thrown synchronously) and the scheduler; a job
   * whose client left rejects with Cancelled.
   */
  run<T>(signal: AbortSignal, work: Work<T>, exclusive?: Mutex): Promise<Timed<T>> {
    this.checkAvailable();
    return this.jobs.run(signal, work, exclusive);
  }

  /** Token and KV counters of a finished generation. */
  account(r: JobResult) {
    const m = this.metrics;
    m.promptTokens.inc({}, r.promptTokens);
    m.completionTokens.inc({}, r.completionTokens);
    m.kvBytesSaved.inc({}, r.compression.kvBytesBefore - r.compression.kvBytesAfter);
    if (r.compression.decode) m.decodeCompressions.inc({}, r.compression.decode.events.length);
    if (r.timings.first_token !== undefined) m.firstToken.observe(r.timings.first_token / 1000);
  }

  /**
   * Runs a job for a request, as JSON or as server-sent events. Admission (429, 503) is decided before
   * any status is sent; a stream's later failure becomes an error event before `[DONE]`. `cleanup`
   * runs once the job is over, whatever happened.
   */
  async respond(
    req: Request,
    stream: boolean,
    work: (hooks: JobHooks) => Promise<JobResult>,
    shape: Shape,
    cleanup: () => void = () => {},
    exclusive?: Mutex,
  ): Promise<Response> {
    if (!stream) {
      const signal = req.signal; // aborts when the client disconnects
      try {
        const { value, queueMs, runMs } = await this.run(
          signal,
          (pass) => work({ signal, pass }),
          exclusive,
        );
        this.account(value);
        return jsonResponse(shape.body(value, queueMs, runMs));
      } finally {
        cleanup();
      }
    }
    const sse = createSse();
    const signal = AbortSignal.any([sse.signal, req.signal]);
    let job: Promise<Timed<JobResult>>;
    try {
      job = this.run(
        signal,
        (pass, park) =>
          work({
            signal,
            pass,
            onText: (i, text, ids) => shape.streamText(sse, i, text, ids),
            // The stream's buffer is full: wait off its slot for the client to read.
            backpressure: async () => {
              const full = sse.full() ?? clientFull(req);
              if (full) await park(full);
            },
          }),
        exclusive,
      );
    } catch (e) {
      cleanup();
      throw e;
    }
    shape.streamStart?.(sse);
    job.then(({ value, queueMs, runMs }) => {
      this.account(value);
      shape.streamEnd(sse, value, queueMs, runMs);
    }, (e) => {
      if (e instanceof Stalled) sse.abort(e.message); // its client stopped reading: cut the connection
      else if (!(e instanceof Cancelled)) sse.send(errorBody(toHttpError(e, this.o.log)));
    }).finally(() => {
      sse.close();
      cleanup();
    });
    this.streams.set(sse.response, sse.finished);
    return sse.response;
  }
}

/** Gauges of batched decoding: the last step's streams and rows, totals, and the KV bytes under the cap. */
