/**
 * ModelWeights from a GGUF file's tensors: names and layouts mapped to Hugging Face's (GGUF dims are
 * fastest-first, so dims [in, out] is the HF shape [out, in]; the `llama` architecture's q/k rows are
 * de-interleaved back to rotate-half order), every tensor dequantized to f32 for the executors that run
 * f32, and every matrix not stored as F32 also kept as the file's bytes (`quantized`), rows permuted the
 * same way (blocks lie within a row, so rows move as units).
 */
import * as E from "fp-ts/Either";
import type { ModelConfig } from "../config.ts";
import { fail, type JudgeQError } from "../errors.ts";
import {
  assembleWeights,
  checkTensorShape,
  expectedTensorEntries,
  type ModelWeights,
  type NamedTensor,
  type QuantizedTensor,
} from "../weights.ts";
import { GGML_TYPE } from "./ggml_types.ts";
import { dequantize } from "./quants.ts";
import type { GgufFile, GgufTensorInfo } from "./reader.ts";

/** The GGUF name of a Hugging Face tensor name, or null when GGUF has no counterpart. */
export function ggufTensorName(hf: string): string | null {
  if (hf === "model.embed_tokens.weight") return "token_embd.weight";
  if (hf === "model.norm.weight") return "output_norm.weight";
  if (hf === "lm_head.weight") return "output.weight";
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  if (!m) return null;
  const parts: Record<string, string> = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
  };
  const part = parts[m[2]];
  return part ? `blk.${m[1]}.${part}` : null;
}

/**
 * Row order of an interleaved (adjacent-pair RoPE) head layout mapped back to rotate-half:
 * result row (h, p) comes from row (h, 2p), row (h, half + p) from (h, 2p + 1).
 */
export function deinterleaveRows<T extends Float32Array | Uint8Array>(
  w: T,
  nHeads: number,
  headDim: number,
  rowLen: number,
): T {
  const out = new (w.constructor as { new (n: number): T })(w.length);
  const half = headDim / 2;
  for (let h = 0; h < nHeads; h++) {
    const base = h * headDim;
    for (let p = 0; p < half; p++) {
      out.set(w.subarray((base + 2 * p) * rowLen, (base + 2 * p + 1) * rowLen), (base + p) * rowLen);
      out.set(
        w.subarray((base + 2 * p + 1) * rowLen, (base + 2 * p + 2) * rowLen),
        (base + half + p) * rowLen,
      );
    }
  }
  return out;
}

/** HF shape of a GGUF tensor (dims reversed). */
const hfShape = (t: GgufTensorInfo) => [...t.dims].reverse();

/**
 * Reads, checks and converts every tensor the config needs. `read` returns a tensor's bytes (from memory
 * or disk); it is called once per tensor, after every name, shape and type has been checked.
 */
export async function ggufWeights(
  file: GgufFile,
  config: ModelConfig,
  read: (info: GgufTensorInfo) => Promise<Uint8Array> | Uint8Array,
  opts: { keepQuantized?: boolean } = {},
): Promise<E.Either<JudgeQError, ModelWeights>> {
  const keep = opts.keepQuantized ?? true;
  const permute = file.metadata.get("general.architecture")?.value === "llama";
  const plan: [string, GgufTensorInfo][] = [];
  for (const [hf, want] of expectedTensorEntries(config)) {
    const name = ggufTensorName(hf)!;
    const info = file.tensors.get(name);
    if (!info) return E.left(fail("invalid_model_file", "tensor is missing", name));
    const check = checkTensorShape(name, hfShape(info), config, want);
    if (E.isLeft(check)) {
      return E.left(
        fail("invalid_model_file", `dims [${info.dims}] but the config needs [${[...want].reverse()}]`, name),
      );
    }
    if (
      want.length === 1 && info.ggmlType !== GGML_TYPE.F32 && info.ggmlType !== GGML_TYPE.F16 &&
      info.ggmlType !== GGML_TYPE.BF16
    ) {
      return E.left(
        fail("invalid_model_file", `a vector stored as ${info.typeName} (expected F32, F16 or BF16)`, name),
      );
    }
    plan.push([hf, info]);
  }
  const tensors = new Map<string, NamedTensor>();
  const quantized = new Map<string, QuantizedTensor>();
  for (const [hf, info] of plan) {
    let bytes = await read(info);
    if (bytes.length !== info.byteLength) {
      return E.left(
        fail("invalid_model_file", `read ${bytes.length} bytes, expected ${info.byteLength}`, info.name),
      );
    }
    const shape = hfShape(info);
    let data = dequantize(info.ggmlType, bytes, info.dims.reduce((a, b) => a * b, 1));
    const heads = hf.endsWith("q_proj.weight")
      ? config.nHeads
      : hf.endsWith("k_proj.weight")
      ? config.nKvHeads
      : 0;
    if (permute && heads) {
      data = deinterleaveRows(data, heads, config.headDim, shape[1]);
      if (keep && info.ggmlType !== GGML_TYPE.F32) {
        bytes = deinterleaveRows(bytes, heads, config.headDim, info.byteLength / shape[0]);
      }
    }
    tensors.set(hf, { shape, data });
    if (keep && shape.length === 2 && info.ggmlType !== GGML_TYPE.F32) {
      quantized.set(hf, {
        ggmlType: info.ggmlType,
        typeName: info.typeName,
        shape: [shape[0], shape[1]],
        bytes: bytes.slice(),
      });
    }
  }
  return E.map((w: ModelWeights) => (quantized.size ? { ...w, quantized } : w))(
    assembleWeights(config, (name) => tensors.get(name)),
  );
}
