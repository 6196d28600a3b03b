/**
 * The CPU KV cache: per layer and KV head, an ordered list of entries (key, value, original position).
 * Heads hold independent counts, so pruning really shrinks each list, and each list's storage grows on
 * demand and is cut back to what it holds after pruning (`trim`): a compressed cache allocates only
 * what it keeps, whatever its `capacity` (the most entries a head may ever hold).
 */
import type { CacheSnapshot } from "../executor.ts";

export class CpuKvCache {
  readonly keys: Float32Array[]; // [layer * nKv + head] -> [allocated, headDim]
  readonly values: Float32Array[];
  readonly positions: Int32Array[]; // [layer * nKv + head] -> [allocated]
  readonly counts: Int32Array; // [layer * nKv + head]

  constructor(
    readonly nLayers: number,
    readonly nKvHeads: number,
    readonly headDim: number,
    readonly capacity: number,
  ) {
    const n = nLayers * nKvHeads;
    this.keys = Array.from({ length: n }, () => new Float32Array(0));
    this.values = Array.from({ length: n }, () => new Float32Array(0));
    this.positions = Array.from({ length: n }, () => new Int32Array(0));
    this.counts = new Int32Array(n);
  }

  slot(layer: number, head: number): number {
    return layer * this.nKvHeads + head;
  }

  /** Entries slot s has room for. */
  allocated(s: number): number {
    return this.positions[s].length;
  }

  /**
   * Makes room for `rows` more entries in every head (a RangeError past `capacity`). Storage grows by
   * half again at least, so appending token by token copies each entry O(1) times.
   */
  reserve(rows: number) {
    for (let s = 0; s < this.counts.length; s++) this.grow(s, this.counts[s] + rows);
  }

  /** Room for `need` entries in slot s. */
  private grow(s: number, need: number) {
    if (need > this.capacity) {
      throw new RangeError(`KV cache full: capacity ${this.capacity} positions per head`);
    }
    const have = this.allocated(s);
    if (need > have) this.resize(s, Math.min(this.capacity, Math.max(need, Math.ceil(have * 1.5), 16)));
  }

  /** Storage for exactly `rows` more entries than each head holds (capped at the capacity). */
  reserveExact(rows: number) {
    for (let s = 0; s < this.counts.length; s++) {
      const want = Math.min(this.capacity, this.counts[s] + rows);
      if (this.allocated(s) !== want) this.resize(s, want);
    }
  }

  /** Frees the room no head uses: storage shrinks to the entries held. */
  trim() {
    for (let s = 0; s < this.counts.length; s++) {
      if (this.allocated(s) > this.counts[s]) this.resize(s, this.counts[s]);
    }
  }

  /** Bytes of storage held: keys and values (f32) and positions (i32), room included. */
  allocatedBytes(): number {
    let entries = 0;
    for (let s = 0; s < this.counts.length; s++) entries += this.allocated(s);
    return entries * (this.headDim * 8 + 4);
  }

  private resize(s: number, entries: number) {
    const d = this.headDim, n = this.counts[s];
    const k = new Float32Array(entries * d), v = new Float32Array(entries * d), p = new Int32Array(entries);
    k.set(this.keys[s].subarray(0, n * d));
    v.set(this.values[s].subarray(0, n * d));
    p.set(this.positions[s].subarray(0, n));
    this.keys[s] = k;
    this.values[s] = v;
    this.positions[s] = p;
  }

  append(layer: number, head: number, position: number, key: Float32Array, value: Float32Array) {
    const s = this.slot(layer, head);
    const i = this.counts[s];
    this.grow(s, i + 1);
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

  /**
   * A cache holding a snapshot's entries (appended one by one, whatever the storage layout), those at
   * positions below `below` only when given; allocated for exactly what it holds.
   */
  static fromSnapshot(snap: CacheSnapshot, capacity: number, below = Infinity): CpuKvCache {
    const cache = new CpuKvCache(snap.nLayers, snap.nKvHeads, snap.headDim, capacity);
    const hd = snap.headDim;
    for (let l = 0; l < snap.nLayers; l++) {
      for (let g = 0; g < snap.nKvHeads; g++) {
        const s = cache.slot(l, g), p = snap.positions[s], k = snap.keys[s], v = snap.values[s];
        for (let i = 0; i < p.length && p[i] < below; i++) {
          cache.append(l, g, p[i], k.subarray(i * hd, (i + 1) * hd), v.subarray(i * hd, (i + 1) * hd));
        }
      }
    }
    cache.trim();
    return cache;
  }

  /** A copy holding exactly the entries (no spare room). */
  clone(): CpuKvCache {
    const c = new CpuKvCache(this.nLayers, this.nKvHeads, this.headDim, this.capacity);
    c.counts.set(this.counts);
    for (let s = 0; s < this.counts.length; s++) {
      const n = this.counts[s], d = this.headDim;
      c.keys[s] = this.keys[s].slice(0, n * d);
      c.values[s] = this.values[s].slice(0, n * d);
      c.positions[s] = this.positions[s].slice(0, n);
    }
    return c;
  }
}
