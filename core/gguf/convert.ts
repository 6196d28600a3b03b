/** A Hugging Face model (weights + tokenizer files, already parsed) as a GGUF file: what `deno task convert` writes. */
import type { ModelWeights } from "../weights.ts";
import { ggufTokenizerFromHf } from "./hf_vocab.ts";
import { type GgufTensorType, writeGguf } from "./model_writer.ts";

export interface HfModelParts {
  weights: ModelWeights;
  tokenizerJson: unknown;
  tokenizerConfig: unknown | null;
}

/** Encodes a parsed HF model as GGUF with `tensorType` matrices; `name` becomes `general.name`. */
export function hfToGguf(m: HfModelParts, tensorType: GgufTensorType, name = "model"): Uint8Array {
  const { vocab, options } = ggufTokenizerFromHf(
    m.tokenizerJson,
    m.tokenizerConfig,
    m.weights.config.vocabSize,
  );
  return writeGguf(m.weights, vocab, { ...options, tensorType, name });
}
