/**
 * The kernel-definition layer, for inference and training (gpu/train/program.ts) alike. A kernel is a
 * name, its named bindings and a WGSL body, declared once (`KernelDef`); the WGSL declarations, the
 * explicit bind group layout and every bind group come from that one list, so they cannot drift apart.
 * Kernels are WGSL generated with the model's sizes baked in as constants; each is compiled once per
 * device and reused by every session. The per-dispatch parameter record is bound with a dynamic uniform
 * offset (many decode steps in one command buffer).
 */
import { JudgeQError } from "../core/errors.ts";
import { PARAMS_WGSL } from "./kernels/common.ts";

/**
 * params: the per-dispatch record `P: Params` (dynamic uniform offset); uniform: a fixed uniform record
 * (`S: Static` per weight chunk, sampling settings); read / write: storage arrays.
 */
export type BindingKind = "params" | "uniform" | "read" | "write";

export interface Binding {
  /** The WGSL variable name, and the key a bind group is built from. */
  name: string;
  kind: BindingKind;
  /** WGSL type: a struct for uniforms, `array<...>` for storage. */
  type: string;
}

export interface KernelDef {
  name: string;
  bindings: Binding[];
  /** WGSL after the declarations: constants, helpers and `main`. */
  body: string;
  /** Invocations per workgroup (the body's @workgroup_size). */
  workgroupSize: number;
  /** WGSL before the declarations (the structs the bindings use); inference's Params and Static by default. */
  prelude?: string;
}

/** The per-dispatch parameter record, always binding 0. */
export const params = (): Binding => ({ name: "P", kind: "params", type: "Params" });
/** The per-chunk static record of a weight tensor (weights.ts `Chunk.info`). */
export const chunkInfo = (): Binding => ({ name: "S", kind: "uniform", type: "Static" });
export const uniform = (name: string, type: string): Binding => ({ name, kind: "uniform", type });
export const read = (name: string, elem = "f32"): Binding => ({ name, kind: "read", type: `array<${elem}>` });
export const write = (name: string, elem = "f32"): Binding => ({
  name,
  kind: "write",
  type: `array<${elem}>`,
});

const VAR: Record<BindingKind, string> = {
  params: "var<uniform>",
  uniform: "var<uniform>",
  read: "var<storage, read>",
  write: "var<storage, read_write>",
};

/** The whole WGSL module of a kernel: shared structs, one declaration per binding, the body. */
export function kernelWgsl(def: KernelDef): string {
  const decl = def.bindings.map((b, i) => `@group(0) @binding(${i}) ${VAR[b.kind]} ${b.name}: ${b.type};`);
  return `${def.prelude ?? PARAMS_WGSL}\n${decl.join("\n")}\n${def.body}`;
}

export interface Kernel {
  name: string;
  bindings: Binding[];
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  workgroupSize: number;
}

const LAYOUT_ENTRY: Record<BindingKind, GPUBufferBindingLayout> = {
  params: { type: "uniform", hasDynamicOffset: true },
  uniform: { type: "uniform" },
  read: { type: "read-only-storage" },
  write: { type: "storage" },
};

export class PipelineCache {
  private readonly cache = new Map<string, Kernel>();
  /** One layout per binding signature, so bind groups work with every kernel of that signature. */
  private readonly layouts = new Map<string, GPUBindGroupLayout>();
  compiled = 0;

  constructor(private readonly device: GPUDevice) {}

  get(def: KernelDef): Kernel {
    const code = kernelWgsl(def);
    const key = `${def.name}\n${code}`;
    let k = this.cache.get(key);
    if (k) return k;
    const signature = def.bindings.map((b) => b.kind).join(",");
    const layout = this.layouts.get(signature) ?? this.device.createBindGroupLayout({
      label: def.name,
      entries: def.bindings.map((b, binding) => ({
        binding,
        visibility: GPUShaderStage.COMPUTE,
        buffer: LAYOUT_ENTRY[b.kind],
      })),
    });
    this.layouts.set(signature, layout);
    const module = this.device.createShaderModule({ label: def.name, code });
    const pipeline = this.device.createComputePipeline({
      label: def.name,
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    k = { name: def.name, bindings: def.bindings, pipeline, layout, workgroupSize: def.workgroupSize };
    this.cache.set(key, k);
    this.compiled++;
    return k;
  }
}

export type Resource = GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number };

/**
 * A bind group from buffers named like the kernel's bindings. Names the kernel does not declare are
 * ignored (one set of names serves a kernel with and without its optional bindings); `P` covers one
 * parameter record of `paramsRecordSize` bytes, the dynamic offset picking the record.
 */
export function bindGroup(
  device: GPUDevice,
  k: Kernel,
  resources: Record<string, Resource | null | undefined>,
  paramsRecordSize = 256,
): GPUBindGroup {
  return device.createBindGroup({
    label: k.name,
    layout: k.layout,
    entries: k.bindings.map((b, binding) => {
      const r = resources[b.name];
      if (!r) throw new JudgeQError("internal", `${k.name}: no buffer for binding ${b.name}`);
      const res = r instanceof GPUBuffer ? { buffer: r } : r;
      return {
        binding,
        resource: b.kind === "params" ? { buffer: res.buffer, offset: 0, size: paramsRecordSize } : res,
      };
    }),
  });
}

/** Splits a workgroup count over x and y when it exceeds the per-dimension limit. */
export function grid(groups: number, max = 65535): [number, number] {
  if (groups <= max) return [Math.max(groups, 1), 1];
  const y = Math.ceil(groups / max);
  return [Math.ceil(groups / y), y];
}
