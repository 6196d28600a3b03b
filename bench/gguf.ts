/**
 * The llama.cpp peer's GGUF export: the same weights our executors run, written by core/gguf (F32 by
 * default, so that llama.cpp runs exactly our values; F16/Q8_0/Q4_0 with `tensorType`).
 */
import type { ModelWeights } from "../core/weights.ts";
import { type GgufTensorType, type GgufVocab, writeGguf } from "../core/gguf/model_writer.ts";

export {
  GGUF_TOKEN_TYPE,
  ggufUnsupportedReason,
  type GgufVocab,
  interleaveRopeRows as unpermuteRopeRows,
} from "../core/gguf/model_writer.ts";
export { syntheticVocab, vocabFromTokenizerJson } from "../core/gguf/hf_vocab.ts";

export interface GgufOptions {
  /** `general.name`; defaults to "judgeq". */
  name?: string;
  /** Tensor data alignment in bytes (`general.alignment`); defaults to 32. */
  alignment?: number;
  /** `context_length`; defaults to config.maxSeqLen. */
  contextLength?: number;
  /** Tensor type; defaults to f32. */
  tensorType?: GgufTensorType;
}

/** Encodes the weights and vocabulary as a GGUF v3 file (F32 unless `opts.tensorType` says otherwise). */
export function encodeGgufF32(weights: ModelWeights, vocab: GgufVocab, opts: GgufOptions = {}): Uint8Array {
  return writeGguf(weights, vocab, { ...opts, tensorType: opts.tensorType ?? "f32" });
}
