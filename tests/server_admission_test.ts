/**
 * Admission before work, written as the attacks: megabyte prompts used to be tokenized (seconds of a
 * blocked event loop) before their 422, and a full queue was only noticed after tokenizing.
 */
import { answerOnContext, compressContext, type Model } from "../core/engine.ts";
import type { CompressionRequest } from "../core/plan.ts";
import type { TextTokenizer } from "../core/tokenizer.ts";
import { readSse } from "../server/sse.ts";
import { startServer, testModel } from "./server_testing.ts";
import { assert, assertEquals } from "./helpers.ts";

/** The test model with a tokenizer that counts the characters it is asked to encode. */
async function countingModel(): Promise<{ model: Model; encoded: () => number }> {
  const base = await testModel();
  let chars = 0;
  const tokenizer: TextTokenizer = {
    ...base.tokenizer,
    encode(text, opts) {
      chars += text.length;
      return base.tokenizer.encode(text, opts);
    },
  };
  return { model: { ...base, tokenizer }, encoded: () => chars };
}

const MEGA = "Once upon a time there was a ball. ".repeat(28_000); // 980,000 characters, under the body limit

Deno.test("attack: a megabyte prompt, context, question or chat is refused (422) without being tokenized", async () => {
  const { model, encoded } = await countingModel();
  const s = await startServer({}, model);
  try {
    const cases: [string, unknown, string][] = [
      ["/v1/generate", { prompt: MEGA }, "prompt"],
      ["/v1/generate", { context: MEGA, questions: [" Who?"] }, "context"],
      ["/v1/generate", { context: "Once.", questions: [" Who?", MEGA] }, "questions.1"],
      ["/v1/completions", { prompt: MEGA }, "prompt"],
      ["/v1/chat/completions", { messages: [{ role: "user", content: MEGA }] }, "messages"],
      ["/v1/contexts", { context: MEGA }, "context"],
    ];
    for (const [path, body, param] of cases) {
      const r = await s.post(path, body);
      assertEquals([r.status, r.json.error?.param], [422, param], path);
      assertEquals(encoded(), 0, `${path}: nothing tokenized before the 422`);
    }
    const ctx = (await s.post("/v1/contexts", { context: "Once upon a time." })).json.id;
    const before = encoded();
    const r = await s.post(`/v1/contexts/${ctx}/generate`, { question: MEGA });
    assertEquals([r.status, r.json.error?.param, encoded()], [422, "question", before]);
    // Three at once, while /healthz answers: the server is not blocked by them.
    const [a, b, c, health] = await Promise.all([
      s.post("/v1/generate", { prompt: MEGA }),
      s.post("/v1/completions", { prompt: MEGA }),
      s.post("/v1/contexts", { context: MEGA }),
      s.get("/healthz"),
    ]);
    assertEquals([a.status, b.status, c.status, health.status], [422, 422, 422, 200]);
    assertEquals(encoded(), before);
  } finally {
    await s.close();
  }
});

Deno.test("a full queue answers 429 before the request's text is tokenized", async () => {
  const { model, encoded } = await countingModel();
  const s = await startServer({ queueSize: 0, maxStreams: 1 }, model);
  try {
    const running = await fetch(`${s.base}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({ prompt: "Once", max_tokens: 400, ignore_eos: true, stream: true }),
    });
    const events = readSse(running.body!);
    await events.next(); // it runs: the queue (no waiting places) is full
    const before = encoded();
    const r = await s.post("/v1/generate", { prompt: "Once upon a time ".repeat(20), max_tokens: 2 });
    assertEquals([r.status, r.json.error.type], [429, "rate_limit_error"]);
    assertEquals(encoded(), before, "the refused request was not tokenized");
    for await (const _ of events) { /* let it finish */ }
  } finally {
    await s.close();
  }
});

Deno.test("one request path: every text of a request is tokenized once, checked and run alike", async () => {
  const { model, encoded } = await countingModel();
  const s = await startServer({}, model);
  try {
    const story = "Once upon a time, there was a little girl named Lily.";
    const questions = [" Who was there?", " What was her name?"];
    const cases: [string, Record<string, unknown>, number][] = [
      ["/v1/generate", { prompt: story }, story.length],
      ["/v1/generate", { prompt: story, stream: true }, story.length],
      ["/v1/generate", { context: story, questions }, story.length + questions.join("").length],
      ["/v1/completions", { prompt: story }, story.length],
      ["/v1/chat/completions", { messages: [{ role: "user", content: story }], max_tokens: 4 }, story.length],
      [
        "/v1/generate",
        { prompt: story, kv_compression: { method: "snapkv", budget: 8, window: 4 } },
        story.length,
      ],
    ];
    for (const [path, body, chars] of cases) {
      const before = encoded();
      const r = body.stream ? await s.stream(path, body) : await s.post(path, { ...body, max_tokens: 4 });
      assertEquals(r.status, 200, path);
      assertEquals(encoded() - before, chars, `${path} ${JSON.stringify(body).slice(0, 60)}: tokenized once`);
    }
    let before = encoded();
    const id = (await s.post("/v1/contexts", { context: story })).json.id;
    assertEquals(encoded() - before, story.length, "a kept context is tokenized once");
    before = encoded();
    const answer = await s.post(`/v1/contexts/${id}/generate`, { questions, max_tokens: 4 });
    assertEquals(answer.status, 200);
    assertEquals(encoded() - before, questions.join("").length, "its questions are tokenized once");
  } finally {
    await s.close();
  }
});

Deno.test("one request path: the plans compiled before queueing give the engine's own answers", async () => {
  const model = await testModel();
  const s = await startServer({}, model);
  try {
    const context =
      "Once upon a time, there was a little girl named Lily. She liked to play with her red ball.";
    const questions = [" Who had the ball?", " Lily"];
    const kv_compression = {
      method: "snapkv",
      budget: 12,
      window: 4,
      decode: { method: "h2o", budget: 16, interval: 4 },
    };
    // The engine alone: it tokenizes and compiles each step itself.
    const ctx = await compressContext(model, context, kv_compression as CompressionRequest);
    const want: string[] = [];
    for (const question of questions) {
      want.push((await answerOnContext(model, ctx, { question, maxTokens: 12, ignoreEos: true })).text);
    }
    ctx.session.dispose();
    const body = { questions, max_tokens: 12, ignore_eos: true };
    const oneShot = await s.post("/v1/generate", { ...body, context, kv_compression });
    assertEquals(oneShot.status, 200, JSON.stringify(oneShot.json));
    assertEquals(oneShot.json.outputs.map((o: { text: string }) => o.text), want);
    assert(oneShot.json.compression.decode.compressions > 0, "decode-time compression ran");
    const id = (await s.post("/v1/contexts", { context, kv_compression })).json.id;
    const kept = await s.post(`/v1/contexts/${id}/generate`, body);
    assertEquals(kept.json.outputs.map((o: { text: string }) => o.text), want);
  } finally {
    await s.close();
  }
});
