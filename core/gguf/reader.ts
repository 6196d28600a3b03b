/**
 * GGUF reader, pure: the header (magic, version, counts), metadata of every value type, tensor infos and
 * the data layout, validated before any tensor byte is read. Every count and length is bounded by the
 * bytes left in the file before anything is allocated from it; tensor sizes come from type and dims;
 * offsets are aligned, inside the file, and do not overlap.
 *
 * The header may be parsed from a prefix of the file (a reader on disk need not load gigabytes of
 * tensors): when the prefix ends before the header does, the result says how many bytes to read.
 */
import * as E from "fp-ts/Either";
import { fail, type JudgeQError } from "../errors.ts";
import { blockLayout, ggmlTypeName, SUPPORTED_TYPE_NAMES } from "./ggml_types.ts";
import { type GgufArray, type GgufValue, SCALAR_BYTES, valueTypeName } from "./values.ts";

export interface GgufTensorInfo {
  name: string;
  /** ggml order: dims[0] is a row's length. */
  dims: number[];
  ggmlType: number;
  typeName: string;
  /** Offset of the data from the start of the data block, and its byte length. */
  offset: number;
  byteLength: number;
}

export interface GgufFile {
  version: number;
  metadata: Map<string, GgufValue>;
  /** In file order. */
  tensors: Map<string, GgufTensorInfo>;
  alignment: number;
  /** Absolute offset of the data block. */
  dataOffset: number;
}

/** The header parsed, or how many bytes of the file the header needs when the prefix was too short. */
export type GgufHeaderResult = { complete: true; file: GgufFile } | { complete: false; needBytes: number };

/** Dimensions per tensor (GGML_MAX_DIMS) and nesting of metadata arrays accepted. */
const MAX_DIMS = 4;
const MAX_ARRAY_DEPTH = 4;
/** Items per metadata array: real vocabularies have ~300k merges; a JS string per item costs far more than its bytes. */
export const MAX_ARRAY_ITEMS = 1 << 24;

class Bad {
  constructor(readonly message: string, readonly where: string) {}
}
class Short {
  constructor(readonly needBytes: number) {}
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** A key or tensor name as an error's param: quoted when empty or not printable. */
const nameParam = (s: string) => (s === "" || /[\p{C}]/u.test(s) ? JSON.stringify(s) : s);

/** Cursor over the prefix; every read checks the prefix (Short) and the file (Bad). */
class Cursor {
  at = 0;
  readonly view: DataView;
  constructor(readonly bytes: Uint8Array, readonly fileSize: number, readonly file: string) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  left(): number {
    return this.fileSize - this.at;
  }
  need(n: number, what: string) {
    if (n > this.left()) {
      throw new Bad(
        `truncated: ${what} needs ${n} bytes at offset ${this.at}, the file has ${this.left()} left`,
        this.file,
      );
    }
    if (this.at + n > this.bytes.length) {
      throw new Short(Math.min(this.fileSize, Math.max(this.at + n, 2 * this.bytes.length)));
    }
  }
  u32(what: string): number {
    this.need(4, what);
    this.at += 4;
    return this.view.getUint32(this.at - 4, true);
  }
  u64(what: string): bigint {
    this.need(8, what);
    this.at += 8;
    return this.view.getBigUint64(this.at - 8, true);
  }
  /** A u64 count or length that must fit in what is left of the file at `unit` bytes each. */
  count(what: string, unit: number, where: string): number {
    const n = this.u64(what);
    if (n > BigInt(Math.floor(this.left() / Math.max(unit, 1)))) {
      throw new Bad(
        `${what} ${n} cannot fit in the ${this.left()} bytes left in the file (truncated or corrupt)`,
        where,
      );
    }
    return Number(n);
  }
  str(what: string, where: string): string {
    const n = this.count(`${what} length`, 1, where);
    this.need(n, what);
    this.at += n;
    try {
      return utf8.decode(this.bytes.subarray(this.at - n, this.at));
    } catch {
      throw new Bad(`${what} is not valid UTF-8`, where);
    }
  }
  scalar(type: Exclude<keyof typeof SCALAR_BYTES, never>, where: string): number | bigint | boolean {
    const n = SCALAR_BYTES[type];
    this.need(n, `a ${type} value of ${where}`);
    const v = this.view, at = this.at;
    this.at += n;
    switch (type) {
      case "u8":
        return v.getUint8(at);
      case "i8":
        return v.getInt8(at);
      case "u16":
        return v.getUint16(at, true);
      case "i16":
        return v.getInt16(at, true);
      case "u32":
        return v.getUint32(at, true);
      case "i32":
        return v.getInt32(at, true);
      case "f32":
        return v.getFloat32(at, true);
      case "f64":
        return v.getFloat64(at, true);
      case "bool": {
        const b = v.getUint8(at);
        if (b > 1) throw new Bad(`bool value ${b} is neither 0 nor 1`, where);
        return b === 1;
      }
      case "u64":
        return v.getBigUint64(at, true);
      case "i64":
        return v.getBigInt64(at, true);
    }
  }
}

function readValue(c: Cursor, typeId: number, key: string, depth: number): GgufValue {
  const type = valueTypeName(typeId);
  if (type === null) throw new Bad(`value type id ${typeId} is not a GGUF type (0-12)`, key);
  if (type === "string") return { type, value: c.str("string", key) };
  if (type !== "array") return { type, value: c.scalar(type, key) } as GgufValue;
  if (depth >= MAX_ARRAY_DEPTH) throw new Bad(`arrays nested deeper than ${MAX_ARRAY_DEPTH}`, key);
  const itemId = c.u32(`the item type of ${key}`);
  const itemType = valueTypeName(itemId);
  if (itemType === null) throw new Bad(`array item type id ${itemId} is not a GGUF type (0-12)`, key);
  // Smallest encoding of one item: a string's 8-byte length, an array's 4 + 8 bytes header.
  const unit = itemType === "string" ? 8 : itemType === "array" ? 12 : SCALAR_BYTES[itemType];
  const n = c.count(`array of ${itemType}: item count`, unit, key);
  if (n > MAX_ARRAY_ITEMS) throw new Bad(`array of ${n} items (at most ${MAX_ARRAY_ITEMS})`, key);
  if (itemType === "string") {
    const value: string[] = new Array(n);
    for (let i = 0; i < n; i++) value[i] = c.str(`item ${i}`, key);
    return { type, itemType, value };
  }
  if (itemType === "array") {
    const value: GgufArray[] = new Array(n);
    for (let i = 0; i < n; i++) value[i] = readValue(c, 9, `${key}[${i}]`, depth + 1) as GgufArray;
    return { type, itemType, value };
  }
  c.need(n * unit, `${n} items of ${key}`);
  if (itemType === "u64" || itemType === "i64" || itemType === "bool") {
    const value = new Array(n);
    for (let i = 0; i < n; i++) value[i] = c.scalar(itemType, key);
    return { type, itemType, value } as GgufValue;
  }
  // Numbers into a typed array of their own width: as many bytes as the file holds for them, no more.
  const value = new TYPED[itemType](n);
  for (let i = 0; i < n; i++) value[i] = c.scalar(itemType, key) as number;
  return { type, itemType, value };
}

const TYPED = {
  u8: Uint8Array,
  i8: Int8Array,
  u16: Uint16Array,
  i16: Int16Array,
  u32: Uint32Array,
  i32: Int32Array,
  f32: Float32Array,
  f64: Float64Array,
} as const;

function parse(bytes: Uint8Array, fileSize: number, file: string): GgufFile {
  const c = new Cursor(bytes, fileSize, file);
  c.need(4, "the magic");
  const magic = String.fromCharCode(...bytes.subarray(0, 4));
  if (magic !== "GGUF") {
    throw new Bad(`bad magic ${JSON.stringify(magic)} (a GGUF file starts with "GGUF")`, file);
  }
  c.at = 4;
  const version = c.u32("the version");
  if (version !== 2 && version !== 3) {
    const swapped =
      ((version & 0xff) << 24 | (version & 0xff00) << 8 | (version >>> 8) & 0xff00 | version >>> 24) >>> 0;
    const hint = swapped === 2 || swapped === 3 ? " (a big-endian file: only little-endian is read)" : "";
    throw new Bad(`unsupported GGUF version ${version}${hint} (supported: 2, 3)`, file);
  }
  // A tensor info takes at least 8 (name length) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset) bytes;
  // a key/value at least 8 (key length) + 4 (type) + 1.
  const nTensors = c.count("tensor count", 32, file);
  const nKv = c.count("metadata count", 13, file);
  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < nKv; i++) {
    const key = c.str(`metadata key ${i}`, file);
    const where = nameParam(key);
    if (metadata.has(key)) throw new Bad("metadata key repeats", where);
    metadata.set(key, readValue(c, c.u32(`the value type of ${where}`), where, 0));
  }
  const alignValue = metadata.get("general.alignment");
  let alignment = 32;
  if (alignValue !== undefined) {
    if (alignValue.type !== "u32") {
      throw new Bad(`must be a u32, got ${alignValue.type}`, "general.alignment");
    }
    alignment = alignValue.value;
    if (alignment === 0 || (alignment & (alignment - 1)) !== 0) {
      throw new Bad(`${alignment} is not a power of two`, "general.alignment");
    }
  }
  const infos: GgufTensorInfo[] = [];
  const tensors = new Map<string, GgufTensorInfo>();
  for (let i = 0; i < nTensors; i++) {
    const rawName = c.str(`tensor name ${i}`, file);
    const name = nameParam(rawName);
    if (tensors.has(rawName)) throw new Bad("tensor name repeats", name);
    const nDims = c.u32(`the dim count of ${name}`);
    if (nDims < 1 || nDims > MAX_DIMS) throw new Bad(`${nDims} dimensions (1 to ${MAX_DIMS} allowed)`, name);
    const dims: number[] = [];
    let elements = 1n;
    for (let d = 0; d < nDims; d++) {
      const n = c.u64(`dim ${d} of ${name}`);
      if (n === 0n || n > BigInt(Number.MAX_SAFE_INTEGER)) throw new Bad(`dimension ${d} is ${n}`, name);
      elements *= n;
      if (elements > BigInt(fileSize) * 8n) throw new Bad(`dims [${dims},${n}] cannot fit in the file`, name);
      dims.push(Number(n));
    }
    const ggmlType = c.u32(`the type of ${name}`);
    const typeName = ggmlTypeName(ggmlType);
    if (typeName === null) throw new Bad(`type id ${ggmlType} is not a ggml type`, name);
    const layout = blockLayout(ggmlType);
    if (layout === null) {
      throw new Bad(
        `type ${typeName} (id ${ggmlType}) is not supported (supported: ${SUPPORTED_TYPE_NAMES.join(", ")})`,
        name,
      );
    }
    if (dims[0] % layout.blockSize !== 0) {
      throw new Bad(
        `rows of ${dims[0]} values are not whole ${typeName} blocks of ${layout.blockSize}`,
        name,
      );
    }
    const offset = c.u64(`the offset of ${name}`);
    if (offset % BigInt(alignment) !== 0n) {
      throw new Bad(`offset ${offset} is not a multiple of the alignment ${alignment}`, name);
    }
    const byteLength = Number(elements) / layout.blockSize * layout.typeSize;
    if (offset > BigInt(fileSize)) throw new Bad(`offset ${offset} is past the end of the file`, name);
    const info: GgufTensorInfo = {
      name: rawName,
      dims,
      ggmlType,
      typeName,
      offset: Number(offset),
      byteLength,
    };
    tensors.set(rawName, info);
    infos.push(info);
  }
  const dataOffset = Math.ceil(c.at / alignment) * alignment;
  const dataBytes = fileSize - dataOffset;
  for (const t of infos) {
    if (t.offset + t.byteLength > dataBytes) {
      throw new Bad(
        `data [${t.offset}, ${t.offset + t.byteLength}) runs past the end of the file (data block of ${
          Math.max(0, dataBytes)
        } bytes)`,
        nameParam(t.name),
      );
    }
  }
  const sorted = [...infos].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (sorted[i].offset < prev.offset + prev.byteLength) {
      throw new Bad(`data overlaps tensor ${nameParam(prev.name)}`, nameParam(sorted[i].name));
    }
  }
  return { version, metadata, tensors, alignment, dataOffset };
}

/**
 * Parses a GGUF header from `bytes`, the first bytes of a file of `fileSize` bytes (the whole file, or a
 * prefix). Errors name the file, the metadata key or the tensor at fault.
 */
export function parseGgufHeader(
  bytes: Uint8Array,
  fileSize = bytes.length,
  file = "model.gguf",
): E.Either<JudgeQError, GgufHeaderResult> {
  try {
    return E.right({ complete: true, file: parse(bytes, fileSize, file) });
  } catch (e) {
    if (e instanceof Short) return E.right({ complete: false, needBytes: e.needBytes });
    if (e instanceof Bad) return E.left(fail("invalid_model_file", e.message, e.where));
    throw e;
  }
}

/** Parses a whole GGUF file in memory. */
export function parseGguf(bytes: Uint8Array, file = "model.gguf"): E.Either<JudgeQError, GgufFile> {
  return E.map((r: GgufHeaderResult) => (r as { file: GgufFile }).file)(
    parseGgufHeader(bytes, bytes.length, file),
  );
}

/** A tensor's bytes within the whole file (a view, no copy). */
export function tensorBytes(file: GgufFile, bytes: Uint8Array, info: GgufTensorInfo): Uint8Array {
  const start = file.dataOffset + info.offset;
  return bytes.subarray(start, start + info.byteLength);
}
