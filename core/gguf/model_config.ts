/**
 * ModelConfig from GGUF metadata (`general.architecture` llama or qwen2), validated with zod; errors name
 * the metadata key. f32 values are read back as the shortest decimal that is the same f32 (1e-5, not
 * 9.99999974e-6), so a file written from a Hugging Face config gives that config back.
 */
import * as E from "fp-ts/Either";
import { z } from "zod";
import type { Architecture, ModelConfig, RopeScaling } from "../config.ts";
import { fail, type JudgeQError } from "../errors.ts";
import type { GgufFile } from "./reader.ts";
import type { GgufValue } from "./values.ts";

const ARCHITECTURES: Record<string, Architecture> = { llama: "LlamaForCausalLM", qwen2: "Qwen2ForCausalLM" };

/** The shortest decimal that rounds to the same f32. */
export function shortestF32(x: number): number {
  for (let p = 1; p <= 9; p++) {
    const y = Number(x.toPrecision(p));
    if (Math.fround(y) === x) return y;
  }
  return x;
}

/** A scalar metadata value as a JS value (f32 as its shortest decimal, 64-bit ints as numbers when safe). */
export function metaScalar(v: GgufValue | undefined): unknown {
  if (v === undefined || v.type === "array") return v === undefined ? undefined : v.value;
  if (v.type === "f32") return shortestF32(v.value);
  if (v.type === "u64" || v.type === "i64") {
    return v.value <= BigInt(Number.MAX_SAFE_INTEGER) && v.value >= -BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v.value)
      : NaN;
  }
  return v.value;
}

const count = z.number().int().positive();
const tokenId = z.number().int().nonnegative();
const positive = z.number().positive().finite();

/** Required and optional keys, without the `ARCH.` prefix. */
const archSchema = z.object({
  "block_count": count,
  "embedding_length": count,
  "feed_forward_length": count,
  "context_length": count,
  "attention.head_count": count,
  "attention.head_count_kv": count.optional(),
  "attention.key_length": count.optional(),
  "attention.value_length": count.optional(),
  "rope.dimension_count": count.optional(),
  "rope.freq_base": positive.optional(),
  "attention.layer_norm_rms_epsilon": positive,
  "vocab_size": count.optional(),
  "rope.scaling.type": z.string().optional(),
});

/** Llama 3 scaling as this project's writer records it (llama.cpp itself reads rope_freqs.weight). */
const llama3Schema = z.object({
  "judgeq.rope_scaling.type": z.literal("llama3").optional(),
  "judgeq.rope_scaling.factor": positive.optional(),
  "judgeq.rope_scaling.low_freq_factor": positive.optional(),
  "judgeq.rope_scaling.high_freq_factor": positive.optional(),
  "judgeq.rope_scaling.original_context_length": count.optional(),
});

const tokenizerSchema = z.object({
  "tokenizer.ggml.bos_token_id": tokenId.optional(),
  "tokenizer.ggml.eos_token_id": tokenId.optional(),
  "tokenizer.ggml.eot_token_id": tokenId.optional(),
});

export interface GgufConfigInput {
  file: GgufFile;
  /** `rope_freqs.weight` decoded, when the file has it (Llama 3 scaling as llama.cpp stores it). */
  ropeFreqs?: Float32Array | null;
}

const err = (message: string, key: string) => E.left(fail("invalid_config", message, key));

/** The normalised config of a GGUF file; errors name the metadata key (or tensor) at fault. */
export function ggufModelConfig({ file, ropeFreqs }: GgufConfigInput): E.Either<JudgeQError, ModelConfig> {
  const m = file.metadata;
  const archValue = m.get("general.architecture");
  if (archValue?.type !== "string") return err("is missing or not a string", "general.architecture");
  const arch = archValue.value;
  const architecture = ARCHITECTURES[arch];
  if (!architecture) {
    return err(
      `unsupported architecture ${JSON.stringify(arch)} (supported: llama, qwen2)`,
      "general.architecture",
    );
  }
  const raw: Record<string, unknown> = {};
  for (const key of Object.keys(archSchema.shape)) raw[key] = metaScalar(m.get(`${arch}.${key}`));
  const parsed = archSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return err(issue.message, `${arch}.${issue.path.map(String).join(".")}`);
  }
  const tokRaw: Record<string, unknown> = {};
  for (const key of Object.keys(tokenizerSchema.shape)) tokRaw[key] = metaScalar(m.get(key));
  const tok = tokenizerSchema.safeParse(tokRaw);
  if (!tok.success) return err(tok.error.issues[0].message, tok.error.issues[0].path.map(String).join("."));
  const a = parsed.data;
  const nHeads = a["attention.head_count"];
  const nKvHeads = a["attention.head_count_kv"] ?? nHeads;
  if (nHeads % nKvHeads !== 0) {
    return err("attention.head_count must be a multiple of it", `${arch}.attention.head_count_kv`);
  }
  const headDim = a["attention.key_length"] ?? a.embedding_length / nHeads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    return err(`head size ${headDim} must be an even integer`, `${arch}.attention.key_length`);
  }
  if ((a["attention.value_length"] ?? headDim) !== headDim) {
    return err(`value length differs from the key length ${headDim}`, `${arch}.attention.value_length`);
  }
  if ((a["rope.dimension_count"] ?? headDim) !== headDim) {
    return err(
      `partial rotary embeddings are not supported (head size ${headDim})`,
      `${arch}.rope.dimension_count`,
    );
  }
  const tokens = m.get("tokenizer.ggml.tokens");
  const token = file.tensors.get("token_embd.weight");
  const vocabSize = a.vocab_size ?? token?.dims[1] ?? (tokens?.type === "array" ? tokens.value.length : 0);
  if (!vocabSize) return err("is missing (and there is no token_embd.weight)", `${arch}.vocab_size`);
  const l3Raw: Record<string, unknown> = {};
  for (const key of Object.keys(llama3Schema.shape)) l3Raw[key] = metaScalar(m.get(key));
  const l3 = llama3Schema.safeParse(l3Raw);
  if (!l3.success) return err(l3.error.issues[0].message, l3.error.issues[0].path.map(String).join("."));
  const scaling = ropeScalingOf(arch, a, l3.data, headDim, ropeFreqs ?? null);
  if (E.isLeft(scaling)) return scaling;
  const eos = [tok.data["tokenizer.ggml.eos_token_id"], tok.data["tokenizer.ggml.eot_token_id"]]
    .filter((x): x is number => x !== undefined);
  // The key order of parseModelConfig's result: the model fingerprint hashes the config's JSON.
  return E.right({
    architecture,
    dim: a.embedding_length,
    hiddenDim: a.feed_forward_length,
    nLayers: a.block_count,
    nHeads,
    nKvHeads,
    headDim,
    vocabSize,
    maxSeqLen: a.context_length,
    ropeTheta: a["rope.freq_base"] ?? 10000,
    ropeScaling: scaling.right,
    rmsNormEps: a["attention.layer_norm_rms_epsilon"],
    tiedEmbeddings: !file.tensors.has("output.weight"),
    attentionBias: architecture === "Qwen2ForCausalLM",
    bosTokenId: tok.data["tokenizer.ggml.bos_token_id"] ?? null,
    eosTokenIds: [...new Set(eos)],
  });
}

function ropeScalingOf(
  arch: string,
  a: z.infer<typeof archSchema>,
  l3: z.infer<typeof llama3Schema>,
  headDim: number,
  freqs: Float32Array | null,
): E.Either<JudgeQError, RopeScaling> {
  const type = a["rope.scaling.type"] ?? "none";
  if (l3["judgeq.rope_scaling.type"] === "llama3") {
    const { "judgeq.rope_scaling.factor": factor, "judgeq.rope_scaling.low_freq_factor": low } = l3;
    const {
      "judgeq.rope_scaling.high_freq_factor": high,
      "judgeq.rope_scaling.original_context_length": orig,
    } = l3;
    if (!factor || !low || !high || !orig) {
      return err(
        "llama3 scaling needs factor, low_freq_factor, high_freq_factor, original_context_length",
        "judgeq.rope_scaling.type",
      );
    }
    return E.right({
      type: "llama3",
      factor,
      lowFreqFactor: low,
      highFreqFactor: high,
      originalMaxPositionEmbeddings: orig,
    });
  }
  if (type !== "none") {
    return err(
      `unsupported rope scaling ${JSON.stringify(type)} (supported: none, llama3)`,
      `${arch}.rope.scaling.type`,
    );
  }
  if (!freqs) return E.right({ type: "default" });
  if (freqs.length !== headDim / 2) {
    return E.left(
      fail(
        "invalid_model_file",
        `${freqs.length} values, the head size ${headDim} needs ${headDim / 2}`,
        "rope_freqs.weight",
      ),
    );
  }
  if (!freqs.every((f) => Number.isFinite(f) && f > 0)) {
    return E.left(
      fail("invalid_model_file", "frequency factors must be positive and finite", "rope_freqs.weight"),
    );
  }
  return E.right({ type: "freq_factors", factors: Array.from(freqs) });
}
