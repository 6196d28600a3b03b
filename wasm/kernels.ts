/**
 * The compiled kernels (wasm/assembly/kernels.ts): their module, their signatures, and whether this
 * runtime can run them (128-bit SIMD, relaxed SIMD, threads with a shared memory).
 */
import { KERNELS_WASM_BASE64 } from "./kernels_wasm.ts";

type Fn = (...args: number[]) => void;

/** Every kernel takes its arguments, then the thread index and the thread count. */
export interface Kernels {
  gemmF32: Fn;
  gemmF16: Fn;
  gemmI8: Fn;
  rmsNorm: Fn;
  siluMul: Fn;
  embed: Fn;
  ropeAppend: Fn;
  attention: Fn;
  attentionMass: Fn;
  keyNorms: Fn;
}
export type KernelName = keyof Kernels;
export const KERNEL_NAMES: KernelName[] = [
  "gemmF32",
  "gemmF16",
  "gemmI8",
  "rmsNorm",
  "siluMul",
  "embed",
  "ropeAppend",
  "attention",
  "attentionMass",
  "keyNorms",
];

let bytes: Uint8Array | null = null;
export function kernelBytes(): Uint8Array {
  if (!bytes) bytes = Uint8Array.from(atob(KERNELS_WASM_BASE64), (c) => c.charCodeAt(0));
  return bytes;
}

/** Why this runtime cannot run the kernels, or null when it can. */
export function unsupportedReason(): string | null {
  if (typeof SharedArrayBuffer !== "function" || typeof Atomics !== "object") {
    return "SharedArrayBuffer and Atomics are unavailable";
  }
  if (typeof WebAssembly !== "object") return "WebAssembly is unavailable";
  try {
    new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true });
  } catch {
    return "shared WebAssembly memory is unavailable";
  }
  if (!WebAssembly.validate(kernelBytes() as BufferSource)) {
    return "this WebAssembly engine lacks 128-bit SIMD, relaxed SIMD or threads";
  }
  return null;
}

let compiled: Promise<WebAssembly.Module> | null = null;
export function kernelModule(): Promise<WebAssembly.Module> {
  compiled ??= WebAssembly.compile(kernelBytes() as BufferSource);
  return compiled;
}

export function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): Kernels {
  const instance = new WebAssembly.Instance(module, {
    env: {
      memory,
      abort: () => {
        throw new Error("wasm kernel aborted");
      },
    },
  });
  return instance.exports as unknown as Kernels;
}
