/**
 * The one vocabulary of weight formats: how the projection and embedding matrices are stored (norms and
 * biases stay f32). Each executor stores a subset, declared here so that flags, the executor choice and
 * each executor's own check read the same lists; the CPU reference computes in f32 whatever is asked.
 *   f32, f16     every executor but the reference (WebGPU packs f16 in u32 words)
 *   int8         the WebAssembly executor: a scale per row (the native executor reads it as q8_0)
 *   q8_0         the native and WebAssembly executors: ggml's blocks of 32 values with a scale each
 *   q4_0         the native executor: ggml's 4-bit blocks of 32
 */
export const WEIGHT_FORMATS = ["f32", "f16", "int8", "q8_0", "q4_0"] as const;
export type WeightFormat = typeof WEIGHT_FORMATS[number];

/** A requested format: "auto" lets the executor choose. */
export const WEIGHT_CHOICES = ["auto", ...WEIGHT_FORMATS] as const;
export type WeightFormatChoice = typeof WEIGHT_CHOICES[number];

export const GPU_WEIGHT_FORMATS = ["f32", "f16"] as const satisfies readonly WeightFormat[];
export type GpuWeightFormat = typeof GPU_WEIGHT_FORMATS[number];

export const WASM_WEIGHT_FORMATS = ["f32", "f16", "int8", "q8_0"] as const satisfies readonly WeightFormat[];
export type WasmWeightFormat = typeof WASM_WEIGHT_FORMATS[number];

export const NATIVE_WEIGHT_FORMATS = [
  "f32",
  "f16",
  "q8_0",
  "q4_0",
] as const satisfies readonly WeightFormat[];
export type NativeWeightFormat = typeof NATIVE_WEIGHT_FORMATS[number];

/** "auto" and an executor's formats: what that executor accepts. */
const choicesOf = <F extends WeightFormat>(
  formats: readonly F[],
): readonly ("auto" | F)[] => ["auto", ...formats];

export const GPU_WEIGHT_CHOICES = choicesOf(GPU_WEIGHT_FORMATS);
export type GpuWeightChoice = typeof GPU_WEIGHT_CHOICES[number];
export const WASM_WEIGHT_CHOICES = choicesOf(WASM_WEIGHT_FORMATS);
export type WasmWeightChoice = typeof WASM_WEIGHT_CHOICES[number];

/** Whether `v` is one of `choices` (a type guard over any value, for checks at the edges). */
export const isChoice = <C extends string>(choices: readonly C[], v: unknown): v is C =>
  (choices as readonly unknown[]).includes(v);

/** "a, b or c": a list of choices for an error message. */
export const choiceList = (choices: readonly string[]): string =>
  choices.length < 2 ? choices.join("") : `${choices.slice(0, -1).join(", ")} or ${choices.at(-1)}`;
