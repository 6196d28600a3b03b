/**
 * ModelWeights (Hugging Face layout) + a vocabulary -> a GGUF file llama.cpp runs: architecture `llama`
 * (Llama, Mistral) or `qwen2`, tensors F32, F16, Q8_0 or Q4_0.
 *
 * Layout notes:
 * - GGUF lists dims fastest-varying first: a row-major [out, in] matrix has dims [in, out], bytes unchanged.
 * - llama.cpp's `llama` architecture rotates adjacent pairs (2i, 2i + 1) while HF weights rotate halves
 *   (i, i + headDim/2), so llama.cpp's converter permutes the q and k rows of every head; this writer does
 *   the same (`interleaveRopeRows`). `qwen2` uses rotate-half in llama.cpp too: no permutation.
 * - Llama 3 RoPE scaling is written as llama.cpp's converter does: a `rope_freqs.weight` tensor of one
 *   divisor per rotated pair.
 * - Types (as llama.cpp's quantize tool, with one difference): norms, biases and rope_freqs stay F32;
 *   every other matrix, token_embd included, takes the requested type; a matrix whose rows are not a whole
 *   number of 32-value blocks is written F16 (llama.cpp would refuse it). The output matrix (token_embd
 *   when tied) of a Q4_0 file is Q8_0, where llama.cpp's quantize writes Q6_K (no Q6_K quantizer here).
 */
import { type ModelConfig, ropeInverseFrequencies } from "../config.ts";
import type { ModelWeights } from "../weights.ts";
import { GGML_TYPE } from "./ggml_types.ts";
import { encodeF16Bytes, quantizeQ4_0, quantizeQ8_0 } from "./quants.ts";
import type { GgufValue } from "./values.ts";
import { encodeGguf, type GgufTensorOut } from "./writer.ts";

export type GgufTensorType = "f32" | "f16" | "q8_0" | "q4_0";

/** llama.cpp's token types (llama_token_type). */
export const GGUF_TOKEN_TYPE = {
  normal: 1,
  unknown: 2,
  control: 3,
  userDefined: 4,
  unused: 5,
  byte: 6,
} as const;

/**
 * A GGUF vocabulary: one entry per id. `llama` is SentencePiece-style (scores rank merges); `gpt2` is
 * byte-level BPE with its merges ("a b" strings) and a pre-tokenizer name (`llama-bpe`, `qwen2`, ...).
 */
export type GgufVocab =
  | { model?: "llama"; tokens: string[]; scores: number[]; types: number[] }
  | { model: "gpt2"; tokens: string[]; types: number[]; merges: string[]; pre: string };

export interface GgufWriteOptions {
  tensorType: GgufTensorType;
  /** `general.name`; default "judgeq". */
  name?: string;
  /** Tensor data alignment; default 32. */
  alignment?: number;
  /** Context length written; default config.maxSeqLen. */
  contextLength?: number;
  /** Special token ids; defaults: the config's BOS and first EOS. */
  bosId?: number | null;
  eosId?: number | null;
  unkId?: number | null;
  padId?: number | null;
  /** Default false, as the peer feeds BOS itself; a user's file should say what its tokenizer does. */
  addBos?: boolean;
  addEos?: boolean;
  /** `tokenizer.chat_template`. */
  chatTemplate?: string | null;
}

const FILE_TYPE: Record<GgufTensorType, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 7 };
const TYPE_ID: Record<GgufTensorType, number> = {
  f32: GGML_TYPE.F32,
  f16: GGML_TYPE.F16,
  q8_0: GGML_TYPE.Q8_0,
  q4_0: GGML_TYPE.Q4_0,
};

/** The GGUF architecture of a config: `qwen2` for Qwen2, `llama` for Llama and Mistral. */
export function ggufArchitecture(c: ModelConfig): "llama" | "qwen2" {
  return c.architecture === "Qwen2ForCausalLM" ? "qwen2" : "llama";
}

/** Why a config cannot be written, or null when it can. */
export function ggufUnsupportedReason(c: ModelConfig): string | null {
  if (c.headDim % 2 !== 0) return `head size ${c.headDim} is odd`;
  if (c.attentionBias && ggufArchitecture(c) !== "qwen2") {
    return "attention biases are written only for qwen2 (llama.cpp's llama architecture has none)";
  }
  return null;
}

/** Interleaves each head's rows from rotate-half to adjacent-pair RoPE order (row p -> 2p, half + p -> 2p + 1). */
export function interleaveRopeRows(
  w: Float32Array,
  nHeads: number,
  headDim: number,
  cols: number,
): Float32Array {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < nHeads; h++) {
    const base = h * headDim;
    for (let p = 0; p < half; p++) {
      out.set(w.subarray((base + p) * cols, (base + p + 1) * cols), (base + 2 * p) * cols);
      out.set(w.subarray((base + half + p) * cols, (base + half + p + 1) * cols), (base + 2 * p + 1) * cols);
    }
  }
  return out;
}

interface PlannedTensor {
  name: string;
  dims: number[];
  values: Float32Array;
  ggmlType: number;
}

/** llama.cpp's rope frequency divisors for Llama 3 scaling: the plain inverse frequency over the scaled one. */
function ropeFreqFactors(c: ModelConfig): Float32Array {
  const scaled = ropeInverseFrequencies(c);
  const plain = ropeInverseFrequencies({ ...c, ropeScaling: { type: "default" } });
  return Float32Array.from(plain, (p, i) => p / scaled[i]);
}

/** Every tensor of the file with the ggml type it gets (see the header comment for the rules). */
export function ggufTensorPlan(w: ModelWeights, tensorType: GgufTensorType): PlannedTensor[] {
  const c = w.config;
  const arch = ggufArchitecture(c);
  const q = c.nHeads * c.headDim, kv = c.nKvHeads * c.headDim;
  const main = TYPE_ID[tensorType];
  const matrix = (name: string, cols: number, rows: number, values: Float32Array, type = main) => ({
    name,
    dims: [cols, rows],
    values,
    ggmlType: type !== GGML_TYPE.F32 && type !== GGML_TYPE.F16 && cols % 32 !== 0 ? GGML_TYPE.F16 : type,
  });
  const vector = (name: string, values: Float32Array) => ({
    name,
    dims: [values.length],
    values,
    ggmlType: GGML_TYPE.F32,
  });
  const tied = c.tiedEmbeddings || w.lmHead === w.embed;
  const outputType = tensorType === "q4_0" ? GGML_TYPE.Q8_0 : main;
  const rope = (m: Float32Array, heads: number) =>
    arch === "llama" ? interleaveRopeRows(m, heads, c.headDim, c.dim) : m;
  const out: PlannedTensor[] = [
    matrix("token_embd.weight", c.dim, c.vocabSize, w.embed, tied ? outputType : main),
  ];
  if (c.ropeScaling.type !== "default") out.push(vector("rope_freqs.weight", ropeFreqFactors(c)));
  w.layers.forEach((l, i) => {
    const p = `blk.${i}.`;
    out.push(
      vector(p + "attn_norm.weight", l.attnNorm),
      matrix(p + "attn_q.weight", c.dim, q, rope(l.wq, c.nHeads)),
      matrix(p + "attn_k.weight", c.dim, kv, rope(l.wk, c.nKvHeads)),
      matrix(p + "attn_v.weight", c.dim, kv, l.wv),
    );
    if (l.bq && l.bk && l.bv) {
      out.push(
        vector(p + "attn_q.bias", l.bq),
        vector(p + "attn_k.bias", l.bk),
        vector(p + "attn_v.bias", l.bv),
      );
    }
    out.push(
      matrix(p + "attn_output.weight", q, c.dim, l.wo),
      vector(p + "ffn_norm.weight", l.mlpNorm),
      matrix(p + "ffn_gate.weight", c.dim, c.hiddenDim, l.wGate),
      matrix(p + "ffn_up.weight", c.dim, c.hiddenDim, l.wUp),
      matrix(p + "ffn_down.weight", c.hiddenDim, c.dim, l.wDown),
    );
  });
  out.push(vector("output_norm.weight", w.finalNorm));
  // Tied embeddings: llama.cpp falls back to token_embd when output.weight is absent.
  if (!tied) out.push(matrix("output.weight", c.dim, c.vocabSize, w.lmHead, outputType));
  for (const t of out) {
    const n = t.dims.reduce((a, b) => a * b, 1);
    if (t.values.length !== n) {
      throw new RangeError(`${t.name}: ${t.values.length} values, dims [${t.dims}] need ${n}`);
    }
    for (let i = 0; i < t.values.length; i++) {
      if (!Number.isFinite(t.values[i])) {
        throw new RangeError(`${t.name}: value ${t.values[i]} at ${i} is not finite`);
      }
    }
  }
  return out;
}

function encodeTensor(t: PlannedTensor): Uint8Array {
  switch (t.ggmlType) {
    case GGML_TYPE.F32:
      return new Uint8Array(t.values.slice().buffer);
    case GGML_TYPE.F16:
      return encodeF16Bytes(t.values);
    case GGML_TYPE.Q8_0:
      return quantizeQ8_0(t.values);
    case GGML_TYPE.Q4_0:
      return quantizeQ4_0(t.values);
  }
  throw new RangeError(`${t.name}: no encoder for ggml type ${t.ggmlType}`);
}

/** The metadata key/values of the file, in order. */
export function ggufModelMetadata(
  w: ModelWeights,
  vocab: GgufVocab,
  o: GgufWriteOptions,
): [string, GgufValue][] {
  const c = w.config;
  const arch = ggufArchitecture(c);
  const u32 = (value: number): GgufValue => ({ type: "u32", value });
  const f32 = (value: number): GgufValue => ({ type: "f32", value });
  const kv: [string, GgufValue][] = [
    ["general.architecture", { type: "string", value: arch }],
    ["general.name", { type: "string", value: o.name ?? "judgeq" }],
    ["general.file_type", u32(FILE_TYPE[o.tensorType])],
    ["general.alignment", u32(o.alignment ?? 32)],
  ];
  if (o.tensorType === "q8_0" || o.tensorType === "q4_0") kv.push(["general.quantization_version", u32(2)]);
  kv.push(
    [`${arch}.vocab_size`, u32(c.vocabSize)],
    [`${arch}.context_length`, u32(o.contextLength ?? c.maxSeqLen)],
    [`${arch}.embedding_length`, u32(c.dim)],
    [`${arch}.block_count`, u32(c.nLayers)],
    [`${arch}.feed_forward_length`, u32(c.hiddenDim)],
    [`${arch}.attention.head_count`, u32(c.nHeads)],
    [`${arch}.attention.head_count_kv`, u32(c.nKvHeads)],
    [`${arch}.attention.key_length`, u32(c.headDim)],
    [`${arch}.attention.value_length`, u32(c.headDim)],
    [`${arch}.rope.dimension_count`, u32(c.headDim)],
    [`${arch}.rope.freq_base`, f32(c.ropeTheta)],
    [`${arch}.attention.layer_norm_rms_epsilon`, f32(c.rmsNormEps)],
  );
  if (c.ropeScaling.type === "llama3") {
    // llama.cpp reads the scaling from rope_freqs.weight (its rope.scaling.* keys mean other, linear
    // scalings); these keys, which it ignores, give a reader the config's own numbers back.
    const s = c.ropeScaling;
    kv.push(
      ["judgeq.rope_scaling.type", { type: "string", value: "llama3" }],
      ["judgeq.rope_scaling.factor", f32(s.factor)],
      ["judgeq.rope_scaling.low_freq_factor", f32(s.lowFreqFactor)],
      ["judgeq.rope_scaling.high_freq_factor", f32(s.highFreqFactor)],
      ["judgeq.rope_scaling.original_context_length", u32(s.originalMaxPositionEmbeddings)],
    );
  }
  kv.push(
    ["tokenizer.ggml.model", { type: "string", value: vocab.model ?? "llama" }],
    ["tokenizer.ggml.tokens", { type: "array", itemType: "string", value: vocab.tokens }],
  );
  if (vocab.model === "gpt2") {
    kv.push(
      ["tokenizer.ggml.pre", { type: "string", value: vocab.pre }],
      ["tokenizer.ggml.token_type", { type: "array", itemType: "i32", value: vocab.types }],
      ["tokenizer.ggml.merges", { type: "array", itemType: "string", value: vocab.merges }],
    );
  } else {
    kv.push(
      ["tokenizer.ggml.scores", { type: "array", itemType: "f32", value: vocab.scores }],
      ["tokenizer.ggml.token_type", { type: "array", itemType: "i32", value: vocab.types }],
    );
  }
  const id = (key: string, v: number | null | undefined) => {
    if (v !== null && v !== undefined) kv.push([`tokenizer.ggml.${key}`, u32(v)]);
  };
  id("bos_token_id", o.bosId === undefined ? c.bosTokenId : o.bosId);
  id("eos_token_id", o.eosId === undefined ? c.eosTokenIds[0] : o.eosId);
  id("unknown_token_id", o.unkId);
  id("padding_token_id", o.padId);
  kv.push(
    ["tokenizer.ggml.add_bos_token", { type: "bool", value: o.addBos ?? false }],
    ["tokenizer.ggml.add_eos_token", { type: "bool", value: o.addEos ?? false }],
  );
  if (o.chatTemplate) kv.push(["tokenizer.chat_template", { type: "string", value: o.chatTemplate }]);
  return kv;
}

/** Encodes the weights and vocabulary as a GGUF v3 file (see the header comment for layouts and types). */
export function writeGguf(weights: ModelWeights, vocab: GgufVocab, options: GgufWriteOptions): Uint8Array {
  const c = weights.config;
  if (!(options.tensorType in TYPE_ID)) {
    throw new RangeError(`tensorType ${JSON.stringify(options.tensorType)}: expected f32, f16, q8_0 or q4_0`);
  }
  const why = ggufUnsupportedReason(c);
  if (why) throw new RangeError(why);
  if (vocab.tokens.length !== c.vocabSize || vocab.types.length !== c.vocabSize) {
    throw new RangeError(
      `vocab has ${vocab.tokens.length} tokens and ${vocab.types.length} types, the model ${c.vocabSize}`,
    );
  }
  if (vocab.model !== "gpt2" && vocab.scores.length !== c.vocabSize) {
    throw new RangeError(`vocab has ${vocab.scores.length} scores, the model ${c.vocabSize} tokens`);
  }
  const tensors: GgufTensorOut[] = ggufTensorPlan(weights, options.tensorType).map((t) => ({
    name: t.name,
    dims: t.dims,
    ggmlType: t.ggmlType,
    data: encodeTensor(t),
  }));
  return encodeGguf(ggufModelMetadata(weights, vocab, options), tensors);
}
