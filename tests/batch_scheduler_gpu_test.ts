/**
 * The batch scheduler over the WebGPU executor, which has no batched step: a stream decodes through the
 * session's own decode (tokens sampled on the device, batches pipelined), handing the executor over between
 * its batches. The reference is each request run alone on the executor: the same tokens, and fewer host
 * round trips (buffer maps, counted) than tokens: one forward per token would read its logits back each time.
 */
import { assert, assertEquals } from "./helpers.ts";
import { generateText, type Model, type TextRequest } from "../core/engine.ts";
import { promptTokens } from "../fixtures/testing.ts";
import { gpuAvailable } from "../gpu/device.ts";
import { loadModel } from "../io/runtime.ts";
import { BatchScheduler } from "../server/batch_scheduler.ts";

const adapter = gpuAvailable() ? await navigator.gpu.requestAdapter().catch(() => null) : null;

Deno.test({
  name:
    "batch scheduler on WebGPU: streams decode ahead through the session, with the tokens each gets alone",
  ignore: adapter === null,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const model = await loadModel({ executor: "gpu", warn: () => {} });
    const vocab = model.config.vocabSize;
    const requests: TextRequest[] = [
      { prompt: promptTokens(40, vocab, 1), maxTokens: 48, ignoreEos: true },
      {
        prompt: promptTokens(90, vocab, 2),
        maxTokens: 40,
        ignoreEos: true,
        compression: { method: "snapkv", budget: 24 },
      },
      {
        prompt: promptTokens(20, vocab, 3),
        maxTokens: 32,
        ignoreEos: true,
        temperature: 0.9,
        topP: 0.9,
        seed: 7,
      },
    ];
    const alone: Awaited<ReturnType<typeof generateText>>[] = [];
    for (const r of requests) alone.push(await generateText(model, r));
    const scheduler = new BatchScheduler(model.executor, { maxBatchTokens: 128, kvCapBytes: null });
    const scheduled = { ...model, executor: scheduler.wrap() } as Model;
    const mapAsync = GPUBuffer.prototype.mapAsync;
    let maps = 0;
    GPUBuffer.prototype.mapAsync = function (...args) {
      maps++;
      return mapAsync.apply(this, args);
    };
    let together;
    try {
      together = await Promise.all(requests.map((r) => generateText(scheduled, r)));
    } finally {
      GPUBuffer.prototype.mapAsync = mapAsync;
    }
    const tokens = together.reduce((n, t) => n + t.outputs[0].tokens.length, 0);
    assert(maps < tokens / 2, `${maps} buffer maps for ${tokens} tokens`);
    together.forEach((t, i) => {
      assertEquals(t.outputs[0].tokens, alone[i].outputs[0].tokens, `request ${i}: tokens`);
    });
    model.executor.dispose();
  },
});
