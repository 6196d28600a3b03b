// llama.cpp peer for the benchmark, run by bench/llamacpp.ts as a node subprocess:
//
//   node bench/llamacpp_peer.mjs --spec SPEC.json
//
// SPEC.json: {
//   "packageDir": "<folder whose node_modules holds node-llama-cpp>",
//   "model": "<model.gguf>", "threads": 2, "kvCacheType": "F16" | "F32" (runs only; default F16),
//   "runs": [{ "context": 512, "prompt": [token ids], "decodeTokens": 32 }],       (optional)
//   "check": { "prompt": [token ids], "steps": 32, "vocabSize": 512, "contextSize": 64 }  (optional)
//   "tokenize": { "texts": ["..."], "special": false }   (optional: llama.cpp's ids of each text, no BOS added;
//                                                         special: control-token text parsed as tokens)
// }
//
// Each run uses a fresh context of `context` cells: the prompt is evaluated without generating (batch size
// min(prompt, 512)) and timed; then its last `decodeTokens` cells are erased and as many greedy decode
// steps are timed, so that decoding ends at the same position as the prompt did. The check evaluates its
// prompt with an F32 KV cache and without flash attention (whose CPU kernel rounds to f16), so that only
// the arithmetic order differs from our reference, and returns the next-token log-probabilities over the
// whole vocabulary (llama.cpp's softmax of the raw logits: greedy sampling leaves them untouched) and
// `steps` greedy tokens. Runs use llama.cpp's defaults (F16 KV cache, flash attention "auto") unless the
// spec sets "kvCacheType" / "flashAttention".
//
// Prints one JSON line on stdout: {"ok": true, "version", "runs": [...], "check": {...}} or
// {"ok": false, "reason"}. llama.cpp's own logs go to stderr.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function parseArgs(argv) {
  const i = argv.indexOf("--spec");
  if (i < 0 || !argv[i + 1]) throw new Error("usage: node bench/llamacpp_peer.mjs --spec SPEC.json");
  return JSON.parse(readFileSync(argv[i + 1], "utf8"));
}

async function main() {
  const spec = parseArgs(process.argv.slice(2));
  const pkgRoot = join(spec.packageDir, "node_modules", "node-llama-cpp");
  const pkg = JSON.parse(readFileSync(join(pkgRoot, "package.json"), "utf8"));
  const { getLlama, LlamaLogLevel } = await import(pathToFileURL(join(pkgRoot, "dist", "index.js")).href);
  const threads = spec.threads ?? 2;
  const llama = await getLlama({
    gpu: false,
    build: "never", // prebuilt CPU binaries only, never compile
    usePrebuiltBinaries: true,
    skipDownload: true,
    progressLogs: false,
    maxThreads: threads,
    logLevel: LlamaLogLevel.error,
    logger: (level, message) => process.stderr.write(`[llama.cpp ${level}] ${message}\n`),
  });
  const model = await llama.loadModel({ modelPath: spec.model, gpuLayers: 0 });
  const kvCacheType = spec.kvCacheType ?? "F16"; // llama.cpp's default cache type
  const newContext = (contextSize, kvType = kvCacheType, flashAttention = spec.flashAttention) =>
    model.createContext({
      ...(flashAttention === undefined ? {} : { flashAttention }),
      contextSize,
      batchSize: Math.min(contextSize, 512),
      sequences: 1,
      threads: { ideal: threads, min: threads },
      experimentalKvCacheKeyType: kvType,
      experimentalKvCacheValueType: kvType,
    });
  const result = { ok: true, version: pkg.version, threads, kvCacheType, runs: [], check: null };

  if (spec.runs?.length) {
    // Warm-up: first evaluation pays one-off allocations.
    const warm = await newContext(64);
    await warm.getSequence().evaluateWithoutGeneratingNewTokens(spec.runs[0].prompt.slice(0, 16));
    await warm.dispose();
  }
  for (const run of spec.runs ?? []) {
    const { prompt, decodeTokens } = run;
    if (decodeTokens >= prompt.length) throw new Error("decodeTokens must be below the prompt length");
    const ctx = await newContext(run.context);
    const seq = ctx.getSequence();
    let t = performance.now();
    await seq.evaluateWithoutGeneratingNewTokens(prompt);
    const prefillMs = performance.now() - t;
    const start = prompt.length - decodeTokens;
    await seq.eraseContextTokenRanges([{ start, end: prompt.length }]);
    const it = seq.evaluate([prompt[start]], { temperature: 0, yieldEogToken: true });
    t = performance.now();
    let n = 0;
    for (; n < decodeTokens; n++) {
      const r = await it.next();
      if (r.done) break;
    }
    const decodeMs = performance.now() - t;
    await it.return();
    result.runs.push({
      context: run.context,
      contextSize: ctx.contextSize,
      batchSize: ctx.batchSize,
      flashAttention: ctx.flashAttention,
      kvCacheType: ctx.kvCacheKeyType,
      promptTokens: prompt.length,
      prefillMs,
      prefillTokPerS: prompt.length / (prefillMs / 1000),
      decodeTokens: n,
      decodeMs,
      decodeTokPerS: n / (decodeMs / 1000),
    });
    await ctx.dispose();
  }

  if (spec.check) {
    const { prompt, steps } = spec.check;
    const ctx = await newContext(
      spec.check.contextSize ?? prompt.length + steps + 1,
      "F32",
      spec.check.flashAttention ?? false,
    );
    const seq = ctx.getSequence();
    const input = prompt.map((tok, i) =>
      i < prompt.length - 1
        ? tok
        : [tok, { generateNext: { token: true, probabilities: true, options: { temperature: 0 } } }]
    );
    const res = await seq.controlledEvaluate(input);
    const last = res[prompt.length - 1];
    if (!last?.next?.probabilities) throw new Error("no probabilities for the last prompt token");
    const logProbs = new Array(spec.check.vocabSize).fill(null);
    for (const [tok, p] of last.next.probabilities) logProbs[tok] = p > 0 ? Math.log(p) : null;
    const greedy = [last.next.token];
    if (steps > 1) {
      const it = seq.evaluate([last.next.token], { temperature: 0, yieldEogToken: true });
      while (greedy.length < steps) {
        const r = await it.next();
        if (r.done) break;
        greedy.push(r.value);
      }
      await it.return();
    }
    result.check = { kvCacheType: ctx.kvCacheKeyType, flashAttention: ctx.flashAttention, logProbs, greedy };
    await ctx.dispose();
  }
  if (spec.tokenize) {
    result.tokenized = spec.tokenize.texts.map((t) =>
      Array.from(model.tokenize(t, spec.tokenize.special ?? false))
    );
  }
  await model.dispose();
  await llama.dispose();
  out(result);
}

main().then(
  () => process.exit(0),
  (e) => {
    out({ ok: false, reason: String(e?.stack ?? e) });
    process.exit(1);
  },
);
