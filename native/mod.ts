/**
 * The native executor (ggml through Deno FFI):
 *   library.ts  finding and opening ggml's prebuilt libraries, the symbols used
 *   graph.ts    building one graph (ops, inputs, outputs) and computing it
 *   weights.ts  the model's matrices on the backend (f32, f16, Q8_0, Q4_0)
 *   kv_cache.ts the per-KV-head cache
 *   session.ts  forward, scoring, pruning, snapshots
 *   runtime.ts  what an executor's sessions share
 *   executor.ts the Executor
 */
export { NativeExecutor, type NativeExecutorOptions } from "./executor.ts";
export { GGML_PACKAGE_VERSION, loadGgml, nativeUnsupportedReason } from "./library.ts";
export { roundToNativeFormat } from "./weights.ts";
export { NATIVE_WEIGHT_FORMATS, type NativeWeightFormat } from "../core/weight_formats.ts";
export type { KvType } from "./kv_cache.ts";
