/**
 * Pipeline cache. Kernels are WGSL generated with the model's sizes baked in as constants; each is
 * compiled once per device and reused by every session. Bind group layouts are explicit so the
 * per-step parameters can use a dynamic uniform offset (many decode steps in one command buffer).
 */

/** Binding kinds in order: d = dynamic uniform, u = uniform, r = read-only storage, w = read-write storage. */
export type BindingKinds = string;

export interface Kernel {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  kinds: BindingKinds;
  workgroupSize: number;
}

export class PipelineCache {
  private readonly cache = new Map<string, Kernel>();
  /** One layout per binding signature, so bind groups work with every kernel of that signature. */
  private readonly layouts = new Map<string, GPUBindGroupLayout>();
  compiled = 0;

  constructor(private readonly device: GPUDevice) {}

  /** `kinds` lists the bindings of group 0, binding i having kind kinds[i]. */
  get(name: string, code: string, kinds: BindingKinds, workgroupSize: number): Kernel {
    const key = `${name}\n${kinds}\n${code}`;
    let k = this.cache.get(key);
    if (k) return k;
    const layout = this.layouts.get(kinds) ?? this.device.createBindGroupLayout({
      label: kinds,
      entries: [...kinds].map((kind, binding) => ({
        binding,
        visibility: GPUShaderStage.COMPUTE,
        buffer: kind === "d"
          ? { type: "uniform" as const, hasDynamicOffset: true }
          : kind === "u"
          ? { type: "uniform" as const }
          : { type: kind === "r" ? "read-only-storage" as const : "storage" as const },
      })),
    });
    this.layouts.set(kinds, layout);
    const module = this.device.createShaderModule({ label: name, code });
    const pipeline = this.device.createComputePipeline({
      label: name,
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    k = { pipeline, layout, kinds, workgroupSize };
    this.cache.set(key, k);
    this.compiled++;
    return k;
  }
}

/** Bind group for a kernel from buffers (or buffer slices) in binding order. */
export function bindGroup(
  device: GPUDevice,
  k: Kernel,
  resources: (GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number })[],
  paramsRecordSize = 256,
): GPUBindGroup {
  if (resources.length !== k.kinds.length) {
    throw new Error(`${k.pipeline.label}: ${resources.length} resources for ${k.kinds.length} bindings`);
  }
  return device.createBindGroup({
    layout: k.layout,
    entries: resources.map((r, binding) => {
      const b = r instanceof GPUBuffer ? { buffer: r } : r;
      // A dynamic uniform binding covers one parameter record; the offset picks the record.
      return {
        binding,
        resource: k.kinds[binding] === "d" ? { buffer: b.buffer, offset: 0, size: paramsRecordSize } : b,
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
