/**
 * WebGPU adapter and device acquisition: asks for the limits a model needs (large storage bindings,
 * enough storage buffers per stage), describes the adapter, and turns device loss into a clear error.
 */
import { JudgeQError } from "../core/errors.ts";

export interface GpuContext {
  device: GPUDevice;
  adapterInfo: GPUAdapterInfo;
  /** "llvmpipe (LLVM 15, 256 bits), backend gl, fallback adapter" style text. */
  description: string;
  /** Largest byte size one storage binding may have (min of the binding and buffer limits). */
  maxBinding: number;
  features: Set<string>;
  /** Set once the device is lost; every later call fails with it. */
  lost: JudgeQError | null;
  /** First uncaptured validation or out-of-memory error, reported at the next sync. */
  error: JudgeQError | null;
}

export interface DeviceOptions {
  powerPreference?: GPUPowerPreference;
  /** Bytes of the largest weight tensor, to warn early when it cannot even be split. */
  largestTensorBytes?: number;
}

/** Storage buffers one kernel binds at most (the fused QKV projection). */
export const STORAGE_BUFFERS_NEEDED = 10;

export function gpuAvailable(): boolean {
  return typeof navigator !== "undefined" && "gpu" in navigator && !!navigator.gpu;
}

/**
 * Deno's WebGPU backend override (`DENO_WEBGPU_BACKEND`), for the adapter description only. Never
 * throws: outside Deno (a browser, workerd) it is the runtime's own choice, and without env permission
 * the text says so instead of failing after a device was created.
 */
export function webgpuBackendName(): string {
  const deno = (globalThis as {
    Deno?: {
      env: { get(k: string): string | undefined };
      permissions?: { querySync?(d: { name: "env"; variable: string }): { state: string } };
    };
  }).Deno;
  if (!deno) return "default";
  const variable = "DENO_WEBGPU_BACKEND";
  try {
    const state = deno.permissions?.querySync?.({ name: "env", variable }).state ?? "granted";
    if (state !== "granted") return "default (env permission for DENO_WEBGPU_BACKEND not granted)";
    return deno.env.get(variable) ?? "default";
  } catch (e) {
    return `default (DENO_WEBGPU_BACKEND not readable: ${e instanceof Error ? e.message : String(e)})`;
  }
}

/** Requests an adapter and a device with the limits raised to what the adapter allows. */
export async function acquireDevice(o: DeviceOptions = {}): Promise<GpuContext> {
  if (!gpuAvailable()) throw new JudgeQError("invalid_adapter", "WebGPU is not available in this runtime");
  const adapter = await navigator.gpu.requestAdapter({
    powerPreference: o.powerPreference ?? "high-performance",
  });
  if (!adapter) throw new JudgeQError("invalid_adapter", "no WebGPU adapter found");
  const al = adapter.limits;
  if (al.maxStorageBuffersPerShaderStage < STORAGE_BUFFERS_NEEDED) {
    throw new JudgeQError(
      "invalid_adapter",
      `adapter allows ${al.maxStorageBuffersPerShaderStage} storage buffers per stage, ${STORAGE_BUFFERS_NEEDED} needed`,
    );
  }
  const requiredLimits: Record<string, number> = {
    maxStorageBufferBindingSize: al.maxStorageBufferBindingSize,
    maxBufferSize: al.maxBufferSize,
    maxStorageBuffersPerShaderStage: STORAGE_BUFFERS_NEEDED,
    maxComputeWorkgroupStorageSize: al.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: Math.min(al.maxComputeInvocationsPerWorkgroup, 256),
    maxComputeWorkgroupSizeX: Math.min(al.maxComputeWorkgroupSizeX, 256),
  };
  const features: GPUFeatureName[] = [];
  for (const f of ["shader-f16", "subgroups", "timestamp-query"] as GPUFeatureName[]) {
    if (adapter.features.has(f)) features.push(f);
  }
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures: features });
  const info = adapter.info;
  const backend = webgpuBackendName();
  const description = [
    info.description || `${info.vendor} ${info.architecture} ${info.device}`.trim() || "unknown adapter",
    `backend ${backend}`,
    info.isFallbackAdapter ? "fallback (software) adapter" : "hardware adapter",
    `features [${features.join(", ")}]`,
    `max binding ${(device.limits.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB`,
  ].join(", ");
  const ctx: GpuContext = {
    device,
    adapterInfo: info,
    description,
    maxBinding: Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize),
    features: new Set(features),
    lost: null,
    error: null,
  };
  device.lost.then((l) => {
    ctx.lost = new JudgeQError("device_lost", `GPU device lost (${l.reason}): ${l.message || "no message"}`);
  });
  device.addEventListener("uncapturederror", (e) => {
    // Handled here (reported at the next sync) rather than crashing the process.
    e.preventDefault();
    const err = (e as GPUUncapturedErrorEvent).error;
    ctx.error ??= new JudgeQError("internal", `GPU error: ${err.message}`);
  });
  return ctx;
}

/** Throws the device-lost or validation error, if any. Called before and after each sync. */
export function checkDevice(ctx: GpuContext) {
  if (ctx.lost) throw ctx.lost;
  if (ctx.error) {
    const e = ctx.error;
    ctx.error = null;
    throw e;
  }
}
