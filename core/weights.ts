/**
 * Model weights in memory, float32, row-major with Hugging Face layouts: a projection `W` of shape
 * [out, in] maps x to W x. Assembled from named tensors with every shape checked.
 */
import * as E from "fp-ts/Either";
import type { ModelConfig } from "./config.ts";
import { fail, type JudgeQError } from "./errors.ts";

export interface LayerWeights {
  attnNorm: Float32Array; // [dim]
  wq: Float32Array; // [nHeads * headDim, dim]
  wk: Float32Array; // [nKvHeads * headDim, dim]
  wv: Float32Array; // [nKvHeads * headDim, dim]
  bq: Float32Array | null;
  bk: Float32Array | null;
  bv: Float32Array | null;
  wo: Float32Array; // [dim, nHeads * headDim]
  mlpNorm: Float32Array; // [dim]
  wGate: Float32Array; // [hiddenDim, dim]
  wUp: Float32Array; // [hiddenDim, dim]
  wDown: Float32Array; // [dim, hiddenDim]
}

/** A matrix kept in a ggml block format as read from a GGUF file, rows in the model's (HF) layout. */
export interface QuantizedTensor {
  ggmlType: number;
  typeName: string;
  shape: [rows: number, cols: number];
  bytes: Uint8Array;
}

export interface ModelWeights {
  config: ModelConfig;
  embed: Float32Array; // [vocab, dim]
  layers: LayerWeights[];
  finalNorm: Float32Array; // [dim]
  /** The same array as `embed` when embeddings are tied. */
  lmHead: Float32Array; // [vocab, dim]
  /** Matrices as a GGUF file stored them, by HF tensor name, for executors that run them as they are. */
  quantized?: Map<string, QuantizedTensor>;
}

export interface NamedTensor {
  shape: number[];
  data: Float32Array;
}

/** Every tensor name a config needs, with its expected shape. */
export function expectedTensors(c: ModelConfig): Map<string, number[]> {
  return new Map(expectedTensorEntries(c));
}

/** The same, one at a time, in order (a config's layer count is not bounded until the file is read). */
export function* expectedTensorEntries(c: ModelConfig): Generator<[string, number[]]> {
  const q = c.nHeads * c.headDim, kv = c.nKvHeads * c.headDim;
  const entry = (name: string, shape: number[]): [string, number[]] => [name, shape];
  yield entry("model.embed_tokens.weight", [c.vocabSize, c.dim]);
  for (let i = 0; i < c.nLayers; i++) {
    const p = `model.layers.${i}.`;
    yield entry(p + "input_layernorm.weight", [c.dim]);
    yield entry(p + "self_attn.q_proj.weight", [q, c.dim]);
    yield entry(p + "self_attn.k_proj.weight", [kv, c.dim]);
    yield entry(p + "self_attn.v_proj.weight", [kv, c.dim]);
    if (c.attentionBias) {
      yield entry(p + "self_attn.q_proj.bias", [q]);
      yield entry(p + "self_attn.k_proj.bias", [kv]);
      yield entry(p + "self_attn.v_proj.bias", [kv]);
    }
    yield entry(p + "self_attn.o_proj.weight", [c.dim, q]);
    yield entry(p + "post_attention_layernorm.weight", [c.dim]);
    yield entry(p + "mlp.gate_proj.weight", [c.hiddenDim, c.dim]);
    yield entry(p + "mlp.up_proj.weight", [c.hiddenDim, c.dim]);
    yield entry(p + "mlp.down_proj.weight", [c.dim, c.hiddenDim]);
  }
  yield entry("model.norm.weight", [c.dim]);
  if (!c.tiedEmbeddings) yield entry("lm_head.weight", [c.vocabSize, c.dim]);
}

/** Checks a tensor's presence and shape before it is read, so a bad file fails before loading. */
export function checkTensorShape(
  name: string,
  shape: number[] | undefined,
  config: ModelConfig,
  want: number[] | undefined = expectedTensors(config).get(name),
) {
  if (!want) return E.right(undefined);
  if (!shape) return E.left(fail("invalid_model_file", "tensor is missing", name));
  if (shape.length !== want.length || shape.some((d, i) => d !== want[i])) {
    return E.left(fail("invalid_model_file", `shape [${shape}] but the config needs [${want}]`, name));
  }
  return E.right(undefined);
}

/** Builds ModelWeights from named float32 tensors, checking every name and shape against the config. */
export function assembleWeights(
  config: ModelConfig,
  get: (name: string) => NamedTensor | undefined,
): E.Either<JudgeQError, ModelWeights> {
  const expected = expectedTensors(config);
  for (const [name] of expected) {
    const check = checkTensorShape(name, get(name)?.shape, config, expected.get(name));
    if (E.isLeft(check)) return check;
  }
  const t = (name: string) => get(name)!.data;
  const opt = (name: string) => (config.attentionBias ? t(name) : null);
  const layers: LayerWeights[] = [];
  for (let i = 0; i < config.nLayers; i++) {
    const p = `model.layers.${i}.`;
    layers.push({
      attnNorm: t(p + "input_layernorm.weight"),
      wq: t(p + "self_attn.q_proj.weight"),
      wk: t(p + "self_attn.k_proj.weight"),
      wv: t(p + "self_attn.v_proj.weight"),
      bq: opt(p + "self_attn.q_proj.bias"),
      bk: opt(p + "self_attn.k_proj.bias"),
      bv: opt(p + "self_attn.v_proj.bias"),
      wo: t(p + "self_attn.o_proj.weight"),
      mlpNorm: t(p + "post_attention_layernorm.weight"),
      wGate: t(p + "mlp.gate_proj.weight"),
      wUp: t(p + "mlp.up_proj.weight"),
      wDown: t(p + "mlp.down_proj.weight"),
    });
  }
  const embed = t("model.embed_tokens.weight");
  return E.right({
    config,
    embed,
    layers,
    finalNorm: t("model.norm.weight"),
    lmHead: config.tiedEmbeddings ? embed : t("lm_head.weight"),
  });
}

/** Parameter count (tied embeddings counted once). */
export function parameterCount(w: ModelWeights): number {
  let n = w.embed.length + w.finalNorm.length + (w.lmHead === w.embed ? 0 : w.lmHead.length);
  for (const l of w.layers) {
    for (const a of Object.values(l)) if (a) n += (a as Float32Array).length;
  }
  return n;
}

/** The matrices a GPU executor may store as f16 (norms and biases always stay f32), by HF name. */
export function projectionMatrices(w: ModelWeights): [string, Float32Array][] {
  const out: [string, Float32Array][] = [["model.embed_tokens.weight", w.embed]];
  w.layers.forEach((l, i) => {
    const p = `model.layers.${i}.`;
    out.push(
      [`${p}self_attn.q_proj.weight`, l.wq],
      [`${p}self_attn.k_proj.weight`, l.wk],
      [`${p}self_attn.v_proj.weight`, l.wv],
      [`${p}self_attn.o_proj.weight`, l.wo],
      [`${p}mlp.gate_proj.weight`, l.wGate],
      [`${p}mlp.up_proj.weight`, l.wUp],
      [`${p}mlp.down_proj.weight`, l.wDown],
    );
  });
  if (w.lmHead !== w.embed) out.push(["lm_head.weight", w.lmHead]);
  return out;
}

/** Largest finite f16. */
export const F16_MAX = 65504;

/** The first projection matrix holding a weight f16 cannot represent (|w| > 65504 or not finite), or null. */
export function tensorBeyondF16(w: ModelWeights): string | null {
  for (const [name, t] of projectionMatrices(w)) {
    for (let i = 0; i < t.length; i++) if (!(Math.abs(t[i]) <= F16_MAX)) return name;
  }
  return null;
}

/**
 * The same model with every projection and embedding matrix replaced by `f(matrix, cols)` (row-major, rows =
 * length / cols); norms and biases are kept, and a tied LM head stays tied.
 */
export function mapProjections(
  w: ModelWeights,
  f: (m: Float32Array, cols: number) => Float32Array,
): ModelWeights {
  const c = w.config, dim = c.dim;
  const embed = f(w.embed, dim);
  return {
    ...w,
    embed,
    lmHead: w.lmHead === w.embed ? embed : f(w.lmHead, dim),
    layers: w.layers.map((l) => ({
      ...l,
      wq: f(l.wq, dim),
      wk: f(l.wk, dim),
      wv: f(l.wv, dim),
      wo: f(l.wo, c.nHeads * c.headDim),
      wGate: f(l.wGate, dim),
      wUp: f(l.wUp, dim),
      wDown: f(l.wDown, c.hiddenDim),
    })),
  };
}

/** The same model with every projection matrix rounded to f16 (the reference for f16 weights). */
export function roundProjectionsToF16(w: ModelWeights): ModelWeights {
  return mapProjections(w, (t) => Float32Array.from(new Float16Array(t)));
}

/** Why weights cannot be stored as f16 (a weight of `tensor` is out of range), as an error naming `param`. */
export function beyondF16Error(tensor: string, param: string): JudgeQError {
  return fail(
    "unprocessable",
    `f16 cannot hold tensor ${tensor}: a weight is beyond the f16 range (|w| > 65504)`,
    param,
  );
}
