/**
 * One executor behind a bounded FIFO: many clients at once all get correct answers, a burst beyond the
 * queue gets 429s (not failures), and a client that disconnects frees its slot (seen in /metrics).
 */
import { generateText } from "../core/engine.ts";
import { readSse } from "../server/sse.ts";
import { continuation, startServer, type TestServer } from "./server_testing.ts";
import { assert, assertEquals } from "./helpers.ts";

const LONG = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
  .repeat(3);

/** Polls /metrics until `series` equals `value` (the server notices disconnects asynchronously). */
async function waitForMetric(s: TestServer, series: string, value: number, timeoutMs = 10_000) {
  const end = Date.now() + timeoutMs;
  let v = NaN;
  while (Date.now() < end) {
    if ((v = await s.metric(series)) === value) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${series} stayed ${v}, expected ${value}`);
}

Deno.test("50 requests, 8 at a time: all succeed with the engine's answers", async () => {
  const s = await startServer();
  try {
    const kinds = [
      {
        body: { prompt: "Once upon a time", max_tokens: 12 },
        want: { prompt: "Once upon a time", maxTokens: 12 },
      },
      { body: { prompt: "The dog", max_tokens: 10 }, want: { prompt: "The dog", maxTokens: 10 } },
      {
        body: { prompt: LONG, max_tokens: 8, kv_compression: { method: "snapkv", budget: 24 } },
        want: { prompt: LONG, maxTokens: 8, compression: { method: "snapkv", budget: 24 } },
      },
      {
        body: {
          prompt: LONG,
          max_tokens: 8,
          kv_compression: { method: "pyramidkv", compression_ratio: 0.5 },
        },
        want: { prompt: LONG, maxTokens: 8, compression: { method: "pyramidkv", compression_ratio: 0.5 } },
      },
      {
        body: {
          context: LONG,
          questions: [" Who played?"],
          max_tokens: 8,
          kv_compression: { method: "tova", budget: 32 },
        },
        want: {
          context: LONG,
          questions: [" Who played?"],
          maxTokens: 8,
          compression: { method: "tova", budget: 32 },
        },
      },
    ];
    // The engine's tokens, and the text they add after the prompt (or question).
    const expected: { tokens: number[]; text: string }[] = [];
    for (const k of kinds) {
      const r = await generateText(s.model, k.want);
      const prefix = r.questionTokens.length ? r.questionTokens[0] : r.promptTokens;
      expected.push({
        tokens: r.outputs[0].tokens,
        text: continuation(s.model, prefix, r.outputs[0].tokens),
      });
    }
    let next = 0, ok = 0;
    const worker = async () => {
      while (next < 50) {
        const i = next++;
        const k = i % kinds.length;
        const { status, json } = await s.post("/v1/generate", { ...kinds[k].body, return_tokens: true });
        assertEquals(status, 200, `request ${i}`);
        assertEquals(json.outputs[0].tokens, expected[k].tokens, `request ${i}`);
        assertEquals(json.outputs[0].text, expected[k].text, `request ${i}`);
        ok++;
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    assertEquals(ok, 50);
    assertEquals(
      await s.metric('judgeq_http_requests_total{route="/v1/generate",method="POST",status="200"}'),
      50,
    );
    assertEquals(await s.metric('judgeq_jobs_total{outcome="ok"}'), 50);
    assertEquals(await s.metric("judgeq_queue_wait_seconds_count"), 50);
  } finally {
    await s.close();
  }
});

Deno.test("a burst beyond the queue gets 429s with Retry-After, the rest succeed", async () => {
  const s = await startServer({ queueSize: 2 });
  try {
    const body = { prompt: "Once upon a time", max_tokens: 150, ignore_eos: true };
    const responses = await Promise.all(Array.from({ length: 12 }, async () => {
      const r = await fetch(`${s.base}/v1/generate`, { method: "POST", body: JSON.stringify(body) });
      const json = await r.json();
      return { status: r.status, json, retry: r.headers.get("retry-after") };
    }));
    const ok = responses.filter((r) => r.status === 200), busy = responses.filter((r) => r.status === 429);
    assertEquals(ok.length + busy.length, 12, JSON.stringify(responses.map((r) => r.status)));
    assert(ok.length >= 3, `one running plus two waiting succeed (got ${ok.length})`);
    assert(busy.length >= 1, "some were refused");
    for (const r of ok) assertEquals(r.json.usage.completion_tokens, 150);
    for (const r of busy) assertEquals([r.json.error.type, r.retry], ["rate_limit_error", "1"]);
    assertEquals(await s.metric("judgeq_queue_rejected_total"), busy.length);
    assertEquals(await s.metric("judgeq_queue_depth"), 0);
    // The queue drained: a new request is served.
    assertEquals((await s.post("/v1/generate", { prompt: "Once", max_tokens: 2 })).status, 200);
  } finally {
    await s.close();
  }
});

Deno.test("a client disconnecting mid-stream, or while queued, frees its slot", async () => {
  const s = await startServer({ queueSize: 4, maxStreams: 1 });
  try {
    // A long stream, cancelled after its first chunk.
    const streamed = new AbortController();
    const r = await fetch(`${s.base}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({
        prompt: "Once upon a time",
        max_tokens: 500,
        ignore_eos: true,
        stream: true,
        temperature: 0,
      }),
      signal: streamed.signal,
    });
    assertEquals(r.status, 200);
    // Meanwhile a plain request queues behind it, and its client gives up too.
    const queuedAbort = new AbortController();
    const queued = fetch(`${s.base}/v1/generate`, {
      method: "POST",
      body: JSON.stringify({ prompt: "The cat", max_tokens: 100 }),
      signal: queuedAbort.signal,
    }).catch((e) => e.name);
    const events = readSse(r.body!);
    const first = JSON.parse((await events.next()).value!);
    assertEquals(first.object, "text_completion");
    await waitForMetric(s, "judgeq_queue_depth", 1);
    queuedAbort.abort();
    assertEquals(await queued, "AbortError");
    await waitForMetric(s, "judgeq_queue_depth", 0); // it left the queue without ever running
    assertEquals(await s.metric("judgeq_jobs_in_flight"), 1); // the stream still runs
    streamed.abort();
    await events.return(undefined).catch(() => {});

    await waitForMetric(s, 'judgeq_jobs_total{outcome="cancelled"}', 1);
    await waitForMetric(s, "judgeq_jobs_in_flight", 0);
    await waitForMetric(s, "judgeq_http_requests_in_flight", 0);
    assertEquals(await s.metric("judgeq_completion_tokens_total"), 0); // the cancelled stream never finished
    // The slot is free: the next request runs at once and is right.
    const want = await generateText(s.model, { prompt: "The cat", maxTokens: 6 });
    const next = await s.post("/v1/generate", { prompt: "The cat", max_tokens: 6 });
    assertEquals([next.status, next.json.text], [
      200,
      continuation(s.model, "The cat", want.outputs[0].tokens),
    ]);
    assertEquals(await s.metric('judgeq_jobs_total{outcome="ok"}'), 1);
  } finally {
    await s.close();
  }
});
