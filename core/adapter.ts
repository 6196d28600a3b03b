/**
 * Judge Q adapters: the trained soft-token embeddings [n, dim] of one model, stored as safetensors
 * (tensor `soft_embeddings`, F32) with string metadata: the model fingerprint, n, and training info.
 */
import * as E from "fp-ts/Either";
import { fail, type JudgeQError } from "./errors.ts";
import { decodeToF32, encodeSafetensors, headerLength, parseHeader } from "./safetensors.ts";

export const ADAPTER_FORMAT = "judgeq-adapter-v1";

export interface Adapter {
  /** Row-major [n, dim]. */
  softEmbeddings: Float32Array;
  n: number;
  dim: number;
  fingerprint: string;
  /** Free-form training information (steps, seed, loss, data hash, ...), as strings. */
  info: Record<string, string>;
}

export function encodeAdapter(a: Adapter): Uint8Array {
  return encodeSafetensors(
    { soft_embeddings: { dtype: "F32", shape: [a.n, a.dim], data: a.softEmbeddings } },
    { ...a.info, format: ADAPTER_FORMAT, model_fingerprint: a.fingerprint, n: String(a.n) },
  );
}

/** Parses adapter bytes; the error names what is wrong. */
export function decodeAdapter(bytes: Uint8Array, file = "adapter"): E.Either<JudgeQError, Adapter> {
  const bad = (m: string, param = file) => E.left(fail("invalid_adapter", m, param));
  // The safetensors reader's error, as an adapter error: its message already names the param once.
  const rewrap = (e: JudgeQError) =>
    bad(
      e.param && e.message.startsWith(`${e.param}: `) ? e.message.slice(e.param.length + 2) : e.message,
      e.param ?? file,
    );
  const n = headerLength(bytes.subarray(0, 8), bytes.length, file);
  if (E.isLeft(n)) return rewrap(n.left);
  const header = parseHeader(bytes.subarray(8, 8 + n.right), bytes.length, file);
  if (E.isLeft(header)) return rewrap(header.left);
  const { tensors, metadata, dataOffset } = header.right;
  if (metadata.format !== ADAPTER_FORMAT) {
    return bad(`format must be ${ADAPTER_FORMAT}`, `${file}:__metadata__.format`);
  }
  const fingerprint = metadata.model_fingerprint;
  if (!fingerprint) return bad("missing model_fingerprint", `${file}:__metadata__.model_fingerprint`);
  const t = tensors.get("soft_embeddings");
  if (!t) return bad("missing tensor soft_embeddings", `${file}:soft_embeddings`);
  if (t.shape.length !== 2 || t.shape[0] < 1) {
    return bad(`shape [${t.shape}] must be [n, dim]`, `${file}:soft_embeddings`);
  }
  const softEmbeddings = decodeToF32(t.dtype, bytes.subarray(dataOffset + t.begin, dataOffset + t.end));
  if (softEmbeddings.some((x) => !Number.isFinite(x))) {
    return bad("contains NaN or infinity", `${file}:soft_embeddings`);
  }
  const { format: _f, model_fingerprint: _m, n: _n, ...info } = metadata;
  return E.right({ softEmbeddings, n: t.shape[0], dim: t.shape[1], fingerprint, info });
}

/** An adapter fits a model when its fingerprint and width match. */
export function checkAdapterFits(
  a: Adapter,
  fingerprint: string,
  dim: number,
): E.Either<JudgeQError, Adapter> {
  if (a.dim !== dim) {
    return E.left(
      fail("invalid_adapter", `soft embeddings have width ${a.dim}, the model ${dim}`, "adapter"),
    );
  }
  if (a.fingerprint !== fingerprint) {
    return E.left(
      fail(
        "invalid_adapter",
        "was trained for another model (fingerprint mismatch)",
        "adapter.model_fingerprint",
      ),
    );
  }
  return E.right(a);
}
