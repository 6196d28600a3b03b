/**
 * A whole model from a parsed GGUF file: config (metadata), tokenizer files (tokenizer.ggml.*, the chat
 * template) and weights, every check done before the tensors are converted. `read` supplies a tensor's
 * bytes (a view of a file in memory, or a read at its offset on disk).
 */
import * as E from "fp-ts/Either";
import type { ModelConfig } from "../config.ts";
import { fail, type JudgeQError } from "../errors.ts";
import type { ModelWeights } from "../weights.ts";
import { GGML_TYPE } from "./ggml_types.ts";
import { ggufModelConfig } from "./model_config.ts";
import { ggufWeights } from "./model_weights.ts";
import { dequantize } from "./quants.ts";
import type { GgufFile, GgufTensorInfo } from "./reader.ts";
import { ggufTokenizerFiles } from "./tokenizer_files.ts";

export interface GgufModel {
  config: ModelConfig;
  weights: ModelWeights;
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
}

export type TensorReader = (info: GgufTensorInfo) => Promise<Uint8Array> | Uint8Array;

/** The config of a GGUF file (reads `rope_freqs.weight` when present, the only tensor it needs). */
export async function ggufConfig(
  file: GgufFile,
  read: TensorReader,
): Promise<E.Either<JudgeQError, ModelConfig>> {
  const freqs = file.tensors.get("rope_freqs.weight");
  let ropeFreqs: Float32Array | null = null;
  if (freqs) {
    if (freqs.ggmlType !== GGML_TYPE.F32 || freqs.dims.length !== 1) {
      return E.left(
        fail(
          "invalid_model_file",
          `must be a vector of F32, got ${freqs.typeName} [${freqs.dims}]`,
          freqs.name,
        ),
      );
    }
    ropeFreqs = dequantize(GGML_TYPE.F32, await read(freqs), freqs.dims[0]);
  }
  return ggufModelConfig({ file, ropeFreqs });
}

/** Config, tokenizer files and weights (f32, plus `quantized` unless keepQuantized is false). */
export async function ggufModel(
  file: GgufFile,
  read: TensorReader,
  opts: { keepQuantized?: boolean } = {},
): Promise<E.Either<JudgeQError, GgufModel>> {
  const config = await ggufConfig(file, read);
  if (E.isLeft(config)) return config;
  const tok = ggufTokenizerFiles(file);
  if (E.isLeft(tok)) return tok;
  const weights = await ggufWeights(file, config.right, read, opts);
  if (E.isLeft(weights)) return weights;
  return E.right({ config: config.right, weights: weights.right, ...tok.right });
}
