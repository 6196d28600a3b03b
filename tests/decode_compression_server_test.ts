// deno-lint-ignore-file no-explicit-any
/**
 * kv_compression.decode over HTTP: one shape on /v1/generate, the OpenAI endpoints and kept contexts;
 * stats per compression; the /metrics counter; bad input is a 400 naming the field.
 */
import { generateText } from "../core/engine.ts";
import { startServer } from "./server_testing.ts";
import { assert, assertEquals } from "./helpers.ts";

const STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
const DECODE = { method: "snapkv", budget: 24, interval: 8, buffer: 4 };

Deno.test("kv_compression.decode on every endpoint: the cache bounded, events reported, /metrics counts them", async () => {
  const s = await startServer();
  try {
    const before = await s.metric("judgeq_decode_compressions_total");
    const g = await s.post("/v1/generate", {
      prompt: STORY,
      max_tokens: 40,
      ignore_eos: true,
      return_tokens: true,
      kv_compression: { method: "full", decode: DECODE },
    });
    assertEquals(g.status, 200, JSON.stringify(g.json));
    const d = g.json.compression.decode;
    assertEquals([d.method, d.budget, d.interval, d.buffer], ["snapkv", 24, 8, 4]);
    assert(d.compressions > 0 && d.compressions === d.events.length, JSON.stringify(d));
    for (const e of d.events) assert(e.entries_before <= 32 && e.entries_after === 24, JSON.stringify(e));
    assert(d.kv_bytes_end[0] <= g.json.compression.kv_bytes_before, JSON.stringify(d));
    // The engine gives the same tokens.
    const want = await generateText(s.model, {
      prompt: STORY,
      maxTokens: 40,
      ignoreEos: true,
      compression: { method: "full", decode: DECODE },
    });
    assertEquals(g.json.outputs[0].tokens, want.outputs[0].tokens);

    // Streamed: the same tokens, the stats in the last event.
    const st = await s.stream("/v1/generate", {
      prompt: STORY,
      max_tokens: 40,
      ignore_eos: true,
      stream: true,
      kv_compression: { method: "full", decode: DECODE },
    });
    assertEquals(st.status, 200);
    const done = st.events.find((e) => e.object === "generation.done");
    assertEquals(done.compression.decode.compressions, d.compressions);
    assertEquals(done.text, g.json.text);

    const c = await s.post("/v1/completions", {
      prompt: STORY,
      max_tokens: 30,
      temperature: 0,
      kv_compression: { method: "snapkv", budget: 16, decode: { budget: 20, interval: 6 } },
    });
    assertEquals(c.status, 200, JSON.stringify(c.json));
    assertEquals(c.json.compression.decode.method, "snapkv"); // the prefill method by default
    const chat = await s.post("/v1/chat/completions", {
      messages: [{ role: "user", content: STORY }],
      max_tokens: 30,
      kv_compression: { method: "full", decode: { method: "h2o", fraction: 0.5, interval: 4 } },
    });
    assertEquals(chat.status, 200, JSON.stringify(chat.json));
    assertEquals(chat.json.compression.decode.fraction, 0.5);

    // A kept context: its own decode policy, and a question's.
    const ctx = await s.post("/v1/contexts", {
      context: STORY,
      kv_compression: { method: "snapkv", budget: 16, decode: { budget: 20, interval: 4 } },
    });
    assertEquals(ctx.status, 200, JSON.stringify(ctx.json));
    const a1 = await s.post(`/v1/contexts/${ctx.json.id}/generate`, { question: "Lily", max_tokens: 20 });
    assertEquals(a1.status, 200, JSON.stringify(a1.json));
    assertEquals(a1.json.compression.decode.budget, 20);
    const a2 = await s.post(`/v1/contexts/${ctx.json.id}/generate`, {
      questions: ["Lily", "The ball"],
      max_tokens: 20,
      kv_compression: { decode: { method: "streaming_llm", budget: 12, interval: 4, buffer: 2 } },
    });
    assertEquals(a2.status, 200, JSON.stringify(a2.json));
    const d2 = a2.json.compression.decode;
    assertEquals([d2.method, d2.kv_bytes_end.length], ["streaming_llm", 2]);
    assertEquals(new Set(d2.events.map((e: any) => e.output)).size, 2);
    // One-shot context + questions.
    const q = await s.post("/v1/generate", {
      context: STORY,
      questions: ["Lily"],
      max_tokens: 20,
      kv_compression: { method: "full", decode: { method: "knorm", budget: 16, interval: 4 } },
    });
    assertEquals(q.status, 200, JSON.stringify(q.json));
    const total = d.compressions + [g, c, chat, a1, a2, q].reduce(
      (n, r) => n + (r.json.compression.decode?.compressions ?? 0),
      0,
    );
    assert(total > 0);
    assertEquals(await s.metric("judgeq_decode_compressions_total") - before, total);
    const models = await s.get("/v1/models");
    assert(models.json.data[0].decode_methods.includes("judgeq"));
  } finally {
    await s.close();
  }
});

Deno.test("kv_compression.decode bad input: 400 naming the field, unknown methods listed, judgeq without adapter 422", async () => {
  const s = await startServer();
  try {
    const ctx = await s.post("/v1/contexts", { context: STORY });
    const cases: [Record<string, unknown>, string][] = [
      [{ budget: 16, interval: 0 }, "interval"],
      [{ budget: 16, interval: 4, buffer: 16 }, "buffer"],
      [{ budget: 16, interval: 4, buffer: 20 }, "buffer"],
      [{ budget: 0, interval: 4 }, "budget"],
      [{ fraction: 0, interval: 4 }, "fraction"],
      [{ fraction: 1.5, interval: 4 }, "fraction"],
      [{ fraction: -0.5, interval: 4 }, "fraction"],
      [{ interval: 4 }, "budget"],
      [{ budget: 8, fraction: 0.5, interval: 4 }, "budget"],
      [{ budget: 16 }, "interval"],
      [{ method: "bogus", budget: 16, interval: 4 }, "method"],
      [{ method: "lookahead", budget: 16, interval: 4 }, "method"],
      [{ budget: 16, interval: 4, extra: 1 }, "extra"],
    ];
    for (const [decode, field] of cases) {
      const param = `kv_compression.decode.${field}`;
      for (
        const [path, body] of [
          ["/v1/generate", {
            prompt: STORY,
            max_tokens: 4,
            kv_compression: { method: "snapkv", budget: 8, decode },
          }],
          ["/v1/completions", {
            prompt: STORY,
            max_tokens: 4,
            kv_compression: { method: "snapkv", budget: 8, decode },
          }],
          [`/v1/contexts/${ctx.json.id}/generate`, {
            question: "Lily",
            max_tokens: 4,
            kv_compression: { decode },
          }],
        ] as const
      ) {
        const r = await s.post(path, body);
        assertEquals([r.status, r.json.error?.param], [400, param], `${path} ${JSON.stringify(decode)}`);
        if (field === "method") assert(r.json.error.message.includes("snapkv"), r.json.error.message);
      }
    }
    // Schema-valid but impossible for this model: judgeq without an adapter.
    const j = await s.post("/v1/generate", {
      prompt: STORY,
      max_tokens: 4,
      kv_compression: { method: "full", decode: { method: "judgeq", budget: 16, interval: 4 } },
    });
    assertEquals([j.status, j.json.error.param], [422, "kv_compression.decode.method"]);
    // Decode-time compression needs a method that can run there.
    const f = await s.post("/v1/generate", {
      prompt: STORY,
      max_tokens: 4,
      kv_compression: { method: "full", decode: { budget: 16, interval: 4 } },
    });
    assertEquals([f.status, f.json.error.param], [422, "kv_compression.decode.method"]);
  } finally {
    await s.close();
  }
});
