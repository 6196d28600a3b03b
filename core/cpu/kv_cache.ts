/**
 * The CPU KV cache: per layer and KV head, an ordered list of entries (key, value, original position).
 * Heads hold independent counts, so pruning really shrinks each list.
 */
export class CpuKvCache {
  readonly keys: Float32Array[]; // [layer * nKv + head] -> [capacity, headDim]
  readonly values: Float32Array[];
  readonly positions: Int32Array[]; // [layer * nKv + head] -> [capacity]
  readonly counts: Int32Array; // [layer * nKv + head]

  constructor(
    readonly nLayers: number,
    readonly nKvHeads: number,
    readonly headDim: number,
    readonly capacity: number,
  ) {
    const n = nLayers * nKvHeads;
    this.keys = Array.from({ length: n }, () => new Float32Array(capacity * headDim));
    this.values = Array.from({ length: n }, () => new Float32Array(capacity * headDim));
    this.positions = Array.from({ length: n }, () => new Int32Array(capacity));
    this.counts = new Int32Array(n);
  }

  slot(layer: number, head: number): number {
    return layer * this.nKvHeads + head;
  }

  append(layer: number, head: number, position: number, key: Float32Array, value: Float32Array) {
    const s = this.slot(layer, head);
    const i = this.counts[s];
    if (i >= this.capacity) {
      throw new RangeError(`KV cache full: capacity ${this.capacity} positions per head`);
    }
    this.keys[s].set(key, i * this.headDim);
    this.values[s].set(value, i * this.headDim);
    this.positions[s][i] = position;
    this.counts[s] = i + 1;
  }

  /** Keeps, in order, the entries whose position passes `keep`; compacts the survivors to the front. */
  filter(layer: number, head: number, keep: (position: number) => boolean) {
    const s = this.slot(layer, head), d = this.headDim;
    const k = this.keys[s], v = this.values[s], p = this.positions[s];
    let w = 0;
    for (let r = 0; r < this.counts[s]; r++) {
      if (!keep(p[r])) continue;
      if (w !== r) {
        k.copyWithin(w * d, r * d, r * d + d);
        v.copyWithin(w * d, r * d, r * d + d);
        p[w] = p[r];
      }
      w++;
    }
    this.counts[s] = w;
  }

  entries(): number {
    return this.counts.reduce((a, b) => a + b, 0);
  }

  clone(): CpuKvCache {
    const c = new CpuKvCache(this.nLayers, this.nKvHeads, this.headDim, this.capacity);
    for (let s = 0; s < this.counts.length; s++) {
      c.keys[s].set(this.keys[s]);
      c.values[s].set(this.values[s]);
      c.positions[s].set(this.positions[s]);
    }
    c.counts.set(this.counts);
    return c;
  }
}
