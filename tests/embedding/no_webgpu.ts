/**
 * Imported first by zero_permissions.ts: a runtime without WebGPU (no navigator.gpu and none of its
 * globals) before any library module is evaluated.
 */
Object.defineProperty(navigator, "gpu", { value: undefined, configurable: true });
for (const name of ["GPUBufferUsage", "GPUMapMode", "GPUShaderStage", "GPUTextureUsage", "GPU"]) {
  Reflect.deleteProperty(globalThis, name);
}
