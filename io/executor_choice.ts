/**
 * Which executor runs a model. The choices (`--executor`):
 *   auto       WebGPU on a hardware adapter; else the native executor (ggml through FFI) where FFI is
 *              permitted and ggml loads; else the WebAssembly executor; else the CPU reference; each
 *              fallback said in one line with its reason. Models under NATIVE_MIN_PARAMETERS (the embedded
 *              stories260K) take the WebAssembly executor first: it is the faster one there
 *   gpu        WebGPU (any adapter, software ones included); an error naming `executor` without one
 *   native     ggml's CPU kernels through Deno FFI; an error naming `executor` where they cannot load
 *   wasm       the WebAssembly executor; an error naming `executor` where the runtime cannot run it
 *   cpu        the CPU reference (plain TypeScript, float32; the oracle every executor is tested against)
 *   reference  the same as cpu
 * Software WebGPU adapters (llvmpipe, lavapipe, SwiftShader, WARP) run on the CPU, slower than the
 * WebAssembly executor, so `auto` passes them over.
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import { fail, JudgeQError } from "../core/errors.ts";
import type { Executor } from "../core/executor.ts";
import { type ModelWeights, parameterCount } from "../core/weights.ts";
import {
  choiceList,
  GPU_WEIGHT_CHOICES,
  isChoice,
  type NativeWeightFormat,
  WASM_WEIGHT_CHOICES,
  type WeightFormatChoice,
} from "../core/weight_formats.ts";
import { gpuAvailable, GpuExecutor } from "../gpu/mod.ts";
import { checkThreads, q8BlockError, WasmExecutor, wasmUnsupportedReason } from "../wasm/mod.ts";

/** KV cache storage of the native executor. */
export type KvType = "f32" | "f16";

/** What this module uses of native/mod.ts (ggml through Deno FFI), loaded only where FFI exists. */
interface NativeApi {
  nativeUnsupportedReason(): Promise<string | null>;
  NativeExecutor: {
    create(
      w: ModelWeights,
      o: { threads?: number; weightFormat?: NativeWeightFormat; kvType?: KvType; warn?: (m: string) => void },
    ): Promise<Executor>;
  };
}

/**
 * The native executor's module, imported on first use: browsers and edge runtimes (no Deno.dlopen) never
 * load it, and bundles do not carry it (the specifier is a variable on purpose).
 */
const NATIVE_MODULE = "../native/mod.ts";
let nativeApi: Promise<NativeApi | string> | null = null;
function loadNative(): Promise<NativeApi | string> {
  return nativeApi ??= (async () => {
    const d = (globalThis as { Deno?: { dlopen?: unknown } }).Deno;
    if (typeof d?.dlopen !== "function") return "FFI is not available in this runtime";
    try {
      return await import(NATIVE_MODULE) as NativeApi;
    } catch (e) {
      return `the native executor's module did not load: ${(e as Error).message}`;
    }
  })();
}

/** Why the native executor cannot run here, or null when ggml loads. */
export async function nativeUnsupportedReason(): Promise<string | null> {
  const api = await loadNative();
  return typeof api === "string" ? api : await api.nativeUnsupportedReason();
}

export const EXECUTOR_CHOICES = ["auto", "gpu", "native", "wasm", "cpu", "reference"] as const;
export type ExecutorChoice = typeof EXECUTOR_CHOICES[number];

// Weight formats (core/weight_formats.ts): int8 on the native executor is ggml's Q8_0 (a scale per block
// of 32); `auto` skips WebGPU for the formats it does not store.

export interface ExecutorOptions {
  /** Threads of the fast CPU executor, the calling one included (default: the cores available). */
  threads?: number;
  /**
   * Weight storage (default auto: WebGPU f16 where the adapter has shader-f16, the fast CPU executor
   * f32). The CPU reference always computes in f32 and ignores it.
   */
  weightFormat?: WeightFormatChoice;
  /** KV cache storage of the native executor (default f32). */
  kvType?: KvType;
  /** Where fallback warnings go (console.warn by default). */
  warn?: (message: string) => void;
  /** Why the native executor cannot run (default: nativeUnsupportedReason); for tests. */
  nativeReason?: () => Promise<string | null>;
  /** The adapter `auto` judges (default: navigator.gpu's high-performance adapter); for tests. */
  requestAdapter?: () => Promise<GPUAdapter | null>;
}

export const isExecutorChoice = (v: unknown): v is ExecutorChoice =>
  (EXECUTOR_CHOICES as readonly unknown[]).includes(v);

/** What an adapter says about itself: `adapter.info`, plus the older `adapter.isFallbackAdapter`. */
export interface AdapterIdentity {
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  isFallbackAdapter?: boolean;
}

const SOFTWARE = /llvmpipe|lavapipe|swiftshader|software|basic render driver|\bwarp\b|\bcpu\b/i;

/** Why an adapter runs on the CPU (a software rasteriser), or null for a hardware adapter. */
export function softwareAdapterReason(info: AdapterIdentity): string | null {
  if (info.isFallbackAdapter) return "it is a fallback adapter";
  for (const k of ["vendor", "architecture", "device", "description"] as const) {
    const m = SOFTWARE.exec(info[k] ?? "");
    if (m) return `its ${k} '${info[k]}' names a software renderer (${m[0]})`;
  }
  return null;
}

const defaultAdapter = () =>
  gpuAvailable()
    ? navigator.gpu.requestAdapter({ powerPreference: "high-performance" }).catch(() => null)
    : Promise.resolve(null);

/** Null when a hardware WebGPU adapter exists, else why not ("no WebGPU adapter", "llvmpipe ..."). */
export async function hardwareGpuUnavailableReason(
  requestAdapter: () => Promise<GPUAdapter | null> = defaultAdapter,
): Promise<string | null> {
  const adapter = await requestAdapter();
  if (!adapter) return gpuAvailable() ? "no WebGPU adapter" : "WebGPU is not available in this runtime";
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const legacy = (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter;
  const why = softwareAdapterReason({
    vendor: info.vendor,
    architecture: info.architecture,
    device: info.device,
    description: info.description,
    isFallbackAdapter: info.isFallbackAdapter || legacy === true,
  });
  return why ? `the WebGPU adapter is a software one: ${why}` : null;
}

/**
 * Below this many parameters `auto` takes the WebAssembly executor over the native one: ggml synchronises its
 * threads after every op, which costs more than such small matrices take (`deno task bench --models
 * stories260K`: see README, Performance).
 */
export const NATIVE_MIN_PARAMETERS = 10_000_000;

async function gpu(weights: ModelWeights, o: ExecutorOptions): Promise<Executor> {
  const weightFormat = o.weightFormat ?? "auto";
  if (!isChoice(GPU_WEIGHT_CHOICES, weightFormat)) {
    throw fail(
      "invalid_request",
      `${weightFormat} weights are for the CPU executors (native, wasm); WebGPU takes ${
        choiceList(GPU_WEIGHT_CHOICES)
      }`,
      "weights",
    );
  }
  try {
    return await GpuExecutor.create(weights, { weightFormat });
  } catch (e) {
    throw fail("internal", `WebGPU executor unavailable: ${(e as Error).message}`, "executor");
  }
}

/** The native format of a choice: auto is f32, int8 is ggml's Q8_0 (8 bits, a scale per 32 values). */
const nativeFormat = (choice: WeightFormatChoice | undefined): NativeWeightFormat =>
  choice === undefined || choice === "auto" ? "f32" : choice === "int8" ? "q8_0" : choice;

async function native(weights: ModelWeights, o: ExecutorOptions): Promise<Executor> {
  const why = await (o.nativeReason ?? nativeUnsupportedReason)();
  if (why) throw fail("internal", `the native executor (ggml) cannot run here: ${why}`, "executor");
  const api = await loadNative();
  if (typeof api === "string") {
    throw fail("internal", `the native executor (ggml) cannot run here: ${api}`, "executor");
  }
  return api.NativeExecutor.create(weights, {
    threads: o.threads,
    weightFormat: nativeFormat(o.weightFormat),
    kvType: o.kvType,
    warn: o.warn,
  });
}

/** The WebAssembly executor's format of a choice, or an error naming `weights`. */
function wasmFormat(o: ExecutorOptions) {
  const weightFormat = o.weightFormat ?? "auto";
  if (!isChoice(WASM_WEIGHT_CHOICES, weightFormat)) {
    throw fail(
      "invalid_request",
      `${weightFormat} weights are for the native executor; the WebAssembly executor takes ${
        choiceList(WASM_WEIGHT_CHOICES)
      }`,
      "weights",
    );
  }
  return weightFormat;
}

function wasm(weights: ModelWeights, o: ExecutorOptions): Promise<Executor> {
  const weightFormat = wasmFormat(o);
  const why = wasmUnsupportedReason();
  if (why) {
    throw fail("internal", `the fast CPU executor (wasm) cannot run in this runtime: ${why}`, "executor");
  }
  return WasmExecutor.create(weights, { threads: o.threads, weightFormat });
}

/** The executor for a choice; see the module comment. `auto` never fails for want of a backend. */
export async function chooseExecutor(
  weights: ModelWeights,
  choice: ExecutorChoice = "auto",
  o: ExecutorOptions = {},
): Promise<Executor> {
  if (!isExecutorChoice(choice)) {
    throw fail(
      "invalid_request",
      `expected ${EXECUTOR_CHOICES.join(", ")}, got '${choice}'`,
      "executor",
    );
  }
  if (o.threads !== undefined) checkThreads(o.threads);
  switch (choice) {
    case "gpu":
      return await gpu(weights, o);
    case "native":
      return await native(weights, o);
    case "wasm":
      return await wasm(weights, o);
    case "cpu":
    case "reference":
      return new CpuExecutor(weights);
  }
  const warn = o.warn ?? console.warn;
  const format = o.weightFormat ?? "auto";
  if (isChoice(GPU_WEIGHT_CHOICES, format)) {
    const noGpu = await hardwareGpuUnavailableReason(o.requestAdapter);
    if (noGpu === null) {
      try {
        return await GpuExecutor.create(weights, { weightFormat: format });
      } catch (e) {
        warn(`WebGPU unavailable (${(e as Error).message}): trying the native executor`);
      }
    }
  }
  // q8_0 on wasm needs rows of whole blocks (native keeps other rows f16): such a model goes native.
  const tiny = parameterCount(weights) < NATIVE_MIN_PARAMETERS && wasmUnsupportedReason() === null &&
    isChoice(WASM_WEIGHT_CHOICES, format) && !(format === "q8_0" && q8BlockError(weights));
  const noNative = tiny ? null : await (o.nativeReason ?? nativeUnsupportedReason)();
  if (tiny) {
    // Not a fallback: the WebAssembly executor is the faster one for such small models.
  } else if (noNative === null) {
    try {
      return await native(weights, o);
    } catch (e) {
      if (e instanceof JudgeQError && (e.param === "threads" || e.param === "weights")) throw e;
      warn(`the native executor failed to start (${(e as Error).message}): trying the WebAssembly executor`);
    }
  } else {
    warn(`the native executor cannot run here (${noNative}): using the WebAssembly executor`);
  }
  const weightFormat = wasmFormat(o);
  const why = wasmUnsupportedReason();
  if (why) {
    warn(`the fast CPU executor (wasm) cannot run in this runtime (${why}): using the slower CPU reference`);
    return new CpuExecutor(weights);
  }
  try {
    return await WasmExecutor.create(weights, { threads: o.threads, weightFormat });
  } catch (e) {
    // A bad thread count or weight format is the caller's to fix, not a reason to fall back.
    if (e instanceof JudgeQError && (e.param === "threads" || e.param === "weights")) throw e;
    warn(`the fast CPU executor (wasm) failed to start (${(e as Error).message}): using the CPU reference`);
    return new CpuExecutor(weights);
  }
}
