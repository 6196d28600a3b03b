/**
 * The compiled kernels (wasm/assembly/kernels.ts): their two modules (relaxed SIMD, and the plain-SIMD
 * fallback for engines without it), their signatures, and whether this runtime can run them (128-bit
 * SIMD, threads with a shared memory; relaxed SIMD picks the faster module).
 */
import { KERNELS_WASM_BASE64 } from "./kernels_wasm.ts";
import { KERNELS_SIMD_WASM_BASE64 } from "./kernels_simd_wasm.ts";

/** The two builds of the kernels: relaxed SIMD (FMA, i8 dot products), and plain 128-bit SIMD. */
export type KernelFlavor = "relaxed" | "simd";
export { instantiate, KERNEL_NAMES, type KernelName, type Kernels } from "./kernel_abi.ts";

/** Which kernels to run: "auto" takes relaxed SIMD where the engine has it, else plain SIMD. */
export type KernelChoice = "auto" | KernelFlavor;
export const KERNEL_CHOICES: readonly KernelChoice[] = ["auto", "relaxed", "simd"];

const bytes = new Map<KernelFlavor, Uint8Array>();
export function kernelBytes(flavor: KernelFlavor = "relaxed"): Uint8Array {
  let b = bytes.get(flavor);
  if (!b) {
    const base64 = flavor === "relaxed" ? KERNELS_WASM_BASE64 : KERNELS_SIMD_WASM_BASE64;
    b = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    bytes.set(flavor, b);
  }
  return b;
}

/** Why this runtime cannot run the kernels (either module), or null when it can. */
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
  if (!WebAssembly.validate(kernelBytes("simd") as BufferSource)) {
    return "this WebAssembly engine lacks 128-bit SIMD or threads";
  }
  return null;
}

let relaxed: boolean | null = null;
/** Whether this engine validates the relaxed-SIMD module. */
export function hasRelaxedSimd(): boolean {
  relaxed ??= WebAssembly.validate(kernelBytes("relaxed") as BufferSource);
  return relaxed;
}

/** The module a choice runs: "auto" is relaxed SIMD where the engine has it; "relaxed" demands it. */
export function resolveKernels(choice: KernelChoice): KernelFlavor {
  if (choice === "simd") return "simd";
  if (hasRelaxedSimd()) return "relaxed";
  if (choice === "relaxed") throw new Error("this WebAssembly engine lacks relaxed SIMD");
  return "simd";
}

const compiled = new Map<KernelFlavor, Promise<WebAssembly.Module>>();
export function kernelModule(flavor: KernelFlavor = resolveKernels("auto")): Promise<WebAssembly.Module> {
  let m = compiled.get(flavor);
  if (!m) {
    m = WebAssembly.compile(kernelBytes(flavor) as BufferSource);
    compiled.set(flavor, m);
  }
  return m;
}
