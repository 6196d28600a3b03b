/** Loads the model to train for: only its config and weights are needed, not the tokenizer. */
import * as E from "fp-ts/Either";
import { parseModelConfig } from "../core/config.ts";
import { fail, JudgeQError } from "../core/errors.ts";
import { assembleWeights, type ModelWeights, type NamedTensor } from "../core/weights.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir, openSafetensors, readTensor } from "../io/model_dir.ts";

export const modelDirOf = (dir: string | null): string => dir ?? EMBEDDED_MODEL_DIR;

/**
 * `loadModelDir` does the full validation (shards included) but requires tokenizer.json; a directory
 * without one (the embedded model, until its tokenizer lands) falls back to config.json +
 * model.safetensors.
 */
export async function loadWeights(dir: string): Promise<ModelWeights> {
  try {
    return (await loadModelDir(dir)).weights;
  } catch (e) {
    if (!(e instanceof JudgeQError && e.param === "tokenizer.json")) throw e;
  }
  const base = dir.replace(/\/+$/, "");
  const config = parseModelConfig(JSON.parse(await Deno.readTextFile(`${base}/config.json`)));
  if (E.isLeft(config)) throw config.left;
  const opened = await openSafetensors(`${base}/model.safetensors`, "model.safetensors").catch((e) => {
    throw e instanceof Deno.errors.NotFound
      ? fail("invalid_model_file", "file is missing", "model.safetensors")
      : e;
  });
  try {
    const tensors = new Map<string, NamedTensor>();
    for (const name of opened.header.tensors.keys()) tensors.set(name, await readTensor(opened, name));
    const w = assembleWeights(config.right, (n) => tensors.get(n));
    if (E.isLeft(w)) throw w.left;
    return w.right;
  } finally {
    opened.file.close();
  }
}
