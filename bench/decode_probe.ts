/**
 * One model's greedy decode tokens/s at one context (median of several runs), for paired before/after
 * comparisons of kernel or scheduling changes: prints one number.
 *
 *   deno run -A bench/decode_probe.ts [stories260K|llama100m] [context] [tokens] [runs] [f32|f16]
 */
import { GpuExecutor, type WeightFormatChoice } from "../gpu/executor.ts";
import { fixtureWeights, loadWeightsOnly, promptTokens } from "../gpu/testing.ts";

const [name = "stories260K", ctxArg = "512", tokArg = "256", runsArg = "3", format = "f32"] = Deno.args;
const ctx = Number(ctxArg), tokens = Number(tokArg), runs = Number(runsArg);
const w = name === "stories260K" ? await loadWeightsOnly() : fixtureWeights("llama100m");
const gx = await GpuExecutor.create(w, { weightFormat: format as WeightFormatChoice });
const s = gx.createSession(ctx + tokens + 8);
const start = Math.max(1, ctx - tokens);
await s.forward({ kind: "tokens", tokens: promptTokens(start, w.config.vocabSize, ctx) });
const greedy = {
  maxTokens: tokens,
  sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
  stopTokenIds: [],
};
await s.decode({ ...greedy, maxTokens: 8 });
const mark = s.mark();
const rates: number[] = [];
for (let i = 0; i < runs; i++) {
  await s.rewind(mark);
  const t = performance.now();
  const r = await s.decode(greedy);
  rates.push(r.tokens.length / ((performance.now() - t) / 1000));
}
rates.sort((a, b) => a - b);
console.log(rates[Math.floor(rates.length / 2)].toFixed(1));
gx.dispose();
