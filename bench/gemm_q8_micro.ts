/**
 * The q8_0 GEMM (gemmQ8: blocks of 32 with a scale each, 3-row interleaved groups) against the int8 GEMM
 * (gemmI8: a scale per row) on the same shapes, one thread, no pool, both kernel modules. Calls interleave
 * and each figure is the fastest of 25 (the machine is shared: the minimum is the least disturbed run);
 * `q8_0 / int8` is the ratio of those. Buffers are 4 KiB-aligned and then 320 bytes apart (as in
 * bench/gemm_micro.ts), so that no two share L1 sets by accident.
 *
 *   deno run -A bench/gemm_q8_micro.ts [M,N,K ...]   (default 128,1280,768 1,2048,768 1,768,2048)
 */
import { Arena } from "../wasm/arena.ts";
import { instantiate, type KernelFlavor, kernelModule } from "../wasm/kernels.ts";
import { CONTROL_BYTES } from "../wasm/pool_protocol.ts";
import { fastestInterleaved, skewedAllocator } from "./micro_timing.ts";
import { layoutQ8 } from "../wasm/q8_0.ts";

async function measure(M: number, N: number, K: number) {
  const arena = new Arena(CONTROL_BYTES);
  const flavors: KernelFlavor[] = ["relaxed", "simd"];
  const mods = await Promise.all(flavors.map(async (f) => instantiate(await kernelModule(f), arena.memory)));
  const alloc = skewedAllocator(arena);
  const x = alloc(M * K * 4), wi = alloc(N * K + 16), wq = alloc(N * K);
  const scales = alloc(N * 4), sums = alloc(N * 4), y = alloc(M * N * 4);
  const qs = alloc(N * K / 8), offs = alloc(N * 8);
  for (let i = 0; i < M * K; i++) arena.f32[x / 4 + i] = Math.sin(i);
  const q = Int8Array.from({ length: N * K }, (_, i) => (i * 37) % 255 - 127);
  new Int8Array(arena.memory.buffer, wi, N * K).set(q);
  arena.f32.fill(0.01, scales / 4, scales / 4 + N);
  const l = layoutQ8({ rows: N, cols: K, q, d: new Float32Array(N * K / 32).fill(0.01) });
  new Int8Array(arena.memory.buffer, wq, N * K).set(l.bytes);
  arena.f32.set(l.scales, qs / 4);
  new Float64Array(arena.memory.buffer, offs, N).set(l.offsets);
  const stride = 64 + 16 * 3 * Math.ceil(K / 16) * 16, scratch = alloc(stride);
  const kernels: [string, () => void][] = flavors.flatMap((f, i) => {
    const k = mods[i];
    return [
      [`int8 ${f}`, () => k.gemmI8(x, wi, scales, sums, 0, y, M, N, K, N, 0, scratch, stride, 0, 0, 1)],
      [`q8_0 ${f}`, () => k.gemmQ8(x, wq, qs, offs, 0, y, M, N, K, N, 0, scratch, stride, 0, 0, 1)],
    ] as [string, () => void][];
  });
  const best = fastestInterleaved(kernels.map(([, f]) => f));
  const out: Record<string, unknown> = Object.fromEntries(kernels.map(([name], i) => [name, {
    ms: Math.round(best[i] * 1000) / 1000,
    gmacPerS: Math.round(M * N * K / best[i] / 1e4) / 100,
  }]));
  for (const [i, f] of flavors.entries()) {
    out[`q8_0 / int8 ${f}`] = Math.round(best[2 * i] / best[2 * i + 1] * 100) / 100;
  }
  return out;
}

if (import.meta.main) {
  const shapes = Deno.args.length ? Deno.args : ["128,1280,768", "1,2048,768", "1,768,2048"];
  for (const s of shapes) {
    const [M, N, K] = s.split(",").map(Number);
    if (![M, N, K].every((v) => Number.isInteger(v) && v > 0) || K % 32 !== 0) {
      console.error(`error: shape '${s}': expected M,N,K as positive integers, K a multiple of 32`);
      Deno.exit(2);
    }
    console.log(`${M} x ${N} x ${K}:`, JSON.stringify(await measure(M, N, K)));
  }
}
