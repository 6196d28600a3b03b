/**
 * Decode attention micro-benchmark: the `attention` kernel for one new row (M = 1) over a KV cache of
 * `--ctx` entries per KV head, the 76M llama's shape (12 layers, 12 query heads, 4 KV heads of 64), one
 * thread; ms per token = the 12 layers' calls. With `--base FILE.wasm` (another build of the kernels,
 * e.g. main's wasm/kernels.wasm copied aside) both run on the same memory, alternating rounds, and the
 * ratio base / this is printed per round, then its median and range.
 *
 * `--cold` keeps 4 copies of the cache (48 layers' worth) and runs each token on the next copy, so that
 * the entries come from memory, not from a cache level, as in a whole model's decoding (whose weights
 * stream through the caches between two layers' attention).
 *
 * `--rows M` times M new rows instead of one (a prefill chunk: the last M of the --ctx entries), ms per
 * call of the 12 layers.
 *
 *   deno run -A bench/attn_micro.ts [--ctx 512] [--rows 1] [--rounds 7] [--cold] [--base FILE.wasm]
 *     [--this FILE.wasm (instead of this tree's kernels)]
 *
 * Load-proof: instructions per token = the difference of two callgrind runs (0 and 2 rounds) / (2 x tokens
 * per round, printed), with --v8-flags=--no-liftoff,--single-threaded so that compilation is the same.
 */
import { Arena } from "../wasm/arena.ts";
import { instantiate, kernelModule, type Kernels } from "../wasm/kernels.ts";
import { CONTROL_BYTES } from "../wasm/pool_protocol.ts";
import { median } from "../core/percentile.ts";

const args = Deno.args;
const arg = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const ctx = Number(arg("--ctx") ?? 512), rounds = Number(arg("--rounds") ?? 7), base = arg("--base");
const layers = 12, nHeads = Number(arg("--heads") ?? 12), nKv = Number(arg("--kv") ?? 4);
const hd = Number(arg("--hd") ?? 64), M = Number(arg("--rows") ?? 1);
const copies = args.includes("--cold") ? 4 : 1;
const cap = ctx + 1, slots = copies * layers * nKv, qw = nHeads * hd;

const arena = new Arena(CONTROL_BYTES);
const f32 = (n: number) => arena.alloc(n * 4);
const keys = f32(slots * cap * hd), values = f32(slots * cap * hd), positions = f32(slots * cap);
const counts = f32(slots), q = f32(M * qw), out = f32(M * qw), scratch = f32(2 * (nHeads / nKv) * cap);
let s = 12345;
const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 31 - 1);
const mem = () => arena.f32;
for (let i = 0; i < slots * cap * hd; i++) mem()[keys / 4 + i] = rnd();
for (let i = 0; i < slots * cap * hd; i++) mem()[values / 4 + i] = rnd();
for (let i = 0; i < M * qw; i++) mem()[q / 4 + i] = rnd();
const i32 = () => new Int32Array(arena.memory.buffer);
for (let sl = 0; sl < slots; sl++) {
  i32()[counts / 4 + sl] = ctx - M; // the new rows make ctx entries
  for (let j = 0; j < cap; j++) i32()[positions / 4 + sl * cap + j] = j;
}

const mineFile = arg("--this");
const mine = instantiate(
  mineFile ? await WebAssembly.compile(await Deno.readFile(mineFile)) : await kernelModule(),
  arena.memory,
);
const other = base ? instantiate(await WebAssembly.compile(await Deno.readFile(base)), arena.memory) : null;

let copy = 0;
function token(k: Kernels) {
  copy = (copy + 1) % copies;
  for (let l = 0; l < layers; l++) {
    const slot0 = (copy * layers + l) * nKv;
    k.attention(
      q,
      out,
      M,
      nHeads,
      nKv,
      hd,
      1 / Math.sqrt(hd),
      keys,
      values,
      counts,
      slot0,
      cap,
      scratch,
      0,
      positions,
      0,
      0,
      1,
    );
  }
}
function time(k: Kernels, n: number): number {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) token(k);
  return (performance.now() - t0) / n;
}
const n = Math.max(M > 1 ? 3 : 20, Math.round(20000 / ctx / M));
console.log(`${n} tokens per round`);
time(mine, n);
if (other) time(other, n);
const ratios: number[] = [];
const mineMs: number[] = [], baseMs: number[] = [];
for (let r = 0; r < rounds; r++) {
  const b = other ? time(other, n) : NaN, m = time(mine, n);
  mineMs.push(m);
  if (other) {
    baseMs.push(b);
    ratios.push(b / m);
  }
  console.log(
    `round ${r}: this ${m.toFixed(3)} ms/token` +
      (other ? `, base ${b.toFixed(3)}, base/this ${(b / m).toFixed(2)}` : ""),
  );
}
// With --rounds 0 only the warm-up runs (callgrind: the difference of two round counts is the kernel's).
if (rounds > 0) {
  console.log(
    `ctx ${ctx}, load ${Deno.loadavg()[0].toFixed(1)}: this median ${median(mineMs).toFixed(3)} ms/token` +
      (other
        ? `, base ${median(baseMs).toFixed(3)}; base/this median ${median(ratios).toFixed(2)} (${
          Math.min(...ratios).toFixed(2)
        }-${Math.max(...ratios).toFixed(2)})`
        : ""),
  );
}
