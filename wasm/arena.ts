/**
 * Memory for the fast CPU executor: one shared WebAssembly memory (weights, activations, KV caches)
 * seen by every thread, carved up by a first-fit allocator that merges freed neighbours.
 */
const PAGE = 65536;
/** wasm32 addresses reach 4 GiB. */
export const MAX_BYTES = 65536 * PAGE;
const ALIGN = 64;

interface Block {
  at: number;
  bytes: number;
}

export class Arena {
  readonly memory: WebAssembly.Memory;
  private free: Block[] = [];
  private top: number;
  private views: { buffer: ArrayBufferLike; f32: Float32Array; i32: Int32Array; u16: Uint16Array } | null =
    null;

  /** `reserved` bytes at address 0 stay unused (null pointers and the thread pool's control block). */
  constructor(reserved: number) {
    this.memory = new WebAssembly.Memory({ initial: 1, maximum: MAX_BYTES / PAGE, shared: true });
    this.top = align(reserved);
  }

  /** Bytes in use or free inside the high-water mark. */
  get size(): number {
    return this.top;
  }

  alloc(bytes: number): number {
    const need = align(Math.max(bytes, 1));
    for (let i = 0; i < this.free.length; i++) {
      const b = this.free[i];
      if (b.bytes < need) continue;
      const at = b.at;
      if (b.bytes === need) this.free.splice(i, 1);
      else this.free[i] = { at: b.at + need, bytes: b.bytes - need };
      this.sizes.set(at, need);
      return at;
    }
    if (this.top + need > MAX_BYTES) {
      throw new RangeError(`out of WebAssembly memory: ${need} more bytes beyond ${this.top} (limit 4 GiB)`);
    }
    const at = this.top;
    this.top += need;
    const pages = Math.ceil(this.top / PAGE) - this.memory.buffer.byteLength / PAGE;
    if (pages > 0) this.memory.grow(pages);
    this.sizes.set(at, need);
    return at;
  }

  private sizes = new Map<number, number>();

  release(at: number) {
    const bytes = this.sizes.get(at);
    if (bytes === undefined) return;
    this.sizes.delete(at);
    // Keep the free list sorted and merged.
    let i = 0;
    while (i < this.free.length && this.free[i].at < at) i++;
    this.free.splice(i, 0, { at, bytes });
    if (i + 1 < this.free.length && at + bytes === this.free[i + 1].at) {
      this.free[i].bytes += this.free[i + 1].bytes;
      this.free.splice(i + 1, 1);
    }
    if (i > 0 && this.free[i - 1].at + this.free[i - 1].bytes === at) {
      this.free[i - 1].bytes += this.free[i].bytes;
      this.free.splice(i, 1);
      i--;
    }
    // A free block at the top lowers the high-water mark.
    const last = this.free[this.free.length - 1];
    if (last && last.at + last.bytes === this.top) {
      this.top = last.at;
      this.free.pop();
    }
  }

  private current() {
    const buffer = this.memory.buffer;
    if (!this.views || this.views.buffer !== buffer) {
      this.views = {
        buffer,
        f32: new Float32Array(buffer),
        i32: new Int32Array(buffer),
        u16: new Uint16Array(buffer),
      };
    }
    return this.views;
  }

  /** Views over the whole memory (renewed after growth). */
  get f32(): Float32Array {
    return this.current().f32;
  }
  get i32(): Int32Array {
    return this.current().i32;
  }
  get u16(): Uint16Array {
    return this.current().u16;
  }

  f32At(at: number, length: number): Float32Array {
    return new Float32Array(this.memory.buffer, at, length);
  }
  i32At(at: number, length: number): Int32Array {
    return new Int32Array(this.memory.buffer, at, length);
  }
}

function align(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}
