/**
 * The GPU KV cache of one session. Per layer one K and one V buffer; inside them every KV head owns a
 * segment [base, base + cap) of entries (headDim floats each), so heads hold different numbers of
 * entries and pruning frees memory: compaction gathers the kept entries into new, smaller buffers
 * (kept entries plus a little headroom, grown again on demand). The CPU mirrors the entry counts and
 * positions exactly (appends are deterministic), so positions(), kvBytes() and every index list are
 * computed without reading the GPU. meta = (base, count) per (layer, head) for the kernels.
 */
import { emptyBuffer, STORAGE } from "./buffers.ts";

/** Headroom left after a compaction, grown on demand. */
export const COMPACT_HEADROOM = 64;

export class GpuKvCache {
  readonly slots: number;
  readonly counts: Int32Array;
  readonly positions: Int32Array[];
  /** Entries each head's segment can hold, and where it starts in its layer's buffers. */
  caps: Int32Array;
  bases: Int32Array;
  k: GPUBuffer[] = [];
  v: GPUBuffer[] = [];
  readonly meta: GPUBuffer;
  metaDirty = true;
  /** Bumped whenever the buffers are replaced (bind groups must be rebuilt). */
  version = 0;

  constructor(
    private readonly device: GPUDevice,
    readonly nLayers: number,
    readonly nKvHeads: number,
    readonly headDim: number,
    /** Most entries a head may hold (the session's capacity). */
    readonly capacity: number,
    initialCap: number,
    /** Segment sizes to start with (a clone copies its source's layout). */
    caps?: Int32Array,
  ) {
    this.slots = nLayers * nKvHeads;
    this.counts = new Int32Array(this.slots);
    this.positions = Array.from({ length: this.slots }, () => new Int32Array(capacity));
    this.caps = caps ? caps.slice() : new Int32Array(this.slots).fill(Math.min(capacity, initialCap));
    this.bases = new Int32Array(this.slots);
    this.meta = emptyBuffer(device, this.slots * 8, STORAGE, "kv-meta");
    this.allocate();
  }

  slot(layer: number, head: number) {
    return layer * this.nKvHeads + head;
  }

  /** Entries the segments of `layer` hold in total. */
  layerEntries(layer: number): number {
    let n = 0;
    for (let g = 0; g < this.nKvHeads; g++) n += this.caps[this.slot(layer, g)];
    return n;
  }

  /** (Re)creates the buffers for the current caps; returns the old ones (to copy from, then destroy). */
  allocate(): { k: GPUBuffer[]; v: GPUBuffer[]; bases: Int32Array } {
    const old = { k: this.k, v: this.v, bases: this.bases };
    this.bases = new Int32Array(this.slots);
    this.k = [];
    this.v = [];
    for (let l = 0; l < this.nLayers; l++) {
      let at = 0;
      for (let g = 0; g < this.nKvHeads; g++) {
        this.bases[this.slot(l, g)] = at;
        at += this.caps[this.slot(l, g)];
      }
      const bytes = at * this.headDim * 4;
      this.k.push(emptyBuffer(this.device, bytes, STORAGE, `k${l}`));
      this.v.push(emptyBuffer(this.device, bytes, STORAGE, `v${l}`));
    }
    this.version++;
    this.metaDirty = true;
    return old;
  }

  /** Bytes allocated on the GPU for K and V (segments include headroom). */
  allocatedBytes(): number {
    let n = 0;
    for (const b of this.k) n += b.size * 2;
    return n;
  }

  entries(): number {
    return this.counts.reduce((a, b) => a + b, 0);
  }

  writeMeta() {
    if (!this.metaDirty) return;
    const m = new Uint32Array(this.slots * 2);
    for (let s = 0; s < this.slots; s++) {
      m[2 * s] = this.bases[s];
      m[2 * s + 1] = this.counts[s];
    }
    this.device.queue.writeBuffer(this.meta, 0, m);
    this.metaDirty = false;
  }

  /** Records `rows` new entries per head at positions from..from+rows-1 (after the GPU wrote them). */
  append(from: number, rows: number) {
    for (let s = 0; s < this.slots; s++) {
      const c = this.counts[s];
      for (let r = 0; r < rows; r++) this.positions[s][c + r] = from + r;
      this.counts[s] = c + rows;
    }
    this.metaDirty = true;
  }

  /** Number of entries of slot s at positions <= p (entries are in position order). */
  upperBound(s: number, p: number): number {
    const pos = this.positions[s];
    let lo = 0, hi = this.counts[s];
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (pos[mid] <= p) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  dispose() {
    for (const b of [...this.k, ...this.v, this.meta]) b.destroy();
  }
}
