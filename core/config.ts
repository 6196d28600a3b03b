/**
 * Model configuration: the subset of a Hugging Face `config.json` this runtime needs, validated with zod
 * and normalised into one flat shape for every supported architecture.
 */
import { z } from "zod";
import * as E from "fp-ts/Either";
import { fail, type JudgeQError } from "./errors.ts";

export const SUPPORTED_ARCHITECTURES = [
  "LlamaForCausalLM",
  "MistralForCausalLM",
  "Qwen2ForCausalLM",
] as const;
export type Architecture = typeof SUPPORTED_ARCHITECTURES[number];

export type RopeScaling =
  | { type: "default" }
  | {
    type: "llama3";
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositionEmbeddings: number;
  }
  /** One divisor per rotated pair (a GGUF file's `rope_freqs.weight`, how llama.cpp stores Llama 3 scaling). */
  | { type: "freq_factors"; factors: number[] };

/** The normalised configuration every executor reads. */
export interface ModelConfig {
  architecture: Architecture;
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxSeqLen: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  rmsNormEps: number;
  tiedEmbeddings: boolean;
  /** Qwen2 has biases on the q, k and v projections. */
  attentionBias: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

const positiveInt = z.number().int().positive();
const tokenIds = z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).nullish();

const ropeScalingSchema = z.object({
  rope_type: z.string().optional(),
  type: z.string().optional(),
  factor: z.number().positive().optional(),
  low_freq_factor: z.number().positive().optional(),
  high_freq_factor: z.number().positive().optional(),
  original_max_position_embeddings: positiveInt.optional(),
}).passthrough().nullish();

const hfConfigSchema = z.object({
  architectures: z.array(z.string()).min(1),
  hidden_size: positiveInt,
  intermediate_size: positiveInt,
  num_hidden_layers: positiveInt,
  num_attention_heads: positiveInt,
  num_key_value_heads: positiveInt.optional(),
  head_dim: positiveInt.nullish(),
  vocab_size: positiveInt,
  max_position_embeddings: positiveInt,
  rope_theta: z.number().positive().default(10000),
  rope_scaling: ropeScalingSchema,
  rms_norm_eps: z.number().positive().default(1e-6),
  tie_word_embeddings: z.boolean().default(false),
  attention_bias: z.boolean().optional(),
  bos_token_id: tokenIds,
  eos_token_id: tokenIds,
}).passthrough();

const asList = (v: number | number[] | null | undefined): number[] =>
  v === null || v === undefined ? [] : Array.isArray(v) ? v : [v];

/** The field an issue is about ("config.hidden_size"), or the file when it is about the whole of it. */
const zodPath = (issue: z.core.$ZodIssue): string =>
  issue.path.length ? `config.${issue.path.map(String).join(".")}` : "config.json";

/** Validate a parsed `config.json`; the error names the offending field. */
export function parseModelConfig(raw: unknown): E.Either<JudgeQError, ModelConfig> {
  const parsed = hfConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return E.left(fail("invalid_config", issue.message, zodPath(issue)));
  }
  const c = parsed.data;
  const architecture = c.architectures[0];
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(architecture)) {
    return E.left(
      fail(
        "invalid_config",
        `unsupported architecture ${JSON.stringify(architecture)} (supported: ${
          SUPPORTED_ARCHITECTURES.join(", ")
        })`,
        "config.architectures",
      ),
    );
  }
  const nKvHeads = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % nKvHeads !== 0) {
    return E.left(
      fail("invalid_config", "num_attention_heads must be a multiple of it", "config.num_key_value_heads"),
    );
  }
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    return E.left(fail("invalid_config", `head size ${headDim} must be an even integer`, "config.head_dim"));
  }
  const scaling = parseRopeScaling(c.rope_scaling);
  if (E.isLeft(scaling)) return scaling;
  return E.right({
    architecture: architecture as Architecture,
    dim: c.hidden_size,
    hiddenDim: c.intermediate_size,
    nLayers: c.num_hidden_layers,
    nHeads: c.num_attention_heads,
    nKvHeads,
    headDim,
    vocabSize: c.vocab_size,
    maxSeqLen: c.max_position_embeddings,
    ropeTheta: c.rope_theta,
    ropeScaling: scaling.right,
    rmsNormEps: c.rms_norm_eps,
    tiedEmbeddings: c.tie_word_embeddings,
    attentionBias: c.attention_bias ?? architecture === "Qwen2ForCausalLM",
    bosTokenId: asList(c.bos_token_id)[0] ?? null,
    eosTokenIds: asList(c.eos_token_id),
  });
}

function parseRopeScaling(s: z.infer<typeof ropeScalingSchema>): E.Either<JudgeQError, RopeScaling> {
  if (s === null || s === undefined) return E.right({ type: "default" });
  const kind = s.rope_type ?? s.type ?? "default";
  if (kind === "default") return E.right({ type: "default" });
  if (kind !== "llama3") {
    return E.left(
      fail(
        "invalid_config",
        `unsupported rope scaling ${JSON.stringify(kind)} (supported: llama3)`,
        "config.rope_scaling",
      ),
    );
  }
  const { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } = s;
  if (!factor || !low_freq_factor || !high_freq_factor || !original_max_position_embeddings) {
    return E.left(
      fail(
        "invalid_config",
        "llama3 scaling needs factor, low_freq_factor, high_freq_factor, original_max_position_embeddings",
        "config.rope_scaling",
      ),
    );
  }
  return E.right({
    type: "llama3",
    factor,
    lowFreqFactor: low_freq_factor,
    highFreqFactor: high_freq_factor,
    originalMaxPositionEmbeddings: original_max_position_embeddings,
  });
}

/** RoPE inverse frequencies per rotated pair, with llama3 scaling applied when configured. */
export function ropeInverseFrequencies(config: ModelConfig): Float64Array {
  const half = config.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(config.ropeTheta, (2 * i) / config.headDim);
  const s = config.ropeScaling;
  if (s.type === "freq_factors") return inv.map((f, i) => f / s.factors[i]);
  if (s.type !== "llama3") return inv;
  const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const wavelen = (2 * Math.PI) / inv[i];
    if (wavelen < highWavelen) continue;
    if (wavelen > lowWavelen) {
      inv[i] = inv[i] / s.factor;
      continue;
    }
    const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) /
      (s.highFreqFactor - s.lowFreqFactor);
    inv[i] = (1 - smooth) * inv[i] / s.factor + smooth * inv[i];
  }
  return inv;
}
