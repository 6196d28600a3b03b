// deno-lint-ignore-file no-explicit-any
/**
 * Test support for the server suites: one loaded model per test file, and a real HTTP server on a
 * random loopback port that each test closes (Deno's sanitizers check that it does).
 */
import type { Model } from "../core/engine.ts";
import { loadModel } from "../io/runtime.ts";
import { type App, type AppOptions, createApp } from "../server/app.ts";
import { errorResponse, toHttpError } from "../server/errors.ts";
import { sampleValue } from "../server/metrics.ts";
import { readSse } from "../server/sse.ts";

let shared: Promise<Model> | null = null;

/** The embedded stories260K on the CPU executor (fast, deterministic), without an adapter. */
export function testModel(): Promise<Model> {
  return (shared ??= loadModel({ executor: "cpu", adapter: null, warn: () => {} }));
}

/**
 * The text a generation of `tokens` after `prefix` adds: what the server streams and returns. (The
 * engine's generateText decodes the tokens alone, which drops a first token's leading space.)
 */
export function continuation(model: Model, prefix: string | number[], tokens: number[]): string {
  const ids = typeof prefix === "string" ? model.tokenizer.encode(prefix, { addBos: true }) : prefix;
  const before = model.tokenizer.decode(ids, { skipSpecial: true });
  return model.tokenizer.decode([...ids, ...tokens], { skipSpecial: true }).slice(before.length);
}

export interface TestServer {
  base: string;
  app: App;
  model: Model;
  /** fetch() against the server: JSON body, returns status and parsed JSON (or text). */
  post(path: string, body: unknown, headers?: Record<string, string>): Promise<{ status: number; json: any }>;
  get(path: string, headers?: Record<string, string>): Promise<{ status: number; json: any; text: string }>;
  /** A streaming POST: every `data:` payload, parsed unless it is [DONE]. */
  stream(path: string, body: unknown): Promise<{ status: number; events: any[]; done: boolean }>;
  metric(series: string): Promise<number>;
  close(): Promise<void>;
}

export async function startServer(options: Partial<AppOptions> = {}, model?: Model): Promise<TestServer> {
  const m = model ?? await testModel();
  const app = createApp(m, { log: () => {}, ...options });
  const listening = Promise.withResolvers<Deno.NetAddr>();
  const server = Deno.serve(
    {
      hostname: "127.0.0.1",
      port: 0,
      onListen: (a) => listening.resolve(a as Deno.NetAddr),
      onError: (e) => errorResponse(toHttpError(e, () => {})),
    },
    app.handler,
  );
  const addr = await listening.promise;
  const base = `http://127.0.0.1:${addr.port}`;
  const parse = (text: string) => {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  };
  const t: TestServer = {
    base,
    app,
    model: m,
    async post(path, body, headers = {}) {
      const r = await fetch(base + path, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: typeof body === "string" ? body : JSON.stringify(body),
      });
      return { status: r.status, json: parse(await r.text()) };
    },
    async get(path, headers = {}) {
      const r = await fetch(base + path, { headers });
      const text = await r.text();
      return { status: r.status, json: parse(text), text };
    },
    async stream(path, body) {
      const r = await fetch(base + path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!r.headers.get("content-type")?.startsWith("text/event-stream")) {
        return { status: r.status, events: [parse(await r.text())], done: false };
      }
      const events: any[] = [];
      let done = false;
      for await (const data of readSse(r.body!)) {
        if (data === "[DONE]") done = true;
        else events.push(JSON.parse(data));
      }
      return { status: r.status, events, done };
    },
    async metric(series) {
      const { text } = await t.get(
        "/metrics",
        options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {},
      );
      return sampleValue(text, series);
    },
    async close() {
      await server.shutdown();
      await app.close();
    },
  };
  return t;
}
