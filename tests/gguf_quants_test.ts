/**
 * ggml block formats: the Q8_0 / Q4_0 quantizers against hand-computed golden blocks (ggml's reference
 * rules: f32 arithmetic, roundf away from zero for Q8_0, trunc(x + 8.5) capped at 15 for Q4_0, the scale
 * stored as f16 rounded to nearest even), and the dequantizers against blocks packed here from chosen
 * scales and quants (the inverse direction, written from ggml-common.h's block layouts).
 */
import { GGML_TYPE } from "../core/gguf/ggml_types.ts";
import { dequantize, quantizeQ4_0, quantizeQ8_0, toHalfBits } from "../core/gguf/quants.ts";
import { mulberry32 } from "../core/random.ts";
import { assert, assertEquals } from "./helpers.ts";

const u16 = (b: Uint8Array, at: number) => b[at] | (b[at + 1] << 8);
const i8 = (b: number) => (b > 127 ? b - 256 : b);

Deno.test("Q8_0: golden block (scale 1, ties away from zero, zero block)", () => {
  const x = new Float32Array(64);
  const vals = [127, -127, 2.5, -2.5, 1.5, -0.5, 0.49999997, 126.6, -3.4999998, 0.5];
  vals.forEach((v, i) => x[i] = v);
  const q = quantizeQ8_0(x);
  assertEquals(q.length, 68);
  assertEquals(u16(q, 0), 0x3c00, "d = 127 / 127 = 1.0 as f16");
  assertEquals(Array.from(q.subarray(2, 12), i8), [127, -127, 3, -3, 2, -1, 0, 127, -3, 1]);
  assertEquals(Array.from(q.subarray(12, 34)), new Array(22).fill(0));
  assertEquals(Array.from(q.subarray(34)), new Array(34).fill(0), "an all-zero block: d = 0, quants 0");
});

Deno.test("Q8_0: the f16 scale is rounded to nearest even, the quants use the f32 scale", () => {
  const x = new Float32Array(32);
  x[0] = 12.7; // d = f32(12.7 / 127) ~ 0.1: f16 0x2E66 (0.0999755859375)
  x[1] = 6.35; // 6.35 / 0.1 = 63.5 in f32 arithmetic -> 64 (away from zero)
  x[2] = -1.2;
  const q = quantizeQ8_0(x);
  assertEquals(u16(q, 0), 0x2e66);
  assertEquals(i8(q[2]), 127);
  const d = Math.fround(Math.fround(12.7) / 127), id = Math.fround(1 / d);
  assertEquals(i8(q[3]), Math.round(Math.fround(Math.fround(6.35) * id)));
  assertEquals(i8(q[4]), -12);
  // f16 ties: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 -> even (1.0); 1 + 3 * 2^-11 -> 1 + 2^-9.
  assertEquals(toHalfBits(1 + 2 ** -11), 0x3c00);
  assertEquals(toHalfBits(1 + 3 * 2 ** -11), 0x3c02);
});

Deno.test("Q4_0: golden blocks (negative and positive extremes, cap at 15, first maximum wins)", () => {
  const x = new Float32Array(96);
  // Block 0: max magnitude -8 -> d = 1; q = min(15, trunc(v + 8.5)).
  [-8, 8, 0, 0.5, -0.5, 7.4, 6.5, 6.4, -7.6].forEach((v, i) => x[i] = v);
  x[16] = 3; // the high nibble of byte 0
  // Block 1: max magnitude +16 -> d = -2, id = -0.5.
  [16, -16, 0, 3].forEach((v, i) => x[32 + i] = v);
  // Block 2: 4 and -4 tie in magnitude: the first (4) is the max -> d = -0.5.
  [4, -4, 1].forEach((v, i) => x[64 + i] = v);
  const q = quantizeQ4_0(x);
  assertEquals(q.length, 54);
  const lo = (b: number, j: number) => q[b * 18 + 2 + j] & 15,
    hi = (b: number, j: number) => q[b * 18 + 2 + j] >> 4;
  assertEquals(u16(q, 0), 0x3c00);
  assertEquals([0, 1, 2, 3, 4, 5, 6, 7, 8].map((j) => lo(0, j)), [0, 15, 8, 9, 8, 15, 15, 14, 0]);
  assertEquals(hi(0, 0), 11); // 3 + 8.5 = 11.5 -> 11
  assertEquals(hi(0, 1), 8); // zeros sit at 8
  assertEquals(u16(q, 18), 0xc000, "d = -2.0");
  assertEquals([0, 1, 2, 3].map((j) => lo(1, j)), [0, 15, 8, 7]); // 3 * -0.5 + 8.5 = 7
  assertEquals(u16(q, 36), 0xb800, "d = -0.5");
  assertEquals([0, 1, 2].map((j) => lo(2, j)), [0, 15, 6]); // 4*-2+8.5=0.5->0; -4*-2+8.5=16.5->15; 1*-2+8.5=6.5->6
});

// Q4_0's grid is asymmetric (-8..7 steps): values opposite the extreme may sit a whole step from it.
Deno.test("Q8_0 / Q4_0: dequantized values within half a step (Q4_0: one step) of the input", () => {
  const rand = mulberry32(5);
  const x = Float32Array.from({ length: 32 * 40 }, () => (rand() - 0.5) * 4);
  for (
    const [type, quant, steps, tol] of [
      [GGML_TYPE.Q8_0, quantizeQ8_0, 127, 0.5],
      [GGML_TYPE.Q4_0, quantizeQ4_0, 8, 1],
    ] as const
  ) {
    const y = dequantize(type, quant(x), x.length);
    for (let b = 0; b < 40; b++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]));
      const step = amax / steps;
      for (let j = 0; j < 32; j++) {
        const e = Math.abs(y[b * 32 + j] - x[b * 32 + j]);
        assert(
          e <= step * tol + amax * 2 ** -10,
          `type ${type} block ${b} value ${j}: error ${e}, step ${step}`,
        );
      }
    }
  }
});

Deno.test("dequantize F32, F16, BF16", () => {
  const f = Float32Array.of(1.5, -2, 65504, 3.0e-8);
  assertEquals(Array.from(dequantize(GGML_TYPE.F32, new Uint8Array(f.buffer), 4)), Array.from(f));
  const h = Uint8Array.of(0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00); // 1, -2, 65504, 2^-24
  assertEquals(Array.from(dequantize(GGML_TYPE.F16, h, 4)), [1, -2, 65504, 2 ** -24]);
  const bf = Uint8Array.of(0x80, 0x3f, 0x40, 0xc0, 0x80, 0x7f); // 1, -3, +inf
  assertEquals(Array.from(dequantize(GGML_TYPE.BF16, bf, 3)).map(String), ["1", "-3", "Infinity"]);
});

/** Packs one Q4_K block: values = d * sc[s] * q - dmin * m[s], s = the 32-value sub-block. */
function packQ4K(d: number, dmin: number, sc: number[], m: number[], q: number[]): Uint8Array {
  const b = new Uint8Array(144);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, toHalfBits(d), true);
  dv.setUint16(2, toHalfBits(dmin), true);
  // 12 bytes: sub-blocks 0-3 keep their 6-bit scale/min in the low bits of bytes 0-3 / 4-7; sub-blocks 4-7
  // put their low 4 bits in bytes 8-11 (scale low nibble, min high nibble) and their top 2 bits in the top
  // 2 bits of bytes 0-3 (scale) and 4-7 (min).
  for (let s = 0; s < 4; s++) {
    b[4 + s] = sc[s] | ((sc[s + 4] >> 4) << 6);
    b[8 + s] = m[s] | ((m[s + 4] >> 4) << 6);
    b[12 + s] = (sc[s + 4] & 15) | ((m[s + 4] & 15) << 4);
  }
  // 128 bytes: each 64 values share 32 bytes, the first 32 values in low nibbles, the next 32 in high.
  for (let e = 0; e < 256; e++) {
    const chunk = Math.floor(e / 64), within = e % 64, byte = 16 + 32 * chunk + (within % 32);
    b[byte] |= within < 32 ? q[e] : q[e] << 4;
  }
  return b;
}

Deno.test("dequantize Q4_K: blocks packed from chosen scales, mins and quants", () => {
  const rand = mulberry32(11);
  const d = 0.0625, dmin = 0.015625; // exact in f16
  const sc = Array.from({ length: 8 }, () => Math.floor(rand() * 64));
  const m = Array.from({ length: 8 }, () => Math.floor(rand() * 64));
  sc[7] = 63, m[5] = 63; // top bits set
  const q = Array.from({ length: 256 }, () => Math.floor(rand() * 16));
  const two = new Uint8Array(288);
  two.set(packQ4K(d, dmin, sc, m, q), 0);
  two.set(packQ4K(1, 0.5, sc.slice().reverse(), m.slice().reverse(), q.slice().reverse()), 144);
  const y = dequantize(GGML_TYPE.Q4_K, two, 512);
  for (let e = 0; e < 256; e++) {
    const s = Math.floor(e / 32);
    assertEquals(y[e], Math.fround(d * sc[s] * q[e] - dmin * m[s]), `value ${e}`);
    assertEquals(y[256 + e], Math.fround(sc[7 - s] * q[255 - e] - 0.5 * m[7 - s]), `block 2 value ${e}`);
  }
});

/** Packs one Q6_K block: values = d * scale[s] * (q - 32), s = the 16-value sub-block, q in 0..63. */
function packQ6K(d: number, scales: number[], q: number[]): Uint8Array {
  const b = new Uint8Array(210);
  // Per 128 values: ql holds low nibbles (values l and l+64 share byte l; l+32 and l+96 share byte l+32),
  // qh holds the 2 high bits of values l, l+32, l+64, l+96 in bits 0-1, 2-3, 4-5, 6-7 of byte l.
  for (let e = 0; e < 256; e++) {
    const half = Math.floor(e / 128), r = e % 128, quarter = Math.floor(r / 32), l = r % 32;
    const ql = 64 * half + l + (quarter % 2) * 32;
    b[ql] |= quarter < 2 ? q[e] & 15 : (q[e] & 15) << 4;
    b[128 + 32 * half + l] |= (q[e] >> 4) << (2 * quarter);
  }
  scales.forEach((s, i) => b[192 + i] = s & 0xff);
  new DataView(b.buffer).setUint16(208, toHalfBits(d), true);
  return b;
}

Deno.test("dequantize Q6_K: a block packed from chosen scales and quants", () => {
  const rand = mulberry32(12);
  const scales = Array.from({ length: 16 }, () => Math.floor(rand() * 256) - 128);
  const q = Array.from({ length: 256 }, () => Math.floor(rand() * 64));
  q[0] = 63, q[1] = 0;
  const d = 0.03125;
  const y = dequantize(GGML_TYPE.Q6_K, packQ6K(d, scales, q), 256);
  for (let e = 0; e < 256; e++) {
    assertEquals(y[e], Math.fround(d * scales[Math.floor(e / 16)] * (q[e] - 32)), `value ${e}`);
  }
});
