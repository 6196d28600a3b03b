/**
 * Fair scheduling (the batch scheduler's shared steps) and the per-request time limit, written as the attack that found them
 * missing: a small request asking for many long outputs held the executor for 15 s while a 4-token
 * request waited behind it.
 */
import { generateText } from "../core/engine.ts";
import { startServer, type TestServer } from "./server_testing.ts";
import { assert, assertEquals } from "./helpers.ts";

const LONG = { prompt: "Once", max_tokens: 500, ignore_eos: true, temperature: 0 };

/** Starts a long generation; resolves once it runs, with the time its answer arrives. */
async function startLong(s: TestServer): Promise<{ done: Promise<number> }> {
  const done = s.post("/v1/completions", LONG).then((r) => {
    assertEquals(r.json.usage.completion_tokens, 500);
    return performance.now();
  });
  while (await s.metric("judgeq_jobs_in_flight") < 1) await new Promise((r) => setTimeout(r, 1));
  return { done };
}

/** Six short requests at once; resolves when the last one is answered, with their texts. */
async function shorts(s: TestServer): Promise<{ at: number; texts: string[] }> {
  const prompts = ["The cat", "Lily saw", "Tom had", "The sun", "A dog", "Once upon"];
  const texts = await Promise.all(prompts.map(async (prompt) => {
    const r = await s.post("/v1/generate", { prompt, max_tokens: 4 });
    assertEquals(r.status, 200);
    return r.json.outputs[0].text as string;
  }));
  return { at: performance.now(), texts };
}

Deno.test("one long generation and six short ones: the short ones finish first, with the same text", async () => {
  const s = await startServer({ maxStreams: 4 });
  try {
    const expected = await Promise.all(
      ["The cat", "Lily saw", "Tom had", "The sun", "A dog", "Once upon"].map(
        async (prompt) => (await generateText(s.model, { prompt, maxTokens: 4 })).outputs[0].text,
      ),
    );
    let together = 0; // the most streams one scheduler step carried
    s.app.scheduler.onStep = (step) => together = Math.max(together, step.streams);
    const long = await startLong(s);
    const short = await shorts(s);
    const longEnd = await long.done;
    assert(
      short.at < longEnd,
      "the scheduler's steps carry every stream: the short requests did not wait for the long one",
    );
    assert(together >= 2, `a step carried the long stream and short ones together (at most ${together})`);
    assertEquals(await s.metric("judgeq_queue_depth"), 0, "nobody waits once all is done");
    // Interleaving changes nothing in the outputs (the server's text is the continuation of the prompt).
    short.texts.forEach((t, i) => assert(t.endsWith(expected[i].trimStart()), `${t} / ${expected[i]}`));
  } finally {
    await s.close();
  }
  // One stream at a time (--max-streams 1): first come, first served, the short ones wait for the long one.
  const fifo = await startServer({ maxStreams: 1 });
  try {
    const long = await startLong(fifo);
    const short = await shorts(fifo);
    assert(short.at > await long.done, "with --max-streams 1 the long one runs to its end first");
  } finally {
    await fifo.close();
  }
});

Deno.test("answers on one kept context take turns on its cache: concurrent answers equal sequential ones", async () => {
  const s = await startServer({ maxStreams: 4 });
  try {
    const context = "Once upon a time, there was a little girl named Lily. She liked to play with her ball.";
    const id =
      (await s.post("/v1/contexts", { context, kv_compression: { method: "snapkv", budget: 16 } })).json.id;
    const questions = [" Who had the ball?", " Where did Lily play?", " What did she like?", " Lily"];
    const sequential: string[] = [];
    for (const question of questions) {
      sequential.push(
        (await s.post(`/v1/contexts/${id}/generate`, { question, max_tokens: 12 })).json.outputs[0].text,
      );
    }
    const together = await Promise.all(
      questions.map(async (question) =>
        (await s.post(`/v1/contexts/${id}/generate`, { question, max_tokens: 12 })).json.outputs[0].text
      ),
    );
    assertEquals(together, sequential);
  } finally {
    await s.close();
  }
});

Deno.test("attack: a request past the executor time limit ends with a 422 and what it produced; others go on", async () => {
  const s = await startServer({ maxRequestMs: 30 });
  try {
    const body = { prompt: "Once", max_tokens: 500, ignore_eos: true };
    const full =
      (await generateText(s.model, { prompt: "Once", maxTokens: 500, ignoreEos: true })).outputs[0];
    const r = await s.post("/v1/generate", body);
    assertEquals([r.status, r.json.error.param, r.json.error.type], [
      422,
      "max_tokens",
      "unprocessable_entity",
    ]);
    assert(/executor time/.test(r.json.error.message), r.json.error.message);
    const partial = r.json.error.partial;
    assert(partial.completion_tokens > 0 && partial.completion_tokens < 500, JSON.stringify(partial));
    assertEquals(partial.outputs[0].completion_tokens, partial.completion_tokens);
    assert(
      full.text.startsWith(partial.outputs[0].text) && partial.outputs[0].text.length > 0,
      "the partial text is the start of the full one",
    );
    // Streamed: the tokens so far, then an error event with the partial stats, then [DONE].
    const st = await s.stream("/v1/generate", { ...body, stream: true });
    const last = st.events.at(-1);
    assertEquals([st.status, st.done, last.error.param], [200, true, "max_tokens"]);
    assert(last.error.partial.completion_tokens > 0);
    assertEquals(await s.metric('judgeq_jobs_total{outcome="time_limit"}'), 2);
    // A request within the limit is served.
    assertEquals((await s.post("/v1/generate", { prompt: "Once", max_tokens: 3 })).status, 200);
  } finally {
    await s.close();
  }
});

Deno.test("attack: an answer on a kept context cut by the time limit leaves the context as it was", async () => {
  const context = "Once upon a time, there was a little girl named Lily. She liked to play with her ball.";
  const question = { question: " Who had the ball?", max_tokens: 12 };
  const roomy = await startServer({});
  const tight = await startServer({ maxRequestMs: 150 });
  try {
    const kv_compression = { method: "snapkv", budget: 16 };
    const a = (await roomy.post("/v1/contexts", { context, kv_compression })).json.id;
    const want = (await roomy.post(`/v1/contexts/${a}/generate`, question)).json.outputs[0].text;
    const id = (await tight.post("/v1/contexts", { context, kv_compression })).json.id;
    const before = (await tight.get(`/v1/contexts/${id}`)).json;
    const cut = await tight.post(`/v1/contexts/${id}/generate`, {
      question: " Lily",
      max_tokens: 480,
      ignore_eos: true,
    });
    assertEquals([cut.status, cut.json.error.param], [422, "max_tokens"]);
    const after = (await tight.get(`/v1/contexts/${id}`)).json;
    assertEquals([after.kv_bytes, after.allocated_bytes], [before.kv_bytes, before.allocated_bytes]);
    const again = await tight.post(`/v1/contexts/${id}/generate`, question);
    assertEquals([again.status, again.json.outputs[0].text], [200, want]);
  } finally {
    await Promise.all([roomy.close(), tight.close()]);
  }
});

Deno.test("a long prefill offers the executor between chunks: the time limit stops it before any token", async () => {
  const s = await startServer({ maxRequestMs: 1 });
  try {
    const prompt = "Once upon a time, there was a little girl named Lily. ".repeat(30); // about 400 tokens
    const r = await s.post("/v1/generate", { prompt, max_tokens: 4 });
    assertEquals([r.status, r.json.error.param], [422, "max_tokens"]);
    // Stopped inside the prompt's prefill (after its first 128 rows), not after a first token.
    assertEquals(r.json.error.partial.completion_tokens, 0);
  } finally {
    await s.close();
  }
});
