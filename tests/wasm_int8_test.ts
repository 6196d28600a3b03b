/**
 * The int8 GEMM (gemmI8) against an exact oracle written here: each input row quantized by the documented
 * rule (x_q = round-half-even(x / s), s = max |x| / (2^20 - 1), in float32), the integer dot product with
 * the int8 weight row computed exactly in float64 (every partial sum is an integer below 2^53), scaled once.
 * The kernel must give the oracle's bits, on the relaxed-SIMD module and on the plain-SIMD fallback, in one
 * call or split over threads; and both must stay within float32 rounding of the unquantized product.
 */
import { Arena } from "../wasm/arena.ts";
import { hasRelaxedSimd, instantiate, type KernelFlavor, kernelModule } from "../wasm/kernels.ts";
import { WasmExecutor, wasmUnsupportedReason } from "../wasm/mod.ts";
import { CONTROL_BYTES } from "../wasm/pool_protocol.ts";
import { int8Layout } from "../wasm/row_groups.ts";
import { fixtureWeights } from "../fixtures/testing.ts";
import { JudgeQError } from "../core/errors.ts";
import { assert, assertRejects, seededFloats } from "./helpers.ts";
import { type GemmCase, QMAX, quantizeInput } from "./wasm_gemm_oracle.ts";

const why = wasmUnsupportedReason();
const opts = { ignore: why !== null, sanitizeResources: false, sanitizeOps: false };

/** The oracle: y[m][n] for int8 weights q [N, K] with row scales sw, inputs x [M, K], bias, previous y. */
function oracle(
  x: Float32Array,
  q: Int8Array,
  sw: Float32Array,
  bias: Float32Array | null,
  y0: Float32Array | null,
  M: number,
  N: number,
  K: number,
): Float32Array {
  const out = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    const { s, xq } = quantizeInput(x.subarray(m * K, (m + 1) * K));
    for (let n = 0; n < N; n++) {
      let dot = 0;
      for (let k = 0; k < K; k++) dot += q[n * K + k] * xq[k];
      let r = Math.fround(dot * s * sw[n]);
      if (bias) r = Math.fround(r + bias[n]);
      if (y0) r = Math.fround(r + y0[m * N + n]);
      out[m * N + n] = r;
    }
  }
  return out;
}

const CASES: GemmCase[] = [
  { M: 1, N: 12, K: 64, bias: false, acc: false }, // decode's matvec
  { M: 1, N: 7, K: 13, bias: true, acc: true }, // K not a multiple of 16, N not of 4
  { M: 5, N: 9, K: 100, bias: true, acc: false },
  { M: 19, N: 16, K: 172, bias: false, acc: true }, // more rows than one quantized block (16)
  { M: 3, N: 8, K: 2051, bias: true, acc: true },
  { M: 2, N: 30, K: 48, bias: false, acc: false }, // ten whole groups of three rows
];

/** Runs gemmI8 on one flavor over `chunks` chunks; returns y. */
async function runGemm(flavor: KernelFlavor, c: GemmCase, seed: number, chunks: number) {
  const rand = seededFloats(seed), { M, N, K } = c;
  const x = Float32Array.from({ length: M * K }, () => rand() * 3);
  if (M > 2) x.fill(0, K, 2 * K); // an all-zero row: scale 1
  x[0] = 40; // an outlier, as activations have
  const q = Int8Array.from({ length: N * K }, () => Math.round(rand() * 127));
  const sw = Float32Array.from({ length: N }, () => Math.fround(0.001 + Math.abs(rand()) / 50));
  const bias = c.bias ? Float32Array.from({ length: N }, () => rand()) : null;
  const y0 = c.acc ? Float32Array.from({ length: M * N }, () => rand()) : null;
  const sums = Int32Array.from(
    { length: N },
    (_, n) => q.subarray(n * K, (n + 1) * K).reduce((a, b) => a + b, 0),
  );

  const arena = new Arena(CONTROL_BYTES);
  const k = instantiate(await kernelModule(flavor), arena.memory);
  const f32 = (v: Float32Array | Int32Array) => {
    const at = arena.alloc(v.length * 4);
    if (v instanceof Int32Array) arena.i32.set(v, at / 4);
    else arena.f32.set(v, at / 4);
    return at;
  };
  const stored = int8Layout(q, N, K);
  const xa = f32(x), wa = arena.alloc(stored.length), sa = f32(sw), ua = f32(sums);
  new Int8Array(arena.memory.buffer, wa, stored.length).set(stored);
  const ba = bias ? f32(bias) : 0, ya = f32(y0 ?? new Float32Array(M * N));
  const stride = 16 * 4 + 16 * 3 * Math.ceil(K / 16) * 16, scratch = arena.alloc(chunks * stride);
  for (let t = 0; t < chunks; t++) {
    k.gemmI8(xa, wa, sa, ua, ba, ya, M, N, K, N, c.acc ? 1 : 0, scratch, stride, 0, t, chunks);
  }
  const got = arena.f32.slice(ya / 4, ya / 4 + M * N);
  // The unquantized product, and the bound of the activations' rounding on it: half a step
  // (max |x| / (2^20 - 1)) times the sum of |w|.
  const exact = new Float64Array(M * N), bound = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    let mx = 0;
    for (let i = 0; i < K; i++) mx = Math.max(mx, Math.abs(x[m * K + i]));
    for (let n = 0; n < N; n++) {
      let d = 0, a = 0;
      for (let i = 0; i < K; i++) {
        d += q[n * K + i] * sw[n] * x[m * K + i];
        a += Math.abs(q[n * K + i] * sw[n]);
      }
      exact[m * N + n] = d + (bias ? bias[n] : 0) + (y0 ? y0[m * N + n] : 0);
      bound[m * N + n] = a * mx / QMAX / 2;
    }
  }
  return { got, want: oracle(x, q, sw, bias, y0, M, N, K), exact, bound };
}

const flavors: KernelFlavor[] = why || !hasRelaxedSimd() ? ["simd"] : ["relaxed", "simd"];
if (!why && !hasRelaxedSimd()) {
  console.warn("wasm_int8_test: no relaxed SIMD here, the fallback alone is checked");
}

for (const flavor of flavors) {
  Deno.test({
    ...opts,
    name: `wasm int8 GEMM (${flavor}): the exact quantized product's bits, in one call or split in 3 or 8`,
    fn: async () => {
      for (const [i, c] of CASES.entries()) {
        for (const chunks of [1, 3, 8]) {
          const { got, want, exact, bound } = await runGemm(flavor, c, 17 + i, chunks);
          const label = `${JSON.stringify(c)} chunks ${chunks}`;
          for (let j = 0; j < got.length; j++) {
            assert(Object.is(got[j], want[j]), `${label}: y[${j}] ${got[j]} != oracle ${want[j]}`);
            // 21-bit activations: within the rounding bound, plus float32's own.
            const tol = bound[j] + 1e-6 * (1 + Math.abs(exact[j]));
            assert(Math.abs(got[j] - exact[j]) <= tol, `${label}: y[${j}] ${got[j]} vs ${exact[j]}`);
          }
        }
      }
    },
  });
}

Deno.test({
  ...opts,
  name: "wasm executor: kernels 'simd' forces the fallback; a bad choice is refused naming `kernels`",
  fn: async () => {
    const w = fixtureWeights("llama3");
    const ex = await WasmExecutor.create(w, { threads: 1, kernels: "simd", weightFormat: "int8" });
    try {
      assert(ex.kernels === "simd", `kernels ${ex.kernels}`);
      assert(!ex.description.includes("relaxed"), ex.description);
    } finally {
      ex.dispose();
    }
    const e = await assertRejects(
      () => WasmExecutor.create(w, { threads: 1, kernels: "avx" as "simd" }),
      "expected auto, relaxed or simd",
    );
    assert(e instanceof JudgeQError && e.param === "kernels", e.message);
  },
});

Deno.test({
  ...opts,
  name: "wasm embed kernel: every row of an int8 table (groups of three, and the rows after) is q x scale",
  fn: async () => {
    for (const [N, K] of [[8, 13], [9, 40], [7, 2051]]) {
      const rand = seededFloats(N * K);
      const q = Int8Array.from({ length: N * K }, () => Math.round(rand() * 127));
      const sw = Float32Array.from({ length: N }, () => Math.fround(0.01 + Math.abs(rand())));
      const arena = new Arena(CONTROL_BYTES);
      const k = instantiate(await kernelModule(flavors[0]), arena.memory);
      const stored = int8Layout(q, N, K), table = arena.alloc(stored.length);
      new Int8Array(arena.memory.buffer, table, stored.length).set(stored);
      const scales = arena.alloc(N * 4), tokens = arena.alloc(N * 4), x = arena.alloc(N * K * 4);
      arena.f32.set(sw, scales / 4);
      arena.i32.set(Int32Array.from({ length: N }, (_, i) => N - 1 - i), tokens / 4); // every row, reversed
      k.embed(table, 2, scales, tokens, x, N, K, N, 0, 1);
      for (let m = 0; m < N; m++) {
        const row = N - 1 - m;
        for (let i = 0; i < K; i++) {
          const got = arena.f32[x / 4 + m * K + i], want = Math.fround(q[row * K + i] * sw[row]);
          assert(got === want, `N ${N} K ${K} row ${row} [${i}]: ${got} != ${want}`);
        }
      }
    }
  },
});
