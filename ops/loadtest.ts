/**
 * deno task loadtest: a bounded load test over loopback. Starts its own server on a free port (or
 * targets --url http://127.0.0.1:PORT), sends --requests requests --concurrency at a time for at most
 * --duration seconds, and prints throughput and latency percentiles (one JSON object with --json).
 *   deno task loadtest [--requests 200] [--concurrency 8] [--max-tokens 32] [--method snapkv --budget 64]
 *                      [--endpoint generate|completions|chat] [--stream] [--url http://127.0.0.1:8000] [--json]
 *                      [--long N --long-tokens 480] [--bare]
 *                      [--max-streams N] [--max-batch-tokens N] [--kv-cache-mb N] (the server's scheduler)
 * `deno task loadtest --compare [...]`: the service against llama.cpp (ops/loadtest_compare.ts).
 * With --long, N clients keep a long generation running the whole time (fairness: what short requests
 * pay while long ones run); their own count is reported apart.
 */
import {
  executorFlag,
  executorFlags,
  parseFlags,
  threadsFlag,
  usage,
  UsageError,
  weightsFlag,
} from "../io/flags.ts";
import { loadModel } from "../io/runtime.ts";
import { createApp } from "../server/app.ts";
import { errorResponse, toHttpError } from "../server/errors.ts";
import { serveFronted } from "../server/front/front.ts";
import { batchFlags } from "../server/main.ts";
import { sampleValue } from "../server/metrics.ts";
import { percentile } from "../core/percentile.ts";
import { readSse } from "../server/sse.ts";

const SPEC = {
  url: { kind: "string", help: "target a running server (loopback only); default: start one on a free port" },
  requests: { kind: "int", help: "requests to send (default 200, at most 100000)", default: 200 },
  concurrency: { kind: "int", help: "requests in flight at once (default 8)", default: 8 },
  duration: { kind: "number", help: "stop sending after this many seconds (default 60)", default: 60 },
  "max-tokens": { kind: "int", help: "tokens per request, end-of-story ignored (default 32)", default: 32 },
  endpoint: { kind: "string", help: "generate | completions | chat (default generate)", default: "generate" },
  stream: { kind: "boolean", help: "stream responses (measures time to first token too)" },
  method: { kind: "string", help: "KV compression method (default: none)" },
  budget: { kind: "int", help: "KV budget per head for --method" },
  "api-key": { kind: "string", help: "API key of the target server" },
  model: {
    kind: "string",
    help: "model directory or .gguf file of the server it starts (default: the embedded one)",
  },
  ...executorFlags("auto", "; for the server it starts"),
  "queue-size": { kind: "int", help: "queue size of the server it starts (default 64)", default: 64 },
  bare: {
    kind: "boolean",
    help: "serve with Deno.serve alone; default: through the TCP front, as `deno task start` serves",
  },
  "max-streams": { kind: "int", help: "--max-streams of the server it starts (see start)" },
  "max-batch-tokens": { kind: "int", help: "--max-batch-tokens of the server it starts (see start)" },
  "kv-cache-mb": { kind: "int", help: "--kv-cache-mb of the server it starts (see start)" },
  long: { kind: "int", help: "clients keeping a long generation running meanwhile (default 0)", default: 0 },
  "long-tokens": { kind: "int", help: "tokens of each long generation (default 480)", default: 480 },
  json: { kind: "boolean", help: "print one JSON object" },
  help: { kind: "boolean", help: "show this help" },
} as const;

const PROMPTS = [
  "Once upon a time",
  "One day, a little girl named Lily found a needle in her room.",
  "Tom and his dog went to the park. They saw a big tree and",
  "Once upon a time, there was a little boy named Ben. Ben loved to play outside in the sun. One day, he saw a bird",
];

interface Sample {
  ms: number;
  ttftMs: number | null;
  status: number;
  tokens: number;
}

export { percentile };

const isLoopback = (host: string) => ["127.0.0.1", "localhost", "[::1]", "::1"].includes(host);

function bodyFor(endpoint: string, i: number, f: Record<string, unknown>) {
  const prompt = PROMPTS[i % PROMPTS.length];
  const common: Record<string, unknown> = {
    max_tokens: f["max-tokens"],
    ignore_eos: true,
    temperature: 0,
    stream: !!f.stream,
  };
  if (f.method) {
    common.kv_compression = { method: f.method, ...(f.budget !== undefined ? { budget: f.budget } : {}) };
  }
  if (f.stream && endpoint !== "generate") common.stream_options = { include_usage: true };
  if (endpoint === "chat") return { ...common, messages: [{ role: "user", content: prompt }] };
  if (endpoint === "completions") return { ...common, prompt };
  return { ...common, prompt };
}

async function one(
  url: string,
  endpoint: string,
  body: unknown,
  headers: Record<string, string>,
): Promise<Sample> {
  const path = endpoint === "chat"
    ? "/v1/chat/completions"
    : endpoint === "completions"
    ? "/v1/completions"
    : "/v1/generate";
  const t0 = performance.now();
  try {
    const r = await fetch(url + path, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(120_000),
    });
    if (!r.headers.get("content-type")?.startsWith("text/event-stream")) {
      const json = await r.json().catch(() => ({}));
      return {
        ms: performance.now() - t0,
        ttftMs: null,
        status: r.status,
        tokens: json.usage?.completion_tokens ?? 0,
      };
    }
    let ttft: number | null = null, tokens = 0;
    for await (const data of readSse(r.body!)) {
      if (data === "[DONE]") break;
      const event = JSON.parse(data);
      const text = event.text ?? event.choices?.[0]?.text ?? event.choices?.[0]?.delta?.content;
      if (ttft === null && text) ttft = performance.now() - t0;
      if (event.usage) tokens = event.usage.completion_tokens;
    }
    return { ms: performance.now() - t0, ttftMs: ttft, status: r.status, tokens };
  } catch {
    return { ms: performance.now() - t0, ttftMs: null, status: 0, tokens: 0 };
  }
}

async function main(argv: string[]): Promise<number> {
  // --compare: the service against llama.cpp (its own flags and module).
  if (argv.includes("--compare")) {
    return await (await import("./loadtest_compare.ts")).compareMain(argv);
  }
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno task loadtest", SPEC));
    return 0;
  }
  const requests = f.requests as number,
    concurrency = f.concurrency as number,
    duration = f.duration as number;
  if (!(requests >= 1 && requests <= 100_000)) {
    throw new UsageError(`--requests: expected 1..100000, got '${requests}'`);
  }
  if (!(concurrency >= 1 && concurrency <= 256)) {
    throw new UsageError(`--concurrency: expected 1..256, got '${concurrency}'`);
  }
  if (!(duration > 0 && duration <= 3600)) {
    throw new UsageError(`--duration: expected (0, 3600] seconds, got '${duration}'`);
  }
  const longs = f.long as number;
  if (!(longs >= 0 && longs <= 64)) throw new UsageError(`--long: expected 0..64, got '${longs}'`);
  const batch = batchFlags(f["max-streams"], f["max-batch-tokens"], f["kv-cache-mb"]);
  const executorChoice = executorFlag(f.executor);
  const threads = threadsFlag(f.threads), weightFormat = weightsFlag(f);
  const endpoint = f.endpoint as string;
  if (!["generate", "completions", "chat"].includes(endpoint)) {
    throw new UsageError(`--endpoint: expected generate, completions or chat, got '${endpoint}'`);
  }

  let url = f.url as string | undefined;
  if (url !== undefined && f.model !== undefined) {
    throw new UsageError("--model: for the server loadtest starts, not with --url");
  }
  let stop = async () => {};
  let executor = "remote";
  if (url !== undefined) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new UsageError(`--url: not a URL: '${url}'`);
    }
    if (parsed.protocol !== "http:" || !isLoopback(parsed.hostname)) {
      throw new UsageError(
        `--url: only http on loopback (127.0.0.1, localhost, ::1) is allowed, got '${url}'`,
      );
    }
    url = parsed.origin;
  } else {
    const model = await loadModel({
      model: f.model as string | undefined,
      executor: executorChoice,
      weightFormat,
      threads,
      warn: (m) => console.error(`warning: ${m}`),
    });
    const app = createApp(model, {
      queueSize: f["queue-size"] as number,
      ...batch,
    });
    // As `deno task start` serves (its default deadlines), unless --bare.
    const server = await serveFronted({
      hostname: "127.0.0.1",
      port: 0,
      bare: f.bare === true,
      headerTimeoutMs: f.bare ? 0 : 10_000,
      idleTimeoutMs: f.bare ? 0 : 30_000,
      maxConnections: 1024,
      onError: (e) => errorResponse(toHttpError(e)),
    }, app.handler);
    url = `http://127.0.0.1:${server.addr.port}`;
    executor = model.executor.kind;
    stop = async () => {
      await server.shutdown();
      await app.close();
      model.executor.dispose();
    };
  }
  const headers: Record<string, string> = f["api-key"] ? { authorization: `Bearer ${f["api-key"]}` } : {};

  // One warm-up request (JIT, shader compilation) outside the measurement.
  await one(url, endpoint, bodyFor(endpoint, 0, { ...f, "max-tokens": 2 }), headers);

  // Long generations in the background, started first and kept going until the measured requests end.
  let measuring = true, longDone = 0;
  const longBody = { prompt: "Once", max_tokens: f["long-tokens"], ignore_eos: true, temperature: 0 };
  const longLoops = Array.from({ length: longs }, async () => {
    while (measuring) {
      if ((await one(url!, "generate", longBody, headers)).status === 200) longDone++;
    }
  });
  if (longs > 0) await new Promise((r) => setTimeout(r, 200)); // the long ones are running

  const samples: Sample[] = [];
  const deadline = performance.now() + duration * 1000;
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < requests && performance.now() < deadline) {
      const i = next++;
      samples.push(await one(url!, endpoint, bodyFor(endpoint, i, f), headers));
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const wall = (performance.now() - t0) / 1000;
  measuring = false;
  await Promise.all(longLoops);
  const metricsText = await fetch(`${url}/metrics`, { headers }).then((r) => r.text()).catch(() => "");
  await stop();

  const ok = samples.filter((s) => s.status === 200);
  const lat = ok.map((s) => s.ms).sort((a, b) => a - b);
  const ttft = ok.map((s) => s.ttftMs).filter((x): x is number => x !== null).sort((a, b) => a - b);
  const tokens = ok.reduce((n, s) => n + s.tokens, 0);
  // Time per output token after the first (streamed requests).
  const tpot = ok.filter((s) => s.ttftMs !== null && s.tokens > 1)
    .map((s) => (s.ms - s.ttftMs!) / (s.tokens - 1)).sort((a, b) => a - b);
  const statuses: Record<string, number> = {};
  for (const s of samples) statuses[s.status] = (statuses[s.status] ?? 0) + 1;
  const r2 = (x: number) => Math.round(x * 100) / 100;
  const report = {
    url,
    executor,
    served: f.url !== undefined ? "remote" : f.bare ? "Deno.serve" : "TCP front + Deno.serve",
    endpoint,
    stream: !!f.stream,
    compression: f.method ? { method: f.method, budget: f.budget ?? null } : null,
    requests: samples.length,
    concurrency,
    max_tokens: f["max-tokens"],
    ok: ok.length,
    statuses,
    wall_s: r2(wall),
    throughput_rps: r2(ok.length / wall),
    tokens_per_s: r2(tokens / wall),
    latency_ms: {
      p50: r2(percentile(lat, 50)),
      p90: r2(percentile(lat, 90)),
      p99: r2(percentile(lat, 99)),
      max: r2(lat.at(-1) ?? NaN),
    },
    ttft_ms: ttft.length ? { p50: r2(percentile(ttft, 50)), p99: r2(percentile(ttft, 99)) } : null,
    per_token_ms: tpot.length ? { p50: r2(percentile(tpot, 50)), p99: r2(percentile(tpot, 99)) } : null,
    batch: metricsText
      ? {
        max_streams: sampleValue(metricsText, "judgeq_batch_max_streams"),
        max_batch_tokens: sampleValue(metricsText, "judgeq_batch_max_rows"),
        kv_cap_bytes: batch.kvCapBytes,
        steps: sampleValue(metricsText, "judgeq_batch_steps_total"),
        rows_per_step: r2(
          sampleValue(metricsText, "judgeq_batch_rows_total") /
            Math.max(1, sampleValue(metricsText, "judgeq_batch_steps_total")),
        ),
      }
      : null,
    long: longs > 0 ? { clients: longs, tokens: f["long-tokens"], completed: longDone } : null,
    server_queue_wait_s_mean: metricsText
      ? r2(
        sampleValue(metricsText, "judgeq_queue_wait_seconds_sum") /
          Math.max(1, sampleValue(metricsText, "judgeq_queue_wait_seconds_count")),
      )
      : null,
  };
  if (f.json) console.log(JSON.stringify(report));
  else {
    console.log(
      `${report.requests} requests (${concurrency} at a time, ${report.max_tokens} tokens each) to ${url} [${executor}, ${endpoint}${
        report.stream ? ", stream" : ""
      }]`,
    );
    console.log(`  ok ${report.ok}, statuses ${JSON.stringify(statuses)}, wall ${report.wall_s} s`);
    console.log(`  throughput ${report.throughput_rps} req/s, ${report.tokens_per_s} tokens/s`);
    console.log(
      `  latency p50 ${report.latency_ms.p50} ms, p90 ${report.latency_ms.p90} ms, p99 ${report.latency_ms.p99} ms, max ${report.latency_ms.max} ms`,
    );
    if (report.batch) {
      console.log(`  batched: ${report.batch.steps} steps, ${report.batch.rows_per_step} rows per step`);
    }
    if (report.ttft_ms) {
      console.log(`  time to first token p50 ${report.ttft_ms.p50} ms, p99 ${report.ttft_ms.p99} ms`);
    }
    if (report.per_token_ms) {
      console.log(`  per token p50 ${report.per_token_ms.p50} ms, p99 ${report.per_token_ms.p99} ms`);
    }
  }
  return ok.length === samples.length ? 0 : 1;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) console.error(`error: ${e.message}\n${usage("deno task loadtest", SPEC)}`);
    else console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(2);
  }
}
