/**
 * How fast one core streams weights from memory in the access patterns of a one-row (decoding) GEMM, as
 * WebAssembly: the patterns of bench/assembly/stream_micro.ts over 150-200 MB (far past the caches), one
 * thread, each the fastest of 5 calls, rounds repeated. What it showed (README, "Decoding: every weight
 * matrix in one sequential run"): rows read side by side stream at half the speed of rows read one after
 * another, and int8 in 16-byte-interleaved groups of three rows streams 2x faster than row-major; 4-bit
 * weights in the same tile are slower than int8 (unpacking costs more than the bytes save).
 *
 *   deno run -A bench/stream_micro.ts [--rounds 3]
 */
import { compileAssemblyScript } from "../wasm/build.ts";

const roundsAt = Deno.args.indexOf("--rounds");
const rounds = roundsAt >= 0 ? Number(Deno.args[roundsAt + 1]) : 3;
if (!Number.isInteger(rounds) || rounds < 1) {
  console.error("error: --rounds: expected a positive integer");
  Deno.exit(2);
}

const source = await Deno.readTextFile(new URL("./assembly/stream_micro.ts", import.meta.url));
const wasm = await compileAssemblyScript(source, "relaxed");

type Fn = (...args: number[]) => number;
const memory = new WebAssembly.Memory({ initial: 4000, maximum: 65536, shared: true });
const instance = new WebAssembly.Instance(new WebAssembly.Module(wasm as Uint8Array<ArrayBuffer>), {
  env: { memory, abort: () => {} },
});
const k = instance.exports as Record<string, Fn>;

const K = 768, N = 65536, f32Bytes = N * K * 4; // 201 MB of f32 weights
const x = 1 << 20, w = 2 << 20, y = w + f32Bytes + 4096; // inputs (and int8 digits) at 1 MiB, weights at 2
const i8Rows = 65535 * 3, i8Bytes = i8Rows * K; // 151 MB of int8 weights, whole groups of three
new Float32Array(memory.buffer, w, f32Bytes / 4).fill(0.001);

const cases: [string, number, string, () => void][] = [
  ["plain sequential read", f32Bytes, "GB/s", () => k.seq(w, f32Bytes)],
  ["f32, 4 rows side by side", f32Bytes, "GB/s", () => k.gemv4(x, w, y, N, K)],
  ["f32, one row after another", f32Bytes, "GB/s", () => k.gemv1(x, w, y, N, K)],
  ["int8 3-row tile, row-major rows", i8Bytes, "GMAC/s", () => k.i8tile3(x, w, y, i8Rows, K)],
  ["int8 3-row tile, interleaved rows", i8Bytes, "GMAC/s", () => k.i8tile3i(x, w, y, i8Rows, K)],
  ["4-bit 3-row tile, interleaved rows", i8Bytes, "GMAC/s", () => k.i4tile3i(x, w, y, i8Rows, K)],
];
for (let r = 0; r < rounds; r++) {
  for (const [name, units, unit, run] of cases) {
    let best = Infinity;
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      run();
      best = Math.min(best, performance.now() - t);
    }
    // GB/s for the f32 patterns (bytes read); multiply-adds per second for the int8 and 4-bit tiles.
    console.log(`round ${r + 1}: ${name}: ${(units / best / 1e6).toFixed(1)} ${unit}`);
  }
}
