/**
 * Executor benchmark: prefill and decode tokens/s of the WebGPU executor on stories260K and on a
 * generated ~100M-parameter llama (random weights, built in memory, never written), at contexts 512
 * and 2048 (stories260K: 512 only, its trained context), with the full cache and with the cache
 * compressed to 10% (keepPositions keeping the last 10% of the prompt positions of every head).
 * Also: this machine's memory-copy bandwidth (TypedArray.set over 256 MiB arrays), decode bytes moved
 * per second as a fraction of it, the GPU/CPU-reference ratio, and syncs per generated token.
 *
 *   deno run -A bench/bench.ts [--json] [--quick] [--models stories260K,llama100m]
 */
import { CpuExecutor, type CpuSession } from "../core/cpu/executor.ts";
import type { DecodeOptions, KvSession } from "../core/executor.ts";
import { parameterCount } from "../core/weights.ts";
import type { ModelWeights } from "../core/weights.ts";
import { GpuExecutor } from "../gpu/executor.ts";
import type { GpuSession } from "../gpu/session.ts";
import { fixtureWeights, loadWeightsOnly, promptTokens } from "../gpu/testing.ts";

const args = Deno.args;
const asJson = args.includes("--json");
const quick = args.includes("--quick");
const modelsArg = args[args.indexOf("--models") + 1];
const models = args.includes("--models") && modelsArg ? modelsArg.split(",") : ["stories260K", "llama100m"];
const log = (...m: unknown[]) => {
  if (!asJson) console.log(...m);
  else console.error(...m);
};

const greedy = (maxTokens: number): DecodeOptions => ({
  maxTokens,
  sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
  stopTokenIds: [],
});

/** Bytes copied per second by TypedArray.set between two 256 MiB arrays (best of several). */
function copyBandwidth(): number {
  const n = (quick ? 32 : 64) << 20;
  const a = new Float32Array(n).fill(1), b = new Float32Array(n);
  b.set(a);
  let best = 0;
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    b.set(a);
    a.set(b);
    best = Math.max(best, (2 * a.byteLength) / ((performance.now() - t) / 1000));
  }
  return best;
}

/** Bytes a decode step reads: every projection and the LM head (f32), plus the cached K and V. */
function weightBytesPerToken(w: ModelWeights): number {
  const c = w.config, hd = c.headDim;
  const perLayer = (c.nHeads + 2 * c.nKvHeads) * hd * c.dim + c.dim * c.nHeads * hd + 3 * c.dim * c.hiddenDim;
  return 4 * (c.nLayers * perLayer + c.vocabSize * c.dim);
}

/** Keeps the last `fraction` of the prompt positions in every head. */
function keepLast(s: KvSession, promptLength: number, fraction: number): Int32Array[][] {
  const c = s.config, n = Math.max(1, Math.round(promptLength * fraction));
  const kept = Int32Array.from({ length: n }, (_, i) => promptLength - n + i);
  return Array.from({ length: c.nLayers }, () => Array.from({ length: c.nKvHeads }, () => kept));
}

interface DecodeRun {
  tokensPerSecond: number;
  contextAtStart: number;
  kvBytes: number;
  syncsPerToken: number;
  bytesPerSecond: number;
  fractionOfCopyBandwidth: number;
}

async function timeDecode(
  s: KvSession,
  tokens: number,
  weightBytes: number,
  copyBw: number,
): Promise<DecodeRun> {
  const kv = s.kvBytes(), ctx = s.nextPosition;
  const t = performance.now();
  const r = await s.decode(greedy(tokens));
  const sec = (performance.now() - t) / 1000;
  const tps = r.tokens.length / sec;
  // K and V grow by one entry per head per step: count the average.
  const c = s.config, grow = (c.nLayers * c.nKvHeads * c.headDim * 8 * tokens) / 2;
  const bytesPerSecond = (weightBytes + kv + grow) * tps;
  return {
    tokensPerSecond: round(tps),
    contextAtStart: ctx,
    kvBytes: kv,
    syncsPerToken: round(r.syncs / r.tokens.length, 4),
    bytesPerSecond: Math.round(bytesPerSecond),
    fractionOfCopyBandwidth: round(bytesPerSecond / copyBw, 3),
  };
}

const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;
const best = (a: DecodeRun | null, b: DecodeRun) => (a && a.tokensPerSecond >= b.tokensPerSecond ? a : b);
/** Decode timings are the best of this many runs (the machine is shared; the best is the least disturbed). */
const REPEATS = quick ? 2 : 3;

async function benchGpu(w: ModelWeights, contexts: number[], decodeTokens: number, copyBw: number) {
  const gx = await GpuExecutor.create(w);
  const wb = weightBytesPerToken(w);
  const out: Record<string, unknown> = { description: gx.description };
  try {
    // Warm-up: the first dispatches of each pipeline compile on llvmpipe.
    const warm = gx.createSession(64);
    await warm.forward({ kind: "tokens", tokens: promptTokens(8, w.config.vocabSize) });
    await warm.decode(greedy(4));
    warm.dispose();
    for (const ctx of contexts) {
      const s = gx.createSession(ctx + decodeTokens) as GpuSession;
      const toks = promptTokens(ctx, w.config.vocabSize, ctx);
      const t = performance.now();
      await s.forward({ kind: "tokens", tokens: toks });
      const prefillSec = (performance.now() - t) / 1000;
      log(`  gpu prefill ${ctx}: ${(ctx / prefillSec).toFixed(1)} tok/s`);
      // Decode with the context ending at `ctx`: drop the prompt's tail first. The compressed copy keeps
      // the last 10% of the prompt positions; runs alternate between the two (best of REPEATS each),
      // rewinding to the same cache each time, so load from other processes hits both alike.
      const start = ctx - decodeTokens;
      await s.truncateFrom(start);
      const small = (await s.clone()) as GpuSession;
      await small.keepPositions(keepLast(small, start, 0.1), start);
      const marks = [s.mark(), small.mark()];
      let full: DecodeRun | null = null, compressed: DecodeRun | null = null;
      for (let i = 0; i < REPEATS; i++) {
        await s.rewind(marks[0]);
        full = best(full, await timeDecode(s, decodeTokens, wb, copyBw));
        await small.rewind(marks[1]);
        compressed = best(compressed, await timeDecode(small, decodeTokens, wb, copyBw));
      }
      log(
        `  gpu decode @${ctx} full: ${full!.tokensPerSecond} tok/s, ${
          full!.fractionOfCopyBandwidth
        } of copy bw`,
      );
      log(`  gpu decode @${ctx} 10%: ${compressed!.tokensPerSecond} tok/s`);
      out[`ctx${ctx}`] = {
        prefillTokensPerSecond: round(ctx / prefillSec),
        decodeFull: full,
        decodeCompressed10: { ...compressed!, allocatedKvBytes: small.allocatedKvBytes() },
        fullAllocatedKvBytes: s.allocatedKvBytes(),
        compressedSpeedup: round(compressed!.tokensPerSecond / full!.tokensPerSecond, 3),
      };
      s.dispose();
      small.dispose();
    }
  } finally {
    gx.dispose();
  }
  return out;
}

/** CPU reference: prefill of a short prompt, decode at `ctx` with a synthetic cache (same cost). */
async function benchCpu(
  w: ModelWeights,
  ctx: number,
  prefillTokens: number,
  decodeTokens: number,
  copyBw: number,
) {
  const cx = new CpuExecutor(w), c = w.config;
  const p = cx.createSession(prefillTokens + 1);
  const t = performance.now();
  await p.forward({ kind: "tokens", tokens: promptTokens(prefillTokens, c.vocabSize) });
  const prefillTps = prefillTokens / ((performance.now() - t) / 1000);
  const s = cx.createSession(ctx + decodeTokens + 1) as CpuSession;
  const k = new Float32Array(c.headDim).map((_, i) => Math.sin(i));
  for (let l = 0; l < c.nLayers; l++) {
    for (let g = 0; g < c.nKvHeads; g++) {
      for (let pos = 0; pos < ctx - decodeTokens - 1; pos++) s.cache.append(l, g, pos, k, k);
    }
  }
  s.nextPosition = ctx - decodeTokens - 1;
  await s.forward({ kind: "tokens", tokens: [1] });
  const mark = s.mark();
  let run: DecodeRun | null = null;
  for (let i = 0; i < 2; i++) {
    await s.rewind(mark);
    run = best(run, await timeDecode(s, decodeTokens, weightBytesPerToken(w), copyBw));
  }
  log(`  cpu prefill ${prefillTps.toFixed(1)} tok/s, decode @${ctx}: ${run!.tokensPerSecond} tok/s`);
  return { prefillTokensPerSecond: round(prefillTps), prefillTokens, [`decodeCtx${ctx}`]: run };
}

const copyBw = copyBandwidth();
log(`memory copy bandwidth: ${(copyBw / 1e9).toFixed(2)} GB/s (bytes copied per second)`);
const report: Record<string, unknown> = {
  machine: {
    cores: navigator.hardwareConcurrency,
    copyBandwidthBytesPerSecond: Math.round(copyBw),
    // Other processes share this machine: the 1-minute load average before and after the run.
    loadAverageStart: Deno.loadavg()[0],
  },
  models: {},
};
for (const name of models) {
  const w = name === "stories260K" ? await loadWeightsOnly() : fixtureWeights("llama100m");
  const contexts = name === "stories260K" ? [512] : quick ? [512] : [512, 2048];
  const decodeTokens = name === "stories260K" ? (quick ? 128 : 256) : quick ? 16 : 32;
  log(`${name}: ${(parameterCount(w) / 1e6).toFixed(2)}M parameters`);
  const gpu = await benchGpu(w, contexts, decodeTokens, copyBw);
  const cpuDecode = name === "stories260K" ? 64 : 4;
  const cpu = await benchCpu(w, 512, name === "stories260K" ? 64 : 4, cpuDecode, copyBw);
  const g512 = gpu.ctx512 as { decodeFull: DecodeRun; prefillTokensPerSecond: number };
  const c512 = cpu.decodeCtx512 as DecodeRun;
  (report.models as Record<string, unknown>)[name] = {
    parameters: parameterCount(w),
    decodeBytesPerTokenWeights: weightBytesPerToken(w),
    gpu,
    cpu,
    gpuOverCpu: {
      decodeCtx512: round(g512.decodeFull.tokensPerSecond / c512.tokensPerSecond),
      prefill: round(g512.prefillTokensPerSecond / cpu.prefillTokensPerSecond),
    },
  };
}
(report.machine as Record<string, unknown>).loadAverageEnd = Deno.loadavg()[0];
report.targets = targets(report.models as Record<string, ModelReport>);
if (asJson) console.log(JSON.stringify(report, null, 2));
else console.log(JSON.stringify(report.targets, null, 2));

interface ModelReport {
  gpu: Record<string, { decodeFull: DecodeRun; compressedSpeedup: number }>;
  gpuOverCpu: { decodeCtx512: number };
}

/** The targets, measured values next to them. */
function targets(m: Record<string, ModelReport>) {
  const out: Record<string, unknown> = {};
  const big = m.llama100m, small = m.stories260K;
  if (big) {
    out.llama100mGpuDecodeOverCpu = { target: "> 1", measured: big.gpuOverCpu.decodeCtx512 };
    out.llama100mFractionOfCopyBandwidth = {
      target: ">= 0.6",
      measured: big.gpu.ctx512.decodeFull.fractionOfCopyBandwidth,
    };
    if (big.gpu.ctx2048) {
      out.llama100mCompressedSpeedupAt2048 = { target: "> 1", measured: big.gpu.ctx2048.compressedSpeedup };
    }
  }
  if (small) {
    out.stories260KGreedyDecodeTokensPerSecond = {
      target: ">= 500",
      measured: small.gpu.ctx512.decodeFull.tokensPerSecond,
    };
  }
  const syncs = Object.values(m).map((r) => r.gpu.ctx512.decodeFull.syncsPerToken);
  out.syncsPerGreedyToken = { target: "<= 0.1", measured: Math.max(...syncs) };
  return out;
}
