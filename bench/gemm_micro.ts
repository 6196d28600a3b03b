/**
 * The GEMM kernels alone, one thread, no pool: f32, int8 on relaxed SIMD (i8 x i7 dot products) and int8
 * on the plain-SIMD fallback, on the same shapes (x [M, K], w [N, K]). Calls interleave and each figure is
 * the fastest of 25 (the machine is shared: the minimum is the least disturbed run). With --baseline DIR,
 * the f32 GEMM of that checkout's wasm/kernels.wasm runs in the same rounds ("f32 baseline"; its gemmF32
 * with or without the panel scratch argument, by its arity). M = 128 with N = K = 768 once put x and w at
 * offsets that conflict in L1 (8.9 GMAC/s where 126 or 256 rows gave 15-16): buffers are now 4 KiB-aligned
 * and then offset by 320 bytes each, and the default shape has 128 x 1280 x 768 (the 76M llama's Q/K/V).
 *
 *   deno run -A bench/gemm_micro.ts [--baseline DIR] [M,N,K ...]   (default 128,1280,768 1,2048,768)
 */
import { Arena } from "../wasm/arena.ts";
import { instantiate, kernelModule } from "../wasm/kernels.ts";
import { CONTROL_BYTES } from "../wasm/pool_protocol.ts";
import { fastestInterleaved, skewedAllocator } from "./micro_timing.ts";

async function measure(M: number, N: number, K: number, baseline: WebAssembly.Module | null) {
  const arena = new Arena(CONTROL_BYTES);
  const relaxed = instantiate(await kernelModule("relaxed"), arena.memory);
  const simd = instantiate(await kernelModule("simd"), arena.memory);
  const alloc = skewedAllocator(arena);
  const x = alloc(M * K * 4), wf = alloc(N * K * 4), wi = alloc(N * K + 16);
  const scales = alloc(N * 4), sums = alloc(N * 4), y = alloc(M * N * 4);
  for (let i = 0; i < M * K; i++) arena.f32[x / 4 + i] = Math.sin(i);
  for (let i = 0; i < N * K; i++) arena.f32[wf / 4 + i] = Math.cos(i) * 0.1;
  new Int8Array(arena.memory.buffer, wi, N * K).forEach((_, i, a) => (a[i] = (i * 37) % 255 - 127));
  arena.f32.fill(0.01, scales / 4, scales / 4 + N);
  const stride = Math.max(64 + 16 * 3 * Math.ceil(K / 16) * 16, 32 * K + 32), scratch = alloc(stride);
  const kernels: [string, () => void][] = [
    ["f32", () => relaxed.gemmF32(x, wf, 0, y, M, N, K, N, 0, scratch, 0, 0, 1)],
    [
      "int8 relaxed SIMD",
      () => relaxed.gemmI8(x, wi, scales, sums, 0, y, M, N, K, N, 0, scratch, stride, 0, 0, 1),
    ],
    [
      "int8 plain SIMD",
      () => simd.gemmI8(x, wi, scales, sums, 0, y, M, N, K, N, 0, scratch, stride, 0, 0, 1),
    ],
  ];
  if (baseline) {
    const old = instantiate(baseline, arena.memory);
    const args = old.gemmF32.length === 13 ? [scratch, 0, 0, 1] : [0, 0, 1];
    kernels.push(["f32 baseline", () => old.gemmF32(x, wf, 0, y, M, N, K, N, 0, ...args)]);
  }
  const best = fastestInterleaved(kernels.map(([, f]) => f));
  return Object.fromEntries(kernels.map(([name], i) => [name, {
    ms: Math.round(best[i] * 1000) / 1000,
    gmacPerS: Math.round(M * N * K / best[i] / 1e4) / 100,
  }]));
}

if (import.meta.main) {
  const args = [...Deno.args];
  let baseline: WebAssembly.Module | null = null;
  const b = args.indexOf("--baseline");
  if (b >= 0) {
    const dir = args[b + 1];
    args.splice(b, 2);
    try {
      baseline = await WebAssembly.compile(await Deno.readFile(`${dir}/wasm/kernels.wasm`));
    } catch (e) {
      console.error(`error: --baseline: cannot load ${dir}/wasm/kernels.wasm: ${(e as Error).message}`);
      Deno.exit(2);
    }
  }
  const shapes = args.length ? args : ["128,1280,768", "1,2048,768"];
  for (const s of shapes) {
    const [M, N, K] = s.split(",").map(Number);
    if (![M, N, K].every((v) => Number.isInteger(v) && v > 0)) {
      console.error(`error: shape '${s}': expected M,N,K positive integers`);
      Deno.exit(2);
    }
    console.log(JSON.stringify({ M, N, K, ...(await measure(M, N, K, baseline)) }));
  }
}
