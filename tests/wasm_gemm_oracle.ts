/**
 * What the int8 and q8_0 GEMM tests (wasm_int8_test.ts, wasm_q8_0_test.ts) share: the documented rule by
 * which the kernels quantize an input row (wasm/assembly/kernels.ts, quantizeRow), written independently of
 * the kernels, and the shape of a test case.
 */
import { roundHalfEven } from "./helpers.ts";

/** The activations' largest integer: 21-bit values, offset into three 7-bit digits by the kernels. */
export const QMAX = 2 ** 20 - 1;

/** An input row quantized as documented: s = max |x| / QMAX in float32 (1 for a zero row), x_q = round-half-even(x / s). */
export function quantizeInput(x: ArrayLike<number>): { s: number; xq: number[] } {
  let mx = 0;
  for (let k = 0; k < x.length; k++) mx = Math.max(mx, Math.abs(x[k]));
  const s = mx > 0 ? Math.fround(mx / QMAX) : 1, inv = Math.fround(1 / s);
  const xq = Array.from(x, (v) => Math.max(-QMAX, Math.min(QMAX, roundHalfEven(Math.fround(v * inv)))));
  return { s, xq };
}

/** A GEMM test case: y [M, N] from x [M, K], with or without bias, overwriting or adding to y. */
export interface GemmCase {
  M: number;
  N: number;
  K: number;
  bias: boolean;
  acc: boolean;
}
