/**
 * The one-row (decoding) GEMM through the thread pool on 1 and 2 threads, one dispatch at a time: int8 over
 * 12 x 2048 x 768 weights (the 76M llama's gate matrices, past L2) and f32 over the same shape; fastest of 30
 * dispatches, two alternating rounds. Against the whole decode on 2 threads (bench/wasm_decode_profile.ts)
 * it says what the pool's dispatches cost beyond the kernels.
 *
 *   deno run -A bench/pool_gemm_micro.ts
 */
import { Arena } from "../wasm/arena.ts";
import { kernelModule } from "../wasm/kernels.ts";
import { chunksFor, ThreadPool } from "../wasm/pool.ts";
import { CONTROL_BYTES } from "../wasm/pool_protocol.ts";
import { gemmJob } from "../wasm/jobs.ts";
import type { Matrix } from "../wasm/weights.ts";
const module = await kernelModule("relaxed");
const N = 2048 * 12, K = 768; // 12 layers of gate-sized matrices: 18.9 MB of int8, 75 MB of f32
for (const threads of [1, 2, 1, 2]) {
  const arena = new Arena(CONTROL_BYTES);
  const pool = new ThreadPool(module, arena, threads, 0);
  await pool.ready();
  const chunks = chunksFor(threads);
  const x = arena.alloc(K * 4),
    w = arena.alloc(N * K),
    sc = arena.alloc(N * 4),
    su = arena.alloc(N * 4),
    y = arena.alloc(N * 4);
  const wf = arena.alloc(N * K * 4);
  arena.f32.fill(0.5, x / 4, x / 4 + K);
  const stride = 64 + 16 * 3 * K, scratch = arena.alloc(chunks * stride);
  const panels = arena.alloc(chunks * (32 * K + 32));
  // The same one-row job on either weight copy (the kernel follows the format).
  const job = (format: "int8" | "f32", w: Matrix) =>
    gemmJob({ format, x, w, bias: 0, y, M: 1, acc: false, panels, quant: scratch, quantStride: stride });
  const i8 = job("int8", { at: w, rows: N, cols: K, scales: sc, sums: su });
  const f32 = job("f32", { at: wf, rows: N, cols: K, scales: 0, sums: 0 });
  for (const [name, job] of [["int8", i8], ["f32", f32]] as const) {
    let best = Infinity;
    for (let r = 0; r < 30; r++) {
      const t = performance.now();
      pool.run([job], 1e9);
      best = Math.min(best, performance.now() - t);
    }
    console.log(
      `${threads} threads ${name}: ${best.toFixed(3)} ms, ${(N * K / best / 1e6).toFixed(1)} GMAC/s`,
    );
  }
  pool.dispose();
}
