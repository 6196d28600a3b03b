/**
 * GGUF v3 encoder: metadata key/values and tensors (already in their ggml byte format) to one file image.
 * Layout: "GGUF", u32 version, u64 tensor count, u64 kv count, the key/values, the tensor infos (name, dims
 * fastest-varying first, type, offset into the data block), padding to `general.alignment`, the data block
 * with every tensor aligned.
 */
import { blockLayout, ggmlTypeName } from "./ggml_types.ts";
import { GGUF_VALUE_TYPE, type GgufScalarType, type GgufValue, SCALAR_BYTES } from "./values.ts";

export interface GgufTensorOut {
  name: string;
  /** ggml order: ne[0] (a row's length) first. */
  dims: number[];
  ggmlType: number;
  data: Uint8Array;
}

const enc = new TextEncoder();
const pad = (n: number, a: number) => Math.ceil(n / a) * a;

/** Bytes a value takes after its type id. */
function valueBytes(v: GgufValue): number {
  if (v.type === "string") return 8 + enc.encode(v.value).length;
  if (v.type !== "array") return SCALAR_BYTES[v.type];
  let n = 4 + 8;
  if (v.itemType === "string") { for (const s of v.value) n += 8 + enc.encode(s).length; }
  else if (v.itemType === "array") { for (const a of v.value) n += valueBytes(a); }
  else n += SCALAR_BYTES[v.itemType] * v.value.length;
  return n;
}

class Out {
  readonly view: DataView;
  at = 0;
  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer);
  }
  u32(v: number) {
    this.view.setUint32(this.at, v, true);
    this.at += 4;
  }
  u64(v: number | bigint) {
    this.view.setBigUint64(this.at, BigInt(v), true);
    this.at += 8;
  }
  str(s: string) {
    const b = enc.encode(s);
    this.u64(b.length);
    this.bytes.set(b, this.at);
    this.at += b.length;
  }
  scalar(type: Exclude<GgufScalarType, "string">, v: number | bigint | boolean) {
    const d = this.view, at = this.at;
    switch (type) {
      case "u8":
        d.setUint8(at, v as number);
        break;
      case "i8":
        d.setInt8(at, v as number);
        break;
      case "u16":
        d.setUint16(at, v as number, true);
        break;
      case "i16":
        d.setInt16(at, v as number, true);
        break;
      case "u32":
        d.setUint32(at, v as number, true);
        break;
      case "i32":
        d.setInt32(at, v as number, true);
        break;
      case "f32":
        d.setFloat32(at, v as number, true);
        break;
      case "f64":
        d.setFloat64(at, v as number, true);
        break;
      case "bool":
        d.setUint8(at, v ? 1 : 0);
        break;
      case "u64":
        d.setBigUint64(at, BigInt(v as bigint), true);
        break;
      case "i64":
        d.setBigInt64(at, BigInt(v as bigint), true);
    }
    this.at += SCALAR_BYTES[type];
  }
  value(v: GgufValue) {
    if (v.type === "string") return this.str(v.value);
    if (v.type !== "array") return this.scalar(v.type, v.value);
    this.u32(GGUF_VALUE_TYPE[v.itemType]);
    this.u64(v.value.length);
    for (let i = 0; i < v.value.length; i++) {
      const item = v.value[i];
      if (v.itemType === "string") this.str(item as string);
      else if (v.itemType === "array") this.value(item as GgufValue);
      else this.scalar(v.itemType, item as number);
    }
  }
}

/**
 * Encodes a GGUF v3 file. `general.alignment` in `metadata` (u32) sets the alignment, else 32. Throws
 * RangeError when a tensor's byte size does not match its type and dims, or a name repeats.
 */
export function encodeGguf(metadata: [string, GgufValue][], tensors: GgufTensorOut[]): Uint8Array {
  const alignEntry = metadata.find(([k]) => k === "general.alignment");
  const alignment = alignEntry ? Number(alignEntry[1].value) : 32;
  if (!(Number.isInteger(alignment) && alignment > 0 && (alignment & (alignment - 1)) === 0)) {
    throw new RangeError(`general.alignment ${alignment} must be a power of two`);
  }
  const keys = new Set<string>();
  for (const [k] of metadata) {
    if (keys.has(k)) throw new RangeError(`metadata key ${k} repeats`);
    keys.add(k);
  }
  let header = 4 + 4 + 8 + 8;
  for (const [k, v] of metadata) header += 8 + enc.encode(k).length + 4 + valueBytes(v);
  const names = new Set<string>();
  const offsets: number[] = [];
  let data = 0;
  for (const t of tensors) {
    if (names.has(t.name)) throw new RangeError(`tensor ${t.name} repeats`);
    names.add(t.name);
    const layout = blockLayout(t.ggmlType);
    if (!layout) {
      throw new RangeError(`${t.name}: ggml type ${ggmlTypeName(t.ggmlType) ?? t.ggmlType} is not written`);
    }
    const n = t.dims.reduce((a, b) => a * b, 1);
    const want = t.dims[0] % layout.blockSize === 0 ? (n / layout.blockSize) * layout.typeSize : -1;
    if (t.data.length !== want) {
      throw new RangeError(
        `${t.name}: ${t.data.length} bytes, type ${ggmlTypeName(t.ggmlType)} dims [${t.dims}]`,
      );
    }
    header += 8 + enc.encode(t.name).length + 4 + 8 * t.dims.length + 4 + 8;
    data = pad(data, alignment);
    offsets.push(data);
    data += t.data.length;
  }
  const dataStart = pad(header, alignment);
  const out = new Out(new Uint8Array(dataStart + pad(data, alignment)));
  out.bytes.set(enc.encode("GGUF"), 0);
  out.at = 4;
  out.u32(3);
  out.u64(tensors.length);
  out.u64(metadata.length);
  for (const [k, v] of metadata) {
    out.str(k);
    out.u32(GGUF_VALUE_TYPE[v.type]);
    out.value(v);
  }
  tensors.forEach((t, i) => {
    out.str(t.name);
    out.u32(t.dims.length);
    for (const d of t.dims) out.u64(d);
    out.u32(t.ggmlType);
    out.u64(offsets[i]);
  });
  if (out.at !== header) throw new Error(`GGUF header: wrote ${out.at} bytes, planned ${header}`);
  tensors.forEach((t, i) => out.bytes.set(t.data, dataStart + offsets[i]));
  return out.bytes;
}
