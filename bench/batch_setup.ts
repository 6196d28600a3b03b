/**
 * The setup the batched-decoding benchmarks share (bench/batch_compare.ts, bench/kv_bound.ts,
 * ops/loadtest_compare.ts): one model's values written once as GGUF by the project's writer, so that
 * our native executor and llama.cpp read the same weights, and prompt ids = BOS + essay text tokenized by
 * the embedded tokenizer (every prompt a different passage).
 */
import { vocabFromTokenizerJson } from "../core/gguf/hf_vocab.ts";
import { type GgufTensorType, writeGguf } from "../core/gguf/model_writer.ts";
import { createTokenizer } from "../core/tokenizer.ts";
import type { ModelWeights } from "../core/weights.ts";
import { fixtureWeights, loadWeightsOnly } from "../fixtures/testing.ts";
import { UsageError } from "../io/flags.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "../io/model_dir.ts";

export const BENCH_MODELS = ["llama76m", "stories260K"] as const;
export type BenchModel = typeof BENCH_MODELS[number];
export const BENCH_FORMATS = ["f32", "q8_0"] as const;

/**
 * The flags both comparisons with llama.cpp's batched decoding take (bench/batch_compare.ts in process,
 * ops/loadtest_compare.ts over HTTP): the same model, threads, KV type, stream levels and lengths on both sides.
 */
export const PEER_COMPARISON_FLAGS = {
  model: { kind: "string", help: `${BENCH_MODELS.join(" or ")} (default llama76m)`, default: "llama76m" },
  threads: { kind: "int", help: "threads of both engines (default 1)", default: 1 },
  kv: {
    kind: "string",
    help: "KV cache type of both engines: f16 (llama.cpp's default) or f32",
    default: "f16",
  },
  levels: {
    kind: "string",
    help: "concurrent streams, comma-separated (default 1,4,16,32)",
    default: "1,4,16,32",
  },
  "max-tokens": { kind: "int", help: "tokens per stream (default 64)", default: 64 },
  text: { kind: "string", help: "a folder of .txt files for the prompts (default the shared essays)" },
  json: { kind: "boolean", help: "print one JSON object" },
  out: { kind: "string", help: "also write the JSON to this file" },
  help: { kind: "boolean", help: "show this help" },
} as const;
export type BenchFormat = typeof BENCH_FORMATS[number];

/** The shared essays (this repository sits beside shared/ on the bench machine); `--text DIR` elsewhere. */
export const DEFAULT_TEXT_DIR = new URL("../../shared/data/haystack/PaulGrahamEssays/", import.meta.url)
  .pathname;

export function parseList<T extends string>(v: string, all: readonly T[], flag: string): T[] {
  const items = v.split(",").map((s) => s.trim());
  for (const i of items) {
    if (!all.includes(i as T)) throw new UsageError(`--${flag}: unknown '${i}' (known: ${all.join(", ")})`);
  }
  return items as T[];
}

export function benchWeights(name: BenchModel): Promise<ModelWeights> {
  // llama76m: random weights (seeded), the 76M shape of fixtures/test_models.ts.
  return name === "stories260K" ? loadWeightsOnly() : Promise.resolve(fixtureWeights(name));
}

/** `weights` as a GGUF file of `format` with the embedded tokenizer's vocabulary (no BOS added on load). */
export async function benchGguf(weights: ModelWeights, format: BenchFormat): Promise<Uint8Array> {
  const hf = await loadModelDir(EMBEDDED_MODEL_DIR);
  if (hf.config.vocabSize !== weights.config.vocabSize) {
    throw new Error(
      `the embedded vocabulary has ${hf.config.vocabSize} tokens, the model ${weights.config.vocabSize}`,
    );
  }
  const vocab = vocabFromTokenizerJson(hf.tokenizerJson, hf.config.vocabSize);
  return writeGguf(weights, vocab, { tensorType: format as GgufTensorType, addBos: false });
}

/**
 * `count` prompts of `length` ids each: BOS, then essay text from `count` evenly spaced places of all the
 * essays' tokens (sorted by file name), so every prompt is a different passage.
 */
export async function essayPrompts(
  count: number,
  length: number,
  textDir = DEFAULT_TEXT_DIR,
): Promise<number[][]> {
  const hf = await loadModelDir(EMBEDDED_MODEL_DIR);
  const t = createTokenizer(hf.tokenizerJson, hf.tokenizerConfig, hf.config.vocabSize);
  if (t._tag === "Left") throw t.left;
  let names: string[];
  try {
    names = [...Deno.readDirSync(textDir)].filter((e) => e.name.endsWith(".txt")).map((e) => e.name).sort();
  } catch (e) {
    throw new UsageError(`--text: cannot read ${textDir}: ${(e as Error).message}`);
  }
  if (names.length === 0) throw new UsageError(`--text: no .txt files in ${textDir}`);
  // Enough text for the prompts, not the whole folder (tokenizing all of it takes seconds).
  const ids: number[] = [];
  for (const n of names) {
    ids.push(...t.right.encode(Deno.readTextFileSync(`${textDir}/${n}`) + "\n\n", { addBos: false }));
    if (ids.length >= (count + 1) * length * 2) break;
  }
  if (ids.length < length) throw new UsageError(`--text: ${ids.length} tokens of text, fewer than ${length}`);
  const bos = hf.config.bosTokenId ?? 1;
  return Array.from({ length: count }, (_, r) => {
    const start = Math.floor((r * (ids.length - length)) / Math.max(1, count));
    return [bos, ...ids.slice(start, start + length - 1)];
  });
}

/** Writes `bytes` to a fresh temporary folder as model.gguf; the caller removes the folder. */
export async function tempGguf(bytes: Uint8Array): Promise<{ dir: string; path: string }> {
  const dir = await Deno.makeTempDir({ prefix: "judgeq-batch-bench-" });
  await Deno.writeFile(`${dir}/model.gguf`, bytes);
  return { dir, path: `${dir}/model.gguf` };
}

/**
 * Prompts for an HTTP run (the API takes text): each essay prompt's text (its ids past BOS, decoded), with
 * the ids the service's tokenizer makes of that text (BOS included), which llama.cpp is then given.
 */
export async function essayTexts(
  count: number,
  length: number,
  textDir = DEFAULT_TEXT_DIR,
): Promise<{ text: string; ids: number[] }[]> {
  const hf = await loadModelDir(EMBEDDED_MODEL_DIR);
  const t = createTokenizer(hf.tokenizerJson, hf.tokenizerConfig, hf.config.vocabSize);
  if (t._tag === "Left") throw t.left;
  return (await essayPrompts(count, length, textDir)).map((p) => {
    const text = t.right.decode(p.slice(1));
    return { text, ids: t.right.encode(text, { addBos: true }) };
  });
}
