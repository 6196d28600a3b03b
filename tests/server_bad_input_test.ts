/**
 * Bad input, table-driven: each case's status, error type and `param`; never a stack trace, never a
 * hung connection; and after all of them the server still answers correctly.
 */
import { generateText } from "../core/engine.ts";
import { ERROR_TYPES } from "../server/errors.ts";
import { startServer } from "./server_testing.ts";
import { assert, assertEquals } from "./helpers.ts";

const KEY = "test-key";
const OK = { prompt: "Once upon a time", max_tokens: 4 };

interface Case {
  name: string;
  method?: string;
  path?: string;
  /** A JSON-able body, or raw text (sent as is). */
  body?: unknown;
  raw?: string | ReadableStream<Uint8Array>;
  headers?: Record<string, string>;
  noKey?: boolean;
  /** Cleanup once answered. */
  after?: () => void;
  status: number;
  param: string | null;
}

const gen = (body: unknown, status: number, param: string | null, name: string): Case => ({
  name,
  body,
  status,
  param,
});
const comp = (kv: unknown, status: number, param: string | null, name: string) =>
  gen({ ...OK, kv_compression: kv }, status, param, name);

/** OpenAI fields that would change the output and are not implemented (issue 14, finding 5). */
const chatMsgs = [{ role: "user", content: "Hi" }];
const unsupported = (field: string, value: unknown, path = "/v1/chat/completions"): Case => ({
  name: `openai: ${field} = ${JSON.stringify(value)} is refused, naming it`,
  path,
  body: path === "/v1/completions"
    ? { prompt: "Once", [field]: value }
    : { messages: chatMsgs, [field]: value },
  status: 400,
  param: field,
});
const UNSUPPORTED: Case[] = [
  unsupported("logit_bias", { "50256": -100 }),
  unsupported("logit_bias", { "13": 5 }, "/v1/completions"),
  unsupported("presence_penalty", 0.5),
  unsupported("frequency_penalty", 1),
  unsupported("frequency_penalty", -1, "/v1/completions"),
  unsupported("presence_penalty", 3),
  unsupported("response_format", { type: "json_object" }),
  unsupported("response_format", { type: "json_schema", json_schema: { name: "x", schema: {} } }),
  unsupported("tools", [{ type: "function", function: { name: "f", parameters: {} } }]),
  unsupported("tool_choice", "required"),
  unsupported("tool_choice", { type: "function", function: { name: "f" } }),
  unsupported("functions", [{ name: "f", parameters: {} }]),
  unsupported("function_call", { name: "f" }),
  unsupported("n", 2),
  unsupported("logprobs", true),
  unsupported("audio", { voice: "alloy", format: "wav" }),
  unsupported("modalities", ["text", "audio"]),
  unsupported("repetition_penalty", 1.3),
  unsupported("min_p", 0.1),
  unsupported("guided_json", { type: "object" }),
];

/** Per-request limits of the table's server (issue 14, finding 4): --max-tokens-per-request, --max-questions. */
const LIMIT_TOKENS = 256, LIMIT_QUESTIONS = 8;
const who = (n: number) => Array.from({ length: n }, () => "Who?");
const LIMITS: Case[] = [
  gen(
    { context: "a story", questions: who(9), max_tokens: 2 },
    400,
    "questions",
    "more questions than --max-questions",
  ),
  gen(
    { context: "a story", questions: who(8), max_tokens: 64, ignore_eos: true },
    400,
    "max_tokens",
    "8 questions x 64 tokens over --max-tokens-per-request 256",
  ),
  gen({ ...OK, max_tokens: 257 }, 400, "max_tokens", "max_tokens over --max-tokens-per-request"),
  {
    name: "a kept context's questions over --max-questions (before the context is looked up)",
    path: "/v1/contexts/ctx_nope/generate",
    body: { questions: who(9) },
    status: 400,
    param: "questions",
  },
  {
    name: "chat max_tokens over --max-tokens-per-request",
    path: "/v1/chat/completions",
    body: { messages: chatMsgs, max_tokens: 300 },
    status: 400,
    param: "max_tokens",
  },
  {
    name: "completions max_tokens over --max-tokens-per-request",
    path: "/v1/completions",
    body: { prompt: "Once", max_tokens: 1000 },
    status: 400,
    param: "max_tokens",
  },
];

const CASES: Case[] = [
  ...UNSUPPORTED,
  ...LIMITS,
  { name: "malformed JSON", raw: '{"prompt": "x",', status: 400, param: null },
  { name: "empty body", raw: "", status: 400, param: null },
  { name: "array instead of object", raw: "[1,2]", status: 400, param: null },
  gen({ prompt: 42 }, 400, "prompt", "prompt of the wrong type"),
  gen({ prompt: "" }, 400, "prompt", "empty prompt"),
  gen({ ...OK, max_tokens: "4" }, 400, "max_tokens", "max_tokens as a string"),
  gen({ ...OK, max_tokens: 1e300 }, 400, "max_tokens", "huge max_tokens"),
  gen({ ...OK, max_tokens: -1 }, 400, "max_tokens", "negative max_tokens"),
  gen({ ...OK, max_tokens: 1.5 }, 400, "max_tokens", "fractional max_tokens"),
  gen({ ...OK, temperature: -0.5 }, 400, "temperature", "negative temperature"),
  gen({ ...OK, top_p: 0 }, 400, "top_p", "top_p of zero"),
  gen({ ...OK, seed: "x" }, 400, "seed", "seed of the wrong type"),
  gen({ ...OK, stop: [12345] }, 400, "stop.0", "stop token id outside the vocabulary"),
  gen({ ...OK, stop: { a: 1 } }, 400, "stop", "stop of the wrong type"),
  gen({ ...OK, bogus: true }, 400, "bogus", "unknown field"),
  gen(
    { ...OK, allow_special_tokens: "yes" },
    400,
    "allow_special_tokens",
    "allow_special_tokens not a boolean",
  ),
  gen({ ...OK, context: "a story" }, 400, "context", "prompt and context together"),
  gen({ context: "a story", max_tokens: 2 }, 400, "questions", "context without questions"),
  gen({ context: "a story", questions: [] }, 400, "questions", "empty questions"),
  gen({ max_tokens: 2 }, 400, "prompt", "neither prompt nor context"),
  gen({ ...OK, model: "gpt-4" }, 404, "model", "a model this server does not serve"),
  comp({ method: "snapkv", budget: -8 }, 400, "kv_compression.budget", "negative budget"),
  comp({ method: "snapkv", budget: 1e12 }, 400, "kv_compression.budget", "huge budget"),
  comp({ method: "snapkv", budget: 2.5 }, 400, "kv_compression.budget", "fractional budget"),
  comp({ method: "magic", budget: 8 }, 400, "kv_compression.method", "unknown method"),
  comp({ budget: 8 }, 400, "kv_compression.method", "missing method"),
  comp({ method: "snapkv", budget: 8, bogus: 1 }, 400, "kv_compression.bogus", "unknown compression option"),
  comp({ method: "snapkv", compression_ratio: 1 }, 400, "kv_compression.compression_ratio", "ratio of 1"),
  comp({ method: "snapkv", budget: 8, kernel: 100 }, 400, "kv_compression.kernel", "kernel out of range"),
  comp({ method: "snapkv", budget: 8, window: 16 }, 422, "kv_compression.window", "window above the budget"),
  comp(
    { method: "snapkv", budget: 8, compression_ratio: 0.5 },
    422,
    "kv_compression.budget",
    "budget and ratio together",
  ),
  comp(
    { method: "streaming_llm", budget: 4, sinks: 8 },
    422,
    "kv_compression.sinks",
    "sinks above the budget",
  ),
  comp({ method: "snapkv" }, 422, "kv_compression.budget", "neither budget nor ratio"),
  comp({ method: "judgeq", budget: 2 }, 422, "kv_compression.method", "judgeq without an adapter"),
  gen({ prompt: "Once upon a time ".repeat(200), max_tokens: 2 }, 422, "prompt", "prompt beyond the context"),
  gen({ ...OK, stream: true, max_tokens: -3 }, 400, "max_tokens", "bad streaming request answers JSON"),
  { name: "oversize body", body: { prompt: "x".repeat(10_000) }, status: 413, param: null },
  {
    name: "oversize chunked body (no content-length)",
    raw: new ReadableStream({
      start(c) {
        for (let i = 0; i < 8; i++) c.enqueue(new TextEncoder().encode(" ".repeat(1024)));
        c.close();
      },
    }),
    status: 413,
    param: null,
  },
  (() => {
    let sending!: ReadableStreamDefaultController<Uint8Array>;
    return {
      name: "a body that never finishes",
      raw: new ReadableStream({
        start(c) {
          sending = c;
          c.enqueue(new TextEncoder().encode('{"prompt": "Once'));
        },
      }),
      after: () => sending.close(), // lets the connection end, so the test server can shut down
      status: 408,
      param: null,
    };
  })(),
  { name: "missing API key", body: OK, noKey: true, status: 401, param: null },
  {
    name: "wrong API key",
    body: OK,
    noKey: true,
    headers: { authorization: "Bearer nope" },
    status: 401,
    param: null,
  },
  {
    name: "unknown context id",
    path: "/v1/contexts/ctx_nope/generate",
    body: { question: "Who?" },
    status: 404,
    param: "id",
  },
  {
    name: "delete an unknown context",
    method: "DELETE",
    path: "/v1/contexts/ctx_nope",
    status: 404,
    param: "id",
  },
  {
    name: "bad escape in a context id",
    method: "GET",
    path: "/v1/contexts/%E0%A4%A",
    status: 404,
    param: null,
  },
  {
    name: "question and questions together",
    path: "/v1/contexts/ctx_nope/generate",
    body: { question: "a", questions: ["b"] },
    status: 400,
    param: "questions",
  },
  {
    name: "context of the wrong type",
    path: "/v1/contexts",
    body: { context: ["a"] },
    status: 400,
    param: "context",
  },
  {
    name: "context beyond the model's context",
    path: "/v1/contexts",
    body: { context: "Once upon a time ".repeat(200) },
    status: 422,
    param: "context",
  },
  // Issue 14, finding 7: the key before the route, so routes and methods cannot be mapped without it.
  {
    name: "unknown route without the key",
    method: "GET",
    path: "/v2/everything",
    noKey: true,
    status: 401,
    param: null,
  },
  {
    name: "wrong method without the key",
    method: "DELETE",
    path: "/v1/models",
    noKey: true,
    status: 401,
    param: null,
  },
  { name: "HEAD on a POST route", method: "HEAD", status: 405, param: null },
  { name: "wrong method on /v1/generate", method: "GET", status: 405, param: null },
  { name: "wrong method on /v1/models", method: "DELETE", path: "/v1/models", status: 405, param: null },
  { name: "unknown route", method: "GET", path: "/v2/everything", status: 404, param: null },
  {
    name: "chat: unknown role",
    path: "/v1/chat/completions",
    body: { messages: [{ role: "wizard", content: "hi" }] },
    status: 400,
    param: "messages.0.role",
  },
  {
    name: "chat: content of the wrong type",
    path: "/v1/chat/completions",
    body: { messages: [{ role: "user", content: 5 }] },
    status: 400,
    param: "messages.0.content",
  },
  {
    // Short enough to pass admission by length, too long once tokenized: the error names the chat's field.
    name: "chat: messages past the context once tokenized",
    path: "/v1/chat/completions",
    body: { messages: [{ role: "user", content: "Once upon a time, ".repeat(170) }] },
    status: 422,
    param: "messages",
  },
  {
    name: "chat: no messages field",
    path: "/v1/chat/completions",
    body: { model: "stories260K" },
    status: 400,
    param: "messages",
  },
  {
    name: "completions: echo unsupported",
    path: "/v1/completions",
    body: { prompt: "x", echo: true },
    status: 400,
    param: "echo",
  },
  {
    name: "completions: two prompts",
    path: "/v1/completions",
    body: { prompt: ["a", "b"] },
    status: 400,
    param: "prompt",
  },
];

Deno.test(`bad input: ${CASES.length} cases, each with its status and param; the server survives`, async () => {
  assert(CASES.length >= 20);
  const s = await startServer({
    apiKey: KEY,
    maxBodyBytes: 4096,
    bodyTimeoutMs: 200,
    maxTokensPerRequest: LIMIT_TOKENS,
    maxQuestions: LIMIT_QUESTIONS,
  });
  try {
    for (const c of CASES) {
      const method = c.method ?? "POST";
      const headers: Record<string, string> = {
        ...(c.noKey ? {} : { authorization: `Bearer ${KEY}` }),
        ...c.headers,
      };
      if (method === "POST") headers["content-type"] = "application/json";
      const body = c.raw !== undefined ? c.raw : c.body !== undefined ? JSON.stringify(c.body) : undefined;
      const r = await fetch(s.base + (c.path ?? "/v1/generate"), { method, headers, body });
      const text = await r.text();
      c.after?.();
      assertEquals(r.status, c.status, `${c.name}: ${text}`);
      if (method === "HEAD") {
        assertEquals(text, "", `${c.name}: no body`);
        assert(r.headers.get("allow")?.includes("POST"), `${c.name}: Allow header`);
        continue;
      }
      assert(r.headers.get("content-type")?.startsWith("application/json"), `${c.name}: JSON error`);
      const err = JSON.parse(text).error;
      assertEquals(err.param, c.param, `${c.name}: ${text}`);
      assertEquals(err.type, ERROR_TYPES[c.status], c.name);
      assert(typeof err.message === "string" && err.message.length > 0, c.name);
      assert(!/\n\s+at /.test(err.message) && !text.includes(".ts:"), `${c.name}: no stack trace in ${text}`);
      if (c.status === 405) assert(r.headers.get("allow"), `${c.name}: Allow header`);
    }
    // Still healthy and still right.
    const want = await generateText(s.model, { prompt: OK.prompt, maxTokens: 4 });
    const ok = await s.post("/v1/generate", OK, { authorization: `Bearer ${KEY}` });
    assertEquals([ok.status, ok.json.text], [200, want.outputs[0].text]);
    assertEquals(await s.metric("judgeq_jobs_in_flight"), 0);
    assertEquals(await s.metric('judgeq_jobs_total{outcome="error"}'), 0); // every bad request was refused before the queue
  } finally {
    await s.close();
  }
});

/** Issue 14, finding 3: special-token text in a request is text; `allow_special_tokens: true` parses it. */
Deno.test("attack: literal <s>, </s>, <unk> in prompts, questions, contexts and chat never become control tokens", async () => {
  const s = await startServer({ apiKey: KEY });
  const auth = { authorization: `Bearer ${KEY}` };
  const tok = s.model.tokenizer;
  const attack = "hello </s> world <unk> <s> again";
  const asText = tok.encode(attack, { addBos: true });
  const parsed = tok.encode(attack, { addBos: true, allowSpecial: true });
  assert(asText.slice(1).every((id) => !tok.isSpecial(id)), `${asText}`);
  assertEquals(parsed.filter((id) => tok.isSpecial(id)), [1, 2, 0, 1]);
  try {
    // POST /v1/generate {"prompt": "hello </s> world <unk> <s> again", "max_tokens": 4}
    const g = await s.post("/v1/generate", { prompt: attack, max_tokens: 4 }, auth);
    assertEquals([g.status, g.json.usage.prompt_tokens], [200, asText.length]);
    const want = await generateText(s.model, { prompt: asText, maxTokens: 4 });
    assertEquals(g.json.text, want.outputs[0].text);
    const opted = await s.post(
      "/v1/generate",
      { prompt: attack, max_tokens: 4, allow_special_tokens: true },
      auth,
    );
    assertEquals([opted.status, opted.json.usage.prompt_tokens], [200, parsed.length]);
    // The OpenAI endpoints: a completion's prompt, a chat message's content.
    const c = await s.post("/v1/completions", { prompt: attack, max_tokens: 2 }, auth);
    assertEquals([c.status, c.json.usage.prompt_tokens], [200, asText.length]);
    const chat = await s.post("/v1/chat/completions", {
      messages: [{ role: "user", content: attack }],
      max_tokens: 2,
    }, auth);
    assertEquals([chat.status, chat.json.usage.prompt_tokens], [200, asText.length]);
    const chatOpted = await s.post("/v1/chat/completions", {
      messages: [{ role: "user", content: attack }],
      max_tokens: 2,
      allow_special_tokens: true,
    }, auth);
    assertEquals([chatOpted.status, chatOpted.json.usage.prompt_tokens], [200, parsed.length]);
    // A context and its questions, in one request and against a kept context.
    const q = "</s> Who?";
    const qText = tok.encode(q, { addBos: false });
    assert(qText.every((id) => !tok.isSpecial(id)));
    const cq = await s.post("/v1/generate", { context: attack, questions: [q], max_tokens: 2 }, auth);
    assertEquals([cq.status, cq.json.usage.prompt_tokens], [200, asText.length + qText.length]);
    const kept = await s.post("/v1/contexts", { context: attack }, auth);
    assertEquals([kept.status, kept.json.context_tokens], [200, asText.length]);
    const keptOpted = await s.post("/v1/contexts", { context: attack, allow_special_tokens: true }, auth);
    assertEquals([keptOpted.status, keptOpted.json.context_tokens], [200, parsed.length]);
    const a = await s.post(`/v1/contexts/${kept.json.id}/generate`, { question: q, max_tokens: 2 }, auth);
    assertEquals([a.status, a.json.usage.prompt_tokens], [200, qText.length]);
    const aOpted = await s.post(
      `/v1/contexts/${kept.json.id}/generate`,
      { question: q, max_tokens: 2, allow_special_tokens: true },
      auth,
    );
    assertEquals([aOpted.status, aOpted.json.usage.prompt_tokens], [
      200,
      tok.encode(q, { addBos: false, allowSpecial: true }).length,
    ]);
  } finally {
    await s.close();
  }
});

/** The same fields at their no-op values are accepted, and the output is unchanged. */
Deno.test("openai: unsupported fields at their no-op values are accepted and change nothing", async () => {
  const s = await startServer();
  try {
    const base = { messages: chatMsgs, max_tokens: 4, temperature: 0 };
    const plain = await s.post("/v1/chat/completions", base);
    assertEquals(plain.status, 200);
    const noOps = await s.post("/v1/chat/completions", {
      ...base,
      logit_bias: {},
      presence_penalty: 0,
      frequency_penalty: 0,
      response_format: { type: "text" },
      tools: [],
      tool_choice: "none",
      parallel_tool_calls: false,
      modalities: ["text"],
      n: 1,
      logprobs: false,
      user: "someone",
      store: false,
      metadata: { a: "b" },
    });
    assertEquals(noOps.status, 200, JSON.stringify(noOps.json));
    assertEquals(noOps.json.choices[0].message.content, plain.json.choices[0].message.content);
    const c = await s.post("/v1/completions", {
      prompt: "Once",
      max_tokens: 4,
      temperature: 0,
      logit_bias: { "13": 0 },
      presence_penalty: null,
    });
    assertEquals(c.status, 200, JSON.stringify(c.json));
  } finally {
    await s.close();
  }
});

/** A request written byte for byte (fetch would resolve "%2e%2e" and "\\" itself): status, headers, body. */
async function rawHttp(base: string, head: string): Promise<{ status: number; head: string; body: string }> {
  const port = Number(new URL(base).port);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(head));
  let text = "";
  const buf = new Uint8Array(4096);
  for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
    text += new TextDecoder().decode(buf.subarray(0, n));
  }
  conn.close();
  const [top, body = ""] = text.split("\r\n\r\n");
  return { status: Number(top.split(" ")[1]), head: top.toLowerCase(), body };
}

Deno.test("attack: paths as sent, the key before the route, HEAD where GET is served", async () => {
  const s = await startServer({ apiKey: KEY });
  const req = (line: string, key = true) =>
    rawHttp(
      s.base,
      `${line} HTTP/1.1\r\nhost: x\r\n${key ? `authorization: Bearer ${KEY}\r\n` : ""}` +
        `content-type: application/json\r\ncontent-length: 16\r\nconnection: close\r\n\r\n{"question":"a"}`,
    );
  try {
    // POST /v1/contexts/%2e%2e/generate is a context called "..", not /v1/generate.
    const dots = await req("POST /v1/contexts/%2e%2e/generate");
    assertEquals(dots.status, 404, dots.body);
    assertEquals(JSON.parse(dots.body).error.param, "id");
    const dotsNoKey = await req("POST /v1/contexts/%2e%2e/generate", false);
    assertEquals(dotsNoKey.status, 401, dotsNoKey.body);
    for (
      const line of [
        "POST /v1\\generate",
        "POST /v1/x/../generate",
        "POST /v1/%2e/generate",
        "POST //v1/generate",
      ]
    ) {
      const r = await req(line);
      assertEquals(r.status, 404, `${line}: ${r.body}`);
      assertEquals(JSON.parse(r.body).error.type, "not_found_error", line);
    }
    // HEAD where GET is served: the GET's status and headers, no body; /healthz needs no key.
    const head = await rawHttp(s.base, "HEAD /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assertEquals([head.status, head.body], [200, ""]);
    assert(head.head.includes("content-type: application/json"), head.head);
    const models = await fetch(s.base + "/v1/models", {
      method: "HEAD",
      headers: { authorization: `Bearer ${KEY}` },
    });
    assertEquals([models.status, await models.text()], [200, ""]);
    const modelsNoKey = await fetch(s.base + "/v1/models", { method: "HEAD" });
    assertEquals([modelsNoKey.status, await modelsNoKey.text()], [401, ""]);
    const allow = await fetch(s.base + "/v1/models", {
      method: "PUT",
      headers: { authorization: `Bearer ${KEY}` },
    });
    assertEquals([allow.status, allow.headers.get("allow")], [405, "GET, HEAD"]);
    await allow.body?.cancel();
  } finally {
    await s.close();
  }
});

Deno.test("limits: default max_tokens lowered to fit the per-request limit; chat's bounded by the context left", async () => {
  const s = await startServer({ maxTokensPerRequest: LIMIT_TOKENS, maxQuestions: LIMIT_QUESTIONS });
  const free = await startServer();
  try {
    // {"context": "a story", "questions": ["Who?" x 8], "ignore_eos": true}: 64 each by default, 32 fit.
    const many = await s.post("/v1/generate", { context: "a story", questions: who(8), ignore_eos: true });
    assertEquals(many.status, 200, JSON.stringify(many.json));
    assertEquals(many.json.usage.completion_tokens, LIMIT_TOKENS);
    assert(many.json.outputs.every((o: { finish_reason: string }) => o.finish_reason === "length"));
    // Chat without max_tokens: what the context leaves after the prompt, then the server's limit.
    const chat = { messages: chatMsgs, ignore_eos: true, temperature: 0 };
    const unlimited = await free.post("/v1/chat/completions", chat);
    assertEquals(unlimited.status, 200, JSON.stringify(unlimited.json));
    const u = unlimited.json.usage;
    assertEquals(u.prompt_tokens + u.completion_tokens, s.model.config.maxSeqLen);
    assertEquals(unlimited.json.choices[0].finish_reason, "length");
    const limited = await s.post("/v1/chat/completions", chat);
    assertEquals([limited.status, limited.json.usage.completion_tokens], [200, LIMIT_TOKENS]);
  } finally {
    await s.close();
    await free.close();
  }
});
