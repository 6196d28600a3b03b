// deno-lint-ignore-file no-explicit-any
/**
 * Every endpoint over real HTTP on loopback, checked against the engine itself: greedy texts equal
 * generateText's, kept counts equal the budget, context answers equal one-shot compress-and-answer.
 */
import { generateText } from "../core/engine.ts";
import { loadModel } from "../io/runtime.ts";
import { continuation, startServer, testModel } from "./server_testing.ts";
import { assert, assertEquals } from "./helpers.ts";

const STORY =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
  "One day, she saw a big red ball under a tree. She wanted to play with it, but her friend Tom had it. ";
const LONG = STORY.repeat(3); // ~190 tokens: large enough for a budget of 32 to really evict

Deno.test("POST /v1/generate: greedy text and tokens equal generateText, with usage and timings", async () => {
  const s = await startServer();
  try {
    const want = await generateText(s.model, { prompt: "Once upon a time", maxTokens: 24 });
    const { status, json } = await s.post("/v1/generate", {
      prompt: "Once upon a time",
      max_tokens: 24,
      return_tokens: true,
    });
    assertEquals(status, 200);
    assertEquals(json.text, want.outputs[0].text);
    assertEquals(json.outputs[0].tokens, want.outputs[0].tokens);
    assertEquals(json.finish_reason, "length");
    assertEquals(json.usage, {
      prompt_tokens: want.promptTokens.length,
      completion_tokens: 24,
      total_tokens: want.promptTokens.length + 24,
    });
    assert(json.text.startsWith(", there was"), json.text);
    assert(
      json.timings_ms.decode > 0 && json.timings_ms.run >= json.timings_ms.decode,
      JSON.stringify(json.timings_ms),
    );
    assertEquals(json.executor, "cpu");
    // Where the first token starts a word, its space is kept (prompt + text reads right).
    const cat = await generateText(s.model, { prompt: "The cat", maxTokens: 6 });
    const served =
      (await s.post("/v1/generate", { prompt: "The cat", max_tokens: 6, return_tokens: true })).json;
    assertEquals(served.outputs[0].tokens, cat.outputs[0].tokens);
    assertEquals(served.text, continuation(s.model, "The cat", cat.outputs[0].tokens));
    assertEquals(served.text, cat.outputs[0].text);
    assert(served.text.startsWith(" "), served.text);
  } finally {
    await s.close();
  }
});

Deno.test("POST /v1/generate: compression stats keep exactly the budget and report KV bytes", async () => {
  const s = await startServer();
  try {
    const c = s.model.config;
    const bytesPer = c.nLayers * c.nKvHeads * c.headDim * 2 * 4; // one position in every head
    for (const method of ["snapkv", "h2o", "streaming_llm", "tova", "knorm", "random", "lookahead"]) {
      const kv_compression = { method, budget: 32 };
      const want = await generateText(s.model, { prompt: LONG, maxTokens: 8, compression: kv_compression });
      const { status, json } = await s.post("/v1/generate", {
        prompt: LONG,
        max_tokens: 8,
        kv_compression,
        return_positions: true,
      });
      assertEquals(status, 200, method);
      assertEquals(json.text, continuation(s.model, want.promptTokens, want.outputs[0].tokens), method);
      const L = json.compression.prompt_tokens;
      assertEquals(L, want.promptTokens.length);
      assertEquals(
        json.compression.kept_tokens,
        Array.from({ length: c.nLayers }, () => Array(c.nKvHeads).fill(32)),
        method,
      );
      assertEquals(json.compression.kept_positions, want.run.compression.kept, method);
      for (const head of json.compression.kept_positions.flat()) {
        assert(
          head.every((p: number, i: number) => p < L && (i === 0 || p > head[i - 1])),
          "ascending prompt positions",
        );
      }
      assertEquals(json.compression.kv_bytes_before, L * bytesPer, method);
      assertEquals(json.compression.kv_bytes_after, 32 * bytesPer, method);
      assertEquals(json.compression.kv_bytes_saved, (L - 32) * bytesPer, method);
      assertEquals([json.compression.method, json.compression.budget], [method, 32]);
    }
    // AdaKV moves budget between heads: each layer still holds budget x heads.
    const { json } = await s.post("/v1/generate", {
      prompt: LONG,
      max_tokens: 4,
      kv_compression: { method: "adakv", compression_ratio: 0.75 },
    });
    const budget = Math.floor(json.compression.prompt_tokens * 0.25);
    assertEquals(json.compression.budget, budget);
    for (const layer of json.compression.kept_tokens) {
      assertEquals(layer.reduce((a: number, b: number) => a + b, 0), budget * c.nKvHeads);
    }
    assertEquals(await s.metric("judgeq_kv_bytes_saved_total") > 0, true);
  } finally {
    await s.close();
  }
});

Deno.test("POST /v1/generate: context with questions equals generateText; stream equals JSON", async () => {
  const s = await startServer();
  try {
    const questions = [" Who had the ball?", " What did Lily love?"];
    const kv_compression = { method: "snapkv", budget: 40, window: 8 };
    const want = await generateText(s.model, {
      context: LONG,
      questions,
      maxTokens: 12,
      compression: kv_compression,
    });
    const body = { context: LONG, questions, max_tokens: 12, kv_compression };
    const { status, json } = await s.post("/v1/generate", body);
    assertEquals(status, 200);
    assertEquals(
      json.outputs.map((o: any) => o.text),
      want.outputs.map((o, i) => continuation(s.model, want.questionTokens[i], o.tokens)),
    );
    assertEquals(json.outputs.map((o: any) => o.question), questions);
    assertEquals(json.text, undefined);
    assertEquals(json.compression.window, 8);
    assertEquals(json.usage.completion_tokens, want.outputs.reduce((n, o) => n + o.tokens.length, 0));
    // Streaming: chunks per output concatenate to the same texts; the last event repeats the result.
    const st = await s.stream("/v1/generate", { ...body, stream: true });
    assertEquals(st.status, 200);
    assert(st.done, "ends with [DONE]");
    const chunks = st.events.filter((e) => e.object === "generation.chunk");
    const texts = questions.map((_, i) => chunks.filter((e) => e.index === i).map((e) => e.text).join(""));
    assertEquals(texts, json.outputs.map((o: any) => o.text));
    const done = st.events.at(-1);
    assertEquals(done.object, "generation.done");
    assertEquals(done.outputs.map((o: any) => o.text), texts);
    assertEquals(done.usage, json.usage);
  } finally {
    await s.close();
  }
});

Deno.test("POST /v1/generate: stop strings cut the text, stop token ids end it, in JSON and streams alike", async () => {
  const s = await startServer();
  try {
    const full =
      (await s.post("/v1/generate", { prompt: "Once upon a time", max_tokens: 40, return_tokens: true }))
        .json;
    const cut = full.text.indexOf(".");
    assert(cut > 0, full.text);
    const stopped = (await s.post("/v1/generate", {
      prompt: "Once upon a time",
      max_tokens: 40,
      stop: ["Lily.", "."],
      return_tokens: true,
    })).json;
    assertEquals(stopped.text, full.text.slice(0, Math.min(cut, full.text.indexOf("Lily."))));
    assertEquals(stopped.finish_reason, "stop");
    assert(stopped.usage.completion_tokens < 40, "decoding ended at the stop");
    const st = await s.stream("/v1/generate", {
      prompt: "Once upon a time",
      max_tokens: 40,
      stop: ".",
      stream: true,
    });
    assertEquals(
      st.events.filter((e) => e.object === "generation.chunk").map((e) => e.text).join(""),
      full.text.slice(0, cut),
    );
    // A stop token id: the output ends just before that token.
    const third = full.outputs[0].tokens[2];
    const byId = (await s.post("/v1/generate", {
      prompt: "Once upon a time",
      max_tokens: 40,
      stop: [third],
      return_tokens: true,
    })).json;
    assertEquals(byId.outputs[0].tokens, full.outputs[0].tokens.slice(0, 2));
    assertEquals(byId.finish_reason, "stop");
  } finally {
    await s.close();
  }
});

Deno.test("contexts: compress once, answers equal one-shot compress+answer, GET, DELETE", async () => {
  const s = await startServer();
  try {
    const kv_compression = { method: "h2o", budget: 48 };
    const created = await s.post("/v1/contexts", { context: LONG, kv_compression });
    assertEquals(created.status, 200);
    const id = created.json.id;
    assert(/^ctx_[0-9a-f]{32}$/.test(id), id);
    const c = s.model.config;
    assertEquals(
      created.json.compression.kept_tokens,
      Array.from({ length: c.nLayers }, () => Array(c.nKvHeads).fill(48)),
    );
    assertEquals(created.json.kv_bytes, 48 * c.nLayers * c.nKvHeads * c.headDim * 8);
    assertEquals(
      created.json.allocated_bytes,
      48 * c.nLayers * c.nKvHeads * (c.headDim * 8 + 4) + c.vocabSize * 4,
    );
    assert(created.json.expires_at > Date.now() / 1000, "expires in the future");

    for (const question of [" Who had the ball?", " Where did Lily play?"]) {
      const oneShot = await s.post("/v1/generate", {
        context: LONG,
        questions: [question],
        max_tokens: 10,
        kv_compression,
      });
      const answer = await s.post(`/v1/contexts/${id}/generate`, { question, max_tokens: 10 });
      assertEquals(answer.status, 200);
      assertEquals(answer.json.outputs[0].text, oneShot.json.outputs[0].text, question);
      assertEquals(answer.json.context_id, id);
    }
    // Several questions, streamed: the same answers again (the cache is left as it was).
    const st = await s.stream(`/v1/contexts/${id}/generate`, {
      questions: [" Who had the ball?"],
      max_tokens: 10,
      stream: true,
    });
    const again = await s.post(`/v1/contexts/${id}/generate`, {
      question: " Who had the ball?",
      max_tokens: 10,
    });
    assertEquals(st.events.at(-1).outputs[0].text, again.json.outputs[0].text);

    const got = await s.get(`/v1/contexts/${id}`);
    assertEquals([got.status, got.json.context_tokens], [200, created.json.context_tokens]);
    assertEquals(await s.metric("judgeq_contexts"), 1);
    const del = await fetch(`${s.base}/v1/contexts/${id}`, { method: "DELETE" });
    assertEquals([del.status, (await del.json()).deleted], [200, true]);
    assertEquals((await s.post(`/v1/contexts/${id}/generate`, { question: " Who?" })).status, 404);
    assertEquals(await s.metric("judgeq_contexts"), 0);
  } finally {
    await s.close();
  }
});

Deno.test("contexts: least recently used evicted under the byte cap; TTL expiry", async () => {
  const model = await testModel();
  const c = model.config;
  // What a budget-32 context holds allocated on the CPU: 32 entries (K, V, position) per head, and its logits.
  const perContext = 32 * c.nLayers * c.nKvHeads * (c.headDim * 8 + 4) + c.vocabSize * 4;
  const s = await startServer({ contextMaxBytes: perContext * 2, contextTtlMs: 60_000 });
  try {
    const make = async () =>
      (await s.post("/v1/contexts", { context: LONG, kv_compression: { method: "snapkv", budget: 32 } })).json
        .id;
    const a = await make(), b = await make();
    assertEquals(
      (await s.post(`/v1/contexts/${a}/generate`, { question: " Who?", max_tokens: 2 })).status,
      200,
    ); // a is now recent
    const cc = await make(); // evicts b, the least recently used
    assertEquals((await s.get(`/v1/contexts/${b}`)).status, 404);
    assertEquals((await s.get(`/v1/contexts/${a}`)).status, 200);
    assertEquals((await s.get(`/v1/contexts/${cc}`)).status, 200);
    assertEquals(await s.metric("judgeq_contexts_evicted_total"), 1);
    assertEquals(await s.metric("judgeq_contexts_kv_bytes"), perContext * 2);
    // Over the cap on its own: refused, nothing evicted.
    const big = await s.post("/v1/contexts", {
      context: LONG,
      kv_compression: { method: "snapkv", budget: 100 },
    });
    assertEquals([big.status, big.json.error.param], [422, "kv_compression.budget"]);
  } finally {
    await s.close();
  }
  const t = await startServer({ contextTtlMs: 30 });
  try {
    const id = (await t.post("/v1/contexts", { context: STORY })).json.id;
    await new Promise((r) => setTimeout(r, 60));
    assertEquals((await t.post(`/v1/contexts/${id}/generate`, { question: " Who?" })).status, 404);
    assertEquals(await t.metric("judgeq_contexts_expired_total"), 1);
  } finally {
    await t.close();
  }
});

Deno.test("GET /v1/models, /healthz, /metrics; API key; 503 when the device is lost", async () => {
  const s = await startServer({ apiKey: "sekret" });
  try {
    const auth = { authorization: "Bearer sekret" };
    assertEquals((await s.get("/v1/models")).status, 401);
    assertEquals((await s.get("/v1/models", { authorization: "Bearer wrong" })).status, 401);
    const models = await s.get("/v1/models", auth);
    assertEquals(models.json.data[0].id, "stories260K");
    assertEquals(models.json.data[0].context_length, 512);
    assert(models.json.data[0].methods.includes("judgeq"));
    assertEquals((await s.get("/v1/models", { "x-api-key": "sekret" })).status, 200);
    const health = await s.get("/healthz"); // open: probes carry no key
    assertEquals([health.status, health.json.status], [200, "ok"]);
    assertEquals((await s.post("/v1/generate", { prompt: "Once", max_tokens: 3 }, auth)).status, 200);
    const metrics = await s.get("/metrics", auth);
    assert(
      metrics.text.includes('judgeq_http_requests_total{route="/v1/models",method="GET",status="401"} 2'),
      metrics.text,
    );
    assert(metrics.text.includes('judgeq_http_request_duration_seconds_count{route="/v1/generate"} 1'));
    assertEquals(await s.metric("judgeq_completion_tokens_total"), 3);
    assertEquals(await s.metric("judgeq_prompt_tokens_total"), 2);
    assertEquals(await s.metric("judgeq_queue_depth"), 0);
    assertEquals(await s.metric("judgeq_jobs_in_flight"), 0);
  } finally {
    await s.close();
  }
  let lost = false;
  const g = await startServer({ deviceLost: () => lost });
  try {
    assertEquals((await g.post("/v1/generate", { prompt: "Once", max_tokens: 1 })).status, 200);
    lost = true;
    const r = await g.post("/v1/generate", { prompt: "Once", max_tokens: 1 });
    assertEquals([r.status, r.json.error.type], [503, "service_unavailable"]);
    assertEquals(
      (await g.stream("/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }], stream: true }))
        .status,
      503,
    );
    assertEquals((await g.get("/healthz")).json.status, "device_lost");
    assertEquals(await g.metric("judgeq_device_lost"), 1);
  } finally {
    await g.close();
  }
});

Deno.test("a device lost mid-job answers 503 and marks the server lost", async () => {
  const model = await testModel();
  const broken = {
    ...model,
    executor: {
      ...model.executor,
      kind: model.executor.kind,
      config: model.executor.config,
      description: "broken",
      createSession: () => {
        throw new Error("GPU device lost (destroyed): test");
      },
      dispose() {},
    },
  };
  const s = await startServer({}, broken);
  try {
    const r = await s.post("/v1/generate", { prompt: "Once", max_tokens: 2 });
    assertEquals([r.status, r.json.error.type], [503, "service_unavailable"]);
    assert(!JSON.stringify(r.json).includes("at "), "no stack trace");
    assertEquals((await s.get("/healthz")).status, 503);
  } finally {
    await s.close();
  }
});

const ADAPTER = new URL("../fixtures/models/stories260K/judgeq.safetensors", import.meta.url).pathname;
const hasAdapter = (() => {
  try {
    return Deno.statSync(ADAPTER).isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "judgeq with the model's adapter: kept counts equal the budget, text equals the engine's",
  ignore: !hasAdapter, // the adapter is trained separately; without it judgeq is a 422 (bad-input test)
  fn: async () => {
    const model = await loadModel({ executor: "cpu", warn: () => {} });
    assert(model.adapter, "the adapter loads");
    const s = await startServer({}, model);
    try {
      const kv_compression = { method: "judgeq", budget: 32 };
      const want = await generateText(model, { prompt: LONG, maxTokens: 8, compression: kv_compression });
      const { status, json } = await s.post("/v1/generate", { prompt: LONG, max_tokens: 8, kv_compression });
      assertEquals(status, 200, JSON.stringify(json));
      assertEquals(json.text, continuation(model, want.promptTokens, want.outputs[0].tokens));
      const c = model.config;
      assertEquals(
        json.compression.kept_tokens,
        Array.from({ length: c.nLayers }, () => Array(c.nKvHeads).fill(32)),
      );
      assertEquals((await s.get("/v1/models")).json.data[0].judgeq_adapter, { soft_tokens: model.adapter.n });
    } finally {
      await s.close();
    }
  },
});
