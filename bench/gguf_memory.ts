/**
 * What loading a quantized GGUF costs in memory: the f32 copy every executor but the native one runs,
 * beside the file's own bytes kept for the native one (`ModelWeights.quantized`).
 *
 *   deno run -A bench/gguf_memory.ts [--shape llama100m] [--type q8_0|q4_0|f16] [--dir /tmp]
 *
 * Writes the random test model of that shape as a GGUF file (core/gguf), then loads it from disk in a
 * fresh process and prints one JSON line: file bytes, parameters, f32 bytes, kept bytes, load time, RSS growth.
 */
import { syntheticVocab } from "../core/gguf/hf_vocab.ts";
import { type GgufTensorType, writeGguf } from "../core/gguf/model_writer.ts";
import { parameterCount } from "../core/weights.ts";
import type { TestShape } from "../fixtures/test_models.ts";
import { fixtureWeights } from "../fixtures/testing.ts";
import { parseFlags } from "../io/flags.ts";
import { loadModelDir } from "../io/model_dir.ts";

const f = parseFlags(
  Deno.args,
  {
    shape: { kind: "string", help: "test model shape", default: "llama100m" },
    type: { kind: "string", help: "tensor type", default: "q8_0" },
    dir: { kind: "string", help: "where the file is written", default: "/tmp" },
    load: { kind: "boolean", help: "(internal) load the written file and measure" },
  } as const,
);
const path = `${f.dir}/judgeq-${f.shape}.${f.type}.gguf`;

if (!f.load) {
  const w = fixtureWeights(f.shape as TestShape);
  await Deno.writeFile(
    path,
    writeGguf(w, syntheticVocab(w.config.vocabSize), { tensorType: f.type as GgufTensorType }),
  );
  const child = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      "--shape",
      f.shape as string,
      "--type",
      f.type as string,
      "--dir",
      f.dir as string,
      "--load",
    ],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  await Deno.remove(path);
  Deno.exit(child.code);
}

const rss0 = Deno.memoryUsage().rss;
const t0 = performance.now();
const w = (await loadModelDir(path)).weights;
const loadMs = performance.now() - t0;
const seen = new Set<Float32Array>();
let f32 = 0;
const add = (a: Float32Array | null) => {
  if (a && !seen.has(a)) seen.add(a), f32 += a.byteLength;
};
[w.embed, w.lmHead, w.finalNorm].forEach(add);
for (const l of w.layers) for (const a of Object.values(l)) add(a as Float32Array | null);
let kept = 0;
for (const t of w.quantized?.values() ?? []) kept += t.bytes.byteLength;
console.log(JSON.stringify({
  shape: f.shape,
  type: f.type,
  file_bytes: (await Deno.stat(path)).size,
  params: parameterCount(w),
  f32_bytes: f32,
  kept_bytes: kept,
  f32_over_kept: +(f32 / kept).toFixed(2),
  load_ms: Math.round(loadMs),
  rss_growth_mb: Math.round((Deno.memoryUsage().rss - rss0) / 2 ** 20),
}));
