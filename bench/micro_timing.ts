/** Shared pieces of the kernel micro-benchmarks (bench/gemm_micro.ts, bench/gemm_q8_micro.ts). */
import type { Arena } from "../wasm/arena.ts";

/**
 * Allocates in the arena 4 KiB-aligned, then 320 bytes apart from the previous buffer, so that no two
 * buffers share L1 sets by accident (M = 128 with N = K = 768 once did: 8.9 GMAC/s where 126 rows gave 15).
 */
export function skewedAllocator(arena: Arena): (bytes: number) => number {
  let skew = 0;
  return (bytes) => {
    const at = arena.alloc(bytes + 4096 + 320 * 8);
    return Math.ceil(at / 4096) * 4096 + 320 * (skew++ % 8);
  };
}

/** Each kernel's fastest of `rounds` calls, the kernels called in turn (the machine's drift hits them alike). */
export function fastestInterleaved(kernels: (() => void)[], rounds = 25): number[] {
  const best = kernels.map(() => Infinity);
  for (let r = 0; r < rounds; r++) {
    kernels.forEach((f, i) => {
      const t = performance.now();
      f();
      best[i] = Math.min(best[i], performance.now() - t);
    });
  }
  return best;
}
