/**
 * Buffer helpers and a small pool. Readback staging buffers and per-call scratch buffers are reused
 * by size class (powers of two), so a decode loop or a scoring call allocates nothing after warm-up.
 */

// The WebGPU specification's GPUBufferUsage bits, as numbers: reading the `GPUBufferUsage` global at
// module load would make importing this module (and mod.ts) fail wherever WebGPU is absent.
const MAP_READ = 0x0001;
const COPY_SRC = 0x0004;
const COPY_DST = 0x0008;
const USAGE_UNIFORM = 0x0040;
const USAGE_STORAGE = 0x0080;
export const STORAGE = USAGE_STORAGE | COPY_SRC | COPY_DST;
export const UNIFORM = USAGE_UNIFORM | COPY_DST;
export const READBACK = MAP_READ | COPY_DST;

/** Size rounded up to 16 bytes (vec4 bindings) and at least 16. */
export const align16 = (n: number) => Math.max(16, Math.ceil(n / 16) * 16);

/** A buffer holding `data` (written at creation, no queue round trip). */
export function bufferWith(
  device: GPUDevice,
  data: ArrayBufferView,
  usage = STORAGE,
  label?: string,
): GPUBuffer {
  const buf = device.createBuffer({ label, size: align16(data.byteLength), usage, mappedAtCreation: true });
  new Uint8Array(buf.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  buf.unmap();
  return buf;
}

export function emptyBuffer(device: GPUDevice, bytes: number, usage = STORAGE, label?: string): GPUBuffer {
  return device.createBuffer({ label, size: align16(bytes), usage });
}

export class BufferPool {
  private readonly free = new Map<string, GPUBuffer[]>();
  private readonly owned = new Set<GPUBuffer>();

  constructor(private readonly device: GPUDevice) {}

  private static sizeClass(bytes: number): number {
    return 2 ** Math.ceil(Math.log2(Math.max(bytes, 256)));
  }

  acquire(bytes: number, usage: number): GPUBuffer {
    const size = BufferPool.sizeClass(bytes);
    const list = this.free.get(`${usage}:${size}`);
    const reused = list?.pop();
    if (reused) return reused;
    const buf = this.device.createBuffer({ size, usage });
    this.owned.add(buf);
    return buf;
  }

  release(buf: GPUBuffer) {
    if (!this.owned.has(buf)) return buf.destroy();
    const key = `${buf.usage}:${buf.size}`;
    const list = this.free.get(key) ?? [];
    // Keep a few per class; more would only hold memory.
    if (list.length >= 4) {
      this.owned.delete(buf);
      buf.destroy();
      return;
    }
    list.push(buf);
    this.free.set(key, list);
  }

  dispose() {
    for (const b of this.owned) b.destroy();
    this.owned.clear();
    this.free.clear();
  }
}
