/**
 * The fast CPU executor (WebAssembly SIMD on worker threads). `wasmUnsupportedReason` says whether this
 * runtime can run it; `WasmExecutor.create` builds one for a model.
 */
export { checkThreads, defaultThreads, WasmExecutor, type WasmExecutorOptions } from "./executor.ts";
export { unsupportedReason as wasmUnsupportedReason } from "./kernels.ts";
export { WasmQueryRows, WasmSession } from "./session.ts";
export { resolveWeightFormat, roundProjectionsToInt8 } from "./weights.ts";
export { q8BlockError, roundProjectionsToQ8_0 } from "./q8_0.ts";
