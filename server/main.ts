/**
 * deno task start: serves one model over HTTP.
 *   deno task start [--model DIR] [--adapter FILE|none] [--host 127.0.0.1] [--port 8000]
 *                   [--api-key-file FILE | --api-key KEY (visible in ps: prefer $JUDGEQ_API_KEY or the file)
 *                    | --api-keys-file FILE (several keys, LABEL:KEY a line; each key's contexts its own)]
 *                   [--executor auto|gpu|wasm|cpu] [--threads N] [--weights auto|f32|f16]
 *                   [--queue-size 32] [--max-request-seconds 120] [--max-body-bytes 1048576]
 *                   [--context-ttl 600] [--context-max-mb 256] [--context-store memory|redis://HOST:PORT]
 *                   [--max-tokens-per-request N] [--max-questions 64]
 *                   [--max-streams N] [--max-batch-tokens N] [--kv-cache-mb N] (the batch scheduler)
 *                   [--header-timeout-s 10] [--idle-timeout-s 30] [--body-timeout-s 30] [--stream-stall-timeout-s 30] [--max-connections 1024]
 *                   [--max-connections-per-peer N]
 * The model and adapter are fixed here, at start-up; no request can choose files. SIGINT/SIGTERM stop
 * accepting, let in-flight and queued requests finish, then exit.
 */
import { JudgeQError } from "../core/errors.ts";
import {
  executorFlag,
  executorFlags,
  GPU_WEIGHTS_ALIAS,
  kvCacheFlag,
  parseFlags,
  threadsFlag,
  usage,
  UsageError,
  weightsFlag,
} from "../io/flags.ts";
import { loadModel } from "../io/runtime.ts";
import { type AppOptions, createApp, DEFAULT_OPTIONS } from "./app.ts";
import { errorResponse, toHttpError } from "./errors.ts";
import { serveFronted } from "./front/front.ts";
import { type ApiKey, DEFAULT_LABEL, KeysFileError, parseKeysFile } from "./keys.ts";
import { MAX_QUESTIONS } from "../core/max_tokens.ts";

const DEFAULT_HEADER_TIMEOUT_S = 10, DEFAULT_IDLE_TIMEOUT_S = 30, DEFAULT_MAX_CONNECTIONS = 1024;
import { isRedisUrl, redact, RedisBlobs } from "./contexts/redis.ts";

const SPEC = {
  model: { kind: "string", help: "model directory (default: the embedded stories260K)" },
  adapter: {
    kind: "string",
    help: "Judge Q adapter file, or 'none' (default: the model's judgeq.safetensors if present)",
  },
  host: { kind: "string", help: "address to bind (default 127.0.0.1: loopback only)", default: "127.0.0.1" },
  port: { kind: "int", help: "port to bind, 0 = any free port (default 8000)", default: 8000 },
  "api-key": {
    kind: "string",
    help: "require 'Authorization: Bearer KEY' (default: $JUDGEQ_API_KEY, else none); " +
      "a flag is visible in ps: prefer the variable or --api-key-file",
  },
  "api-key-file": {
    kind: "string",
    help: "read the API key from FILE (its first line)",
  },
  "api-keys-file": {
    kind: "string",
    help: "several keys, one a line as LABEL:KEY or KEY ('#' comments, blank lines skipped); each key's " +
      "contexts are its own (another key gets 404); metrics and logs show labels only",
  },
  ...executorFlags("auto"),
  ...GPU_WEIGHTS_ALIAS,
  "queue-size": {
    kind: "int",
    help: `requests that may wait for the executor, 429 beyond (default ${DEFAULT_OPTIONS.queueSize})`,
  },
  "max-streams": {
    kind: "int",
    help: "requests that run at once, their rows sharing every forward step; a stream whose client is " +
      "not reading gives its place to the next (default: 16 on native, 4 on wasm, WebGPU and the reference)",
  },
  "max-batch-tokens": {
    kind: "int",
    help: "rows one forward step runs: every stream's next token first, then chunks of waiting prompts " +
      "(default: 256 on native, 128 elsewhere)",
  },
  "kv-cache-mb": {
    kind: "int",
    help: "MiB of KV cache all live streams and kept contexts may reserve; a request waits in the queue " +
      "until its (compressed) cache fits, one that never can gets a 422 (default: no cap)",
  },
  "max-request-seconds": {
    kind: "number",
    help: "time one request may run (less time parked for a slow client); beyond, it ends with a 422 " +
      "holding what it produced " +
      `(default ${DEFAULT_OPTIONS.maxRequestMs! / 1000}; 0: no limit)`,
  },
  "max-body-bytes": {
    kind: "int",
    help: `largest request body, 413 beyond (default ${DEFAULT_OPTIONS.maxBodyBytes})`,
  },
  "context-ttl": {
    kind: "number",
    help: `seconds a kept context lives unused (default ${DEFAULT_OPTIONS.contextTtlMs / 1000})`,
  },
  "context-max-mb": {
    kind: "number",
    help: `MiB of KV kept for contexts, least recently used evicted (default ${
      DEFAULT_OPTIONS.contextMaxBytes / 2 ** 20
    })`,
  },
  "context-store": {
    kind: "string",
    help: "where contexts are kept: 'memory' (this process, the default) or redis://HOST:PORT[/DB] " +
      "(shared by replicas; --context-max-mb then caps the contexts each replica holds live)",
  },
  "max-tokens-per-request": {
    kind: "int",
    help: "tokens one request may generate over all its outputs (max_tokens x questions), 400 beyond " +
      "(default: no limit)",
  },
  "max-questions": {
    kind: "int",
    help:
      `questions one request may ask, 1 to ${MAX_QUESTIONS}, 400 beyond (default ${DEFAULT_OPTIONS.maxQuestions})`,
  },
  "header-timeout-s": {
    kind: "number",
    help: `seconds a connection has to send a request's headers, from accept or the request's first byte; ` +
      `closed after (default ${DEFAULT_HEADER_TIMEOUT_S}; 0: none)`,
  },
  "max-connections": {
    kind: "int",
    help:
      `connections open at once through the front; one more gets a 503 and is closed (default ${DEFAULT_MAX_CONNECTIONS})`,
  },
  "max-connections-per-peer": {
    kind: "int",
    help: "connections one client address may hold open through the front; one more gets a 503 " +
      "(default: no cap of its own; at --max-connections, the address holding most gives up its oldest idle one)",
  },
  "idle-timeout-s": {
    kind: "number",
    help:
      `seconds a kept-alive connection may wait for its next request, closed after (default ${DEFAULT_IDLE_TIMEOUT_S}; ` +
      "0: none)",
  },
  "stream-stall-timeout-s": {
    kind: "number",
    help: "seconds a stream may wait for its client to read (its buffer full; its place given to others " +
      `meanwhile) before it is cut (default ${DEFAULT_OPTIONS.streamStallMs! / 1000}; 0: no limit)`,
  },
  "body-timeout-s": {
    kind: "number",
    help: `seconds a request body may take to arrive, 408 after (default ${
      DEFAULT_OPTIONS.bodyTimeoutMs / 1000
    })`,
  },
  help: { kind: "boolean", help: "show this help" },
} as const;

/** How long connections may linger after the last job finished, once stopping. */
const SHUTDOWN_GRACE_MS = 10_000;

function positive(name: string, v: unknown, min = 1): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !(v >= min)) {
    throw new UsageError(`--${name}: expected a number >= ${min}, got '${v}'`);
  }
  return v;
}

/** --max-streams, --max-batch-tokens, --kv-cache-mb: the batch scheduler's limits (null: the defaults). */
export function batchFlags(
  streams: unknown,
  tokens: unknown,
  kvMb: unknown,
): Pick<AppOptions, "maxStreams" | "maxBatchTokens" | "kvCapBytes"> {
  const mb = positive("kv-cache-mb", kvMb);
  return {
    maxStreams: positive("max-streams", streams) ?? null,
    maxBatchTokens: positive("max-batch-tokens", tokens) ?? null,
    kvCapBytes: mb === undefined ? null : mb * 2 ** 20,
  };
}

/** --context-store: null for memory, else the Redis URL. */
export function contextStoreFlag(v: string | undefined): string | null {
  if (v === undefined || v === "memory") return null;
  if (!isRedisUrl(v)) {
    throw new UsageError(`--context-store: expected 'memory' or redis://HOST:PORT, got '${redact(v)}'`);
  }
  return v;
}

/** Largest API key file read (a key is a line; this bounds a mistaken path to a big file). */
const MAX_KEY_FILE_BYTES = 64 << 10;

/** A key file's text, refused (exit 2) when it is not a regular file or is too large to be one. */
async function readKeyFile(flag: string, file: string): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(file);
  } catch (e) {
    throw new UsageError(`${flag}: cannot read: ${(e as Error).message}`, flag);
  }
  if (!info.isFile) throw new UsageError(`${flag}: not a regular file`, flag);
  if (info.size > MAX_KEY_FILE_BYTES) {
    throw new UsageError(`${flag}: larger than ${MAX_KEY_FILE_BYTES} bytes`, flag);
  }
  return await Deno.readTextFile(file);
}

/**
 * The keys of a server: --api-keys-file's (labelled), or the single key of --api-key, --api-key-file or
 * $JUDGEQ_API_KEY (labelled "default"), or none. The keys file excludes the single-key sources.
 */
export async function apiKeysOf(
  flag: string | undefined,
  file: string | undefined,
  keysFile: string | undefined,
): Promise<ApiKey[]> {
  if (keysFile === undefined) {
    const key = await apiKeyOf(flag, file);
    return key === null ? [] : [{ label: DEFAULT_LABEL, key }];
  }
  const other = flag !== undefined
    ? "--api-key"
    : file !== undefined
    ? "--api-key-file"
    : Deno.env.get("JUDGEQ_API_KEY") !== undefined
    ? "$JUDGEQ_API_KEY"
    : null;
  if (other) throw new UsageError(`give --api-keys-file or ${other}, not both`, "--api-keys-file");
  try {
    return parseKeysFile(await readKeyFile("--api-keys-file", keysFile));
  } catch (e) {
    throw e instanceof KeysFileError ? new UsageError(e.message, "--api-keys-file") : e;
  }
}

/** The API key: --api-key, else --api-key-file's first line, else $JUDGEQ_API_KEY, else none. */
export async function apiKeyOf(flag: string | undefined, file: string | undefined): Promise<string | null> {
  if (flag !== undefined && file !== undefined) {
    throw new UsageError("give --api-key or --api-key-file, not both");
  }
  let key = flag ?? Deno.env.get("JUDGEQ_API_KEY") ?? null;
  let from = flag !== undefined ? "--api-key" : "$JUDGEQ_API_KEY";
  if (file !== undefined) {
    from = "--api-key-file";
    key = (await readKeyFile(from, file)).split(/\r?\n/)[0].trim();
  }
  if (key !== null && key.trim() === "") throw new UsageError(`${from}: the key must not be empty`);
  return key;
}

async function main(argv: string[]): Promise<number> {
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno task start", SPEC));
    return 0;
  }
  if (f._.length) throw new UsageError(`unexpected argument '${f._[0]}'`);
  const executor = executorFlag(f.executor);
  const threads = threadsFlag(f.threads), weightFormat = weightsFlag(f), kvCache = kvCacheFlag(f["kv-cache"]);
  const port = f.port as number;
  if (port < 0 || port > 65535) throw new UsageError(`--port: expected 0..65535, got '${port}'`);
  const queueSize = positive("queue-size", f["queue-size"], 0);
  const maxBodyBytes = positive("max-body-bytes", f["max-body-bytes"]);
  const batch = batchFlags(f["max-streams"], f["max-batch-tokens"], f["kv-cache-mb"]);
  const maxRequestSeconds = positive("max-request-seconds", f["max-request-seconds"], 0);
  const ttl = positive("context-ttl", f["context-ttl"]);
  const maxMb = positive("context-max-mb", f["context-max-mb"], 0);
  const maxTokensPerRequest = positive("max-tokens-per-request", f["max-tokens-per-request"]);
  const maxQuestions = positive("max-questions", f["max-questions"]);
  const headerTimeoutS = positive("header-timeout-s", f["header-timeout-s"], 0) ?? DEFAULT_HEADER_TIMEOUT_S;
  const idleTimeoutS = positive("idle-timeout-s", f["idle-timeout-s"], 0) ?? DEFAULT_IDLE_TIMEOUT_S;
  const maxConnections = positive("max-connections", f["max-connections"]) ?? DEFAULT_MAX_CONNECTIONS;
  const maxConnectionsPerPeer = positive("max-connections-per-peer", f["max-connections-per-peer"]) ?? 0;
  const bodyTimeoutS = positive("body-timeout-s", f["body-timeout-s"], 0.001);
  const stallS = positive("stream-stall-timeout-s", f["stream-stall-timeout-s"], 0);
  if (maxQuestions !== undefined && maxQuestions > MAX_QUESTIONS) {
    throw new UsageError(`--max-questions: expected 1 to ${MAX_QUESTIONS}, got '${maxQuestions}'`);
  }
  const contextStore = contextStoreFlag(f["context-store"] as string | undefined);
  const apiKeys = await apiKeysOf(
    f["api-key"] as string | undefined,
    f["api-key-file"] as string | undefined,
    f["api-keys-file"] as string | undefined,
  );
  const host = f.host as string;

  const adapterFlag = f.adapter as string | undefined;
  const model = await loadModel({
    model: f.model as string | undefined,
    adapter: adapterFlag === "none" ? null : adapterFlag,
    executor,
    weightFormat,
    kvCache,
    threads,
  });
  const app = createApp(model, {
    apiKeys,
    ...(queueSize !== undefined ? { queueSize } : {}),
    ...(maxBodyBytes !== undefined ? { maxBodyBytes } : {}),
    ...batch,
    ...(maxRequestSeconds !== undefined
      ? { maxRequestMs: maxRequestSeconds === 0 ? null : maxRequestSeconds * 1000 }
      : {}),
    ...(ttl !== undefined ? { contextTtlMs: ttl * 1000 } : {}),
    ...(maxMb !== undefined ? { contextMaxBytes: Math.floor(maxMb * 2 ** 20) } : {}),
    ...(maxTokensPerRequest !== undefined ? { maxTokensPerRequest } : {}),
    ...(maxQuestions !== undefined ? { maxQuestions } : {}),
    ...(bodyTimeoutS !== undefined ? { bodyTimeoutMs: bodyTimeoutS * 1000 } : {}),
    ...(stallS !== undefined ? { streamStallMs: stallS === 0 ? null : stallS * 1000 } : {}),
    sharedStore: contextStore ? new RedisBlobs(contextStore) : null,
  });
  if (apiKeys.length > 1) {
    console.error(`${apiKeys.length} API keys: ${apiKeys.map((k) => k.label).join(", ")}`);
  }
  if (!["127.0.0.1", "localhost", "::1"].includes(host) && apiKeys.length === 0) {
    console.warn(
      `warning: listening on ${host} without --api-key: anyone who can reach it can use the model`,
    );
  }

  // Deno.serve behind a TCP front that enforces the header and idle deadlines (front/front.ts).
  const server = await serveFronted({
    hostname: host,
    port,
    headerTimeoutMs: headerTimeoutS * 1000,
    idleTimeoutMs: idleTimeoutS * 1000,
    maxConnections,
    maxConnectionsPerPeer,
    onError: (e) => errorResponse(toHttpError(e)), // a JSON body, never a stack trace
  }, app.handler);
  // The front's connection counts, read from its worker now and then (a scrape reads the last).
  let front = { open: 0, evicted: 0 };
  const refresh = () => server.stats().then((s) => front = s, () => {});
  const poll = setInterval(refresh, 1000);
  refresh();
  app.metrics.gauge("judgeq_connections_open", "Connections open through the TCP front.", () => front.open);
  app.metrics.gauge(
    "judgeq_connections_evicted_total",
    "Connections closed at --max-connections to make room for another address's (the heaviest address's oldest idle one).",
    () => front.evicted,
    "counter",
  );
  const addr = server.addr;
  const base = `http://${addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname}:${addr.port}`;
  const auth = apiKeys.length ? ` -H 'authorization: Bearer <key>'` : "";
  const adapter = model.adapter ? `Judge Q adapter (${model.adapter.n} soft tokens)` : "no Judge Q adapter";
  if (contextStore) console.error(`contexts shared in ${redact(contextStore)}`);
  console.log(
    `judgeq serving ${model.name} on ${model.executor.kind} with ${adapter} at ${base} - try: curl -s ${base}/v1/generate` +
      `${auth} -H 'content-type: application/json' -d '{"prompt":"Once upon a time","max_tokens":32}'`,
  );

  // Graceful stop: refuse new work, let accepted requests (queued ones too) finish, then free and exit.
  const stopped = Promise.withResolvers<void>();
  let stopping = false;
  const stop = (signal: Deno.Signal) => {
    if (stopping) {
      console.error(`${signal} again: exiting now`);
      Deno.exit(130);
    }
    stopping = true;
    clearInterval(poll);
    console.error(`${signal}: draining ${app.queue.inFlight + app.queue.depth} job(s), then exiting`);
    app.drain();
    const closed = server.shutdown();
    // Jobs finish; then connections get a grace period (a client trickling a body could hold one forever).
    app.queue.idle()
      .then(() => Promise.race([closed, new Promise((r) => setTimeout(r, SHUTDOWN_GRACE_MS))]))
      .finally(() => stopped.resolve());
  };
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, () => stop(s));
  await stopped.promise;
  await app.close();
  model.executor.dispose();
  console.error("stopped");
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) console.error(`error: ${e.message}\n${usage("deno task start", SPEC)}`);
    else if (e instanceof JudgeQError) console.error(`error: ${e.message}`);
    else console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(2);
  }
}
