/**
 * deno task loadtest:cluster: a bounded load test of replicas behind the load balancer (ops/cluster.ts).
 * A pool of contexts is compressed directly on the replicas, round robin; then --requests requests go
 * through the balancer, --concurrency at a time: every other one answers a question on a pool context
 * (mostly held by another replica: it is restored from Redis), the rest alternate between plain
 * generation, streamed chats and new contexts (each asked once more at the end: none may be lost). Halfway
 * (--kill-at) one replica is SIGKILLed. Reported: throughput, latency percentiles, statuses, 5xx (there
 * must be none), streams cut by the kill (200 without [DONE]) and answers cut after their status line,
 * lost contexts (a 404 on a context that was created) and answers that differ between replicas (greedy: the same context and question must
 * give the same text anywhere). With --compare the same workload runs on a single replica first.
 *   deno task loadtest:cluster [--replicas 3] [--requests 600] [--concurrency 16] [--max-tokens 16]
 *                              [--contexts 24] [--kill-at 0.5] [--compare] [--json]
 */
import { executorFlags, parseFlags, threadsFlag, usage, UsageError } from "../io/flags.ts";
import { startCluster } from "./cluster.ts";
import { percentile } from "./loadtest.ts";
import { readSse } from "../server/sse.ts";

const SPEC = {
  replicas: { kind: "int", help: "replicas (default 3)", default: 3 },
  requests: { kind: "int", help: "requests through the balancer (default 600)", default: 600 },
  concurrency: { kind: "int", help: "requests in flight at once (default 16)", default: 16 },
  "max-tokens": { kind: "int", help: "tokens per answer or generation (default 16)", default: 16 },
  contexts: {
    kind: "int",
    help: "contexts compressed on the replicas before the run (default 24)",
    default: 24,
  },
  "kill-at": {
    kind: "number",
    help: "fraction of the requests after which one replica is SIGKILLed, 0 = none (default 0.5)",
    default: 0.5,
  },
  compare: { kind: "boolean", help: "run the same workload on a single replica first (no kill)" },
  ...executorFlags("wasm", " of every replica"),
  json: { kind: "boolean", help: "print one JSON object" },
  help: { kind: "boolean", help: "show this help" },
} as const;

const STORIES = [
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big red ball under a tree. ",
  "Tom had a small dog called Max. Max liked to run and jump in the garden. One morning, Max found a shiny key near the fence. ",
  "Sara and Ben went to the beach with their mom. They built a big castle of sand and found a crab hiding under a rock. ",
];
const QUESTIONS = [" Lily said", " The dog", " Then they", " She was happy because"];
const COMPRESSION = { method: "snapkv", budget: 24 };

interface Options {
  replicas: number;
  requests: number;
  concurrency: number;
  maxTokens: number;
  contexts: number;
  killAt: number;
  replicaArgs: string[];
}

interface Outcome {
  kind: "answer" | "generate" | "create" | "stream";
  status: number;
  ms: number;
}

/** An answer whose replica died after its first bytes: it began, so no balancer can move it; retry it. */
class CutAnswer extends Error {}

async function post(url: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  let text: string;
  try {
    text = await r.text();
  } catch (e) {
    throw new CutAnswer(`status ${r.status} then the connection was cut: ${(e as Error).message}`);
  }
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text);
  } catch { /* a balancer's HTML error page */ }
  return { status: r.status, json };
}

/**
 * A streamed chat: its status, and whether it ended with `data: [DONE]` (a stream whose replica died
 * mid-way ends without it: the client must take it as cut, not complete).
 */
async function streamChat(url: string, content: string, maxTokens: number) {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content }], max_tokens: maxTokens, stream: true }),
  });
  let done = false;
  try {
    for await (const data of readSse(r.body!)) if (data === "[DONE]") done = true;
  } catch { /* the connection was cut: not done */ }
  return { status: r.status, done };
}

const contextBody = (i: number) => ({
  context: STORIES[i % STORIES.length].repeat(2 + (i % 3)),
  kv_compression: COMPRESSION,
});

export async function runClusterLoad(o: Options) {
  const cluster = await startCluster({
    replicas: o.replicas,
    port: 0,
    replicaArgs: o.replicaArgs,
    log: () => {},
  });
  try {
    // The pool: contexts compressed directly on replica i % N (so most answers land on another replica).
    const pool: string[] = [], madeBy = new Map<string, number>();
    for (let i = 0; i < o.contexts; i++) {
      const r = cluster.replicas[i % cluster.replicas.length];
      const res = await post(`${r.url}/v1/contexts`, contextBody(i));
      if (res.status !== 200) throw new Error(`creating context ${i} on ${r.name}: ${res.status}`);
      pool.push(res.json.id as string);
      madeBy.set(res.json.id as string, i % cluster.replicas.length);
    }
    const created: string[] = []; // through the balancer during the run
    let killed = false, answeredAfterKill = 0;
    const answers = new Map<string, string>(); // context + question -> first text seen
    let mismatched = 0,
      lost = 0,
      next = 0,
      inFlight = 0,
      inFlightAtKill = -1,
      killedAfter = -1,
      cut = 0,
      cutAnswers = 0;
    const killAt = o.killAt > 0 && cluster.replicas.length > 1 ? Math.floor(o.requests * o.killAt) : -1;
    const outcomes: Outcome[] = [];
    const one = async (i: number): Promise<Outcome> => {
      const t0 = performance.now();
      if (i % 2 === 0) {
        const id = pool[(i / 2) % pool.length],
          q = QUESTIONS[Math.floor(i / 2 / pool.length) % QUESTIONS.length];
        const res = await post(`${cluster.url}/v1/contexts/${id}/generate`, {
          question: q,
          max_tokens: o.maxTokens,
        });
        if (res.status === 404) lost++;
        if (res.status === 200 && killed && madeBy.get(id) === 1) answeredAfterKill++;
        if (res.status === 200) {
          const text = (res.json.outputs as { text: string }[])[0].text, key = `${id}${q}`;
          if (!answers.has(key)) answers.set(key, text);
          else if (answers.get(key) !== text) mismatched++;
        }
        return { kind: "answer", status: res.status, ms: performance.now() - t0 };
      }
      if (i % 4 === 1) {
        const res = await post(`${cluster.url}/v1/generate`, {
          prompt: STORIES[i % 3],
          max_tokens: o.maxTokens,
        });
        return { kind: "generate", status: res.status, ms: performance.now() - t0 };
      }
      if (i % 8 === 7) {
        const res = await streamChat(`${cluster.url}/v1/chat/completions`, STORIES[i % 3], o.maxTokens);
        if (res.status === 200 && !res.done) cut++;
        return { kind: "stream", status: res.status, ms: performance.now() - t0 };
      }
      const res = await post(`${cluster.url}/v1/contexts`, contextBody(i));
      if (res.status === 200) created.push(res.json.id as string);
      return { kind: "create", status: res.status, ms: performance.now() - t0 };
    };
    const t0 = performance.now();
    const worker = async () => {
      while (next < o.requests) {
        const i = next++;
        if (i === killAt) {
          inFlightAtKill = inFlight;
          killedAfter = outcomes.length;
          await cluster.kill(1);
          killed = true;
        }
        inFlight++;
        try {
          outcomes.push(await one(i));
        } catch (e) {
          if (e instanceof CutAnswer) {
            cutAnswers++; // its status line came, then the kill: cut like a stream without [DONE], not a 5xx
            outcomes.push({ kind: "answer", status: 0, ms: 0 });
            console.error(`request ${i}: ${e.message}`);
            continue;
          }
          outcomes.push({ kind: "answer", status: 599, ms: 0 }); // a connection error: counted as a 5xx
          console.error(`request ${i}: ${(e as Error).message}`);
        } finally {
          inFlight--;
        }
      }
    };
    await Promise.all(Array.from({ length: o.concurrency }, worker));
    const wall = (performance.now() - t0) / 1000;
    // Every context created through the balancer during the run (some by the killed replica) still answers.
    for (const id of created) {
      const res = await post(`${cluster.url}/v1/contexts/${id}/generate`, {
        question: QUESTIONS[0],
        max_tokens: 1,
      });
      if (res.status === 404) lost++;
      else if (res.status !== 200) throw new Error(`context ${id} created during the run: ${res.status}`);
    }
    const ok = outcomes.filter((x) => x.status === 200);
    const lat = ok.map((x) => x.ms).sort((a, b) => a - b);
    const statuses: Record<string, number> = {};
    for (const x of outcomes) statuses[x.status] = (statuses[x.status] ?? 0) + 1;
    const r2 = (x: number) => Math.round(x * 100) / 100;
    return {
      replicas: cluster.replicas.length,
      requests: outcomes.length,
      concurrency: o.concurrency,
      max_tokens: o.maxTokens,
      killed: killAt >= 0
        ? { replica: cluster.replicas[1].name, after_requests: killedAfter, in_flight: inFlightAtKill }
        : null,
      statuses,
      server_errors: outcomes.filter((x) => x.status >= 500).length,
      /** Streams answered 200 that ended without [DONE] (their replica was killed mid-way). */
      cut_streams: cut,
      cut_answers: cutAnswers,
      lost_contexts: lost,
      contexts: {
        pool: pool.length,
        created_during_run: created.length,
        killed_replicas_answered_after_kill: answeredAfterKill,
      },
      mismatched_answers: mismatched,
      distinct_answers_checked: answers.size,
      wall_s: r2(wall),
      throughput_rps: r2(ok.length / wall),
      latency_ms: { p50: r2(percentile(lat, 50)), p99: r2(percentile(lat, 99)), max: r2(lat.at(-1) ?? NaN) },
    };
  } finally {
    await cluster.stop();
  }
}

async function main(argv: string[]): Promise<number> {
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno task loadtest:cluster", SPEC));
    return 0;
  }
  if (f._.length) throw new UsageError(`unexpected argument '${f._[0]}'`);
  for (const k of ["replicas", "requests", "concurrency", "max-tokens", "contexts"] as const) {
    if (!((f[k] as number) >= 1)) throw new UsageError(`--${k}: expected a positive integer, got '${f[k]}'`);
  }
  const killAt = f["kill-at"] as number;
  if (!(killAt >= 0 && killAt < 1)) throw new UsageError(`--kill-at: expected 0 <= x < 1, got '${killAt}'`);
  const threads = threadsFlag(f.threads);
  const o: Options = {
    replicas: f.replicas as number,
    requests: f.requests as number,
    concurrency: f.concurrency as number,
    maxTokens: f["max-tokens"] as number,
    contexts: f.contexts as number,
    killAt,
    replicaArgs: [
      "--executor",
      String(f.executor),
      ...(threads !== undefined ? ["--threads", String(threads)] : []),
      ...(f.weights !== undefined ? ["--weights", String(f.weights)] : []),
    ],
  };
  const single = f.compare ? await runClusterLoad({ ...o, replicas: 1, killAt: 0 }) : null;
  const cluster = await runClusterLoad(o);
  const report = { executor: f.executor, threads: threads ?? null, single, cluster };
  if (f.json) console.log(JSON.stringify(report));
  else {
    for (const r of [single, cluster]) {
      if (!r) continue;
      console.log(
        `${r.replicas} replica(s): ${r.requests} requests, ${r.concurrency} at a time, ${r.max_tokens} tokens; ` +
          `${r.throughput_rps} req/s, p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms; statuses ` +
          `${
            JSON.stringify(r.statuses)
          }; lost contexts ${r.lost_contexts}; mismatched answers ${r.mismatched_answers}` +
          (r.killed
            ? `; ${r.killed.replica} killed after ${r.killed.after_requests} requests with ${r.killed.in_flight} in flight`
            : ""),
      );
    }
  }
  // No 5xx at all: a request the killed replica never answered is retried on another one (haproxy.ts).
  const bad = cluster.lost_contexts > 0 || cluster.mismatched_answers > 0 || cluster.server_errors > 0;
  return bad ? 1 : 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}\n${usage("deno task loadtest:cluster", SPEC)}`);
    } else console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(2);
  }
}
