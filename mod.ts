/**
 * Judge Q Serve: KV-cache compression with trained soft-token queries (Judge Q) and the standard
 * baselines, on WebGPU, a fast CPU executor (WebAssembly SIMD on threads) or the CPU reference, for
 * Llama-family models in Hugging Face format. `executor: "auto"` picks WebGPU on a hardware adapter,
 * else the fast CPU executor, else the CPU reference (see `chooseExecutor`).
 *
 * ```ts
 * import { generateText, loadModel } from "./mod.ts";
 * const model = await loadModel({ executor: "auto" }); // the embedded stories260K
 * const r = await generateText(model, {
 *   prompt: "Once upon a time",
 *   compression: { method: "judgeq", budget: 32 },
 *   maxTokens: 64,
 * });
 * console.log(r.outputs[0].text, r.run.compression.kvBytesAfter);
 * ```
 *
 * Without a filesystem (browsers, edge functions, Deno with no permissions), load from bytes or a URL:
 * `loadModelFromBytes({ config, tokenizer, safetensors: [bytes], adapter, executor: "wasm" })` or
 * `loadModelFromUrl("https://example.com/stories260K/")`.
 * @module
 */
export { type ModelConfig, parseModelConfig } from "./core/config.ts";
export { fail, JudgeQError } from "./core/errors.ts";
export type * from "./core/executor.ts";
export { CpuExecutor } from "./core/cpu/executor.ts";
export {
  answerOnContext,
  compressContext,
  type CompressedContext,
  generateText,
  generateTokens,
  type Model,
  planFor,
  type TextRequest,
  type TextResult,
  tokenizeRequest,
} from "./core/engine.ts";
export {
  compilePlan,
  type CompressionRequest,
  type GenerateRequest,
  type Plan,
  type Step,
} from "./core/plan.ts";
export { compressionSchema } from "./server/schemas.ts";
export { type PlanResult, runOnSession, runPlan } from "./core/interpret.ts";
export { GLOBAL_DEFAULTS, METHOD_NAMES, METHODS } from "./core/methods/registry.ts";
export type { Method, MethodOptions } from "./core/methods/types.ts";
export { type Adapter, checkAdapterFits, decodeAdapter, encodeAdapter } from "./core/adapter.ts";
export { modelFingerprint } from "./core/fingerprint.ts";
export { createTokenizer, type TextTokenizer } from "./core/tokenizer.ts";
export { type ModelWeights } from "./core/weights.ts";
export { EMBEDDED_MODEL_DIR, embeddedModelLocation, loadModelDir } from "./io/model_dir.ts";
export {
  adapterFromBytes,
  type BytesLoadOptions,
  type JsonInput,
  loadModelFromBytes,
  loadModelFromUrl,
  type ModelBytes,
  type ModelFiles,
  parseModelBytes,
  type UrlLoadOptions,
} from "./io/from_bytes.ts";
export { createExecutor, loadModel, type LoadOptions } from "./io/runtime.ts";
export {
  chooseExecutor,
  EXECUTOR_CHOICES,
  type ExecutorChoice,
  type ExecutorOptions,
  hardwareGpuUnavailableReason,
  isExecutorChoice,
  softwareAdapterReason,
} from "./io/executor_choice.ts";
export { GpuExecutor, type GpuExecutorOptions } from "./gpu/mod.ts";
// Weight formats: the vocabulary and each executor's subset.
export {
  GPU_WEIGHT_CHOICES,
  GPU_WEIGHT_FORMATS,
  NATIVE_WEIGHT_FORMATS,
  WASM_WEIGHT_CHOICES,
  WASM_WEIGHT_FORMATS,
  WEIGHT_CHOICES,
  WEIGHT_FORMATS,
  type WeightFormat,
  type WeightFormatChoice,
} from "./core/weight_formats.ts";
export {
  checkThreads,
  defaultThreads,
  WasmExecutor,
  type WasmExecutorOptions,
  WasmSession,
  wasmUnsupportedReason,
} from "./wasm/mod.ts";
// GGUF files: read (header, config, tokenizer, tensors), write (F32/F16/Q8_0/Q4_0), ggml block formats.
export { type GgufFile, type GgufTensorInfo, parseGguf, parseGgufHeader } from "./core/gguf/reader.ts";
export { type GgufModel, ggufModel } from "./core/gguf/model.ts";
export {
  type GgufTensorType,
  type GgufVocab,
  type GgufWriteOptions,
  writeGguf,
} from "./core/gguf/model_writer.ts";
export { hfToGguf } from "./core/gguf/convert.ts";
export { dequantize, quantizeQ4_0, quantizeQ8_0 } from "./core/gguf/quants.ts";
export { GGML_TYPE, ggmlTypeName } from "./core/gguf/ggml_types.ts";
export { type GgufBytesLoadOptions, parseGgufBytes } from "./io/from_bytes.ts";
export type { QuantizedTensor } from "./core/weights.ts";
