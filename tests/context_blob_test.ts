/**
 * core/context_blob.ts: the versioned binary layout of a stored context. Round trips bit for bit
 * (NaN payloads and -0 included); truncated, corrupt, foreign and future-version blobs are BlobErrors
 * naming what is wrong, never a crash.
 */
import {
  BLOB_VERSION,
  BlobError,
  type ContextBlob,
  crc32,
  decodeContextBlob,
  encodeContextBlob,
} from "../core/context_blob.ts";
import { assert, assertEquals } from "./helpers.ts";

function sample(withLogits = true): ContextBlob {
  const nLayers = 2, nKvHeads = 3, headDim = 4;
  const counts = [5, 0, 3, 1, 7, 2];
  let seed = 1;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 4 - 2;
  const keys = counts.map((n) => Float32Array.from({ length: n * headDim }, rnd));
  keys[0][0] = -0;
  new Uint32Array(keys[0].buffer)[1] = 0x7fc01234; // a NaN with a payload
  return {
    model: "a".repeat(64),
    adapter: withLogits ? "b".repeat(64) : null,
    meta: { contextTokens: [1, 2, 3], plan: { method: "judgeq" }, note: "ünïcode" },
    snapshot: {
      nLayers,
      nKvHeads,
      headDim,
      nextPosition: 20,
      positions: counts.map((n, s) => Int32Array.from({ length: n }, (_, i) => i * 2 + (s % 2))),
      keys,
      values: counts.map((n) => Float32Array.from({ length: n * headDim }, rnd)),
      logits: withLogits ? Float32Array.from({ length: 11 }, rnd) : null,
    },
  };
}

const bits = (a: Int32Array | Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

function assertBlobsEqual(a: ContextBlob, b: ContextBlob) {
  assertEquals(a.model, b.model);
  assertEquals(a.adapter, b.adapter);
  assertEquals(a.meta, b.meta);
  const [s, t] = [a.snapshot, b.snapshot];
  assertEquals([s.nLayers, s.nKvHeads, s.headDim, s.nextPosition], [
    t.nLayers,
    t.nKvHeads,
    t.headDim,
    t.nextPosition,
  ]);
  s.positions.forEach((p, i) => assertEquals(bits(p), bits(t.positions[i]), `positions ${i}`));
  s.keys.forEach((k, i) => assertEquals(bits(k), bits(t.keys[i]), `keys ${i}`));
  s.values.forEach((v, i) => assertEquals(bits(v), bits(t.values[i]), `values ${i}`));
  assertEquals(s.logits && bits(s.logits), t.logits && bits(t.logits));
}

function assertBlobError(bytes: Uint8Array, fragment: string) {
  try {
    decodeContextBlob(bytes);
  } catch (e) {
    assert(e instanceof BlobError, `expected a BlobError, got ${e}`);
    assert((e as Error).message.includes(fragment), `"${(e as Error).message}" lacks "${fragment}"`);
    return;
  }
  throw new Error(`decoding did not fail (expected "${fragment}")`);
}

/** The same blob with another header JSON (arrays and checksum rewritten around it). */
function withHeader(bytes: Uint8Array, header: string): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const oldLength = view.getUint32(8, true), oldAt = (12 + oldLength + 3) & ~3;
  const json = new TextEncoder().encode(header), at = (12 + json.length + 3) & ~3;
  const arrays = bytes.subarray(oldAt, bytes.length - 4);
  const out = new Uint8Array(at + arrays.length + 4);
  out.set(bytes.subarray(0, 8));
  new DataView(out.buffer).setUint32(8, json.length, true);
  out.set(json, 12);
  out.set(arrays, at);
  return resealed(out);
}

/** Rewrites the trailing checksum after an edit, so the edit itself is what decoding meets. */
function resealed(bytes: Uint8Array): Uint8Array {
  const out = bytes.slice();
  new DataView(out.buffer).setUint32(out.length - 4, crc32(out.subarray(0, out.length - 4)), true);
  return out;
}

Deno.test("context blob: round trip bit for bit, with and without logits and adapter", () => {
  for (const withLogits of [true, false]) {
    const b = sample(withLogits);
    const bytes = encodeContextBlob(b);
    assertEquals(new TextDecoder().decode(bytes.subarray(0, 4)), "JQCX");
    assertEquals(new DataView(bytes.buffer).getUint16(4, true), BLOB_VERSION);
    assertBlobsEqual(decodeContextBlob(bytes), b);
    // Decoding a view inside a larger buffer at an odd offset works too.
    const padded = new Uint8Array(bytes.length + 3);
    padded.set(bytes, 3);
    assertBlobsEqual(decodeContextBlob(padded.subarray(3)), b);
  }
});

Deno.test("context blob: crc32 is zlib's", () => {
  assertEquals(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
});

Deno.test("context blob: every truncation is a clear error", () => {
  const bytes = encodeContextBlob(sample());
  for (let n = 0; n < bytes.length; n += n < 64 ? 1 : 37) {
    try {
      decodeContextBlob(bytes.subarray(0, n));
      throw new Error(`a blob cut to ${n} bytes decoded`);
    } catch (e) {
      assert(e instanceof BlobError, `cut to ${n}: ${e}`);
    }
  }
  assertBlobError(bytes.subarray(0, 5), "truncated");
  assertBlobError(bytes.subarray(0, bytes.length - 1), "checksum");
});

Deno.test("context blob: corrupt, foreign and future blobs are refused naming the fault", () => {
  const bytes = encodeContextBlob(sample());
  const flipped = bytes.slice();
  flipped[bytes.length - 40] ^= 0x10;
  assertBlobError(flipped, "checksum mismatch");
  assertBlobError(new TextEncoder().encode("hello, this is not a blob at all"), "not a context blob");
  const future = bytes.slice();
  new DataView(future.buffer).setUint16(4, BLOB_VERSION + 1, true);
  assertBlobError(resealed(future), `format version ${BLOB_VERSION + 1} is not supported`);
  const hugeHeader = bytes.slice();
  new DataView(hugeHeader.buffer).setUint32(8, 0xffffffff, true);
  assertBlobError(hugeHeader, "truncated: header");
  // A header whose counts disagree with the arrays that follow.
  const jsonLength = new DataView(bytes.buffer).getUint32(8, true);
  const header = new TextDecoder().decode(bytes.subarray(12, 12 + jsonLength));
  const lying = bytes.slice();
  lying.set(new TextEncoder().encode(header.replace('"counts":[5,', '"counts":[6,')), 12);
  assertBlobError(resealed(lying), "the header describes");
  assertBlobError(withHeader(bytes, header.replace('"headDim":4', '"headDim":-4')), "header field 'headDim'");
  assertBlobError(withHeader(bytes, header.replace(/"model":"a+"/, '"model":7')), "header field 'model'");
  assertBlobError(withHeader(bytes, header.replace('"counts":[5,', '"counts":[')), "header field 'counts'");
  assertBlobError(withHeader(bytes, "[1,2]"), "not a JSON object");
  assertBlobsEqual(decodeContextBlob(withHeader(bytes, header)), sample());
  const notJson = bytes.slice();
  notJson[12] = "x".charCodeAt(0);
  assertBlobError(resealed(notJson), "not valid JSON");
});
