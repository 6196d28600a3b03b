/**
 * Tiny kernel plumbing for the training kernels: each kernel names its bindings, so the WGSL
 * declarations, the explicit bind group layout and the bind groups all come from one list and cannot
 * drift apart. Kept apart from gpu/pipelines.ts (the inference executor's): the training kernels bind
 * one uniform record per layer at a fixed offset, no dynamic offsets.
 */
import { JudgeQError } from "../../core/errors.ts";

/** u: the per-layer uniform record; r: read-only storage; w: read-write storage. */
export type BindingKind = "u" | "r" | "w";
/** Element type of a storage binding: one buffer may be viewed as f32 by one kernel, vec4 by another. */
export type Elem = "f32" | "vec2<f32>" | "vec4<f32>";

export interface Binding {
  name: string;
  kind: BindingKind;
  elem: Elem;
}

export interface KernelDef {
  name: string;
  bindings: Binding[];
  /** WGSL after the declarations: constants, helpers and `main`. */
  body: string;
}

export interface Kernel {
  name: string;
  bindings: Binding[];
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
}

/**
 * The uniform record every kernel reads: rows R, prompt length L, the layer, and the sample's weight
 * in the batch mean.
 */
export const UNIFORM_WGSL =
  `struct U { R: u32, L: u32, layer: u32, p0: u32, scale: f32, p1: u32, p2: u32, p3: u32 }`;
export const UNIFORM_BYTES = 32;

/** Invocations per workgroup of every kernel. */
export const WG = 64;

export const u = (): Binding => ({ name: "u", kind: "u", elem: "f32" });
export const r = (name: string, elem: Elem = "f32"): Binding => ({ name, kind: "r", elem });
export const w = (name: string, elem: Elem = "f32"): Binding => ({ name, kind: "w", elem });
export const v4 = "vec4<f32>" as const;

export function wgsl(def: KernelDef): string {
  const decl = def.bindings.map((b, i) =>
    b.kind === "u"
      ? `@group(0) @binding(${i}) var<uniform> u: U;`
      : `@group(0) @binding(${i}) var<storage, ${
        b.kind === "r" ? "read" : "read_write"
      }> ${b.name}: array<${b.elem}>;`
  );
  return `${UNIFORM_WGSL}\n${decl.join("\n")}\n${def.body}`;
}

export function compile(device: GPUDevice, def: KernelDef): Kernel {
  const layout = device.createBindGroupLayout({
    label: def.name,
    entries: def.bindings.map((b, binding) => ({
      binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: b.kind === "u" ? "uniform" : b.kind === "r" ? "read-only-storage" : "storage" },
    })),
  });
  const module = device.createShaderModule({ label: def.name, code: wgsl(def) });
  const pipeline = device.createComputePipeline({
    label: def.name,
    layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
    compute: { module, entryPoint: "main" },
  });
  return { name: def.name, bindings: def.bindings, pipeline, layout };
}

export type Resource = GPUBuffer | { buffer: GPUBuffer; offset: number; size: number };

/** A bind group from buffers named like the kernel's bindings (extra names are ignored). */
export function bind(device: GPUDevice, k: Kernel, res: Record<string, Resource | undefined>): GPUBindGroup {
  return device.createBindGroup({
    label: k.name,
    layout: k.layout,
    entries: k.bindings.map((b, binding) => {
      const x = res[b.name];
      if (!x) throw new JudgeQError("internal", `${k.name}: no buffer for binding ${b.name}`);
      return { binding, resource: x instanceof GPUBuffer ? { buffer: x } : x };
    }),
  });
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
