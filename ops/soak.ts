/**
 * deno task soak: a bounded soak of the service as a real process on loopback. Starts `server/main.ts` on a
 * free port, sends a seeded mix of requests (kept contexts created, answered, streamed and deleted; one-shot
 * and chat generations; clients that disconnect mid-stream; megabyte prompts) --concurrency at a time, then
 * deletes every context it kept and reports the server's resident memory (RSS, from /proc) at the start
 * (after a warm-up), at its peak (sampled every 100 ms), and at the end, with every status seen.
 *   deno task soak [--requests 2000] [--warmup 6000] [--concurrency 8] [--duration 300] [--seed 1] [--context-max-mb 16]
 *                  [--executor auto|wasm|cpu] [--json]
 *   deno task soak --fill-cycle [--context-max-mb 16] [--executor auto|wasm|cpu]
 * Exit status 1 when a 5xx was seen or the end RSS is more than 20% over the start (with --fill-cycle: the
 * second fill's RSS more than 10% over the first's).
 */
import { mulberry32, pick, type Rng } from "../core/random.ts";
import { executorFlag, executorFlags, parseFlags, usage, UsageError } from "../io/flags.ts";
import { startServer, stopProcess } from "./processes.ts";
import { readSse } from "../server/sse.ts";

const SPEC = {
  requests: { kind: "int", help: "requests to send (default 2000)", default: 2000 },
  concurrency: { kind: "int", help: "requests in flight at once (default 8)", default: 8 },
  duration: { kind: "number", help: "stop sending after this many seconds (default 300)", default: 300 },
  seed: { kind: "int", help: "seed of the request mix (default 1)", default: 1 },
  warmup: {
    kind: "int",
    help:
      "requests of the same mix before the start figure (default 6000: the process reaches its working set)",
    default: 6000,
  },
  "context-max-mb": {
    kind: "number",
    help: "the server's cap on kept contexts, MiB (default 16)",
    default: 16,
  },
  ...executorFlags("auto", "; of the server it starts"),
  "fill-cycle": {
    kind: "boolean",
    help: "instead: fill the context cap, delete every context, fill it again, and compare the resident " +
      "memory after each fill (exit 1 past 10%)",
  },
  json: { kind: "boolean", help: "print one JSON object" },
  help: { kind: "boolean", help: "show this help" },
} as const;

const STORY =
  "Once upon a time, there was a little girl named Lily. She liked to play with her ball in the park. " +
  "One day, her friend Tom came to play. They ran and laughed until the sun went down. ";
const QUESTIONS = [" Who had the ball?", " Where did Lily play?", " What did Tom do?", " Lily"];
const METHODS = ["snapkv", "h2o", "streaming_llm", "tova", "knorm", "pyramidkv", "adakv"];
/** The server's idle timeout here: each phase ends after it, with the clients' connections closed. */
const IDLE_TIMEOUT_S = 3;
const MEGA = "Once upon a time there was a ball. ".repeat(28_000);

export interface SoakOptions {
  requests: number;
  concurrency: number;
  durationS: number;
  seed: number;
  /** Requests of the warm-up before the start figure. */
  warmup: number;
  contextMaxMb: number;
  executor: string;
}

export interface SoakReport {
  requests: number;
  seconds: number;
  statuses: Record<string, number>;
  server_errors: number;
  disconnects: number;
  contexts_created: number;
  contexts_deleted: number;
  /** Kept contexts the server still lists at the end (every one was deleted or evicted: 0). */
  contexts_left: { count: number; bytes: number };
  /** cold: after loading, before the warm-up; start: after it; end: after the run, its contexts deleted. */
  rss_mb: { cold: number; start: number; peak: number; end: number };
  /** The server's JavaScript heap in use, and memory held outside it (typed arrays, wasm), from /metrics. */
  heap_used_mb: { start: number; end: number };
  external_mb: { start: number; end: number };
  end_over_start: number;
  context_cap_mb: number;
}

/** Resident memory of a process, bytes (Linux /proc; 0 where it cannot be read). */
export function residentBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** One request of the mix; resolves with its status ("disconnect" for a client that left mid-stream). */
async function oneRequest(
  base: string,
  r: Rng,
  contexts: string[],
  counts: { created: number; deleted: number },
) {
  const post = (path: string, body: unknown, signal?: AbortSignal) =>
    fetch(base + path, { method: "POST", body: JSON.stringify(body), signal });
  const x = r();
  if (x < 0.25) {
    const res = await post("/v1/contexts", {
      context: STORY.repeat(1 + Math.floor(r() * 3)),
      kv_compression: { method: pick(r, METHODS), budget: 8 + Math.floor(r() * 56) },
    });
    const json = await res.json();
    if (res.status === 200) {
      contexts.push(json.id);
      counts.created++;
    }
    return String(res.status);
  }
  if (x < 0.5 && contexts.length > 0) {
    const id = pick(r, contexts), stream = r() < 0.4;
    const res = await post(`/v1/contexts/${id}/generate`, {
      question: pick(r, QUESTIONS),
      max_tokens: 4 + Math.floor(r() * 28),
      stream,
    });
    await res.body?.cancel().catch(() => {}) ?? null;
    return String(res.status); // 404 when the context was evicted or deleted meanwhile
  }
  if (x < 0.58 && contexts.length > 0) {
    const id = contexts.splice(Math.floor(r() * contexts.length), 1)[0];
    const res = await fetch(`${base}/v1/contexts/${id}`, { method: "DELETE" });
    await res.body?.cancel();
    if (res.status === 200) counts.deleted++;
    return String(res.status);
  }
  if (x < 0.7) {
    const res = await post("/v1/generate", {
      prompt: STORY.slice(0, 40 + Math.floor(r() * 120)),
      max_tokens: 8 + Math.floor(r() * 24),
      kv_compression: r() < 0.5 ? { method: pick(r, METHODS), budget: 16 } : undefined,
    });
    await res.body?.cancel();
    return String(res.status);
  }
  if (x < 0.8) {
    const res = await post("/v1/chat/completions", {
      messages: [{ role: "user", content: pick(r, QUESTIONS) }],
      max_tokens: 8 + Math.floor(r() * 24),
      stream: r() < 0.5,
    });
    await res.body?.cancel();
    return String(res.status);
  }
  if (x < 0.93) {
    // A client that leaves after the first chunk of a long stream.
    const ctrl = new AbortController();
    const res = await post("/v1/completions", {
      prompt: "Once",
      max_tokens: 300,
      ignore_eos: true,
      stream: true,
    }, ctrl.signal);
    if (res.status !== 200) return String(res.status);
    await readSse(res.body!).next();
    ctrl.abort();
    return "disconnect";
  }
  const [path, body] = pick(
    r,
    [
      ["/v1/generate", { prompt: MEGA }],
      ["/v1/generate", { context: MEGA, questions: QUESTIONS }],
      ["/v1/contexts", { context: MEGA }],
    ] as const,
  );
  const res = await post(path, body);
  await res.body?.cancel();
  return String(res.status);
}

export async function runSoak(o: SoakOptions): Promise<SoakReport> {
  const { child, base } = await startServer([
    "--executor",
    o.executor,
    "--context-max-mb",
    String(o.contextMaxMb),
    "--queue-size",
    "256",
    "--idle-timeout-s",
    String(IDLE_TIMEOUT_S),
  ]);
  try {
    const contexts: string[] = [], counts = { created: 0, deleted: 0 };
    /** `requests` requests of the mix, `concurrency` at a time, then every kept context deleted. */
    const phase = async (requests: number, seed: number, deadline: number) => {
      const r = mulberry32(seed), statuses: Record<string, number> = {};
      let sent = 0;
      const worker = async () => {
        while (sent < requests && performance.now() < deadline) {
          sent++;
          let status: string;
          try {
            status = await oneRequest(base, r, contexts, counts);
          } catch (e) {
            status = `error: ${(e as Error).message}`;
          }
          statuses[status] = (statuses[status] ?? 0) + 1;
        }
      };
      await Promise.all(Array.from({ length: o.concurrency }, worker));
      for (const id of contexts.splice(0)) {
        const res = await fetch(`${base}/v1/contexts/${id}`, { method: "DELETE" });
        await res.body?.cancel();
        if (res.status === 200) counts.deleted++;
      }
      // Kept-alive connections are closed by the server once idle: measure after that.
      await new Promise((res) => setTimeout(res, (IDLE_TIMEOUT_S + 1) * 1000));
      return { sent, statuses };
    };
    const heap = async () => {
      const text = await (await fetch(`${base}/metrics`)).text();
      const v = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
      return {
        heap: v("judgeq_js_heap_used_bytes"),
        external: v("judgeq_external_memory_bytes"),
        contexts: v("judgeq_contexts"),
        contextBytes: v("judgeq_contexts_kv_bytes"),
      };
    };
    // Warm-up: the same mix at the same concurrency, so that the start figure includes what the runtime keeps
    // once it has served such a load (its JavaScript heap does not shrink back at once after a peak); the
    // measured run then shows whether anything more stays behind.
    const cold = residentBytes(child.pid);
    await phase(o.warmup, o.seed + 1_000_003, Infinity);
    counts.created = counts.deleted = 0;
    const heapStart = await heap();
    const start = residentBytes(child.pid);
    let peak = start;
    const sampler = setInterval(() => peak = Math.max(peak, residentBytes(child.pid)), 100);
    const t0 = performance.now();
    const { sent, statuses } = await phase(o.requests, o.seed, t0 + o.durationS * 1000);
    const seconds = (performance.now() - t0 - (IDLE_TIMEOUT_S + 1) * 1000) / 1000;
    clearInterval(sampler);
    const end = residentBytes(child.pid);
    const heapEnd = await heap();
    peak = Math.max(peak, end);
    const mb = (b: number) => Math.round(b / 2 ** 20 * 10) / 10;
    return {
      requests: sent,
      seconds: Math.round(seconds * 10) / 10,
      statuses,
      server_errors: Object.entries(statuses).filter(([s]) => s.startsWith("5") || s.startsWith("error"))
        .reduce((n, [, c]) => n + c, 0),
      disconnects: statuses.disconnect ?? 0,
      contexts_created: counts.created,
      contexts_deleted: counts.deleted,
      contexts_left: { count: heapEnd.contexts, bytes: heapEnd.contextBytes },
      rss_mb: { cold: mb(cold), start: mb(start), peak: mb(peak), end: mb(end) },
      heap_used_mb: { start: mb(heapStart.heap), end: mb(heapEnd.heap) },
      external_mb: { start: mb(heapStart.external), end: mb(heapEnd.external) },
      end_over_start: start ? Math.round((end / start - 1) * 1000) / 1000 : NaN,
      context_cap_mb: o.contextMaxMb,
    };
  } finally {
    await stopProcess(child);
  }
}

export interface FillCycleReport {
  /** Contexts created in each fill (until the cap evicted one). */
  contexts: [number, number];
  /** After loading; after the first fill; after deleting every context; after the second fill. */
  rss_mb: { cold: number; first_fill: number; deleted: number; second_fill: number };
  /** Bytes the kept contexts held allocated at the end of each fill (judgeq_contexts_kv_bytes). */
  context_mb: [number, number];
  /** second_fill / first_fill - 1: a second fill should reuse the memory the first one freed. */
  second_over_first: number;
  context_cap_mb: number;
}

/**
 * Fill, delete, fill: contexts are created (no compression, a long story each) until the cap evicts
 * one, then every one is deleted and the same fill runs again. A WebAssembly memory never shrinks, so
 * the resident size after the delete stays at the first fill's; what matters is that the second fill
 * reuses the freed KV space instead of growing the process.
 */
export async function runFillCycle(o: { contextMaxMb: number; executor: string }): Promise<FillCycleReport> {
  const { child, base } = await startServer([
    "--executor",
    o.executor,
    "--adapter",
    "none",
    "--context-max-mb",
    String(o.contextMaxMb),
    "--idle-timeout-s",
    String(IDLE_TIMEOUT_S),
  ]);
  try {
    const metric = async (name: string) => {
      const text = await (await fetch(`${base}/metrics`)).text();
      return Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
    };
    const settle = () => new Promise((res) => setTimeout(res, (IDLE_TIMEOUT_S + 1) * 1000));
    const ids: string[] = [];
    const fill = async (seed: number) => {
      const evicted = await metric("judgeq_contexts_evicted_total");
      const r = mulberry32(seed);
      let made = 0;
      while ((await metric("judgeq_contexts_evicted_total")) === evicted && made < 100_000) {
        const words = Array.from({ length: 60 }, () => pick(r, STORY.split(" "))).join(" ");
        const res = await fetch(`${base}/v1/contexts`, {
          method: "POST",
          body: JSON.stringify({ context: `${STORY}${words}`, kv_compression: { method: "full" } }),
        });
        const body = await res.json();
        if (res.status !== 200) throw new Error(`POST /v1/contexts: ${res.status} ${JSON.stringify(body)}`);
        ids.push(body.id);
        made++;
      }
      const bytes = await metric("judgeq_contexts_kv_bytes");
      await settle();
      return { made, bytes, rss: residentBytes(child.pid) };
    };
    const cold = residentBytes(child.pid);
    const first = await fill(1);
    for (const id of ids.splice(0)) {
      const res = await fetch(`${base}/v1/contexts/${id}`, { method: "DELETE" });
      await res.body?.cancel();
    }
    await settle();
    const deleted = residentBytes(child.pid);
    const second = await fill(2);
    const mb = (b: number) => Math.round(b / 2 ** 20 * 10) / 10;
    return {
      contexts: [first.made, second.made],
      rss_mb: {
        cold: mb(cold),
        first_fill: mb(first.rss),
        deleted: mb(deleted),
        second_fill: mb(second.rss),
      },
      context_mb: [mb(first.bytes), mb(second.bytes)],
      second_over_first: Math.round((second.rss / first.rss - 1) * 1000) / 1000,
      context_cap_mb: o.contextMaxMb,
    };
  } finally {
    await stopProcess(child);
  }
}

if (import.meta.main) {
  try {
    const f = parseFlags(Deno.args, SPEC);
    if (f.help) {
      console.log(usage("deno task soak", SPEC));
      Deno.exit(0);
    }
    if (f["fill-cycle"]) {
      const report = await runFillCycle({
        contextMaxMb: f["context-max-mb"] as number,
        executor: executorFlag(f.executor),
      });
      console.log(f.json ? JSON.stringify(report) : JSON.stringify(report, null, 2));
      Deno.exit(report.second_over_first <= 0.1 ? 0 : 1);
    }
    for (const k of ["requests", "concurrency"] as const) {
      if (!((f[k] as number) >= 1)) throw new UsageError(`--${k}: expected a number >= 1, got '${f[k]}'`);
    }
    const report = await runSoak({
      requests: f.requests as number,
      concurrency: f.concurrency as number,
      durationS: f.duration as number,
      seed: f.seed as number,
      warmup: f.warmup as number,
      contextMaxMb: f["context-max-mb"] as number,
      executor: executorFlag(f.executor),
    });
    console.log(f.json ? JSON.stringify(report) : JSON.stringify(report, null, 2));
    Deno.exit(report.server_errors > 0 || !(report.end_over_start <= 0.2) ? 1 : 0);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(2);
  }
}
