/**
 * ggml block formats in pure TypeScript: the reference round-to-nearest quantizers of Q8_0 and Q4_0 (bit
 * for bit those llama.cpp uses to write model files: f32 arithmetic, the block scale stored as f16), and
 * dequantizers for F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K. Each step is rounded to f32 with
 * Math.fround, as the C code computes in float.
 */
import { GGML_TYPE } from "./ggml_types.ts";

const f32 = Math.fround;

/** f16 bits -> value, for every one of the 65536 patterns (built on first use). */
let halfTable: Float32Array | null = null;
function halves(): Float32Array {
  if (!halfTable) {
    const bits = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) bits[i] = i;
    halfTable = Float32Array.from(new Float16Array(bits.buffer));
  }
  return halfTable;
}

const half1 = new Float16Array(1);
const half1Bits = new Uint16Array(half1.buffer);
/** f32 -> f16 bits, rounding to nearest even (as ggml's GGML_FP32_TO_FP16). */
export function toHalfBits(x: number): number {
  half1[0] = x;
  return half1Bits[0];
}

const readU16 = (b: Uint8Array, at: number) => b[at] | (b[at + 1] << 8);
const writeU16 = (b: Uint8Array, at: number, v: number) => {
  b[at] = v & 0xff;
  b[at + 1] = v >>> 8;
};

/** C's roundf: halfway cases away from zero. */
const roundAway = (x: number) => (x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5));

/** Q8_0: blocks of 32 as d (f16) = max|x| / 127 and 32 int8 round(x / d). `x.length` must divide by 32. */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  if (x.length % 32 !== 0) throw new RangeError(`Q8_0 needs a multiple of 32 values, got ${x.length}`);
  const nb = x.length / 32;
  const out = new Uint8Array(nb * 34);
  for (let i = 0; i < nb; i++) {
    const base = i * 32, o = i * 34;
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[base + j]));
    const d = f32(amax / 127);
    const id = d ? f32(1 / d) : 0;
    writeU16(out, o, toHalfBits(d));
    for (let j = 0; j < 32; j++) out[o + 2 + j] = roundAway(f32(x[base + j] * id)) & 0xff;
  }
  return out;
}

/**
 * Q4_0: blocks of 32 as d (f16) = m / -8, m the value of largest magnitude (the first such), and 16 bytes
 * holding min(15, trunc(x / d + 8.5)): value j in the low nibble of byte j, value j + 16 in its high nibble.
 */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  if (x.length % 32 !== 0) throw new RangeError(`Q4_0 needs a multiple of 32 values, got ${x.length}`);
  const nb = x.length / 32;
  const out = new Uint8Array(nb * 18);
  for (let i = 0; i < nb; i++) {
    const base = i * 32, o = i * 18;
    let amax = 0, max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[base + j];
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = f32(max / -8);
    const id = d ? f32(1 / d) : 0;
    writeU16(out, o, toHalfBits(d));
    for (let j = 0; j < 16; j++) {
      const x0 = f32(x[base + j] * id), x1 = f32(x[base + 16 + j] * id);
      const q0 = Math.min(15, Math.trunc(f32(x0 + 8.5)));
      const q1 = Math.min(15, Math.trunc(f32(x1 + 8.5)));
      out[o + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}

function dequantQ8_0(b: Uint8Array, n: number, out: Float32Array) {
  const h = halves();
  for (let i = 0; i < n / 32; i++) {
    const o = i * 34, d = h[readU16(b, o)];
    for (let j = 0; j < 32; j++) out[i * 32 + j] = ((b[o + 2 + j] << 24) >> 24) * d;
  }
}

function dequantQ4_0(b: Uint8Array, n: number, out: Float32Array) {
  const h = halves();
  for (let i = 0; i < n / 32; i++) {
    const o = i * 18, d = h[readU16(b, o)];
    for (let j = 0; j < 16; j++) {
      const q = b[o + 2 + j];
      out[i * 32 + j] = ((q & 0xf) - 8) * d;
      out[i * 32 + 16 + j] = ((q >> 4) - 8) * d;
    }
  }
}

/** Q4_K: 8 sub-blocks of 32, each with a 6-bit scale and min packed into 12 bytes (get_scale_min_k4). */
function scaleMinK4(j: number, s: Uint8Array, at: number): [number, number] {
  if (j < 4) return [s[at + j] & 63, s[at + j + 4] & 63];
  return [
    (s[at + j + 4] & 0xf) | ((s[at + j - 4] >> 6) << 4),
    (s[at + j + 4] >> 4) | ((s[at + j] >> 6) << 4),
  ];
}

function dequantQ4_K(b: Uint8Array, n: number, out: Float32Array) {
  const h = halves();
  for (let i = 0; i < n / 256; i++) {
    const o = i * 144;
    const d = h[readU16(b, o)], dmin = h[readU16(b, o + 2)];
    const scales = o + 4, qs = o + 16;
    let y = i * 256;
    for (let chunk = 0; chunk < 4; chunk++) {
      const [sc1, m1] = scaleMinK4(2 * chunk, b, scales);
      const [sc2, m2] = scaleMinK4(2 * chunk + 1, b, scales);
      const d1 = f32(d * sc1), mn1 = f32(dmin * m1), d2 = f32(d * sc2), mn2 = f32(dmin * m2);
      const q = qs + 32 * chunk;
      for (let l = 0; l < 32; l++) out[y + l] = f32(d1 * (b[q + l] & 0xf)) - mn1;
      for (let l = 0; l < 32; l++) out[y + 32 + l] = f32(d2 * (b[q + l] >> 4)) - mn2;
      y += 64;
    }
  }
}

/** Q6_K: 16 sub-blocks of 16 with int8 scales; 6-bit quants split into low nibbles (ql) and 2 high bits (qh). */
function dequantQ6_K(b: Uint8Array, n: number, out: Float32Array) {
  const h = halves();
  for (let i = 0; i < n / 256; i++) {
    const o = i * 210;
    const d = h[readU16(b, o + 208)];
    for (let half = 0; half < 2; half++) {
      const ql = o + 64 * half, qh = o + 128 + 32 * half, sc = o + 192 + 8 * half;
      const y = i * 256 + 128 * half;
      const scale = (k: number) => f32(d * ((b[sc + k] << 24) >> 24));
      for (let l = 0; l < 32; l++) {
        const is = l >> 4, hi = b[qh + l];
        const q1 = ((b[ql + l] & 0xf) | ((hi & 3) << 4)) - 32;
        const q2 = ((b[ql + l + 32] & 0xf) | (((hi >> 2) & 3) << 4)) - 32;
        const q3 = ((b[ql + l] >> 4) | (((hi >> 4) & 3) << 4)) - 32;
        const q4 = ((b[ql + l + 32] >> 4) | (((hi >> 6) & 3) << 4)) - 32;
        out[y + l] = scale(is) * q1;
        out[y + l + 32] = scale(is + 2) * q2;
        out[y + l + 64] = scale(is + 4) * q3;
        out[y + l + 96] = scale(is + 6) * q4;
      }
    }
  }
}

/**
 * `n` float32 values from tensor bytes of a supported ggml type (the caller has checked that the bytes
 * hold exactly n values: see ggml_types.rowBytes). Throws RangeError on an unsupported type.
 */
export function dequantize(type: number, bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  switch (type) {
    case GGML_TYPE.F32:
      new Uint8Array(out.buffer).set(bytes.subarray(0, 4 * n)); // little-endian hosts (x86, ARM, wasm)
      break;
    case GGML_TYPE.F16: {
      const h = halves();
      for (let i = 0; i < n; i++) out[i] = h[readU16(bytes, 2 * i)];
      break;
    }
    case GGML_TYPE.BF16: {
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = readU16(bytes, 2 * i) << 16;
      break;
    }
    case GGML_TYPE.Q8_0:
      dequantQ8_0(bytes, n, out);
      break;
    case GGML_TYPE.Q4_0:
      dequantQ4_0(bytes, n, out);
      break;
    case GGML_TYPE.Q4_K:
      dequantQ4_K(bytes, n, out);
      break;
    case GGML_TYPE.Q6_K:
      dequantQ6_K(bytes, n, out);
      break;
    default:
      throw new RangeError(`ggml type ${type} cannot be dequantized here`);
  }
  return out;
}

/** F16 bytes of float32 values (round to nearest even). */
export function encodeF16Bytes(x: Float32Array): Uint8Array {
  const h = Float16Array.from(x);
  return new Uint8Array(h.buffer);
}
