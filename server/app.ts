/**
 * The HTTP application: a `(Request) => Promise<Response>` handler over one loaded Model, so tests and
 * main.ts serve it alike. Here: the route table, auth, 404/405, and per-request metrics; endpoints are
 * in endpoints.ts and openai.ts, the shared job plumbing in service.ts.
 */
import type { Model } from "../core/engine.ts";
import type { Contexts } from "./context_stores.ts";
import type { ContextStore } from "./contexts.ts";
import * as ep from "./endpoints.ts";
import { errorResponse, HttpError, toHttpError } from "./errors.ts";
import { DEFAULT_LABEL, keyLabel, setPrincipal } from "./keys.ts";
import type { ServerMetrics } from "./metrics.ts";
import { chat, completions } from "./openai.ts";
import type { Jobs } from "./jobs.ts";
import type { BatchScheduler } from "./batch_scheduler.ts";
import { type AppOptions, DEFAULT_OPTIONS, Service } from "./service.ts";

export { type AppOptions, DEFAULT_OPTIONS };

export interface App {
  handler: (req: Request) => Promise<Response>;
  metrics: ServerMetrics;
  /** Admission: stream slots and the waiting line (depth, in flight, idle for draining). */
  queue: Jobs;
  /** The batch scheduler every request runs through. */
  scheduler: BatchScheduler;
  /** The contexts this replica holds live. */
  contexts: ContextStore;
  /** Every kept context (memory, or a shared store in front of which `contexts` is the local LRU). */
  store: Contexts;
  /** Refuse new work (503) while in-flight requests finish. */
  drain(): void;
  /** Frees the kept contexts and timers, and disconnects a shared store (the executor is the caller's). */
  close(): Promise<void>;
}

interface Route {
  pattern: RegExp;
  /** The metrics label: the route's template, never the raw path (unbounded cardinality). */
  label: string;
  methods: Record<string, ep.Handler>;
  /** Served without the API key (health probes). */
  open?: boolean;
}

/**
 * The path as the client sent it, without query or fragment. Not `new URL(url).pathname`: that resolves
 * "%2e%2e" and "\\" as ".." and "/", so "/v1/contexts/%2e%2e/generate" would read as "/v1/generate".
 */
export function rawPath(url: string): string {
  const start = url.indexOf("/", url.indexOf("://") + 3);
  if (start < 0) return "/";
  const end = url.slice(start).search(/[?#]/);
  return end < 0 ? url.slice(start) : url.slice(start, start + end);
}

/**
 * The methods a metrics label may name; any other is "other". A client chooses the method token (any
 * string HTTP allows), and each label value is a series kept for the process's life: 50,000 made-up
 * methods made /metrics 140 MB. Every label the server writes comes from a fixed set like this one.
 */
const METHOD_LABELS = new Set([
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "DELETE",
  "PATCH",
  "OPTIONS",
  "CONNECT",
  "TRACE",
]);
export const methodLabel = (method: string) => (METHOD_LABELS.has(method) ? method : "other");

/** HEAD where GET is served: the GET's status and headers, without its body. */
const headOf = (get: ep.Handler): ep.Handler => async (req, params) => {
  const res = await get(req, params);
  await res.body?.cancel();
  return new Response(null, { status: res.status, headers: res.headers });
};

export function createApp(model: Model, options: Partial<AppOptions> = {}): App {
  const svc = new Service(model, {
    ...DEFAULT_OPTIONS,
    deviceLost: () => Boolean((model.executor as { lost?: unknown }).lost),
    log: (m) => console.error(m),
    ...options,
  });
  const { metrics, jobs: queue, local: contexts, o } = svc;
  const keys = [...o.apiKeys, ...(o.apiKey !== null ? [{ label: DEFAULT_LABEL, key: o.apiKey }] : [])];
  let httpInFlight = 0;

  metrics.gauge("judgeq_queue_depth", "Jobs waiting for a stream slot.", () => queue.depth);
  metrics.gauge(
    "judgeq_jobs_in_flight",
    "Jobs running: their streams' rows share the batch scheduler's steps (parked streams not counted).",
    () => queue.inFlight,
  );
  metrics.gauge(
    "judgeq_http_requests_in_flight",
    "HTTP requests being handled, streams until they end (scrapes not counted).",
    () => httpInFlight,
  );
  metrics.gauge(
    "judgeq_streams_stalled",
    "Streaming jobs waiting, off their slot, for their client to read (their buffer full).",
    () => queue.stalledNow,
  );
  metrics.gauge("judgeq_contexts", "Compressed contexts kept.", () => contexts.size);
  metrics.gauge(
    "judgeq_contexts_kv_bytes",
    "Bytes kept contexts hold allocated (KV storage with its room, positions, logits): what --context-max-mb caps.",
    () => contexts.bytes,
  );
  metrics.gauge(
    "judgeq_contexts_evicted_total",
    "Contexts evicted under the memory cap.",
    () => contexts.evicted,
    "counter",
  );
  metrics.gauge(
    "judgeq_contexts_expired_total",
    "Contexts expired by TTL.",
    () => contexts.expired,
    "counter",
  );
  metrics.gauge(
    "judgeq_contexts_restored_total",
    "Contexts restored from the shared context store (another replica made them, or this one evicted them).",
    () => svc.contexts.restored,
    "counter",
  );
  metrics.gauge(
    "judgeq_device_lost",
    "1 once the executor's device is lost.",
    () => (svc.deviceLost() ? 1 : 0),
  );
  // The process's own memory where the runtime tells it (Deno, Node); absent on edge runtimes.
  const memory =
    (globalThis as { Deno?: { memoryUsage?: () => { rss: number; heapUsed: number; external: number } } })
      .Deno?.memoryUsage;
  if (memory) {
    metrics.gauge("process_resident_memory_bytes", "Resident memory of the process.", () => memory().rss);
    metrics.gauge("judgeq_js_heap_used_bytes", "JavaScript heap in use.", () => memory().heapUsed);
    metrics.gauge(
      "judgeq_external_memory_bytes",
      "Memory outside the JavaScript heap held by its objects (typed arrays, WebAssembly memory).",
      () => memory().external,
    );
  }

  const routes: Route[] = [
    { pattern: /^\/v1\/generate$/, label: "/v1/generate", methods: { POST: ep.generate(svc) } },
    { pattern: /^\/v1\/completions$/, label: "/v1/completions", methods: { POST: completions(svc) } },
    { pattern: /^\/v1\/chat\/completions$/, label: "/v1/chat/completions", methods: { POST: chat(svc) } },
    { pattern: /^\/v1\/contexts$/, label: "/v1/contexts", methods: { POST: ep.createContext(svc) } },
    {
      pattern: /^\/v1\/contexts\/([^/]+)$/,
      label: "/v1/contexts/{id}",
      methods: { GET: ep.getContext(svc), DELETE: ep.deleteContext(svc) },
    },
    {
      pattern: /^\/v1\/contexts\/([^/]+)\/generate$/,
      label: "/v1/contexts/{id}/generate",
      methods: { POST: ep.contextGenerate(svc) },
    },
    { pattern: /^\/v1\/models$/, label: "/v1/models", methods: { GET: ep.models(svc) } },
    { pattern: /^\/healthz$/, label: "/healthz", methods: { GET: ep.healthz(svc) }, open: true },
    { pattern: /^\/metrics$/, label: "/metrics", methods: { GET: ep.metrics(svc) } },
  ];

  /**
   * Finds the route and its handler; errors carry the route's label for the metrics. The key is checked
   * before anything else (without it, 401 whatever the path or method: routes cannot be mapped), and
   * routes match the path as sent: no dot-segment or backslash normalisation turns one route into another.
   */
  function match(req: Request): { label: string; run: () => Promise<Response> } {
    const path = rawPath(req.url);
    const found = routes.map((r) => ({ r, m: r.pattern.exec(path) })).find((x) => x.m !== null);
    const label = found?.r.label ?? "unmatched";
    const fail = (e: HttpError) => ({ label, run: () => Promise.reject(e) });
    if (keys.length > 0) {
      const who = keyLabel(req, keys);
      if (who !== null) {
        setPrincipal(req, who); // contexts belong to this label; metrics show it, never the key
        metrics.requestsByKey.inc({ key: who });
      } else if (!found?.r.open) {
        return fail(new HttpError(401, "a valid API key is required (Authorization: Bearer KEY)"));
      }
    }
    if (!found) return fail(new HttpError(404, `no route ${path}`));
    const { r, m } = found;
    const get = r.methods.GET as ep.Handler | undefined;
    const h = (r.methods[req.method] as ep.Handler | undefined) ??
      (req.method === "HEAD" && get ? headOf(get) : undefined);
    if (!h) {
      const allow = [...Object.keys(r.methods), ...(get ? ["HEAD"] : [])].join(", ");
      return fail(
        new HttpError(405, `${req.method} is not allowed on ${r.label} (allowed: ${allow})`, null, { allow }),
      );
    }
    let params: string[];
    try {
      params = m!.slice(1).map(decodeURIComponent);
    } catch {
      return fail(new HttpError(404, `no route ${path}`));
    }
    return { label, run: () => h(req, params) };
  }

  async function handler(req: Request): Promise<Response> {
    const t0 = performance.now();
    let matched: ReturnType<typeof match>;
    try {
      matched = match(req);
    } catch (e) {
      matched = { label: "unmatched", run: () => Promise.reject(e) };
    }
    const { label, run } = matched;
    const counted = label !== "/metrics"; // a scrape would otherwise always see itself
    if (counted) httpInFlight++;
    let res: Response;
    try {
      res = await run();
    } catch (e) {
      res = errorResponse(toHttpError(e, o.log)); // never a stack trace on the wire
    }
    metrics.requests.inc({ route: label, method: methodLabel(req.method), status: String(res.status) });
    const done = () => {
      if (counted) httpInFlight--;
      metrics.latency.observe((performance.now() - t0) / 1000, { route: label });
    };
    const streaming = svc.streams.get(res);
    if (streaming) streaming.then(done);
    else done();
    return res;
  }

  return {
    handler,
    metrics,
    queue,
    scheduler: svc.scheduler,
    contexts,
    store: svc.contexts,
    drain() {
      svc.draining = true;
    },
    close() {
      return svc.contexts.close();
    },
  };
}
