/**
 * The f32 GEMM (gemmF32): from 8 input rows (prefill) weight panels are packed and run through the 6 x 8
 * outer-product tile; 2 to 7 rows go through the dot-product tiles (4 x 2, 4 x 1, dot1); one row (decoding)
 * through matvecF32, weight rows one after another. Checked
 * against a float64 brute force (within float32 rounding of sum |x||w|), and the bits must not depend on
 * the split over threads (1, 3, 8), on the row blocks, or on which rows share a call: a call's rows cut in
 * two calls of 8 or more rows give the same bits, and from 4 to 7 rows, calls of 2 and M - 2 rows. Shapes cover
 * K not a multiple of 4, N not a multiple of 4 or 8, M with every remainder mod 6, past one row block (K
 * 2100: 62 rows a block), with bias and accumulation into y. Both kernel modules.
 * gemmF16 (f16 weights widened panel by panel, 3 x 3 dot-product tiles) must give the dot path's bits
 * (gemmF32 on two rows at a time) on the same values widened.
 */
import { Arena } from "../wasm/arena.ts";
import { hasRelaxedSimd, instantiate, type KernelFlavor, kernelModule } from "../wasm/kernels.ts";
import { wasmUnsupportedReason } from "../wasm/mod.ts";
import { CONTROL_BYTES } from "../wasm/pool_protocol.ts";
import { assert, seededFloats } from "./helpers.ts";

const why = wasmUnsupportedReason();

const SHAPES: [number, number, number][] = [
  [1, 7, 5],
  [1, 9, 64], // one row (matvecF32): every chain, and K past its blocks of 16
  [1, 5, 2103],
  [2, 5, 16],
  [3, 3, 4],
  [4, 13, 17],
  [5, 11, 3],
  [7, 9, 64],
  [9, 6, 19],
  [66, 10, 33],
  [68, 14, 20],
  [70, 4, 1],
  [131, 17, 72],
  [13, 8, 8],
  [131, 9, 2100],
];

async function check(flavor: KernelFlavor) {
  const arena = new Arena(CONTROL_BYTES);
  const k = instantiate(await kernelModule(flavor), arena.memory);
  const rnd = seededFloats(7);
  for (const [M, N, K] of SHAPES) {
    for (const withBias of [false, true]) {
      for (const acc of [0, 1]) {
        const x = arena.alloc(M * K * 4), w = arena.alloc(N * K * 4), b = arena.alloc(N * 4);
        const ys = [0, 1, 2, 3].map(() => arena.alloc(M * N * 4)), scratch = arena.alloc(8 * (32 * K + 32));
        const f = () => arena.f32;
        for (let i = 0; i < M * K; i++) f()[x / 4 + i] = rnd();
        for (let i = 0; i < N * K; i++) f()[w / 4 + i] = rnd();
        for (let i = 0; i < N; i++) f()[b / 4 + i] = rnd();
        const y0 = Float32Array.from({ length: M * N }, () => rnd());
        for (const y of ys) f().set(y0, y / 4);
        const bias = withBias ? b : 0;
        const gemm = (at: number, rows: number, y: number, t: number, nt: number) =>
          k.gemmF32(x + at * K * 4, w, bias, y + at * N * 4, rows, N, K, N, acc, scratch, 0, t, nt);
        gemm(0, M, ys[0], 0, 1);
        for (let t = 0; t < 3; t++) gemm(0, M, ys[1], t, 3);
        for (let t = 0; t < 8; t++) gemm(0, M, ys[2], t, 8);
        if (M < 8) {
          // Below 4 rows there is no such cut (a single row runs matvecF32): the call again.
          if (M >= 4) {
            gemm(0, 2, ys[3], 0, 1);
            gemm(2, M - 2, ys[3], 0, 1);
          } else gemm(0, M, ys[3], 0, 1);
        } else if (M >= 16) {
          const cut = 8 + (M - 16 >> 1) + 1; // 8 or more rows on each side, the two halves' tiles unaligned
          gemm(0, cut, ys[3], 0, 1);
          gemm(cut, M - cut, ys[3], 0, 1);
        } else gemm(0, M, ys[3], 0, 1);
        const what = `${flavor}: M ${M}, N ${N}, K ${K}, bias ${withBias}, acc ${acc}`;
        const bits = (y: number) => new Uint32Array(arena.memory.buffer, y, M * N);
        for (let i = 0; i < M * N; i++) {
          const m = Math.floor(i / N), n = i % N;
          let exact = withBias ? f()[b / 4 + n] : 0, mag = Math.abs(exact);
          for (let j = 0; j < K; j++) {
            const p = f()[x / 4 + m * K + j] * f()[w / 4 + n * K + j];
            exact += p;
            mag += Math.abs(p);
          }
          if (acc) {
            exact += y0[i];
            mag += Math.abs(y0[i]);
          }
          const got = f()[ys[0] / 4 + i];
          assert(
            Math.abs(got - exact) <= mag * (K + 2) * 2 ** -23,
            `${what}: y[${m}][${n}] ${got}, exact ${exact}`,
          );
          for (const [v, name] of [[1, "3 threads"], [2, "8 threads"], [3, "rows in other calls"]] as const) {
            assert(
              bits(ys[v])[i] === bits(ys[0])[i],
              `${what}: y[${m}][${n}] ${f()[ys[v] / 4 + i]} (${name}) != ${got} (one call)`,
            );
          }
        }
        for (const p of [x, w, b, scratch, ...ys]) arena.release(p);
      }
    }
  }
}

/** Random finite f16 bit patterns (exponents 10..20) and their exact values. */
function halves(n: number, rnd: () => number): [Uint16Array, Float32Array] {
  const bits = new Uint16Array(n), vals = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const sign = rnd() < 0 ? 1 : 0, e = 10 + Math.floor((rnd() + 1) * 5.5), m = Math.floor((rnd() + 1) * 512);
    bits[i] = (sign << 15) | (e << 10) | m;
    vals[i] = (sign ? -1 : 1) * (1 + m / 1024) * 2 ** (e - 15);
  }
  return [bits, vals];
}

async function checkF16(flavor: KernelFlavor) {
  const arena = new Arena(CONTROL_BYTES);
  const k = instantiate(await kernelModule(flavor), arena.memory);
  const rnd = seededFloats(11);
  for (const [M, N, K] of SHAPES) {
    // One spare input row: the dot path's reference runs two rows at a time.
    const x = arena.alloc((M + 1) * K * 4), w16 = arena.alloc(N * K * 2 + 16), w32 = arena.alloc(N * K * 4);
    const b = arena.alloc(N * 4),
      scratch = arena.alloc(8 * 16 * K),
      ys = [0, 1, 2, 3].map(() => arena.alloc(M * N * 4)),
      pair = arena.alloc(2 * N * 4);
    const [bits, vals] = halves(N * K, rnd);
    new Uint16Array(arena.memory.buffer, w16, N * K).set(bits);
    arena.f32.set(vals, w32 / 4);
    for (let i = 0; i < M * K; i++) arena.f32[x / 4 + i] = rnd();
    arena.f32.fill(0, x / 4 + M * K, x / 4 + (M + 1) * K);
    for (let i = 0; i < N; i++) arena.f32[b / 4 + i] = rnd();
    for (let m = 0; m < M; m++) {
      // Rows m and m + 1 (the spare row past the last), two rows being the dot path; row m kept.
      k.gemmF32(x + m * K * 4, w32, b, pair, 2, N, K, N, 0, scratch, 0, 0, 1);
      arena.f32.copyWithin(ys[0] / 4 + m * N, pair / 4, pair / 4 + N);
    }
    k.gemmF16(x, w16, b, ys[1], M, N, K, N, 0, scratch, 0, 0, 1);
    for (let t = 0; t < 3; t++) k.gemmF16(x, w16, b, ys[2], M, N, K, N, 0, scratch, 0, t, 3);
    for (let m = 0; m < M; m++) {
      k.gemmF16(x + m * K * 4, w16, b, ys[3] + m * N * 4, 1, N, K, N, 0, scratch, 0, 0, 1);
    }
    const got = (y: number) => new Uint32Array(arena.memory.buffer, y, M * N);
    for (let i = 0; i < M * N; i++) {
      for (const v of [1, 2, 3]) {
        assert(
          got(ys[v])[i] === got(ys[0])[i],
          `${flavor} f16: M ${M}, N ${N}, K ${K}: output ${i} (run ${v})`,
        );
      }
    }
    for (const p of [x, w16, w32, b, scratch, pair, ...ys]) arena.release(p);
  }
}

Deno.test({
  name: "wasm f16 GEMM: the dot path's bits on the widened weights, from every tile and split",
  ignore: why !== null,
  fn: async () => {
    await checkF16("simd");
    if (hasRelaxedSimd()) await checkF16("relaxed");
  },
});

Deno.test({
  name: "wasm f32 GEMM: within float32 rounding of float64, the same bits from every tile and split",
  ignore: why !== null || !hasRelaxedSimd(),
  fn: () => check("relaxed"),
});

Deno.test({
  name: "wasm f32 GEMM on the plain-SIMD fallback: the same checks",
  ignore: why !== null,
  fn: () => check("simd"),
});
