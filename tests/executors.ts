/**
 * The executors the contract suite (tests/executor_contract_test.ts) runs against the CPU reference.
 * This list is the only place they are named: to test a new executor, append an entry whose `create`
 * returns the executor for the given weights, or a sentence saying why it cannot run here (its tests are
 * then skipped with that message).
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import { JudgeQError } from "../core/errors.ts";
import type { Executor } from "../core/executor.ts";
import { type ModelWeights, roundProjectionsToF16 } from "../core/weights.ts";
import { gpuAvailable } from "../gpu/device.ts";
import { GpuExecutor } from "../gpu/executor.ts";
import {
  roundProjectionsToInt8,
  roundProjectionsToQ8_0,
  WasmExecutor,
  type WasmExecutorOptions,
  wasmUnsupportedReason,
} from "../wasm/mod.ts";
import { q8BlockError } from "../wasm/q8_0.ts";
import { NativeExecutor, type NativeExecutorOptions, nativeUnsupportedReason } from "../native/mod.ts";

export interface ExecutorUnderTest {
  /** "reference", "gpu", ... */
  name: string;
  /** An executor for these weights, or a string saying why it is unavailable here (the tests then skip with that message). */
  create(weights: ModelWeights): Promise<Executor | string>;
  /** The weights it runs, when not the model's own (f16-rounded, say); the oracle then runs them too. */
  weights?(weights: ModelWeights): ModelWeights;
  /** Looser tolerances than 1e-3 on logits and 1e-4 on attention mass and key norms, with the reason. */
  tolerance?: { logits: number; mass: number; why: string };
}

/**
 * int8 with 21-bit activations: within the contract's own 1e-3 and 1e-4, but rounded activations move key
 * norms and masses enough to rank near ties differently, so suites that compare kept positions exactly
 * (decode_compression_test) compare their counts for it, as for any entry with a tolerance.
 */
const INT8_TOLERANCE = {
  logits: 1e-3,
  mass: 1e-4,
  why: "activations rounded to 21 bits in the integer dot products: near ties may rank differently",
};

export const EXECUTORS_UNDER_TEST: ExecutorUnderTest[] = [
  {
    // The oracle itself: it must pass trivially, which checks the suite's own assumptions.
    name: "reference",
    create: (weights) => Promise.resolve(new CpuExecutor(weights)),
  },
  {
    name: "gpu",
    create: async (weights) => {
      if (!gpuAvailable()) return "WebGPU is not available in this runtime";
      const adapter = await navigator.gpu.requestAdapter().catch(() => null);
      if (!adapter) return "no WebGPU adapter";
      try {
        // f32 weights: "auto" may pick f16 where the adapter has shader-f16, and the reference is f32.
        return await GpuExecutor.create(weights, { weightFormat: "f32" });
      } catch (e) {
        // No usable device, or a model shape the kernels do not support: a skip. Anything else is a failure.
        if (e instanceof JudgeQError && e.kind === "invalid_adapter") return e.message;
        throw e;
      }
    },
  },
  {
    // The fast CPU executor as a user gets it: small models run on the calling thread alone.
    name: "wasm",
    create: (weights) => wasmOrReason(weights, { threads: 2 }),
  },
  {
    // Every step split over 3 threads in chunks, however small: the thread pool's own check.
    name: "wasm-threads",
    create: (weights) => wasmOrReason(weights, { threads: 3, parallelMinWork: 0 }),
  },
  {
    name: "wasm-f16",
    weights: roundProjectionsToF16,
    create: (weights) => wasmOrReason(weights, { threads: 2, weightFormat: "f16" }),
  },
  {
    name: "wasm-int8",
    // The oracle runs the int8-rounded weights; the integer dot products round each activation row to 21 bits
    // (2.4e-7 of its largest value; 14 bits failed the contract).
    weights: roundProjectionsToInt8,
    tolerance: INT8_TOLERANCE,
    create: (weights) => wasmOrReason(weights, { threads: 2, weightFormat: "int8", parallelMinWork: 0 }),
  },
  {
    // The plain-SIMD fallback (engines without relaxed SIMD), forced: unfused multiply-adds, and the int8
    // dot products widened to 16 bits (the same integers as relaxed SIMD's).
    name: "wasm-simd-int8",
    weights: roundProjectionsToInt8,
    tolerance: INT8_TOLERANCE,
    create: (weights) =>
      wasmOrReason(weights, { threads: 2, weightFormat: "int8", parallelMinWork: 0, kernels: "simd" }),
  },
  {
    // ggml's blocks of 32 with a scale each; the oracle runs the weights dequantized (q x d). The same
    // 21-bit activations as int8, so its tolerance. stories260K's hidden size (172) is not whole blocks:
    // that model is skipped with the refusal's message.
    name: "wasm-q8_0",
    weights: roundProjectionsToQ8_0,
    tolerance: INT8_TOLERANCE,
    create: (weights) => wasmOrBlocks(weights, { threads: 2, weightFormat: "q8_0", parallelMinWork: 0 }),
  },
  {
    // q8_0 on the plain-SIMD fallback, forced (its GEMM gives relaxed SIMD's bits; the other kernels do not).
    name: "wasm-simd-q8_0",
    weights: roundProjectionsToQ8_0,
    tolerance: INT8_TOLERANCE,
    create: (weights) =>
      wasmOrBlocks(weights, { threads: 2, weightFormat: "q8_0", parallelMinWork: 0, kernels: "simd" }),
  },
  {
    // ggml through FFI, f32 weights and cache: the reference's own numbers, to 1e-3 on logits. (f16, Q8_0 and
    // Q4_0 weights round the activations too, f16 or 8-bit blocks: near ties then pick other tokens and
    // positions than the reference, so tests/native_executor_test.ts checks them teacher-forced.) One thread: CI
    // runs test files two at a time on two cores, where spinning ggml threads would wait on each other
    // (tests/native_executor_test.ts checks that 2 and 3 threads give the same logits as one).
    name: "native",
    create: (weights) => nativeOrReason(weights, { threads: 1 }),
  },
];

async function nativeOrReason(weights: ModelWeights, o: NativeExecutorOptions): Promise<Executor | string> {
  return (await nativeUnsupportedReason()) ?? await NativeExecutor.create(weights, o);
}

async function wasmOrReason(weights: ModelWeights, o: WasmExecutorOptions): Promise<Executor | string> {
  return wasmUnsupportedReason() ?? await WasmExecutor.create(weights, o);
}

/** wasmOrReason, with a model whose rows are not whole blocks of 32 (q8_0 refuses it) skipped with the reason. */
async function wasmOrBlocks(weights: ModelWeights, o: WasmExecutorOptions): Promise<Executor | string> {
  const e = q8BlockError(weights);
  return e ? e.message : await wasmOrReason(weights, o);
}
