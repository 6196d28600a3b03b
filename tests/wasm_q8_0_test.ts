/**
 * The q8_0 weights of the WebAssembly executor (ggml's blocks of 32 with a scale each):
 * - gemmQ8 against an oracle written here: each input row quantized by the documented rule (as for int8),
 *   each block's integer dot product exact (BigInt), times its f16 scale, summed exactly; the kernel's f64
 *   steps are all exact when the scales lie in [2^-8, 2^-4) (every partial sum a multiple of 2^-18 below
 *   2^35), so it must give the oracle's bits there, on both kernel modules, in one call or split in 3 or 8;
 *   with scales of any f16 size it stays within f64 rounding of the exact sum, then float32's; and where f64
 *   does round (large scales' products cancelling against the offset term), both modules and every split
 *   still give the same bits (their i32 lanes hold the same bytes, summed in the same order).
 * - the layout: a GGUF Q8_0 file (the project's writer) reaches the wasm memory with its int8 values and
 *   scales unchanged, and the embedding kernel reads its rows back exactly; float weights are quantized
 *   as ggml's quantize_row_q8_0 does (an implementation of that rule written here).
 * - rows that are not whole blocks of 32 are refused, naming the tensor.
 */
import { Arena } from "../wasm/arena.ts";
import { hasRelaxedSimd, instantiate, type KernelFlavor, kernelModule } from "../wasm/kernels.ts";
import { WasmExecutor, wasmUnsupportedReason } from "../wasm/mod.ts";
import { CONTROL_BYTES } from "../wasm/pool_protocol.ts";
import { layoutQ8, Q8_BLOCK } from "../wasm/q8_0.ts";
import { type Matrix, uploadWeights } from "../wasm/weights.ts";
import { fixtureWeights, loadWeightsOnly, maxAbsDiff } from "../fixtures/testing.ts";
import { CpuExecutor } from "../core/cpu/executor.ts";
import { JudgeQError } from "../core/errors.ts";
import { type ModelWeights, projectionMatrices } from "../core/weights.ts";
import { GGML_TYPE } from "../core/gguf/ggml_types.ts";
import { syntheticVocab } from "../core/gguf/hf_vocab.ts";
import { writeGguf } from "../core/gguf/model_writer.ts";
import { deinterleaveRows, ggufTensorName } from "../core/gguf/model_weights.ts";
import { parseGguf, tensorBytes } from "../core/gguf/reader.ts";
import { parseGgufBytes } from "../io/from_bytes.ts";
import { assert, assertEquals, assertRejects, seededFloats } from "./helpers.ts";
import { type GemmCase, quantizeInput } from "./wasm_gemm_oracle.ts";

const why = wasmUnsupportedReason();
const opts = { ignore: why !== null, sanitizeResources: false, sanitizeOps: false };

/** 2^24 x an f16 value: an integer for every f16 (the smallest step is 2^-24). */
const SCALE_UNITS = 2n ** 24n;

const CASES: GemmCase[] = [
  { M: 1, N: 7, K: 32, bias: true, acc: true }, // decode's matvec; one block; N not a multiple of 3 or 4
  { M: 2, N: 12, K: 64, bias: false, acc: false },
  { M: 5, N: 11, K: 96, bias: true, acc: false },
  { M: 19, N: 16, K: 64, bias: false, acc: true }, // more rows than one quantized block (16)
  { M: 3, N: 10, K: 2048, bias: true, acc: true },
];

/** f16 values: exponents from 2^lo to below 2^hi, random 10-bit fractions. */
function halfScales(rand: () => number, count: number, lo: number, hi: number): Float32Array {
  return Float32Array.from({ length: count }, () => {
    const e = lo + Math.floor(Math.abs(rand()) * (hi - lo));
    const frac = Math.floor(Math.abs(rand()) * 1024);
    return Math.fround((1 + frac / 1024) * 2 ** e);
  });
}

/** Runs gemmQ8 on one flavor over `chunks` chunks, and the oracle; returns both and the exact sums. */
/**
 * Scales: "exact" in [2^-8, 2^-4) (every f64 step exact), "wide" any f16 size, "cancel" 2^15 for even
 * blocks and 2^-20 for odd ones, with the inputs of even blocks zero: the large x'-products cancel against
 * the offset term only after f64 has rounded the small ones, so each output depends on which products
 * share an f64 lane and in what order they were added.
 */
type Scales = "exact" | "wide" | "cancel";

async function runGemm(flavor: KernelFlavor, c: GemmCase, seed: number, chunks: number, scales: Scales) {
  const rand = seededFloats(seed), { M, N, K } = c, kb = K / Q8_BLOCK;
  const x = Float32Array.from({ length: M * K }, () => rand() * 3);
  if (M > 2) x.fill(0, K, 2 * K); // an all-zero row: scale 1
  x[0] = 40; // an outlier, as activations have
  if (M > 1) x.fill(5, K, 2 * K); // every x' = 2^21 - 1: each digit 127
  const q = Int8Array.from({ length: N * K }, () => Math.round(rand() * 127.5 - 0.5));
  q.fill(-128, 0, K); // row 0 all -128: with the row of 127-digits, the i32 lanes' extreme
  const d = scales === "cancel"
    ? Float32Array.from({ length: N * kb }, (_, i) => i % 2 ? 2 ** -20 * (1 + (i % 7) / 8) : 2 ** 15)
    : halfScales(rand, N * kb, scales === "wide" ? -14 : -8, scales === "wide" ? 5 : -4);
  if (scales === "cancel") {
    for (let i = 0; i < M * K; i++) if (Math.floor(i % K / Q8_BLOCK) % 2 === 0) x[i] = 0;
  }
  const bias = c.bias ? Float32Array.from({ length: N }, () => rand()) : null;
  const y0 = c.acc ? Float32Array.from({ length: M * N }, () => rand()) : null;

  const l = layoutQ8({ rows: N, cols: K, q, d });
  const arena = new Arena(CONTROL_BYTES);
  const k = instantiate(await kernelModule(flavor), arena.memory);
  const f32 = (v: Float32Array) => {
    const at = arena.alloc(v.length * 4);
    arena.f32.set(v, at / 4);
    return at;
  };
  const xa = f32(x), wa = arena.alloc(l.bytes.length), sa = f32(l.scales), oa = arena.alloc(N * 8);
  new Int8Array(arena.memory.buffer, wa, l.bytes.length).set(l.bytes);
  new Float64Array(arena.memory.buffer, oa, N).set(l.offsets);
  const ba = bias ? f32(bias) : 0, ya = f32(y0 ?? new Float32Array(M * N));
  const stride = 16 * 4 + 16 * 3 * K, scratch = arena.alloc(chunks * stride);
  for (let t = 0; t < chunks; t++) {
    k.gemmQ8(xa, wa, sa, oa, ba, ya, M, N, K, N, c.acc ? 1 : 0, scratch, stride, 0, t, chunks);
  }
  const got = arena.f32.slice(ya / 4, ya / 4 + M * N);

  // The oracle: exact block sums in units of 2^-24, rounded once to f64, scaled by s_x, then float32.
  const want = new Float32Array(M * N), slack = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    const { s, xq } = quantizeInput(x.subarray(m * K, (m + 1) * K));
    for (let n = 0; n < N; n++) {
      let sum = 0n, magnitude = 0;
      for (let b = 0; b < kb; b++) {
        let dot = 0, shifted = 0; // exact: |dot| < 2^33
        for (let i = b * Q8_BLOCK; i < (b + 1) * Q8_BLOCK; i++) {
          dot += q[n * K + i] * xq[i];
          shifted += q[n * K + i] * (xq[i] + 2 ** 20);
        }
        sum += BigInt(dot) * BigInt(d[n * kb + b] * Number(SCALE_UNITS));
        // The kernel sums the x' products, then takes 2^20 sum_b d_b (sum of weights) = the difference out.
        magnitude += Math.abs(shifted * d[n * kb + b]) + Math.abs((shifted - dot) * d[n * kb + b]);
      }
      let r = Math.fround((Number(sum) / Number(SCALE_UNITS)) * s);
      if (bias) r = Math.fround(r + bias[n]);
      if (y0) r = Math.fround(r + y0[m * N + n]);
      want[m * N + n] = r;
      // Where an f64 step rounds: at most 2^-52 of the magnitudes summed, per block and once more.
      slack[m * N + n] = (kb + 2) * 2 ** -52 * magnitude * s;
    }
  }
  return { got, want, slack };
}

const flavors: KernelFlavor[] = why || !hasRelaxedSimd() ? ["simd"] : ["relaxed", "simd"];
if (!why && !hasRelaxedSimd()) {
  console.warn("wasm_q8_0_test: no relaxed SIMD here, the fallback alone is checked");
}

for (const flavor of flavors) {
  Deno.test({
    ...opts,
    name: `wasm q8_0 GEMM (${flavor}): the exact block sums' bits, in one call or split in 3 or 8`,
    fn: async () => {
      for (const [i, c] of CASES.entries()) {
        for (const chunks of [1, 3, 8]) {
          const { got, want } = await runGemm(flavor, c, 31 + i, chunks, "exact");
          const label = `${JSON.stringify(c)} chunks ${chunks}`;
          for (let j = 0; j < got.length; j++) {
            assert(Object.is(got[j], want[j]), `${label}: y[${j}] ${got[j]} != oracle ${want[j]}`);
          }
        }
      }
    },
  });
}

Deno.test({
  ...opts,
  name: "wasm q8_0 GEMM: any f16 scales, within f64 rounding of the exact sum, the same bits on both modules",
  fn: async () => {
    for (const [i, c] of CASES.entries()) {
      const runs = [];
      for (const flavor of flavors) {
        for (const chunks of [1, 3]) runs.push(await runGemm(flavor, c, 77 + i, chunks, "wide"));
      }
      const { got, want, slack } = runs[0];
      for (let j = 0; j < got.length; j++) {
        // float32 rounding of the f64 value (half an ulp, a second half for the bias and y adds) and the slack.
        const ulp = 2 ** (Math.floor(Math.log2(Math.max(Math.abs(want[j]), 2 ** -126))) - 23);
        const tol = 2 * ulp + slack[j];
        assert(Math.abs(got[j] - want[j]) <= tol, `${JSON.stringify(c)}: y[${j}] ${got[j]} vs ${want[j]}`);
      }
      for (const r of runs.slice(1)) {
        r.got.forEach((v, j) => assert(Object.is(v, got[j]), `${JSON.stringify(c)}: y[${j}] differs`));
      }
    }
  },
});

Deno.test({
  ...opts,
  name: "wasm q8_0 GEMM: where f64 rounds and cancels, still the same bits on both modules and splits",
  fn: async () => {
    let rounded = 0;
    for (const [i, c] of CASES.filter((c) => c.K >= 64).entries()) {
      const runs = [];
      for (const flavor of flavors) {
        for (const chunks of [1, 3]) runs.push(await runGemm(flavor, c, 91 + i, chunks, "cancel"));
      }
      const { got, want } = runs[0];
      rounded += got.filter((v, j) => Math.abs(v - want[j]) > 1e-6 * Math.abs(want[j])).length;
      for (const r of runs.slice(1)) {
        r.got.forEach((v, j) => assert(Object.is(v, got[j]), `${JSON.stringify(c)}: y[${j}] differs`));
      }
    }
    // The cases must really round: outputs away from the exact value by more than float32's step.
    assert(rounded > 0, "no f64 rounding seen");
  },
});

// ---- the layout in memory ----

/** Row n's values and block scales read back from a q8_0 matrix in memory, by the documented layout. */
function readRow(arena: Arena, m: Matrix, n: number): { q: Int8Array; d: Float32Array } {
  const K = m.cols, kb = K / Q8_BLOCK, n3 = m.rows - m.rows % 3, mem = new Int8Array(arena.memory.buffer);
  const q = new Int8Array(K), d = new Float32Array(kb);
  const g = n - n % 3, r = n % 3;
  for (let k = 0; k < K; k++) {
    const at = n < n3 ? m.at + g * K + 48 * Math.floor(k / 16) + 16 * r + (k % 16) : m.at + n * K + k;
    q[k] = mem[at];
  }
  for (let b = 0; b < kb; b++) {
    d[b] = arena.f32[m.scales / 4 + (n < n3 ? g * kb + 3 * b + r : n * kb + b)];
  }
  return { q, d };
}

/** The executor's matrices by HF name, in projectionMatrices' order. */
function matricesOf(w: ModelWeights, up: ReturnType<typeof uploadWeights>): [string, Matrix][] {
  const names = projectionMatrices(w).map(([name]) => name);
  const ms: Matrix[] = [up.embed];
  for (const l of up.layers) ms.push(l.wq, l.wk, l.wv, l.wo, l.wGate, l.wUp, l.wDown);
  if (up.lmHead !== up.embed) ms.push(up.lmHead);
  return names.map((n, i) => [n, ms[i]]);
}

Deno.test({
  ...opts,
  name: "wasm q8_0: a GGUF Q8_0 file's values and scales reach the wasm memory unchanged, embeddings exactly",
  fn: async () => {
    // llama3's q/k rows are interleaved in the file (GGUF's RoPE order) and come back in HF order.
    const src = fixtureWeights("llama3");
    const bytes = writeGguf(src, syntheticVocab(src.config.vocabSize), { tensorType: "q8_0" });
    const file = parseGguf(bytes);
    if (file._tag === "Left") throw file.left;
    // Blocks ggml's rule would not write (every value halved, so none is +-127): re-quantizing the
    // dequantized values would change them, keeping them as stored does not.
    const up = tensorBytes(file.right, bytes, file.right.tensors.get("blk.1.ffn_up.weight")!);
    for (let b = 0; b < 4; b++) {
      for (let k = 0; k < 32; k++) up[b * 34 + 2 + k] = ((up[b * 34 + 2 + k] << 24) >> 25) & 0xff;
    }
    const g = await parseGgufBytes(bytes, "q8.gguf");
    const w = g.weights, c = w.config;
    const arena = new Arena(CONTROL_BYTES);
    const stored = uploadWeights(arena, w, "q8_0");
    let checked = 0;
    for (const [name, m] of matricesOf(w, stored)) {
      const info = file.right.tensors.get(ggufTensorName(name)!)!;
      assertEquals(info.ggmlType, GGML_TYPE.Q8_0, name);
      let raw = tensorBytes(file.right, bytes, info);
      const heads = name.endsWith("q_proj.weight")
        ? c.nHeads
        : name.endsWith("k_proj.weight")
        ? c.nKvHeads
        : 0;
      if (heads) raw = deinterleaveRows(raw, heads, c.headDim, raw.length / m.rows);
      const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength), kb = m.cols / Q8_BLOCK;
      for (let n = 0; n < m.rows; n++) {
        const { q, d } = readRow(arena, m, n);
        for (let b = 0; b < kb; b++) {
          const o = (n * kb + b) * 34;
          assert(Object.is(d[b], view.getFloat16(o, true)), `${name} row ${n} block ${b}: scale ${d[b]}`);
          for (let k = 0; k < 32; k++) {
            const v = view.getInt8(o + 2 + k);
            assert(q[b * 32 + k] === v, `${name} row ${n} value ${b * 32 + k}: ${q[b * 32 + k]} != ${v}`);
          }
        }
      }
      checked++;
    }
    assertEquals(checked, 1 + 7 * c.nLayers + 1, "every matrix (llama3's LM head is untied)");
    // The embedding kernel: rows in whole groups and the last two (512 = 3 x 170 + 2), as q x d exactly.
    const k = instantiate(await kernelModule(), arena.memory);
    const tokens = [0, 1, 2, 4, 299, 509, 510, 511], tok = arena.alloc(tokens.length * 4);
    arena.i32.set(tokens, tok / 4);
    const out = arena.alloc(tokens.length * c.dim * 4);
    k.embedQ8(stored.embed.at, stored.embed.scales, tok, out, tokens.length, c.dim, c.vocabSize, 0, 1);
    tokens.forEach((t, i) => {
      const got = arena.f32.subarray(out / 4 + i * c.dim, out / 4 + (i + 1) * c.dim);
      const want = w.embed.subarray(t * c.dim, (t + 1) * c.dim); // the reader's dequantized values
      assert(got.every((v, j) => Object.is(v, want[j])), `embedding row ${t}`);
    });
  },
});

Deno.test({
  ...opts,
  name:
    "wasm q8_0: a GGUF Q8_0 model runs as q8_0 by default, as the reference runs its dequantized values (1e-3)",
  fn: async () => {
    const src = fixtureWeights("llama3");
    const bytes = writeGguf(src, syntheticVocab(src.config.vocabSize), { tensorType: "q8_0" });
    const w = (await parseGgufBytes(bytes, "q8.gguf")).weights;
    const x = await WasmExecutor.create(w, { threads: 2, parallelMinWork: 0 }); // "auto": the file's Q8_0
    try {
      assertEquals(x.weights.format, "q8_0", "auto runs a Q8_0 file's layers as stored");
      const toks = [1, ...Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % w.config.vocabSize)];
      const ref = await new CpuExecutor(w).createSession(64).forward({ kind: "tokens", tokens: toks }, {
        logits: "all",
      });
      const got = await x.createSession(64).forward({ kind: "tokens", tokens: toks }, { logits: "all" });
      const d = maxAbsDiff(ref.logits!, got.logits!);
      assert(d < 1e-3, `logits differ by ${d}`);
    } finally {
      x.dispose();
    }
  },
});

/** ggml's quantize_row_q8_0, as its C reference computes it: a block's d and values. */
function ggmlBlock(x: Float32Array): { d: number; q: number[] } {
  let amax = 0;
  for (const v of x) amax = Math.max(amax, Math.abs(v));
  const d = Math.fround(amax / 127), id = d !== 0 ? Math.fround(1 / d) : 0;
  const roundf = (v: number) => Math.sign(v) * Math.floor(Math.abs(v) + 0.5); // halfway away from zero
  return {
    d: new Float16Array([d])[0], // stored as f16, rounded to nearest even
    q: Array.from(x, (v) => roundf(Math.fround(v * id))),
  };
}

Deno.test({
  ...opts,
  name: "wasm q8_0: float weights quantized as ggml's quantize_row_q8_0 (d = max |x| / 127 as f16)",
  fn: () => {
    const w = fixtureWeights("qwen2");
    // Halfway cases and an all-zero block: 127 / 127 x 0.5 steps round away from zero.
    w.layers[0].wq.set(Float32Array.from({ length: 32 }, (_, i) => (i - 16) * 0.5), 0);
    w.layers[0].wq.fill(0, 32, 64);
    const arena = new Arena(CONTROL_BYTES);
    const up = uploadWeights(arena, w, "q8_0");
    for (const [name, m] of matricesOf(w, up)) {
      const src = projectionMatrices(w).find(([n]) => n === name)![1], kb = m.cols / Q8_BLOCK;
      for (let n = 0; n < m.rows; n++) {
        const { q, d } = readRow(arena, m, n);
        for (let b = 0; b < kb; b++) {
          const at = n * m.cols + b * Q8_BLOCK, want = ggmlBlock(src.subarray(at, at + Q8_BLOCK));
          assert(Object.is(d[b], want.d), `${name} row ${n} block ${b}: d ${d[b]} != ${want.d}`);
          for (let k = 0; k < Q8_BLOCK; k++) {
            assert(q[b * Q8_BLOCK + k] === want.q[k], `${name} row ${n} value ${b * Q8_BLOCK + k}`);
          }
        }
      }
    }
  },
});

Deno.test({
  ...opts,
  name: "wasm q8_0: rows that are not whole blocks of 32 are refused, naming the tensor and `weights`",
  fn: async () => {
    const w = await loadWeightsOnly(); // stories260K: hidden 172
    const e = await assertRejects(
      () => WasmExecutor.create(w, { threads: 1, weightFormat: "q8_0" }),
      "model.layers.0.mlp.down_proj.weight",
      "172",
    );
    assert(e instanceof JudgeQError && e.param === "weights", e.message);
  },
});
