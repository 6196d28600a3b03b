/**
 * The kernels' interface as the host calls them: their names, signatures and instantiation over the
 * shared memory. Apart from the modules' bytes (wasm/kernels.ts), so that a worker, which receives the
 * compiled module, does not carry them.
 */
type Fn = (...args: number[]) => void;

/** Every kernel takes its arguments, then the thread index and the thread count. */
export interface Kernels {
  gemmF32: Fn;
  gemmF16: Fn;
  gemmI8: Fn;
  gemmQ8: Fn;
  rmsNorm: Fn;
  siluMul: Fn;
  embed: Fn;
  embedQ8: Fn;
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
  "gemmQ8",
  "rmsNorm",
  "siluMul",
  "embed",
  "embedQ8",
  "ropeAppend",
  "attention",
  "attentionMass",
  "keyNorms",
];

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
