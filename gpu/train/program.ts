/**
 * The training kernels' side of the kernel-definition layer (gpu/pipelines.ts): a kernel names its
 * bindings once, so the WGSL declarations, the explicit bind group layout and the bind groups all come
 * from one list and cannot drift apart. What differs from inference: the training kernels read one
 * uniform record per layer (`u: U`, bound at a fixed offset, no dynamic offsets) and all use WG
 * invocations per workgroup.
 */
import {
  bindGroup,
  type Binding,
  type Kernel,
  type KernelDef as AnyKernelDef,
  type PipelineCache,
  read,
  type Resource,
  uniform,
  write,
} from "../pipelines.ts";

export type { Binding, Kernel, Resource };

/** Element type of a storage binding: one buffer may be viewed as f32 by one kernel, vec4 by another. */
export type Elem = "f32" | "vec2<f32>" | "vec4<f32>";

/** A training kernel: name, bindings, body (the prelude and workgroup size are the same for all). */
export type KernelDef = Omit<AnyKernelDef, "prelude" | "workgroupSize">;

/**
 * The uniform record every kernel reads: rows R, prompt length L, the layer, and the sample's weight
 * in the batch mean.
 */
export const UNIFORM_WGSL =
  `struct U { R: u32, L: u32, layer: u32, p0: u32, scale: f32, p1: u32, p2: u32, p3: u32 }`;
export const UNIFORM_BYTES = 32;

/** Invocations per workgroup of every kernel. */
export const WG = 64;

export const u = (): Binding => uniform("u", "U");
export const r = (name: string, elem: Elem = "f32"): Binding => read(name, elem);
export const w = (name: string, elem: Elem = "f32"): Binding => write(name, elem);
export const v4 = "vec4<f32>" as const;

export function compile(cache: PipelineCache, def: KernelDef): Kernel {
  return cache.get({ ...def, prelude: UNIFORM_WGSL, workgroupSize: WG });
}

/** A bind group from buffers named like the kernel's bindings (extra names are ignored). */
export function bind(device: GPUDevice, k: Kernel, res: Record<string, Resource | undefined>): GPUBindGroup {
  return bindGroup(device, k, res);
}
/** A float literal WGSL accepts. */
export const lit = (x: number) => {
  const s = String(x);
  return /[.eE]/.test(s) ? s : s + ".0";
};

/** Repeats a template for i = 0..n-1: unrolled code keeps small vectors in registers. */
export const rep = (n: number, fn: (i: number) => string, sep = "\n  ") =>
  Array.from({ length: n }, (_, i) => fn(i)).join(sep);

/** Component `i` of a vector kept as `name`0, `name`1, ... vec4 registers. */
export const comp = (name: string, i: number) => `${name}${i >> 2}.${"xyzw"[i & 3]}`;
