/**
 * The official `openai` client against /v1/completions and /v1/chat/completions, streaming and not:
 * greedy outputs equal generateText's, streams concatenate to the same text, errors come back typed.
 */
import OpenAI from "openai";
import { generateText } from "../core/engine.ts";
import { renderChat } from "../server/openai.ts";
import { continuation, startServer } from "./server_testing.ts";
import { assert, assertEquals } from "./helpers.ts";

const client = (base: string, apiKey = "unused") =>
  new OpenAI({ apiKey, baseURL: `${base}/v1`, maxRetries: 0, timeout: 30_000 });

Deno.test("openai client: completions, JSON and streamed, equal generateText", async () => {
  const s = await startServer();
  try {
    const ai = client(s.base);
    const want = await generateText(s.model, { prompt: "Once upon a time", maxTokens: 20 });
    const r = await ai.completions.create({
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 20,
      temperature: 0,
    });
    assertEquals(r.object, "text_completion");
    assertEquals(r.choices[0].text, want.outputs[0].text);
    assertEquals(r.choices[0].finish_reason, "length");
    assertEquals(r.usage, { prompt_tokens: 5, completion_tokens: 20, total_tokens: 25 });

    const stream = await ai.completions.create({
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 20,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "", finish: string | null = null, usage = null;
    for await (const chunk of stream) {
      if (chunk.choices[0]) {
        text += chunk.choices[0].text;
        finish = chunk.choices[0].finish_reason ?? finish;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    assertEquals(text, want.outputs[0].text);
    assertEquals(finish, "length");
    assertEquals(usage, r.usage);

    // A stop string, and kv_compression passed through the client's body.
    const stopped = await ai.completions.create({
      model: "stories260K",
      prompt: "Once upon a time",
      max_tokens: 30,
      temperature: 0,
      stop: ["."],
    });
    assertEquals(stopped.choices[0].text, want.outputs[0].text.split(".")[0]);
    assertEquals(stopped.choices[0].finish_reason, "stop");
    const long = "Once upon a time, there was a little girl named Lily. She loved to play outside. ".repeat(
      4,
    );
    const compressed = await ai.completions.create({
      model: "stories260K",
      prompt: long,
      max_tokens: 8,
      temperature: 0,
      // @ts-expect-error: a Judge Q extension the client passes through untouched
      kv_compression: { method: "snapkv", budget: 24 },
    });
    const wantC = await generateText(s.model, {
      prompt: long,
      maxTokens: 8,
      compression: { method: "snapkv", budget: 24 },
    });
    assertEquals(compressed.choices[0].text, continuation(s.model, long, wantC.outputs[0].tokens));
    assertEquals(
      (compressed as unknown as { compression: { kept_tokens: number[][] } }).compression.kept_tokens[0],
      [24, 24, 24, 24],
    );
  } finally {
    await s.close();
  }
});

Deno.test("openai client: chat completions, JSON and streamed, with the plain template", async () => {
  const s = await startServer({ apiKey: "k" });
  try {
    const ai = client(s.base, "k");
    const messages = [{ role: "user" as const, content: "Once upon a time" }];
    const prompt = renderChat(s.model.tokenizer, messages);
    assertEquals(prompt, "Once upon a time"); // stories260K has no chat template
    const want = await generateText(s.model, { prompt, maxTokens: 16 });
    const r = await ai.chat.completions.create({
      model: "stories260K",
      messages,
      max_tokens: 16,
      temperature: 0,
    });
    assertEquals(r.object, "chat.completion");
    assertEquals(r.choices[0].message.role, "assistant");
    assertEquals(r.choices[0].message.content, want.outputs[0].text);
    assertEquals(r.usage?.completion_tokens, 16);

    const stream = await ai.chat.completions.create({
      model: "stories260K",
      messages,
      max_completion_tokens: 16,
      temperature: 0,
      stream: true,
    });
    let text = "", role = "", finish: string | null = null;
    for await (const chunk of stream) {
      role ||= chunk.choices[0]?.delta.role ?? "";
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assertEquals([role, text, finish], ["assistant", want.outputs[0].text, "length"]);

    // Seeded sampling is reproducible; the end of a story stops with "stop".
    const sample = () =>
      ai.chat.completions.create({
        model: "stories260K",
        messages,
        max_tokens: 12,
        temperature: 0.8,
        seed: 7,
      });
    assertEquals((await sample()).choices[0].message.content, (await sample()).choices[0].message.content);
    const story = await ai.chat.completions.create({ model: "stories260K", messages, temperature: 0 });
    assertEquals(story.choices[0].finish_reason, "stop");
  } finally {
    await s.close();
  }
});

Deno.test("openai client: errors arrive as typed APIErrors with the param", async () => {
  const s = await startServer({ apiKey: "k" });
  try {
    const expectError = async (f: () => Promise<unknown>, status: number, param: string | null) => {
      try {
        await f();
      } catch (e) {
        assert(e instanceof OpenAI.APIError, String(e));
        assertEquals([
          e.status,
          (e.error as { param?: string | null })?.param ?? (e as { param?: string | null }).param ?? null,
        ], [status, param]);
        return;
      }
      throw new Error("expected an error");
    };
    await expectError(() => client(s.base, "nope").models.list(), 401, null);
    const ai = client(s.base, "k");
    await expectError(() => ai.completions.create({ model: "gpt-4", prompt: "x" }), 404, "model");
    await expectError(() => ai.completions.create({ model: "stories260K", prompt: "x", n: 2 }), 400, "n");
    await expectError(
      () => ai.chat.completions.create({ model: "stories260K", messages: [], max_tokens: 2 }),
      400,
      "messages",
    );
    await expectError(
      () =>
        ai.completions.create({
          model: "stories260K",
          prompt: "Once upon a time ".repeat(200),
          max_tokens: 2,
        }),
      422,
      "prompt",
    );
    const models = await ai.models.list();
    assertEquals(models.data.map((m) => m.id), ["stories260K"]);
  } finally {
    await s.close();
  }
});
