// llama.cpp with N sequences in one context, as its server runs concurrent requests (continuous batching):
// the peer of bench/batch_compare.ts, run as a node subprocess:
//
//   node bench/llamacpp_parallel.mjs --spec SPEC.json
//
// SPEC.json: { "packageDir", "model": "<model.gguf>", "threads": 1, "kvCacheType": "F32" | "F16",
//              "levels": [1, 4, 16, 32], "prompts": [[token ids], ...] (stream i takes prompt i mod count),
//              "maxTokens": 64 }
// For each level N: one context with N sequences; every sequence evaluates its prompt and generates
// maxTokens greedy tokens (end-of-generation tokens do not stop it), all at once; node-llama-cpp batches
// the sequences' tokens into shared llama_decode calls. Prints one JSON line: per level the wall time, the
// CPU time of the process (every thread), and each stream's token arrival times.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const i = process.argv.indexOf("--spec");
const spec = JSON.parse(readFileSync(process.argv[i + 1], "utf8"));
const pkgRoot = join(spec.packageDir, "node_modules", "node-llama-cpp");
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(join(pkgRoot, "dist", "index.js")).href);

async function main() {
  const threads = spec.threads ?? 1;
  const llama = await getLlama({
    gpu: false,
    build: "never",
    usePrebuiltBinaries: true,
    skipDownload: true,
    progressLogs: false,
    maxThreads: threads,
    logLevel: LlamaLogLevel.error,
    logger: (level, message) => process.stderr.write(`[llama.cpp ${level}] ${message}\n`),
  });
  const model = await llama.loadModel({ modelPath: spec.model, gpuLayers: 0 });
  const longest = Math.max(...spec.prompts.map((p) => p.length));
  const levels = [];
  for (const n of spec.levels) {
    const ctx = await model.createContext({
      contextSize: n * (longest + spec.maxTokens + 8),
      sequences: n,
      batchSize: 512,
      threads: { ideal: threads, min: threads },
      experimentalKvCacheKeyType: spec.kvCacheType ?? "F32",
      experimentalKvCacheValueType: spec.kvCacheType ?? "F32",
    });
    const seqs = Array.from({ length: n }, () => ctx.getSequence());
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const streams = await Promise.all(seqs.map(async (seq, k) => {
      const it = seq.evaluate(spec.prompts[k % spec.prompts.length], { temperature: 0, yieldEogToken: true });
      const times = [];
      for (let t = 0; t < spec.maxTokens; t++) {
        const r = await it.next();
        if (r.done) break;
        times.push(performance.now() - t0);
      }
      await it.return();
      return times;
    }));
    const wallMs = performance.now() - t0;
    const cpu = process.cpuUsage(c0);
    levels.push({
      streams: n,
      contextSize: ctx.contextSize,
      wallMs,
      cpuMs: (cpu.user + cpu.system) / 1000,
      times: streams,
    });
    await ctx.dispose();
  }
  await model.dispose();
  await llama.dispose();
  process.stdout.write(JSON.stringify({ ok: true, threads, levels }) + "\n");
}

main().then(() => process.exit(0), (e) => {
  process.stdout.write(JSON.stringify({ ok: false, reason: String(e?.stack ?? e) }) + "\n");
  process.exit(1);
});
