/**
 * The GPU KV cache of one session. Per layer one K and one V buffer; inside them every KV head owns a
 * segment [base, base + cap) of entries (headDim floats each), so heads hold different numbers of
 * entries and pruning frees memory: compaction gathers the kept entries into new, smaller buffers
 * (kept entries plus a little headroom, grown again on demand). The CPU mirrors the entry counts and
 * positions exactly (appends are deterministic), so positions(), kvBytes() and every index list are
 * computed without reading the GPU. meta = (base, count) per (layer, head) for the kernels.
 *
 * The cache owns its layout: segment sizes, bases, counts and positions change only through the methods
 * below (grow, keep, truncate, rewind, clone); the session reads them.
 */
import { JudgeQError } from "../core/errors.ts";
import { emptyBuffer, STORAGE } from "./buffers.ts";
import type { Kernel } from "./pipelines.ts";
import { grid } from "./pipelines.ts";
import type { ParamRecords, Recorder } from "./recorder.ts";

/** Headroom left after a compaction, grown on demand. */
export const COMPACT_HEADROOM = 64;

/** Segment size a new cache starts with (per head). */
const INITIAL_CAP = 256;

export interface KvCacheShape {
  nLayers: number;
  nKvHeads: number;
  headDim: number;
  /** Most entries a head may hold (the session's capacity). */
  capacity: number;
}

export class GpuKvCache {
  readonly slots: number;
  /** Bumped whenever the buffers are replaced (bind groups must be rebuilt). */
  private layoutVersion = 0;
  private readonly counts: Int32Array;
  private readonly positions: Int32Array[];
  /** Entries each head's segment can hold, and where it starts in its layer's buffers. */
  private caps: Int32Array;
  private bases: Int32Array;
  private k: GPUBuffer[] = [];
  private v: GPUBuffer[] = [];
  private readonly metaBuf: GPUBuffer;
  private metaDirty = true;

  constructor(
    private readonly records: ParamRecords,
    /** The compaction gather kernel (kernels/misc.ts kvGather). */
    private readonly gather: Kernel,
    readonly shape: KvCacheShape,
    /** Segment sizes to start with (a clone copies its source's layout). */
    caps?: Int32Array,
  ) {
    const { nLayers, nKvHeads, capacity } = shape;
    this.slots = nLayers * nKvHeads;
    this.counts = new Int32Array(this.slots);
    this.positions = Array.from({ length: this.slots }, () => new Int32Array(capacity));
    this.caps = caps ? caps.slice() : new Int32Array(this.slots).fill(Math.min(capacity, INITIAL_CAP));
    this.bases = new Int32Array(this.slots);
    this.metaBuf = emptyBuffer(records.device, this.slots * 8, STORAGE, "kv-meta");
    this.allocate();
  }

  // ---- reading ----------------------------------------------------------------------------------

  get version(): number {
    return this.layoutVersion;
  }

  slot(layer: number, head: number): number {
    return layer * this.shape.nKvHeads + head;
  }

  keys(layer: number): GPUBuffer {
    return this.k[layer];
  }

  values(layer: number): GPUBuffer {
    return this.v[layer];
  }

  /** (base, count) per slot, for the kernels; written by `writeMeta` before a submission. */
  get meta(): GPUBuffer {
    return this.metaBuf;
  }

  count(s: number): number {
    return this.counts[s];
  }

  /** First entry of slot s in its layer's buffers. */
  base(s: number): number {
    return this.bases[s];
  }

  /** Positions of slot s's entries, in order (a view: copy before keeping). */
  positionsOf(s: number): Int32Array {
    return this.positions[s].subarray(0, this.counts[s]);
  }

  /** Most entries any head holds. */
  maxCount(): number {
    let most = 0;
    for (const n of this.counts) most = Math.max(most, n);
    return most;
  }

  entries(): number {
    return this.counts.reduce((a, b) => a + b, 0);
  }

  /** Bytes allocated on the GPU for K and V (segments include headroom). */
  allocatedBytes(): number {
    let n = 0;
    for (const b of this.k) n += b.size * 2;
    return n;
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

  /** Calls `fn` for every entry of `layer` at a position < `promptLength`, in slot then entry order. */
  forEachPromptEntry(
    layer: number,
    promptLength: number,
    fn: (entry: number, head: number, index: number, position: number, slot: number) => void,
  ) {
    for (let g = 0; g < this.shape.nKvHeads; g++) {
      const s = this.slot(layer, g), pos = this.positions[s], base = this.bases[s];
      for (let t = 0; t < this.counts[s] && pos[t] < promptLength; t++) fn(base + t, g, t, pos[t], s);
    }
  }

  writeMeta() {
    if (!this.metaDirty) return;
    const m = new Uint32Array(this.slots * 2);
    for (let s = 0; s < this.slots; s++) {
      m[2 * s] = this.bases[s];
      m[2 * s + 1] = this.counts[s];
    }
    this.records.device.queue.writeBuffer(this.metaBuf, 0, m);
    this.metaDirty = false;
  }

  // ---- changing -----------------------------------------------------------------------------------

  /** Records `rows` new entries per head at positions from..from+rows-1 (after the GPU wrote them). */
  append(from: number, rows: number) {
    for (let s = 0; s < this.slots; s++) {
      const c = this.counts[s];
      for (let r = 0; r < rows; r++) this.positions[s][c + r] = from + r;
      this.counts[s] = c + rows;
    }
    this.metaDirty = true;
  }

  /** Whether `rows` more entries per head need a segment to grow (a relayout). */
  needsGrowth(rows: number): boolean {
    for (let s = 0; s < this.slots; s++) if (this.counts[s] + rows > this.caps[s]) return true;
    return false;
  }

  /** Makes room for `rows` more entries in every head, growing segments (and checking capacity). */
  ensureRoom(rows: number) {
    const capacity = this.shape.capacity;
    for (let s = 0; s < this.slots; s++) {
      if (this.counts[s] + rows > capacity) {
        throw new JudgeQError("invalid_request", `KV cache full: capacity ${capacity} positions per head`);
      }
    }
    if (!this.needsGrowth(rows)) return;
    const caps = this.caps.map((cap, s) => {
      const n = this.counts[s];
      if (n + rows <= cap) return cap;
      return Math.min(capacity, Math.max(n + rows, n + COMPACT_HEADROOM, Math.ceil(cap * 1.5)));
    });
    this.relayout(caps, Array.from({ length: this.slots }, () => null));
  }

  /** Keeps, per (layer, head), the prompt entries at positions in kept[l][g] and every later entry. */
  keep(kept: Int32Array[][], promptLength: number) {
    const keep: number[][] = [];
    const caps = new Int32Array(this.slots);
    for (let l = 0; l < this.shape.nLayers; l++) {
      for (let g = 0; g < this.shape.nKvHeads; g++) {
        const s = this.slot(l, g), pos = this.positions[s];
        const set = new Set(kept[l][g]);
        const idx: number[] = [];
        for (let t = 0; t < this.counts[s]; t++) if (pos[t] >= promptLength || set.has(pos[t])) idx.push(t);
        keep.push(idx);
        caps[s] = Math.min(this.shape.capacity, idx.length + COMPACT_HEADROOM);
      }
    }
    this.relayout(caps, keep);
  }

  /** Drops every entry at a position >= `position`. */
  truncate(position: number) {
    for (let s = 0; s < this.slots; s++) this.counts[s] = this.upperBound(s, position - 1);
    this.metaDirty = true;
  }

  /** The entry counts, to rewind to. */
  mark(): Int32Array {
    return this.counts.slice();
  }

  /** Restores marked counts: entries are only ever appended after a mark, so this restores the cache. */
  rewind(counts: Int32Array) {
    for (let s = 0; s < counts.length; s++) {
      if (counts[s] > this.counts[s]) {
        throw new JudgeQError("invalid_request", "rewind: cache was pruned after the mark");
      }
    }
    this.counts.set(counts);
    this.metaDirty = true;
  }

  /** A copy with the same layout and entries (the GPU copies are recorded into `rec`). */
  clone(records: ParamRecords, rec: Recorder): GpuKvCache {
    const copy = new GpuKvCache(records, this.gather, this.shape, this.caps);
    for (let l = 0; l < this.shape.nLayers; l++) {
      rec.copy(this.k[l], 0, copy.k[l], 0, this.k[l].size);
      rec.copy(this.v[l], 0, copy.v[l], 0, this.v[l].size);
    }
    copy.counts.set(this.counts);
    this.positions.forEach((p, s) => copy.positions[s].set(p));
    copy.metaDirty = true;
    return copy;
  }

  /**
   * Replaces the contents with per-slot positions, keys and values ([count][headDim] each; a checked
   * CacheSnapshot's): segments sized to them plus headroom, written with the queue.
   */
  load(positions: Int32Array[], keys: Float32Array[], values: Float32Array[]) {
    const { capacity, headDim } = this.shape;
    const old = { k: this.k, v: this.v };
    this.caps = Int32Array.from(positions, (p) => Math.min(capacity, p.length + COMPACT_HEADROOM));
    this.allocate();
    for (const b of [...old.k, ...old.v]) b.destroy();
    const queue = this.records.device.queue;
    for (let s = 0; s < this.slots; s++) {
      const n = positions[s].length, layer = Math.floor(s / this.shape.nKvHeads);
      this.positions[s].set(positions[s]);
      this.counts[s] = n;
      if (n === 0) continue;
      queue.writeBuffer(this.k[layer], this.bases[s] * headDim * 4, keys[s]);
      queue.writeBuffer(this.v[layer], this.bases[s] * headDim * 4, values[s]);
    }
    this.metaDirty = true;
  }

  dispose() {
    for (const b of [...this.k, ...this.v, this.metaBuf]) b.destroy();
  }

  // ---- layout -------------------------------------------------------------------------------------

  /** Entries the segments of `layer` hold in total. */
  private layerEntries(layer: number): number {
    let n = 0;
    for (let g = 0; g < this.shape.nKvHeads; g++) n += this.caps[this.slot(layer, g)];
    return n;
  }

  /** (Re)creates the buffers for the current caps; returns the old ones (to copy from, then destroy). */
  private allocate(): { k: GPUBuffer[]; v: GPUBuffer[]; bases: Int32Array } {
    const old = { k: this.k, v: this.v, bases: this.bases };
    const { nLayers, nKvHeads, headDim } = this.shape, device = this.records.device;
    this.bases = new Int32Array(this.slots);
    this.k = [];
    this.v = [];
    for (let l = 0; l < nLayers; l++) {
      let at = 0;
      for (let g = 0; g < nKvHeads; g++) {
        this.bases[this.slot(l, g)] = at;
        at += this.caps[this.slot(l, g)];
      }
      const bytes = at * headDim * 4;
      this.k.push(emptyBuffer(device, bytes, STORAGE, `k${l}`));
      this.v.push(emptyBuffer(device, bytes, STORAGE, `v${l}`));
    }
    this.layoutVersion++;
    this.metaDirty = true;
    return old;
  }

  /**
   * Moves the cache into new buffers with segment sizes `caps`, keeping per slot the entries listed in
   * `keep[s]` (indices, ascending; null keeps all). The gather runs on the GPU; the mirror is updated.
   */
  private relayout(caps: Int32Array, keep: (number[] | null)[]) {
    const kept = keep.map((k, s) => k ?? Array.from({ length: this.counts[s] }, (_, i) => i));
    const device = this.records.device, headDim = this.shape.headDim;
    this.caps = caps;
    const old = this.allocate();
    const rec = this.records.recorder();
    const maps: GPUBuffer[] = [];
    for (let l = 0; l < this.shape.nLayers; l++) {
      const total = this.layerEntries(l);
      if (total === 0) continue;
      // New entry e copies old entry map[e] (~0: headroom, left empty).
      const map = new Uint32Array(total).fill(0xffffffff);
      for (let g = 0; g < this.shape.nKvHeads; g++) {
        const s = this.slot(l, g), from = old.bases[s], to = this.bases[s];
        kept[s].forEach((idx, i) => (map[to + i] = from + idx));
      }
      const mapBuf = emptyBuffer(device, map.byteLength, STORAGE, "kv-map");
      device.queue.writeBuffer(mapBuf, 0, map);
      maps.push(mapBuf);
      const group = this.records.bind(this.gather, {
        MAP: mapBuf,
        KO: old.k[l],
        VO: old.v[l],
        KN: this.k[l],
        VN: this.v[l],
      });
      const off = rec.param({ rows: total, pos0: 0, step: 0 });
      const [gx, gy] = grid(Math.ceil((total * headDim) / 4 / this.gather.workgroupSize));
      rec.dispatch(this.gather, group, off, gx, gy);
    }
    rec.flush();
    for (const b of [...old.k, ...old.v, ...maps]) b.destroy();
    for (let s = 0; s < this.slots; s++) {
      const pos = this.positions[s];
      const src = pos.slice(0, this.counts[s]);
      kept[s].forEach((idx, i) => (pos[i] = src[idx]));
      this.counts[s] = kept[s].length;
    }
    this.metaDirty = true;
  }
}
