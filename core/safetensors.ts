/**
 * Safetensors format, pure parts: header validation, dtype decoding and encoding a file in memory.
 * Reading from disk lives in `io/`; this module only sees bytes.
 * Layout: u64 little-endian header length N, N bytes of JSON header, then the tensor data block.
 */
import * as E from "fp-ts/Either";
import { fail, type JudgeQError } from "./errors.ts";

export type Dtype = "F32" | "F16" | "BF16";
const BYTES_PER_ELEMENT: Record<Dtype, number> = { F32: 4, F16: 2, BF16: 2 };
/** A header over 100 MB is certainly not a real one; refuse before allocating it. */
export const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Byte offsets relative to the start of the data block. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Absolute offset of the data block in the file. */
  dataOffset: number;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

/** Reads the header length from the first 8 bytes, checking it against the file size. */
export function headerLength(
  first8: Uint8Array,
  fileSize: number,
  file = "file",
): E.Either<JudgeQError, number> {
  if (first8.length < 8 || fileSize < 8) {
    return E.left(fail("invalid_model_file", "truncated: shorter than the 8-byte header length", file));
  }
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    return E.left(fail("invalid_model_file", `header length ${n} exceeds ${MAX_HEADER_BYTES} bytes`, file));
  }
  if (Number(n) + 8 > fileSize) {
    return E.left(
      fail("invalid_model_file", `truncated: header of ${n} bytes runs past the end of the file`, file),
    );
  }
  return E.right(Number(n));
}

/** Validates a header: JSON, known dtypes, shapes matching byte sizes, offsets inside the file, no overlaps. */
export function parseHeader(
  headerBytes: Uint8Array,
  fileSize: number,
  file = "file",
): E.Either<JudgeQError, SafetensorsHeader> {
  const bad = (message: string, where = file) => E.left(fail("invalid_model_file", message, where));
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (e) {
    return bad(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    return bad("header is not a JSON object");
  }
  const dataOffset = 8 + headerBytes.length;
  const dataSize = fileSize - dataOffset;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (
        typeof value !== "object" || value === null || Object.values(value).some((v) => typeof v !== "string")
      ) {
        return bad("__metadata__ must map strings to strings", `${file}:__metadata__`);
      }
      metadata = value as Record<string, string>;
      continue;
    }
    const where = `${file}:${name}`;
    const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof v !== "object" || v === null) return bad("tensor entry is not an object", where);
    if (typeof v.dtype !== "string" || !(v.dtype in BYTES_PER_ELEMENT)) {
      return bad(`unsupported dtype ${JSON.stringify(v.dtype)} (supported: F32, F16, BF16)`, where);
    }
    const shape = v.shape;
    if (!Array.isArray(shape) || shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      return bad("shape must be a list of non-negative integers", where);
    }
    const offsets = v.data_offsets;
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      offsets.some((o) => !Number.isSafeInteger(o) || o < 0)
    ) {
      return bad("data_offsets must be two non-negative integers", where);
    }
    const [begin, end] = offsets as number[];
    if (end < begin) return bad(`data_offsets end ${end} is before begin ${begin}`, where);
    if (end > dataSize) {
      return bad(`truncated: data ends at ${end} but the data block has ${dataSize} bytes`, where);
    }
    const dtype = v.dtype as Dtype;
    const expected = shape.reduce((a: number, b: number) => a * b, 1) * BYTES_PER_ELEMENT[dtype];
    if (expected !== end - begin) {
      return bad(
        `shape [${shape}] of ${dtype} needs ${expected} bytes but data_offsets span ${end - begin}`,
        where,
      );
    }
    tensors.set(name, { name, dtype, shape: shape as number[], begin, end });
  }
  const sorted = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].begin < sorted[i - 1].end) {
      return bad(`data overlaps tensor ${sorted[i - 1].name}`, `${file}:${sorted[i].name}`);
    }
  }
  return E.right({ dataOffset, tensors, metadata });
}

const f16Table = (() => {
  // Every half-precision bit pattern decoded once: decoding becomes a table lookup.
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    t[h] = exp === 0
      ? sign * Math.pow(2, -14) * (frac / 1024)
      : exp === 31
      ? (frac ? NaN : sign * Infinity)
      : sign * Math.pow(2, exp - 15) * (1 + frac / 1024);
  }
  return t;
})();

/** Decodes little-endian tensor bytes of any supported dtype to float32. */
export function decodeToF32(dtype: Dtype, bytes: Uint8Array): Float32Array {
  const n = bytes.length / BYTES_PER_ELEMENT[dtype];
  const out = new Float32Array(n);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dtype === "F32") {
    out.set(new Float32Array(bytes.slice().buffer)); // slice() realigns; x86 and WebGPU hosts are little-endian
  } else if (dtype === "F16") {
    for (let i = 0; i < n; i++) out[i] = f16Table[view.getUint16(i * 2, true)];
  } else {
    const u32 = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u32[i] = view.getUint16(i * 2, true) << 16;
  }
  return out;
}

/** Rounds float32 values to the nearest bfloat16 (ties to even), as bytes. */
export function encodeBf16(values: Float32Array): Uint8Array {
  const u32 = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint8Array(values.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) {
    const x = u32[i];
    const rounded = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    view.setUint16(i * 2, rounded & 0xffff, true);
  }
  return out;
}

/** Rounds float32 values to IEEE half precision (ties to even), as bytes. */
export function encodeF16(values: Float32Array): Uint8Array {
  const out = new Uint8Array(values.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setUint16(i * 2, toHalf(values[i]), true);
  return out;
}

function toHalf(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (Number.isNaN(x)) return 0x7e00;
  if (a >= 65520) return sign | 0x7c00;
  if (a < Math.pow(2, -24) / 2) return sign;
  if (a < Math.pow(2, -14)) return sign | Math.round(a / Math.pow(2, -24));
  let exp = Math.floor(Math.log2(a));
  let frac = Math.round((a / Math.pow(2, exp) - 1) * 1024);
  if (frac === 1024) {
    frac = 0;
    exp++;
  }
  if (exp > 15) return sign | 0x7c00;
  return sign | ((exp + 15) << 10) | frac;
}

export interface TensorToWrite {
  dtype: Dtype;
  shape: number[];
  /** Already encoded little-endian bytes, or float32 values for F32. */
  data: Float32Array | Uint8Array;
}

/** Serialises tensors (sorted by name, 8-byte aligned header) and string metadata into one file image. */
export function encodeSafetensors(
  tensors: Record<string, TensorToWrite>,
  metadata: Record<string, string> = {},
): Uint8Array {
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  const blobs: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    const t = tensors[name];
    const bytes = t.data instanceof Float32Array
      ? new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
      : t.data;
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    blobs.push(bytes);
    offset += bytes.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const b of blobs) {
    out.set(b, at);
    at += b.length;
  }
  return out;
}
