/**
 * The HTTP service as a `{ fetch }` handler, the shape `deno serve`, Deno Deploy and Supabase Edge
 * Functions take: the same routes as `deno task start` (server/app.ts), with the model loaded on the
 * first request (nothing happens when this module is imported).
 *
 * ```sh
 * deno serve --allow-read=fixtures/models/stories260K serve.ts       # the embedded model, nothing else
 * JUDGEQ_MODEL=/models/m JUDGEQ_API_KEY=secret deno serve --allow-read=/models/m --allow-env serve.ts
 * ```
 *
 * Configuration: an options object (`createServeHandler({ model, adapter, executor, app })`), or, for
 * the default export, these environment variables (read only where env permission is granted; unset
 * ones take the defaults): JUDGEQ_MODEL (a model directory, or an http(s) URL of one, fetched: needs
 * net permission instead of read), JUDGEQ_ADAPTER (a file or URL, `none` for no adapter; default the
 * model's judgeq.safetensors), JUDGEQ_EXECUTOR (auto|gpu|wasm|cpu), JUDGEQ_THREADS, JUDGEQ_WEIGHTS
 * (auto|f32|f16|int8), JUDGEQ_API_KEY, or JUDGEQ_API_KEYS (several keys, one a line as in
 * --api-keys-file), JUDGEQ_QUEUE_SIZE, JUDGEQ_MAX_STREAMS, JUDGEQ_MAX_REQUEST_SECONDS (0: no limit),
 * JUDGEQ_MAX_BODY_BYTES, JUDGEQ_CONTEXT_TTL (seconds), JUDGEQ_CONTEXT_MAX_MB. Connection deadlines
 * (header, idle) are the host's: `deno serve` and edge runtimes own the socket.
 * @module
 */
import type { Model } from "./core/engine.ts";
import { isExecutorChoice } from "./io/executor_choice.ts";
import { WEIGHT_CHOICES, type WeightFormatChoice } from "./core/weight_formats.ts";
import { loadModel, type LoadOptions } from "./io/runtime.ts";
import { type App, type AppOptions, createApp } from "./server/app.ts";
import { parseKeysFile } from "./server/keys.ts";

export interface ServeOptions extends Omit<LoadOptions, "warn"> {
  /** Options of the HTTP application (API key, queue size, body limit, context TTL and memory cap). */
  app?: Partial<AppOptions>;
  /** Loads the model instead of `loadModel` (e.g. `loadModelFromBytes` over bundled bytes). */
  load?: () => Promise<Model>;
}

export interface ServeHandler {
  fetch(request: Request): Promise<Response>;
  /** The application once the model is loaded (metrics, drain, close). */
  app(): Promise<App>;
}

/** A `{ fetch }` handler over `createApp`; the model is loaded once, on the first request. */
export function createServeHandler(options: ServeOptions | (() => ServeOptions) = {}): ServeHandler {
  let loading: Promise<App> | null = null;
  const app = () => {
    loading ??= (async () => {
      const o = typeof options === "function" ? options() : options;
      const { app: appOptions, load, ...loadOptions } = o;
      const model = load ? await load() : await loadModel(loadOptions);
      return createApp(model, appOptions);
    })();
    // A failed load is reported on this request and retried on the next one.
    loading.catch(() => loading = null);
    return loading;
  };
  return {
    app,
    async fetch(request: Request): Promise<Response> {
      let a: App;
      try {
        a = await app();
      } catch (e) {
        const message = `model not loaded: ${e instanceof Error ? e.message : String(e)}`;
        console.error(message);
        return Response.json({ error: { type: "unavailable", message, param: null } }, { status: 503 });
      }
      return await a.handler(request);
    },
  };
}

type Env = (name: string) => string | undefined;

/**
 * Deno's environment where env permission is granted for the variable, nothing otherwise (no prompt,
 * no error: `deno serve --allow-read=DIR serve.ts` runs on the defaults).
 */
const denoEnv: Env = (name) => {
  const deno = (globalThis as {
    Deno?: {
      env: { get(k: string): string | undefined };
      permissions: { querySync(d: { name: "env"; variable: string }): { state: string } };
    };
  }).Deno;
  if (!deno) return undefined;
  if (deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") return undefined;
  return deno.env.get(name);
};

function number(env: Env, name: string, min: number): number | undefined {
  const v = env(name);
  if (v === undefined || v === "") return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) throw new Error(`${name}: expected a number >= ${min}, got '${v}'`);
  return n;
}

/** ServeOptions from environment variables (see the module documentation). */
export function serveOptionsFromEnv(env: Env = denoEnv): ServeOptions {
  const executor = env("JUDGEQ_EXECUTOR") || undefined;
  if (executor !== undefined && !isExecutorChoice(executor)) {
    throw new Error(`JUDGEQ_EXECUTOR: expected auto|gpu|wasm|cpu|reference, got '${executor}'`);
  }
  const weights = env("JUDGEQ_WEIGHTS") || undefined;
  if (weights !== undefined && !(WEIGHT_CHOICES as readonly string[]).includes(weights)) {
    throw new Error(`JUDGEQ_WEIGHTS: expected ${WEIGHT_CHOICES.join("|")}, got '${weights}'`);
  }
  const adapter = env("JUDGEQ_ADAPTER") || undefined;
  const ttl = number(env, "JUDGEQ_CONTEXT_TTL", 1);
  const maxMb = number(env, "JUDGEQ_CONTEXT_MAX_MB", 0);
  const queueSize = number(env, "JUDGEQ_QUEUE_SIZE", 0);
  const maxBodyBytes = number(env, "JUDGEQ_MAX_BODY_BYTES", 1);
  const maxStreams = number(env, "JUDGEQ_MAX_STREAMS", 1);
  const maxRequestS = number(env, "JUDGEQ_MAX_REQUEST_SECONDS", 0);
  const apiKey = env("JUDGEQ_API_KEY") || null, apiKeysText = env("JUDGEQ_API_KEYS") || null;
  if (apiKey !== null && apiKeysText !== null) {
    throw new Error("give JUDGEQ_API_KEY or JUDGEQ_API_KEYS, not both");
  }
  const app: Partial<AppOptions> = {
    apiKey,
    // Several keys, one per line as in --api-keys-file (LABEL:KEY or KEY): contexts belong to their key.
    ...(apiKeysText !== null ? { apiKeys: parseKeysFile(apiKeysText, "JUDGEQ_API_KEYS") } : {}),
    ...(maxStreams !== undefined ? { maxStreams } : {}),
    ...(maxRequestS !== undefined ? { maxRequestMs: maxRequestS === 0 ? null : maxRequestS * 1000 } : {}),
    ...(queueSize !== undefined ? { queueSize } : {}),
    ...(maxBodyBytes !== undefined ? { maxBodyBytes } : {}),
    ...(ttl !== undefined ? { contextTtlMs: ttl * 1000 } : {}),
    ...(maxMb !== undefined ? { contextMaxBytes: Math.floor(maxMb * 2 ** 20) } : {}),
  };
  return {
    model: env("JUDGEQ_MODEL") || undefined,
    adapter: adapter === "none" ? null : adapter,
    executor,
    threads: number(env, "JUDGEQ_THREADS", 1),
    weightFormat: weights as WeightFormatChoice | undefined,
    app,
  };
}

/** `deno serve serve.ts`: configured by the environment when the first request arrives. */
export default createServeHandler(() => serveOptionsFromEnv());
