/**
 * The service with batched decoding on (AppOptions.batch; --max-streams, --max-batch-tokens,
 * --kv-cache-mb): concurrent requests of mixed methods get the text each gets alone, through batched
 * steps; the KV gauges return to zero; a kept context reserves what it holds; a request that can never
 * fit the cap is a 422 naming it, before any stream starts; bad flags exit 2 naming the flag.
 */
import { generateText, type Model } from "../core/engine.ts";
import type { CompressionRequest } from "../core/plan.ts";
import { loadModel } from "../io/runtime.ts";
import { assert, assertEquals, runServerMain } from "./helpers.ts";
import { continuation, startServer } from "./server_testing.ts";

const model: Model = await loadModel({ executor: "cpu", warn: () => {} });
const story =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
  "One day, she saw a big red ball near the tree. She ran to it and kicked it very hard.";

const BODIES = [
  { prompt: story, max_tokens: 30 },
  { prompt: story.slice(0, 60), max_tokens: 40, kv_compression: { method: "judgeq", budget: 16 } },
  { prompt: story + " " + story, max_tokens: 20, kv_compression: { method: "snapkv", budget: 24 } },
  {
    prompt: story,
    max_tokens: 36,
    kv_compression: { method: "full", decode: { method: "h2o", budget: 40, interval: 8 } },
  },
].map((b) => ({ ...b, ignore_eos: true }));

/** The text each body gets alone, from the engine. */
const alone = await Promise.all(BODIES.map(async (b) => {
  const ids = model.tokenizer.encode(b.prompt, { addBos: true });
  const r = await generateText(model, {
    prompt: ids,
    maxTokens: b.max_tokens,
    ignoreEos: true,
    compression: ("kv_compression" in b ? b.kv_compression : null) as CompressionRequest | null,
  });
  return continuation(model, ids, r.outputs[0].tokens);
}));

Deno.test("batched service: concurrent mixed requests get their texts alone, through shared steps", async () => {
  const t = await startServer({ maxBatchTokens: 48, maxStreams: 8, kvCapBytes: 8 << 20 }, model);
  try {
    const got = await Promise.all(
      BODIES.map((b, i) =>
        i % 2 ? t.stream("/v1/generate", { ...b, stream: true }) : t.post("/v1/generate", b)
      ),
    );
    got.forEach((g, i) => {
      assertEquals(g.status, 200);
      const text = "events" in g
        ? g.events.filter((e) => e.object === "generation.chunk").map((e) => e.text).join("")
        : g.json.text;
      assertEquals(text, alone[i], `request ${i}`);
    });
    const steps = await t.metric("judgeq_batch_steps_total");
    const rows = await t.metric("judgeq_batch_rows_total");
    assert(steps > 0 && rows > steps, `${rows} rows in ${steps} steps: no step carried two rows`);
    assertEquals(await t.metric("judgeq_kv_bytes_reserved"), 0);
    assertEquals(await t.metric("judgeq_kv_bytes_in_use"), 0);
    assertEquals(await t.metric("judgeq_kv_bytes_free"), 8 << 20);
  } finally {
    await t.close();
  }
});

Deno.test("batched service: a kept context reserves what it holds, and answers as without batching", async () => {
  const plain = await startServer({}, model);
  const t = await startServer({ maxBatchTokens: 64, maxStreams: 4, kvCapBytes: null }, model);
  try {
    const body = { context: story, kv_compression: { method: "judgeq", budget: 16 } };
    const [a, b] = [await plain.post("/v1/contexts", body), await t.post("/v1/contexts", body)];
    assertEquals(b.status, 200);
    assertEquals(await t.metric("judgeq_kv_bytes_reserved"), b.json.allocated_bytes);
    const q = { question: " Lily", max_tokens: 16, ignore_eos: true };
    const [x, y] = [
      await plain.post(`/v1/contexts/${a.json.id}/generate`, q),
      await t.post(`/v1/contexts/${b.json.id}/generate`, q),
    ];
    assertEquals(y.status, 200);
    assertEquals(y.json.text, x.json.text);
    assertEquals(await t.metric("judgeq_kv_bytes_reserved"), b.json.allocated_bytes);
  } finally {
    await plain.close();
    await t.close();
  }
});

Deno.test("batched service: a request that can never fit --kv-cache-mb is a 422 naming it", async () => {
  const t = await startServer({ maxBatchTokens: 64, maxStreams: 4, kvCapBytes: 64 << 10 }, model);
  try {
    for (const stream of [false, true]) {
      const r = await t.stream("/v1/generate", { prompt: story + story + story, max_tokens: 200, stream });
      assertEquals(r.status, 422);
      assert(r.events[0].error.message.includes("--kv-cache-mb"), JSON.stringify(r.events[0]));
    }
  } finally {
    await t.close();
  }
});

Deno.test("deno task start: bad batching flags exit 2 naming the flag", async () => {
  for (
    const [args, message] of [
      [["--max-batch-tokens", "0"], "--max-batch-tokens: expected a number >= 1, got '0'"],
      [["--max-batch-tokens", "1.5"], "--max-batch-tokens: expected an integer, got '1.5'"],
      [["--max-streams", "-2"], "--max-streams: expected a number >= 1, got '-2'"],
      [["--max-streams", "x"], "--max-streams: expected an integer, got 'x'"],
      [["--kv-cache-mb", "0"], "--kv-cache-mb: expected a number >= 1, got '0'"],
      [["--kv-cache-mb", "2.5"], "--kv-cache-mb: expected an integer, got '2.5'"],
    ] as [string[], string][]
  ) {
    const { code, stdout, stderr } = await runServerMain(args);
    assertEquals(code, 2, args.join(" "));
    assert(stderr.includes(message), stderr + stdout);
  }
});

Deno.test("batched service: a client leaving mid-stream frees its KV; a job past its time limit ends with a 422", async () => {
  const t = await startServer({
    maxBatchTokens: 64,
    maxStreams: 4,
    kvCapBytes: 8 << 20,
    maxRequestMs: null,
  }, model);
  try {
    const leave = new AbortController();
    const r = await fetch(t.base + "/v1/generate", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: story, max_tokens: 400, ignore_eos: true, stream: true }),
      signal: leave.signal,
    });
    const reader = r.body!.getReader();
    await reader.read(); // the stream has started
    assert(await t.metric("judgeq_kv_bytes_reserved") > 0, "nothing reserved while streaming");
    leave.abort();
    await reader.cancel().catch(() => {});
    let reserved = -1;
    for (let i = 0; i < 100 && reserved !== 0; i++) {
      await new Promise((res) => setTimeout(res, 10));
      reserved = await t.metric("judgeq_kv_bytes_reserved");
    }
    assertEquals(reserved, 0, "the stream's KV was not given back");
  } finally {
    await t.close();
  }
  // 40 ms of wall time is far less than 480 tokens take on the reference.
  const tight = await startServer({
    maxBatchTokens: 64,
    maxStreams: 4,
    kvCapBytes: null,
    maxRequestMs: 40,
  }, model);
  try {
    const slow = await tight.post("/v1/generate", { prompt: "Once", max_tokens: 480, ignore_eos: true });
    assertEquals([slow.status, slow.json.error.param], [422, "max_tokens"]);
    assert(slow.json.error.partial.completion_tokens > 0, JSON.stringify(slow.json.error));
    assertEquals(await tight.metric("judgeq_kv_bytes_reserved"), 0);
  } finally {
    await tight.close();
  }
});
