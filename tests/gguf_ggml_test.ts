/**
 * The ggml block formats against ggml itself: libggml-base from node-llama-cpp 3.21.1's prebuilt binaries,
 * called through Deno FFI. Our Q8_0 / Q4_0 quantizers give quantize_row_q8_0_ref / _q4_0_ref's bytes bit
 * for bit, and our dequantizers give dequantize_row_{q8_0,q4_0,q4_K,q6_K}'s floats bit for bit on blocks
 * ggml quantized (Q4_K and Q6_K by quantize_row_q4_K_ref / _q6_K_ref).
 *
 * Runs wherever the native executor finds ggml's prebuilt library (npm @node-llama-cpp/<platform>, fetched by
 * Deno's npm support: CI included) on linux-x64; otherwise ignored, saying why.
 */
import { GGML_TYPE } from "../core/gguf/ggml_types.ts";
import { dequantize, quantizeQ4_0, quantizeQ8_0 } from "../core/gguf/quants.ts";
import { mulberry32 } from "../core/random.ts";
import { ggmlBinsDir } from "../native/library.ts";
import { assertEquals } from "./helpers.ts";

// ggml's prebuilt library, where the native executor finds it (npm @node-llama-cpp/<platform>, through Deno's npm).
const LIB = await ggmlBinsDir().then((d) => `${d}/libggml-base.so`).catch(() => "");
const sig = { parameters: ["buffer", "buffer", "i64"], result: "void" } as const;
const SYMBOLS = {
  quantize_row_q8_0_ref: sig,
  quantize_row_q4_0_ref: sig,
  quantize_row_q4_K_ref: sig,
  quantize_row_q6_K_ref: sig,
  dequantize_row_q8_0: sig,
  dequantize_row_q4_0: sig,
  dequantize_row_q4_K: sig,
  dequantize_row_q6_K: sig,
} as const;

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | null = null;
let skipReason: string | null = null;
if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") {
  skipReason = "ggml's prebuilt linux-x64 library only";
} else {
  try {
    lib = Deno.dlopen(LIB, SYMBOLS);
  } catch (e) {
    skipReason = `libggml-base.so not loadable (${LIB || "no prebuilt ggml found"}): ${
      (e as Error).message.split("\n")[0]
    }`;
  }
}
if (skipReason) console.log(`gguf_ggml_test: skipping: ${skipReason}`);

/** Rows exercising the rules: random scales per block, exact ties, zeros, a lone extreme, negative maxima. */
function testValues(n: number, seed: number): Float32Array {
  const r = mulberry32(seed);
  const x = new Float32Array(n);
  for (let b = 0; b < n / 32; b++) {
    const scale = [1e-3, 0.02, 1, 7.3, 300][b % 5];
    for (let j = 0; j < 32; j++) {
      const i = b * 32 + j;
      switch (b % 7) {
        case 0:
          x[i] = 0;
          break;
        case 1: // halfway cases of the grid: multiples of 0.5 with max 127 (Q8_0 d = 1)
          x[i] = j === 0 ? 127 : Math.round((r() - 0.5) * 200) / 2;
          break;
        case 2: // max -8 (Q4_0 d = 1) and values x + 0.5 around the truncation points
          x[i] = j === 5 ? -8 : Math.round((r() - 0.5) * 16) + 0.5;
          break;
        default:
          x[i] = (r() - 0.5) * 2 * scale * (j === 31 && b % 3 === 0 ? 10 : 1);
      }
    }
  }
  return x;
}

const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

Deno.test({
  name: "ggml: Q8_0 and Q4_0 quantizers give quantize_row_*_ref's bytes",
  ignore: lib === null,
  fn: () => {
    const n = 256 * 64;
    for (const seed of [1, 2, 3]) {
      const x = testValues(n, seed);
      const q8 = new Uint8Array((n / 32) * 34), q4 = new Uint8Array((n / 32) * 18);
      lib!.symbols.quantize_row_q8_0_ref(x, q8, BigInt(n));
      lib!.symbols.quantize_row_q4_0_ref(x, q4, BigInt(n));
      assertEquals(Array.from(quantizeQ8_0(x)), Array.from(q8), `Q8_0 seed ${seed}`);
      assertEquals(Array.from(quantizeQ4_0(x)), Array.from(q4), `Q4_0 seed ${seed}`);
    }
  },
});

Deno.test({
  name: "ggml: Q8_0, Q4_0, Q4_K and Q6_K dequantizers give dequantize_row_*'s floats",
  ignore: lib === null,
  fn: () => {
    const n = 256 * 32;
    const x = testValues(n, 9);
    const cases = [
      [GGML_TYPE.Q8_0, 34 / 32, "q8_0"],
      [GGML_TYPE.Q4_0, 18 / 32, "q4_0"],
      [GGML_TYPE.Q4_K, 144 / 256, "q4_K"],
      [GGML_TYPE.Q6_K, 210 / 256, "q6_K"],
    ] as const;
    for (const [type, perValue, name] of cases) {
      const q = new Uint8Array(n * perValue);
      lib!.symbols[`quantize_row_${name}_ref`](x, q, BigInt(n));
      const want = new Float32Array(n);
      lib!.symbols[`dequantize_row_${name}`](q, bytes(want), BigInt(n));
      const got = dequantize(type, q, n);
      let diff = 0;
      for (let i = 0; i < n; i++) if (!Object.is(got[i], want[i])) diff++;
      assertEquals(diff, 0, `${name}: values differing from ggml's`);
    }
  },
});

globalThis.addEventListener("unload", () => lib?.close());
