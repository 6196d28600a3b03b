/**
 * Run by tests/embedding_test.ts with no permissions at all (`deno run --no-prompt`): hides WebGPU,
 * imports mod.ts and serve.ts, removes the Deno namespace, loads the embedded model from bytes given on
 * stdin (no filesystem access) and prints, as one JSON line, each executor's greedy text and Judge Q's
 * kept positions, and serve.ts's answer to one request.
 */
import "./no_webgpu.ts"; // first: WebGPU is gone before the library's modules are evaluated
import * as lib from "../../mod.ts";
import { createServeHandler } from "../../serve.ts";

// The model's files arrive on stdin (reading stdin needs no permission): a little-endian u32 count, then
// for each file a u32 name length, the name, a u32 byte length and the bytes.
const input = new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer());
const files = new Map<string, Uint8Array>();
{
  const view = new DataView(input.buffer);
  let at = 4;
  for (let i = view.getUint32(0, true); i > 0; i--) {
    const n = view.getUint32(at, true);
    const name = new TextDecoder().decode(input.subarray(at + 4, at + 4 + n));
    const len = view.getUint32(at + 4 + n, true);
    files.set(name, input.subarray(at + 8 + n, at + 8 + n + len));
    at += 8 + n + len;
  }
}
const file = (name: string) => files.get(name)!;

// Then no Deno namespace at all, as in a browser or workerd: the library must not need it. (Deno's own
// npm loader does, so the modules are loaded statically, above, before it goes.)
Reflect.deleteProperty(globalThis, "Deno");

const PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
const results: Record<string, { text: string; kept: number[][][]; executor: string }> = {};
const warnings: string[] = [];
for (const executor of ["cpu", "wasm", "auto"] as const) {
  const model = await lib.loadModelFromBytes({
    config: file("config.json"),
    tokenizer: file("tokenizer.json"),
    tokenizerConfig: file("tokenizer_config.json"),
    generationConfig: file("generation_config.json"),
    safetensors: [file("model.safetensors")],
    adapter: file("judgeq.safetensors"),
    executor,
    threads: 2,
    warn: (m) => warnings.push(m),
  });
  const r = await lib.generateText(model, {
    prompt: PROMPT,
    maxTokens: 24,
    compression: { method: "judgeq", budget: 8 },
  });
  results[executor] = {
    text: r.outputs[0].text,
    kept: r.run.compression.kept,
    executor: model.executor.kind,
  };
  model.executor.dispose();
}
// The HTTP service's { fetch } handler (createApp) over a model loaded from bytes.
const handler = createServeHandler({
  load: () =>
    lib.loadModelFromBytes({
      config: file("config.json"),
      tokenizer: file("tokenizer.json"),
      safetensors: [file("model.safetensors")],
      adapter: file("judgeq.safetensors"),
      executor: "cpu",
    }),
  app: { contextTtlMs: 60_000 },
});
const res = await handler.fetch(
  new Request("http://edge.example/v1/generate", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: PROMPT, max_tokens: 24, kv_compression: { method: "judgeq", budget: 8 } }),
  }),
);
const served = { status: res.status, body: await res.json() };
(await handler.app()).close();
console.log(JSON.stringify({ results, warnings, served, denoGone: !("Deno" in globalThis) }));
