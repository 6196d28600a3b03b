/**
 * The stored form of a compressed context: a versioned binary layout, pure (no I/O), so any replica can
 * restore a context another made, bit for bit.
 *
 *   offset 0   "JQCX"                      magic, 4 bytes
 *          4   u16 version (1), u16 0      little-endian
 *          8   u32 header length H         bytes of UTF-8 JSON
 *         12   header JSON                 see BlobHeader (fingerprints, shape, counts, metadata)
 *   12+H+pad   arrays, 4-byte aligned:     per slot (layer * nKvHeads + head): positions i32[count],
 *                                          keys f32[count x headDim], values f32[count x headDim];
 *                                          then logits f32[vocab] when the header says so
 *        end-4 u32 CRC-32 of every byte before it
 *
 * Numbers are little-endian. Decoding checks every length against the header and the checksum, and
 * throws a BlobError naming what is wrong: a truncated or corrupt blob is an error, never a crash.
 */
import type { CacheSnapshot } from "./executor.ts";

export const BLOB_MAGIC = "JQCX";
export const BLOB_VERSION = 1;
const PREFIX = 12;

/** What the header carries besides the arrays: identity, shape, and the context's own metadata. */
export interface BlobHeader {
  /** SHA-256 of the model (core/fingerprint.ts) the cache was computed with. */
  model: string;
  /** SHA-256 of the Judge Q adapter's soft embeddings, or null without one. */
  adapter: string | null;
  nLayers: number;
  nKvHeads: number;
  headDim: number;
  nextPosition: number;
  /** Entries per slot. */
  counts: number[];
  /** Length of the stored logits, 0 when none. */
  logits: number;
  /** Free-form JSON of the context (tokens, plan, stats, settings). */
  meta: unknown;
}

export interface ContextBlob {
  model: string;
  adapter: string | null;
  snapshot: CacheSnapshot;
  meta: unknown;
}

export class BlobError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BlobError";
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (IEEE, as zlib's) of `bytes`. */
export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const align4 = (n: number) => (n + 3) & ~3;

export function encodeContextBlob(b: ContextBlob): Uint8Array {
  if (!LITTLE_ENDIAN) throw new BlobError("context blobs are little-endian; this host is not");
  const s = b.snapshot;
  const header: BlobHeader = {
    model: b.model,
    adapter: b.adapter,
    nLayers: s.nLayers,
    nKvHeads: s.nKvHeads,
    headDim: s.headDim,
    nextPosition: s.nextPosition,
    counts: s.positions.map((p) => p.length),
    logits: s.logits?.length ?? 0,
    meta: b.meta,
  };
  const json = new TextEncoder().encode(JSON.stringify(header));
  const arraysAt = align4(PREFIX + json.length);
  const entries = header.counts.reduce((a, n) => a + n, 0);
  const total = arraysAt + 4 * (entries * (1 + 2 * s.headDim) + header.logits) + 4;
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  out.set(new TextEncoder().encode(BLOB_MAGIC), 0);
  view.setUint16(4, BLOB_VERSION, true);
  view.setUint32(8, json.length, true);
  out.set(json, PREFIX);
  let at = arraysAt;
  const put = (a: Int32Array | Float32Array) => {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), at);
    at += a.byteLength;
  };
  for (let slot = 0; slot < s.positions.length; slot++) {
    put(s.positions[slot]);
    put(s.keys[slot]);
    put(s.values[slot]);
  }
  if (s.logits) put(s.logits);
  view.setUint32(at, crc32(out.subarray(0, at)), true);
  return out;
}

const nat = (v: unknown) => typeof v === "number" && Number.isInteger(v) && v >= 0;

/** The header's fields checked one by one; throws naming the first that is wrong. */
function checkHeader(h: Record<string, unknown>): BlobHeader {
  if (typeof h.model !== "string") throw new BlobError("header field 'model' must be a string");
  if (h.adapter !== null && typeof h.adapter !== "string") {
    throw new BlobError("header field 'adapter' must be a string or null");
  }
  for (const k of ["nLayers", "nKvHeads", "headDim", "nextPosition", "logits"]) {
    if (!nat(h[k])) throw new BlobError(`header field '${k}' must be a non-negative integer`);
  }
  const slots = (h.nLayers as number) * (h.nKvHeads as number);
  if (!Array.isArray(h.counts) || h.counts.length !== slots || !h.counts.every(nat)) {
    throw new BlobError(`header field 'counts' must list ${slots} non-negative integers`);
  }
  return h as unknown as BlobHeader;
}

/** Reads a blob back; BlobError (never a crash) when it is truncated, corrupt or of another version. */
export function decodeContextBlob(bytes: Uint8Array): ContextBlob {
  if (!LITTLE_ENDIAN) throw new BlobError("context blobs are little-endian; this host is not");
  if (bytes.length < PREFIX + 4) {
    throw new BlobError(`truncated: ${bytes.length} bytes, shorter than a header`);
  }
  if (new TextDecoder().decode(bytes.subarray(0, 4)) !== BLOB_MAGIC) {
    throw new BlobError(`not a context blob (magic is not "${BLOB_MAGIC}")`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint16(4, true);
  if (version !== BLOB_VERSION) {
    throw new BlobError(`format version ${version} is not supported (this server reads ${BLOB_VERSION})`);
  }
  const jsonLength = view.getUint32(8, true);
  if (PREFIX + jsonLength + 4 > bytes.length) {
    throw new BlobError(`truncated: header of ${jsonLength} bytes, blob of ${bytes.length}`);
  }
  const end = bytes.length - 4;
  const crc = view.getUint32(end, true), actual = crc32(bytes.subarray(0, end));
  if (crc !== actual) {
    throw new BlobError(
      `checksum mismatch (stored ${crc.toString(16)}, computed ${actual.toString(16)}): corrupt or truncated`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(PREFIX, PREFIX + jsonLength)),
    );
  } catch (e) {
    throw new BlobError(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new BlobError("header is not a JSON object");
  }
  const h = checkHeader(raw as Record<string, unknown>);
  const entries = h.counts.reduce((a, n) => a + n, 0);
  const arraysAt = align4(PREFIX + jsonLength);
  const expected = arraysAt + 4 * (entries * (1 + 2 * h.headDim) + h.logits);
  if (expected !== end) {
    throw new BlobError(`arrays take ${end - arraysAt} bytes, the header describes ${expected - arraysAt}`);
  }
  // Copies (not views): aligned, and independent of the caller's buffer.
  let at = arraysAt;
  const take = <T extends Int32Array | Float32Array>(n: number, Ctor: { new (b: ArrayBuffer): T }): T => {
    const copy = bytes.slice(at, at + 4 * n);
    at += 4 * n;
    return new Ctor(copy.buffer);
  };
  const positions: Int32Array[] = [], keys: Float32Array[] = [], values: Float32Array[] = [];
  for (const n of h.counts) {
    positions.push(take(n, Int32Array));
    keys.push(take(n * h.headDim, Float32Array));
    values.push(take(n * h.headDim, Float32Array));
  }
  const logits = h.logits ? take(h.logits, Float32Array) : null;
  return {
    model: h.model,
    adapter: h.adapter,
    meta: h.meta,
    snapshot: {
      nLayers: h.nLayers,
      nKvHeads: h.nKvHeads,
      headDim: h.headDim,
      nextPosition: h.nextPosition,
      positions,
      keys,
      values,
      logits,
    },
  };
}
