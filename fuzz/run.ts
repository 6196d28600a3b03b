/**
 * The fuzz runs, as functions (deno task fuzz and tests/fuzz_test.ts call them):
 *  - fuzzRequests: mutated requests through the app's handler, in process; every answer must be a 2xx
 *    or a 4xx with a JSON error body `{ error: { type, message, param } }`, streams included (an error
 *    event in a stream is judged as its status would be); a 5xx, an exception out of the handler or an
 *    internal error logged is a crash; an answer slower than the timeout is a hang;
 *  - fuzzHeaders: mutated safetensors files through loadModelFromBytes and mutated adapters through
 *    decodeAdapter and adapterFromBytes; every one must load or fail with a JudgeQError naming a field
 *    (`param`); anything else thrown is a crash, a parse slower than the timeout a hang.
 */
import * as E from "fp-ts/Either";
import { decodeAdapter } from "../core/adapter.ts";
import { JudgeQError } from "../core/errors.ts";
import type { ModelWeights } from "../core/weights.ts";
import { adapterFromBytes, loadModelFromBytes } from "../io/from_bytes.ts";
import { loadModelDir } from "../io/model_dir.ts";
import { readAdapter } from "../io/runtime.ts";
import type { App } from "../server/app.ts";
import { ERROR_TYPES } from "../server/errors.ts";
import { sampleValue } from "../server/metrics.ts";
import { readSse } from "../server/sse.ts";
import { type MutatedRequest, mutateRequest, mutateSafetensors, VALID_BODIES } from "./mutate.ts";

/** An input that broke a rule, with what is needed to replay it. */
export interface Finding {
  kind: "crash" | "hang" | "bad_error_body" | "mismatch";
  /** "request" (a MutatedRequest), "model" or "adapter" (a safetensors file). */
  target: "request" | "model" | "adapter";
  seed: number;
  index: number;
  detail: string;
  ops: string[];
  /** The input itself (the body, or the file). */
  bytes: Uint8Array;
  /** Requests: how it was sent. */
  request?: Pick<MutatedRequest, "method" | "path" | "headers" | "chunked" | "abortAfterMs">;
}

export interface RequestReport {
  requests: number;
  seed: number;
  by_status: Record<string, number>;
  by_endpoint: Record<string, number>;
  /** Streams whose last event was an error (counted by the error's type). */
  stream_errors: Record<string, number>;
  crashes: number;
  hangs: number;
  bad_error_bodies: number;
  /** Jobs queued or running and requests counted in flight once every answer was read (must be 0). */
  left_in_flight: number;
  slowest_ms: number;
  /** The slowest request (replay it with its seed and index). */
  slowest?: { index: number; endpoint: string; ops: string[] };
  wall_s: number;
}

export interface HeaderReport {
  mutations: number;
  seed: number;
  model: Record<string, number>;
  adapter: Record<string, number>;
  /** JudgeQError params, by the field they name (tensor names folded into "<tensor>"). */
  error_params: Record<string, number>;
  crashes: number;
  hangs: number;
  unnamed: number;
  /** Mutations also loaded from a file, and how many of those got another verdict there. */
  from_disk: number;
  disk_mismatches: number;
  slowest_ms: number;
  wall_s: number;
}

const bump = (m: Record<string, number>, k: string, n = 1) => (m[k] = (m[k] ?? 0) + n);

/** A Request for a mutation; `{id}` becomes `contextId`. */
export function toRequest(
  m: Pick<MutatedRequest, "method" | "path" | "headers" | "body" | "chunked">,
  contextId: string,
  signal?: AbortSignal,
): Request {
  const url = "http://fuzz.local" + m.path.replace("{id}", contextId);
  const hasBody = m.method !== "GET" && m.method !== "HEAD";
  let body: BodyInit | undefined;
  if (hasBody) {
    if (m.chunked) {
      const bytes = m.body;
      body = new ReadableStream<Uint8Array>({
        start(c) {
          for (let i = 0; i < bytes.length; i += 1024) c.enqueue(bytes.slice(i, i + 1024));
          c.close();
        },
      });
    } else body = m.body.slice();
  }
  const headers = new Headers();
  for (const [k, v] of Object.entries(m.headers)) {
    if (k === "content-length" && m.chunked) continue;
    if (v !== "") headers.set(k, v);
  }
  return new Request(url, { method: m.method, headers, body, signal });
}

/** Whether a parsed body is the error shape. */
function errorShape(json: unknown, status: number): string | null {
  const e = (json as { error?: { type?: unknown; message?: unknown; param?: unknown } } | null)?.error;
  if (!e || typeof e !== "object") return "no error object";
  if (typeof e.message !== "string" || e.message === "") return "no message";
  if (typeof e.param !== "string" && e.param !== null) return "param neither a string nor null";
  if (status && e.type !== (ERROR_TYPES[status] ?? "error")) return `type ${e.type} for status ${status}`;
  if (/\n\s+at /.test(e.message) || /\.ts:\d/.test(e.message)) return "stack trace in the message";
  return null;
}

const TYPE_STATUS = Object.fromEntries(Object.entries(ERROR_TYPES).map(([s, t]) => [t, Number(s)]));

/** What a response says: its status (an errored stream's error status), and a shape problem if any. */
async function judge(
  res: Response,
): Promise<{ status: number; problem: string | null; streamError?: string; json?: unknown }> {
  const type = res.headers.get("content-type") ?? "";
  if (type.startsWith("text/event-stream")) {
    let last: unknown = null;
    let done = false;
    for await (const data of readSse(res.body!)) {
      if (data === "[DONE]") done = true;
      else last = JSON.parse(data);
    }
    const err = (last as { error?: { type?: string } } | null)?.error;
    if (err) {
      const status = TYPE_STATUS[err.type ?? ""] ?? 500;
      return { status, problem: errorShape(last, status), streamError: err.type ?? "untyped" };
    }
    return { status: res.status, problem: done ? null : "stream ended without [DONE]" };
  }
  const text = await res.text();
  if (res.status === 200 && res.headers.get("content-type")?.startsWith("application/json")) {
    try {
      return { status: 200, problem: null, json: JSON.parse(text) };
    } catch {
      return { status: 200, problem: "a 200 that is not JSON" };
    }
  }
  if (res.status < 400) return { status: res.status, problem: null };
  if (!type.startsWith("application/json")) return { status: res.status, problem: `error as ${type}` };
  try {
    return { status: res.status, problem: errorShape(JSON.parse(text), res.status) };
  } catch {
    return { status: res.status, problem: "error body is not JSON" };
  }
}

export interface RequestFuzzOptions {
  seed: number;
  requests: number;
  /** The app's maxBodyBytes, so oversize bodies are meant. */
  maxBodyBytes: number;
  /** A request slower than this is a hang (it is aborted then). */
  timeoutMs: number;
  /** Internal errors the app logged since the last call (the app's `log` option collects them). */
  drainLog: () => string[];
  /** Requests in flight at once (default 1: findings then replay exactly; more exercises the queue). */
  concurrency?: number;
  /** Called with each finding as it happens. */
  onFinding?: (f: Finding) => void;
  onProgress?: (done: number) => void;
}

/**
 * Sends `requests` mutations through `app.handler`, one at a time. A kept context is created first
 * (from a valid body) for the /v1/contexts/{id}/generate mutations; contexts the mutations create are
 * deleted as they come, so the kept one is never evicted.
 */
export async function fuzzRequests(
  app: App,
  o: RequestFuzzOptions,
): Promise<{ report: RequestReport; findings: Finding[] }> {
  const t0 = performance.now();
  const findings: Finding[] = [];
  const report: RequestReport = {
    requests: 0,
    seed: o.seed,
    by_status: {},
    by_endpoint: {},
    stream_errors: {},
    crashes: 0,
    hangs: 0,
    bad_error_bodies: 0,
    left_in_flight: 0,
    slowest_ms: 0,
    wall_s: 0,
  };
  const made = await app.handler(
    new Request("http://fuzz.local/v1/contexts", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(VALID_BODIES["/v1/contexts"][0]),
    }),
  );
  if (made.status !== 200) {
    throw new Error(`cannot create the kept context: ${made.status} ${await made.text()}`);
  }
  const contextId = (await made.json()).id as string;
  const found = (f: Finding) => {
    findings.push(f);
    o.onFinding?.(f);
  };
  const one = async (i: number) => {
    const m = mutateRequest(o.seed, i, o.maxBodyBytes);
    const request = {
      method: m.method,
      path: m.path,
      headers: m.headers,
      chunked: m.chunked,
      abortAfterMs: m.abortAfterMs,
    };
    const finding = (kind: Finding["kind"], detail: string) =>
      found({ kind, target: "request", seed: o.seed, index: i, detail, ops: m.ops, bytes: m.body, request });
    const abort = new AbortController();
    const started = performance.now();
    let timer: ReturnType<typeof setTimeout> | undefined, disconnect: typeof timer;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), o.timeoutMs);
    });
    if (m.abortAfterMs !== null && m.abortAfterMs > 0) {
      disconnect = setTimeout(() => abort.abort(), m.abortAfterMs);
    }
    let outcome: Awaited<ReturnType<typeof judge>> | "timeout";
    try {
      if (m.abortAfterMs === -1) abort.abort();
      const answer = app.handler(toRequest(m, contextId, abort.signal));
      if (m.abortAfterMs === 0) abort.abort();
      outcome = await Promise.race([answer.then(judge), timeout]);
    } catch (e) {
      // A client that left may see its body stream end in an error; anything else thrown is a crash.
      outcome = abort.signal.aborted
        ? { status: 499, problem: null }
        : { status: -1, problem: `threw ${e instanceof Error ? (e.stack ?? e.message) : String(e)}` };
    } finally {
      clearTimeout(timer);
      clearTimeout(disconnect);
    }
    const ms = performance.now() - started;
    if (ms > report.slowest_ms) {
      report.slowest_ms = ms;
      report.slowest = { index: i, endpoint: m.endpoint, ops: m.ops };
    }
    report.requests++;
    bump(report.by_endpoint, m.endpoint);
    const logged = o.drainLog();
    // A handler that blocks the event loop answers late but answers: its time alone makes it a hang.
    if (outcome !== "timeout" && ms > o.timeoutMs) outcome = "timeout";
    if (outcome === "timeout") {
      abort.abort();
      report.hangs++;
      bump(report.by_status, "timeout");
      finding("hang", `no answer within ${o.timeoutMs} ms (${Math.round(ms)} ms)`);
      return;
    }
    const left = abort.signal.aborted;
    bump(report.by_status, left ? `disconnected:${outcome.status}` : String(outcome.status));
    if (outcome.streamError) bump(report.stream_errors, outcome.streamError);
    if (outcome.status >= 500 || outcome.status < 0 || logged.length) {
      report.crashes++;
      finding(
        "crash",
        [`status ${outcome.status}`, outcome.problem ?? "", ...logged].filter(Boolean).join("; "),
      );
    } else if (outcome.problem && !left) {
      report.bad_error_bodies++;
      finding("bad_error_body", `status ${outcome.status}: ${outcome.problem}`);
    }
    // Contexts the mutations create are let go at once, so the kept one is never evicted.
    const made = outcome.json as { object?: unknown; id?: unknown } | undefined;
    if (made?.object === "context" && typeof made.id === "string" && made.id !== contextId) {
      app.local.delete(made.id);
    }
    o.onProgress?.(report.requests);
  };
  let next = 0;
  const concurrent = (o.concurrency ?? 1) > 1;
  const worker = async () => {
    while (next < o.requests) {
      await one(next++);
      // In process, a refused request is answered within microtasks: without a turn of the event loop
      // between requests, concurrent workers would starve the jobs' timers (a network server never does).
      if (concurrent) await new Promise((r) => setTimeout(r, 0));
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 1) }, worker));
  // Nothing left behind: no job queued or running, no request counted in flight.
  const idleBy = performance.now() + o.timeoutMs;
  const busy = () =>
    app.queue.depth + app.queue.inFlight +
    sampleValue(app.metrics.render(), "judgeq_http_requests_in_flight");
  while (busy() > 0 && performance.now() < idleBy) await new Promise((r) => setTimeout(r, 10));
  report.left_in_flight = busy();
  if (report.left_in_flight > 0) {
    report.hangs++;
    found({
      kind: "hang",
      target: "request",
      seed: o.seed,
      index: -1,
      detail: `${report.left_in_flight} jobs or requests still in flight after the run`,
      ops: [],
      bytes: new Uint8Array(),
    });
  }
  report.wall_s = Math.round(performance.now() - t0) / 1000;
  return { report, findings };
}

export interface HeaderFuzzOptions {
  seed: number;
  mutations: number;
  /** The model's files, as loadModelFromBytes takes them. */
  config: Uint8Array;
  tokenizer: Uint8Array;
  safetensors: Uint8Array;
  /** A valid adapter for these weights, and the weights it was trained for. */
  adapter: Uint8Array;
  weights: ModelWeights;
  /** A parse slower than this is a hang. */
  timeoutMs: number;
  /**
   * A directory holding config.json and tokenizer.json: mutated files are also written there and loaded
   * from disk (every adapter, every fourth model), whose verdict must be the bytes loaders' own.
   */
  tempDir?: string;
  /** The loaders under test (default: loadModelFromBytes on the CPU executor; decodeAdapter, then adapterFromBytes). */
  loadModel?: (safetensors: Uint8Array) => Promise<unknown>;
  loadAdapter?: (adapter: Uint8Array) => Promise<unknown>;
  onFinding?: (f: Finding) => void;
  onProgress?: (done: number) => void;
}

/** A param without its tensor's name: "model.safetensors:<tensor>", "<tensor>", "adapter:__metadata__.format". */
const paramClass = (p: string) => {
  const [file, rest] = p.split(/:(.*)/s);
  if (rest === undefined) return /\.(weight|bias)$/.test(file) ? "<tensor>" : file; // the weights' own checks
  return rest.startsWith("__metadata__") ? p : `${file}:<tensor>`;
};

/** What a loader did with one input: "ok", a JudgeQError's kind, or a finding. */
async function attempt(
  run: () => Promise<unknown>,
): Promise<{ outcome: string; param?: string | null; problem?: string; ms: number }> {
  const t = performance.now();
  try {
    await run();
    return { outcome: "ok", ms: performance.now() - t };
  } catch (e) {
    const ms = performance.now() - t;
    if (e instanceof JudgeQError) return { outcome: e.kind, param: e.param, ms };
    return { outcome: "crash", problem: e instanceof Error ? (e.stack ?? e.message) : String(e), ms };
  }
}

/**
 * Half the mutations are of the model's safetensors file (through loadModelFromBytes on the CPU
 * executor), half of the adapter's (decodeAdapter must return Left, not throw; then adapterFromBytes).
 */
export async function fuzzHeaders(
  o: HeaderFuzzOptions,
): Promise<{ report: HeaderReport; findings: Finding[] }> {
  const t0 = performance.now();
  const findings: Finding[] = [];
  const report: HeaderReport = {
    mutations: 0,
    seed: o.seed,
    model: {},
    adapter: {},
    error_params: {},
    crashes: 0,
    hangs: 0,
    unnamed: 0,
    from_disk: 0,
    disk_mismatches: 0,
    slowest_ms: 0,
    wall_s: 0,
  };
  const loadModel = o.loadModel ?? ((safetensors: Uint8Array) =>
    loadModelFromBytes({
      config: o.config,
      tokenizer: o.tokenizer,
      safetensors,
      adapter: null,
      executor: "cpu",
      warn: () => {},
    }));
  const loadAdapter = o.loadAdapter ?? (async (bytes: Uint8Array) => {
    const d = decodeAdapter(bytes);
    if (E.isLeft(d)) {
      if (!(d.left instanceof JudgeQError)) {
        throw new Error(`decodeAdapter's Left is not a JudgeQError: ${d.left}`);
      }
      throw d.left;
    }
    return await adapterFromBytes(bytes, o.weights);
  });
  for (let i = 0; i < o.mutations; i++) {
    const target = i % 2 === 0 ? "model" : "adapter";
    const index = Math.floor(i / 2);
    const { bytes, ops } = mutateSafetensors(
      o.seed,
      index,
      target === "model" ? o.safetensors : o.adapter,
      target,
    );
    const r = await attempt(() => target === "model" ? loadModel(bytes) : loadAdapter(bytes));
    report.mutations++;
    report.slowest_ms = Math.max(report.slowest_ms, r.ms);
    bump(report[target], r.outcome);
    const finding = (kind: Finding["kind"], detail: string) => {
      const f: Finding = { kind, target, seed: o.seed, index, detail, ops, bytes };
      findings.push(f);
      o.onFinding?.(f);
    };
    if (r.outcome === "crash") {
      report.crashes++;
      finding("crash", r.problem!);
    } else if (r.ms > o.timeoutMs) {
      report.hangs++;
      finding("hang", `took ${Math.round(r.ms)} ms`);
    } else if (r.outcome !== "ok") {
      if (!r.param) {
        report.unnamed++;
        finding("bad_error_body", `a ${r.outcome} error naming no field`);
      } else bump(report.error_params, paramClass(r.param));
    }
    // The same file from disk (io/model_dir.ts, io/runtime.ts's readAdapter): the same verdict.
    if (o.tempDir && (target === "adapter" || index % 4 === 0)) {
      const path = `${o.tempDir}/${target === "model" ? "model.safetensors" : "judgeq.safetensors"}`;
      await Deno.writeFile(path, bytes);
      const d = await attempt(() =>
        target === "model" ? loadModelDir(o.tempDir!) : readAdapter(path, o.weights)
      );
      report.from_disk++;
      if (d.outcome !== r.outcome || d.param !== r.param) {
        report.disk_mismatches++;
        const what = (x: typeof d) =>
          `${x.outcome}${x.param ? ` (${x.param})` : ""}${x.problem ? `: ${x.problem}` : ""}`;
        finding(d.outcome === "crash" ? "crash" : "mismatch", `from bytes ${what(r)}, from disk ${what(d)}`);
      }
    }
    o.onProgress?.(i + 1);
  }
  report.wall_s = Math.round(performance.now() - t0) / 1000;
  return { report, findings };
}
