/**
 * The HTTP application: a `(Request) => Promise<Response>` handler over one loaded Model, so tests and
 * main.ts serve it alike. Here: the route table, auth, 404/405, and per-request metrics; endpoints are
 * in endpoints.ts and openai.ts, the shared job plumbing in service.ts.
 *
 * How server/ is laid out, by concern (operator tools, which import it, are in ops/):
 *   entry       main.ts (deno task start: flags, the front, signals), app.ts (this file)
 *   requests    endpoints.ts, openai.ts (handlers), schemas.ts (bodies), http.ts (bounded JSON bodies),
 *               errors.ts (one error shape), keys.ts (API keys)
 *   jobs        service.ts (responses), jobs.ts (admission: stream slots, the waiting line, time limit),
 *               generation.ts (the jobs on the executor), output.ts (incremental text, stop strings);
 *               batched decoding: batch_scheduler.ts over
 *               scheduled_session.ts (each request's session) and kv_ledger.ts (KV bytes as admission)
 *   responses   sse.ts (streams), wire.ts (compression stats and timings as JSON)
 *   metrics.ts  the Prometheus registry and the server's gauges
 *   contexts/   kept contexts, this replica's or shared through Redis (contexts/mod.ts)
 *   front/      the TCP front: deadlines, disconnects, per-address fairness; client_flow.ts (backpressure)
 */
import type { Model } from "../core/engine.ts";
import type { KeptContexts, LocalContexts } from "./contexts/mod.ts";
import * as ep from "./endpoints.ts";
import { errorResponse, HttpError, toHttpError } from "./errors.ts";
import { DEFAULT_LABEL, keyLabel, setPrincipal } from "./keys.ts";
import { serverGauges, type ServerMetrics } from "./metrics.ts";
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
  local: LocalContexts;
  /** Every kept context: `local` alone, or `local` in front of the store replicas share. */
  kept: KeptContexts;
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
  const { metrics, jobs: queue, local, o } = svc;
  const keys = [...o.apiKeys, ...(o.apiKey !== null ? [{ label: DEFAULT_LABEL, key: o.apiKey }] : [])];
  let httpInFlight = 0;
  serverGauges(metrics, {
    queue,
    contexts: local,
    httpInFlight: () => httpInFlight,
    stalledStreams: () => queue.stalledNow,
    restoredContexts: () => svc.contexts.restored,
    deviceLost: () => svc.deviceLost(),
  });

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
    local,
    kept: svc.contexts,
    drain() {
      svc.draining = true;
    },
    close() {
      return svc.contexts.close();
    },
  };
}
