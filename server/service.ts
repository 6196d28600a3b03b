/**
 * What every endpoint shares: the model, the job queue in front of its executor, the kept contexts,
 * the metrics, and the one way a job runs for a request (as JSON or as server-sent events).
 */
import type { z } from "zod";
import type { Model } from "../core/engine.ts";
import {
  type KeptContexts,
  LocalContexts,
  LocalOnlyContexts,
  type SharedBlobs,
  SharedContexts,
} from "./contexts/mod.ts";
import {
  Cancelled,
  errorBody,
  HttpError,
  isDeviceLost,
  jsonResponse,
  Stalled,
  toHttpError,
} from "./errors.ts";
import type { JobDecodeParams, JobHooks, JobResult } from "./generation.ts";
import { parseBody } from "./http.ts";
import type { ApiKey } from "./keys.ts";
import { ServerMetrics } from "./metrics.ts";
import { JobQueue } from "./queue.ts";
import { BatchScheduler } from "./batch_scheduler.ts";
import type { DecodeFields } from "./schemas.ts";
import { createSse, type SseStream } from "./sse.ts";
import { clientFull } from "./front/client_flow.ts";
import { type Mutex, Ticket, TimeLimitExceeded, Turns } from "./turns.ts";

export interface AppOptions {
  /** Required as `Authorization: Bearer KEY` (or `x-api-key`) on every route but /healthz. */
  apiKey: string | null;
  /** Several keys, each with a label (--api-keys-file); with apiKey too, that one is labelled "default". */
  apiKeys: ApiKey[];
  /** Largest request body accepted, bytes (413 above). */
  maxBodyBytes: number;
  /** Time a request body may take to arrive (408 after). */
  bodyTimeoutMs: number;
  /** Jobs that may wait for the executor (429 beyond). */
  queueSize: number;
  /** Jobs admitted at once, taking turns on the executor between decode batches (turns.ts). */
  activeJobs: number;
  /**
   * Batched decoding (batch_scheduler.ts): `maxStreams` jobs run at once (in place of activeJobs) and their
   * rows share each forward step, at most `maxBatchTokens` rows a step, under a cap on the KV bytes of every
   * live stream and kept context (null: none). Null: one job's forward at a time (turns.ts).
   */
  batch: { maxBatchTokens: number; maxStreams: number; kvCapBytes: number | null } | null;
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
  /** Questions one request may ask (the schemas allow at most 64). */
  maxQuestions: number;
  /**
   * How long a stream may wait for its client to read (its buffer full) before it is cut; meanwhile its
   * job is off the executor and its slot given to others. null: no limit.
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
  activeJobs: 4,
  batch: null,
  maxRequestMs: 120_000,
  contextTtlMs: 10 * 60_000,
  contextMaxBytes: 256 << 20,
  sharedStore: null,
  maxTokensPerRequest: null,
  maxQuestions: 64,
  streamStallMs: 30_000,
};

/** An endpoint's defaults: ours are greedy; OpenAI's sample at temperature 1. */
export interface DecodeDefaults {
  maxTokens: number;
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

export interface Timed<T> {
  value: T;
  queueMs: number;
  runMs: number;
}

export class Service {
  readonly metrics = new ServerMetrics();
  /** The model the endpoints run: with batching, its executor's sessions go through the scheduler. */
  readonly model: Model;
  /** Batched decoding's scheduler (null: jobs take turns, one forward at a time). */
  readonly scheduler: BatchScheduler | null;
  readonly queue: JobQueue;
  readonly turns = new Turns();
  /** The contexts this replica holds live. */
  readonly local: LocalContexts;
  /** Every kept context: `local` alone, or `local` in front of a shared store. */
  readonly contexts: KeptContexts;
  draining = false;
  private lost = false;
  /** Streaming responses, to the promise of their end (latency is measured to the last byte). */
  readonly streams = new WeakMap<Response, Promise<unknown>>();

  constructor(model: Model, readonly o: AppOptions) {
    const b = o.batch ?? null;
    this.scheduler = b ? new BatchScheduler(model.executor, b) : null;
    this.model = this.scheduler ? { ...model, executor: this.scheduler.wrap() } : model;
    this.queue = new JobQueue(o.queueSize, b ? b.maxStreams : o.activeJobs);
    if (this.scheduler) batchGauges(this.metrics, this.scheduler);
    this.local = new LocalContexts({ ttlMs: o.contextTtlMs, maxBytes: o.contextMaxBytes, sweepMs: 30_000 });
    this.contexts = o.sharedStore === null ? new LocalOnlyContexts(this.local) : new SharedContexts(
      this.local,
      o.sharedStore,
      model,
      o.contextTtlMs,
      async (work) => (await this.enqueue(new AbortController().signal, work)).value,
    );
  }

  deviceLost(): boolean {
    return this.lost || this.o.deviceLost();
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
    const temperature = b.temperature ?? d.temperature;
    return {
      maxTokens: this.limitTokens(b.max_tokens ?? null, d.maxTokens, d.outputs ?? 1),
      temperature,
      topP: b.top_p ?? 1,
      topK: b.top_k ?? 0,
      // Sampling without a seed should vary between calls; greedy ignores it.
      seed: b.seed ?? (temperature > 0 ? crypto.getRandomValues(new Uint32Array(1))[0] : 0),
      stopStrings,
      stopTokenIds,
      ignoreEos: b.ignore_eos ?? false,
      allowSpecialTokens: b.allow_special_tokens ?? false,
      // An explicit max_tokens must fit the context (400 naming it) unless truncation is asked for.
      maxTokensParam: b.max_tokens !== null && b.max_tokens !== undefined && !b.truncate_max_tokens
        ? d.maxTokensParam ?? "max_tokens"
        : null,
    };
  }

  /**
   * Per-request limits (--max-questions, --max-tokens-per-request), before any work: a request over
   * them is a 400 naming the field. A default max_tokens is lowered to fit instead.
   */
  limitTokens(asked: number | null, fallback: number, outputs: number): number {
    const { maxQuestions, maxTokensPerRequest: limit } = this.o;
    if (outputs > maxQuestions) {
      throw new HttpError(
        400,
        `${outputs} questions exceed this server's limit of ${maxQuestions} per request`,
        "questions",
      );
    }
    if (limit === null) return asked ?? fallback;
    const per = `this server's limit of ${limit} generated tokens per request`;
    if (asked !== null) {
      if (asked * outputs > limit) {
        const total = outputs > 1
          ? `max_tokens ${asked} x ${outputs} questions = ${asked * outputs} tokens`
          : null;
        throw new HttpError(
          400,
          `${total ?? `max_tokens ${asked}`} exceed${total ? "" : "s"} ${per}`,
          "max_tokens",
        );
      }
      return asked;
    }
    const each = Math.floor(limit / outputs);
    if (each < 1) {
      throw new HttpError(400, `${outputs} questions leave no token each under ${per}`, "questions");
    }
    return Math.min(fallback, each);
  }

  /** 503 while the server drains or after its device was lost. */
  private checkAvailable() {
    if (this.draining) throw new HttpError(503, "the server is shutting down");
    if (this.deviceLost()) throw new HttpError(503, "the GPU device was lost; restart the server");
  }

  /**
   * Admission, before any work is spent on a request: 503 while draining or lost, 429 when the queue is
   * full, and 422 for a text that cannot fit the model's context by its length alone (a lower bound on its
   * tokens, found without tokenizing it: a megabyte prompt costs nothing). Then the texts are tokenized.
   */
  admit(texts: { text: string; param: string }[]) {
    this.checkAvailable();
    if (this.queue.full) {
      this.metrics.rejected.inc();
      throw this.queue.refusal();
    }
    const context = this.model.config.maxSeqLen, tok = this.model.tokenizer;
    for (const { text, param } of texts) {
      const least = tok.minTokens(text);
      if (least > context) {
        throw new HttpError(
          422,
          `${text.length} characters are at least ${least} tokens, over the model's context of ${context}`,
          param,
        );
      }
    }
  }

  /**
   * Runs `work` on the executor through the queue (429 when full and 503 when draining or lost, both
   * thrown synchronously) and records its outcome. A job whose client left rejects with Cancelled. Once
   * admitted, the job waits for `exclusive` (a kept context's lock), then for its turn on the executor;
   * `work` gets the function that offers the turn to others between decode batches.
   */
  enqueue<T>(
    signal: AbortSignal,
    work: (pass: () => Promise<void>, park: (wait: Promise<void>) => Promise<void>) => Promise<T>,
    exclusive?: Mutex,
  ): Promise<Timed<T>> {
    this.checkAvailable();
    const m = this.metrics;
    const queued = performance.now();
    let job: Promise<Timed<T>>;
    try {
      job = this.queue.submit(async () => {
        const started = performance.now();
        m.queueWait.observe((started - queued) / 1000);
        const unlock = exclusive ? await exclusive.lock() : null;
        const ticket = new Ticket(this.o.maxRequestMs);
        try {
          if (!this.scheduler) await this.turns.take(ticket);
          if (signal.aborted) throw new Cancelled();
          let parkedMs = 0; // waiting for a slow client is not the job's time (batched: wall time counts)
          const value = await work(
            () => this.scheduler ? this.batchPass(signal, started + parkedMs) : this.turns.offer(ticket),
            async (wait) => {
              const t = performance.now();
              try {
                await this.park(ticket, wait, signal);
              } finally {
                parkedMs += performance.now() - t;
              }
            },
          );
          m.jobs.inc({ outcome: "ok" });
          return { value, queueMs: started - queued, runMs: performance.now() - started };
        } catch (e) {
          const cancelled = e instanceof Cancelled || signal.aborted;
          const outcome = e instanceof Stalled
            ? "stalled"
            : cancelled
            ? "cancelled"
            : e instanceof TimeLimitExceeded
            ? "time_limit"
            : "error";
          m.jobs.inc({ outcome });
          if (isDeviceLost(e)) this.lost = true;
          throw e instanceof Stalled ? e : cancelled ? new Cancelled() : e;
        } finally {
          this.turns.release(ticket);
          unlock?.();
        }
      }, signal);
    } catch (e) {
      if (e instanceof HttpError && e.status === 429) m.rejected.inc();
      throw e;
    }
    // Aborted while waiting: the queue rejects with the signal's reason.
    return job.catch((e) => {
      if (e instanceof Stalled) throw e;
      throw e instanceof Cancelled || signal.aborted ? new Cancelled() : e;
    });
  }

  /**
   * A batched job's yield point: its rows share every step with the others', so there is no turn to
   * offer; it stops when its client left, or once its time since admission passes the per-request limit
   * (with batching, executor time is shared: wall time bounds it, less the time parked for a slow client).
   */
  private batchPass(signal: AbortSignal, since: number): Promise<void> {
    if (signal.aborted) return Promise.reject(new Cancelled());
    const limit = this.o.maxRequestMs, used = performance.now() - since;
    if (limit !== null && used > limit) return Promise.reject(new TimeLimitExceeded(limit, used));
    return Promise.resolve();
  }

  /**
   * A job waits for `wait` (its stream's client to read) off the executor: it gives up its turn and its
   * slot, then takes them again. Past --stream-stall-timeout it ends with Stalled; a client gone ends
   * the wait at once (the decode loop then sees its signal).
   */
  private async park(ticket: Ticket, wait: Promise<void>, signal: AbortSignal) {
    const limit = this.o.streamStallMs;
    this.stalledNow++;
    if (!this.scheduler) this.turns.release(ticket); // batched jobs hold no turn
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gone = Promise.withResolvers<void>();
    const onAbort = () => gone.resolve();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      await this.queue.park(Promise.race([
        wait,
        gone.promise,
        ...(limit === null ? [] : [
          new Promise<void>((_, reject) => timer = setTimeout(() => reject(new Stalled(limit)), limit)),
        ]),
      ]));
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      this.stalledNow--;
      if (!this.scheduler) await this.turns.take(ticket);
    }
  }

  /** Jobs waiting now for their stream's client to read. */
  stalledNow = 0;

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
        const { value, queueMs, runMs } = await this.enqueue(
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
      job = this.enqueue(
        signal,
        (pass, park) =>
          work({
            signal,
            pass,
            onText: (i, text, ids) => shape.streamText(sse, i, text, ids),
            // The stream's buffer is full: wait off the executor for the client to read.
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
function batchGauges(m: ServerMetrics, s: BatchScheduler) {
  m.gauge("judgeq_batch_streams", "Streams (sessions) in the last batched step.", () => s.last.streams);
  m.gauge(
    "judgeq_batch_rows",
    "Rows (decode tokens + prefill tokens) in the last batched step.",
    () => s.last.rows,
  );
  m.gauge("judgeq_batch_steps_total", "Batched steps run.", () => s.steps, "counter");
  m.gauge("judgeq_batch_rows_total", "Rows run in batched steps.", () => s.rows, "counter");
  m.gauge(
    "judgeq_kv_bytes_in_use",
    "KV-cache bytes live streams and kept contexts hold allocated.",
    () => s.kvAllocated(),
  );
  m.gauge(
    "judgeq_kv_bytes_reserved",
    "KV-cache bytes reserved by live streams and kept contexts.",
    () => s.kvReserved,
  );
  m.gauge(
    "judgeq_kv_bytes_free",
    "KV-cache bytes left under --kv-cache-mb (+Inf without a cap).",
    () => (s.limits.kvCapBytes ?? Infinity) - s.kvReserved,
  );
  m.gauge("judgeq_kv_waiting", "Streams waiting for KV-cache room.", () => s.kvWaiting);
}
