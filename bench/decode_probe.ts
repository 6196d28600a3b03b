/**
 * Greedy decode tokens/s of one model at one context for one or more executor configurations, for
 * paired before/after comparisons of kernel or scheduling choices. With several configurations the
 * runs interleave (A B B A A B ...), so drifting load on the shared machine hits every one alike; one
 * line per configuration: its median and every run.
 *
 *   deno run -A bench/decode_probe.ts [stories260K|llama100m] [context] [tokens] [runs] [CONFIG ...]
 *
 * CONFIG is FORMAT:NORM with FORMAT f32|f16 and NORM auto|fused|separate (default f32:auto), e.g.
 *   deno run -A bench/decode_probe.ts llama100m 512 16 10 f32:fused f32:separate
 */
import { GpuExecutor, type GpuExecutorOptions } from "../gpu/executor.ts";
import type { GpuSession } from "../gpu/session.ts";
import type { CacheMark } from "../core/executor.ts";
import { fixtureWeights, loadWeightsOnly, promptTokens } from "../fixtures/testing.ts";
import { median } from "../core/percentile.ts";

const [name = "stories260K", ctxArg = "512", tokArg = "256", runsArg = "3", ...configArgs] = Deno.args;
const ctx = Number(ctxArg), tokens = Number(tokArg), runs = Number(runsArg);
const configs = configArgs.length ? configArgs : ["f32:auto"];

function options(config: string): GpuExecutorOptions {
  const [format, norm = "auto"] = config.split(":");
  if (format !== "f32" && format !== "f16") throw new Error(`${config}: format must be f32 or f16`);
  if (!["auto", "fused", "separate"].includes(norm)) {
    throw new Error(`${config}: norm must be auto, fused or separate`);
  }
  return { weightFormat: format, ...(norm === "auto" ? {} : { separateNorm: norm === "separate" }) };
}

const w = name === "stories260K" ? await loadWeightsOnly() : fixtureWeights("llama100m");
const greedy = {
  maxTokens: tokens,
  sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
  stopTokenIds: [],
};
const probes: { config: string; gx: GpuExecutor; s: GpuSession; mark: CacheMark; rates: number[] }[] = [];
for (const config of configs) {
  const gx = await GpuExecutor.create(w, options(config));
  const s = gx.createSession(ctx + tokens + 8);
  await s.forward({
    kind: "tokens",
    tokens: promptTokens(Math.max(1, ctx - tokens), w.config.vocabSize, ctx),
  });
  await s.decode({ ...greedy, maxTokens: 8 }); // warm-up: pipelines compile on first use
  probes.push({ config, gx, s, mark: s.mark(), rates: [] });
}
for (let i = 0; i < runs; i++) {
  for (const p of i % 2 ? [...probes].reverse() : probes) {
    await p.s.rewind(p.mark);
    const t = performance.now();
    const r = await p.s.decode(greedy);
    p.rates.push(r.tokens.length / ((performance.now() - t) / 1000));
  }
}
for (const p of probes) {
  console.log(
    `${p.config.padEnd(14)} ${median(p.rates).toFixed(2)} tok/s  runs ${
      p.rates.map((r) => r.toFixed(1)).join(" ")
    }`,
  );
  p.gx.dispose();
}
