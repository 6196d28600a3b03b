/**
 * Helpers shared by the GPU tests and the benchmark: model weights without a tokenizer (the embedded
 * stories260K checkpoint, or the random fixture shapes built in memory) and comparisons.
 */
import * as E from "fp-ts/Either";
import { parseModelConfig } from "../core/config.ts";
import { JudgeQError } from "../core/errors.ts";
import { assembleWeights, expectedTensors, type ModelWeights, type NamedTensor } from "../core/weights.ts";
import { randomTensors, testModelConfig, type TestShape } from "../fixtures/test_models.ts";
import { EMBEDDED_MODEL_DIR, openSafetensors, readTensor } from "../io/model_dir.ts";

const orThrow = <A>(e: E.Either<Error, A>): A => {
  if (E.isLeft(e)) throw e.left;
  return e.right;
};

/** Weights of a model directory with a single model.safetensors (no tokenizer needed). */
export async function loadWeightsOnly(dir = EMBEDDED_MODEL_DIR): Promise<ModelWeights> {
  const config = orThrow(parseModelConfig(JSON.parse(await Deno.readTextFile(`${dir}/config.json`))));
  const opened = await openSafetensors(`${dir}/model.safetensors`, "model.safetensors");
  try {
    const tensors = new Map<string, NamedTensor>();
    for (const name of expectedTensors(config).keys()) tensors.set(name, await readTensor(opened, name));
    return orThrow(assembleWeights(config, (n) => tensors.get(n)));
  } finally {
    opened.file.close();
  }
}

/** A random-weight test model built in memory (float32, as io/ would load it after conversion). */
export function fixtureWeights(shape: TestShape, seed = 1234): ModelWeights {
  const config = orThrow(parseModelConfig(testModelConfig(shape)));
  const tensors = randomTensors(config, seed);
  return orThrow(assembleWeights(config, (n) => tensors.get(n)));
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new JudgeQError("internal", `length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** Deterministic token ids for prompts. */
export function promptTokens(n: number, vocab: number, seed = 7): number[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s % vocab;
  });
}
