/**
 * The fast CPU executor's KV cache of one session, in the shared memory: per slot (layer x KV head) its own
 * compacting list of entries. Regions: keys and values [slot][stride][headDim], positions [slot][stride],
 * counts [slot]. `stride` (entries each slot has room for, the kernels' `cap`) grows on demand up to the
 * capacity and is cut back to the fullest slot after pruning, so a compressed cache allocates what it
 * keeps, not its capacity. The kernels append (ropeAppend) and read; everything else about the layout
 * goes through the methods below.
 */
import type { CacheSnapshot } from "../core/executor.ts";
import { CpuKvCache } from "../core/cpu/kv_cache.ts";
import type { Arena } from "./arena.ts";
import type { CacheAddresses } from "./jobs.ts";

interface Regions {
  keys: number;
  values: number;
  positions: number;
  counts: number;
}

export class WasmKvCache {
  readonly slots: number;
  private regions: Regions | null;
  /** Entries each slot has room for. */
  private stride: number;

  /** `stride`: the room each slot starts with (a clone starts with its source's). */
  constructor(
    private readonly arena: Arena,
    readonly nLayers: number,
    readonly nKvHeads: number,
    readonly headDim: number,
    readonly capacity: number,
    stride = Math.min(capacity, 16),
  ) {
    this.slots = nLayers * nKvHeads;
    this.stride = stride;
    this.regions = { ...this.allocEntries(stride), counts: arena.alloc(this.slots * 4) };
    arena.i32.fill(0, this.regions.counts / 4, this.regions.counts / 4 + this.slots);
  }

  private allocEntries(stride: number) {
    const entries = this.slots * stride, a = this.arena;
    return {
      keys: a.alloc(entries * this.headDim * 4),
      values: a.alloc(entries * this.headDim * 4),
      positions: a.alloc(entries * 4),
    };
  }

  private live(): Regions {
    if (!this.regions) throw new Error("session disposed");
    return this.regions;
  }

  /** The regions and room as the kernels take them (valid until the next reserve, trim or prune). */
  addresses(): CacheAddresses {
    return { ...this.live(), cap: this.stride };
  }

  /** Entries each slot has room for. */
  get room(): number {
    return this.stride;
  }

  /** Entry counts per slot, a live view. */
  counts(): Int32Array {
    const at = this.live().counts / 4;
    return this.arena.i32.subarray(at, at + this.slots);
  }

  /** Moves every slot's entries into regions of `stride` entries per slot. */
  private relayout(stride: number) {
    const from = this.live(), to = this.allocEntries(stride), a = this.arena, hd = this.headDim;
    const counts = this.counts();
    for (let s = 0; s < this.slots; s++) {
      const n = counts[s], src = s * this.stride, dst = s * stride;
      a.f32.copyWithin(to.keys / 4 + dst * hd, from.keys / 4 + src * hd, from.keys / 4 + (src + n) * hd);
      a.f32.copyWithin(
        to.values / 4 + dst * hd,
        from.values / 4 + src * hd,
        from.values / 4 + (src + n) * hd,
      );
      a.i32.copyWithin(to.positions / 4 + dst, from.positions / 4 + src, from.positions / 4 + src + n);
    }
    a.release(from.keys);
    a.release(from.values);
    a.release(from.positions);
    this.regions = { ...to, counts: from.counts };
    this.stride = stride;
  }

  /** Room for `rows` more entries in every slot (a RangeError past capacity); grows by half again at least. */
  reserve(rows: number) {
    const need = Math.max(...this.counts()) + rows;
    if (need > this.capacity) {
      throw new RangeError(`KV cache full: capacity ${this.capacity} positions per head`);
    }
    if (need > this.stride) {
      this.relayout(Math.min(this.capacity, Math.max(need, Math.ceil(this.stride * 1.5))));
    }
  }

  /** Frees the room no slot uses. */
  trim() {
    const most = Math.max(1, ...this.counts());
    if (most < this.stride) this.relayout(most);
  }

  /** Counts `rows` entries appended to slots [slot0, slot0 + nKvHeads) by a kernel. */
  appended(slot0: number, rows: number) {
    const counts = this.counts();
    for (let g = 0; g < this.nKvHeads; g++) counts[slot0 + g] += rows;
  }

  /** Keeps, in order, the entries of a slot whose position passes `keep`, compacted to the front. */
  filter(slot: number, keep: (position: number) => boolean) {
    const c = this.live(), hd = this.headDim;
    const counts = this.counts(), f = this.arena.f32, p = this.arena.i32;
    const base = slot * this.stride, pos0 = c.positions / 4 + base;
    const k0 = c.keys / 4 + base * hd, v0 = c.values / 4 + base * hd;
    let w = 0;
    for (let r = 0; r < counts[slot]; r++) {
      if (!keep(p[pos0 + r])) continue;
      if (w !== r) {
        f.copyWithin(k0 + w * hd, k0 + r * hd, k0 + (r + 1) * hd);
        f.copyWithin(v0 + w * hd, v0 + r * hd, v0 + (r + 1) * hd);
        p[pos0 + w] = p[pos0 + r];
      }
      w++;
    }
    counts[slot] = w;
  }

  /** Back to earlier counts (entries are only ever appended after a mark); throws if any slot has fewer. */
  rewind(counts: Int32Array) {
    const now = this.counts();
    for (let s = 0; s < counts.length; s++) {
      if (counts[s] > now[s]) throw new Error("rewind: cache was pruned after the mark");
    }
    now.set(counts);
    this.trim();
  }

  /** Each slot's positions, per layer and KV head. */
  positions(): Int32Array[][] {
    const counts = this.counts(), p = this.arena.i32, base = this.live().positions / 4;
    return Array.from({ length: this.nLayers }, (_, l) =>
      Array.from({ length: this.nKvHeads }, (_, g) => {
        const s = l * this.nKvHeads + g, at = base + s * this.stride;
        return p.slice(at, at + counts[s]);
      }));
  }

  /** Bytes of the K/V entries held. */
  kvBytes(): number {
    return this.counts().reduce((a, b) => a + b, 0) * this.headDim * 2 * 4;
  }

  /** Bytes allocated: entries' room, positions and counts. */
  allocatedBytes(): number {
    if (!this.regions) return 0;
    return this.slots * this.stride * (this.headDim * 8 + 4) + this.slots * 4;
  }

  clone(): WasmKvCache {
    const copy = new WasmKvCache(
      this.arena,
      this.nLayers,
      this.nKvHeads,
      this.headDim,
      this.capacity,
      this.stride,
    );
    const from = this.live(), to = copy.live();
    const f = this.arena.f32, i = this.arena.i32, hd = this.headDim;
    const counts = this.counts();
    for (let s = 0; s < this.slots; s++) {
      const base = s * this.stride, n = counts[s];
      f.copyWithin(to.keys / 4 + base * hd, from.keys / 4 + base * hd, from.keys / 4 + (base + n) * hd);
      f.copyWithin(to.values / 4 + base * hd, from.values / 4 + base * hd, from.values / 4 + (base + n) * hd);
      i.copyWithin(to.positions / 4 + base, from.positions / 4 + base, from.positions / 4 + base + n);
    }
    copy.counts().set(counts);
    return copy;
  }

  /** Per slot: positions, keys and values, copied out. */
  private slotData(s: number) {
    const from = this.live(), hd = this.headDim, base = s * this.stride, n = this.counts()[s];
    const f = this.arena.f32, i = this.arena.i32;
    return {
      positions: i.subarray(from.positions / 4 + base, from.positions / 4 + base + n),
      keys: f.subarray(from.keys / 4 + base * hd, from.keys / 4 + (base + n) * hd),
      values: f.subarray(from.values / 4 + base * hd, from.values / 4 + (base + n) * hd),
    };
  }

  /** A copy in the CPU reference's layout (training reads prompt K/V from it). */
  toCpuCache(): CpuKvCache {
    const counts = this.counts();
    const out = new CpuKvCache(this.nLayers, this.nKvHeads, this.headDim, this.capacity);
    out.reserve(Math.max(...counts));
    for (let s = 0; s < this.slots; s++) {
      const d = this.slotData(s);
      out.keys[s].set(d.keys);
      out.values[s].set(d.values);
      out.positions[s].set(d.positions);
    }
    out.counts.set(counts);
    return out;
  }

  /** The entries as a snapshot's per-slot arrays. */
  export(): Pick<CacheSnapshot, "positions" | "keys" | "values"> {
    const positions: Int32Array[] = [], keys: Float32Array[] = [], values: Float32Array[] = [];
    for (let s = 0; s < this.slots; s++) {
      const d = this.slotData(s);
      positions.push(d.positions.slice());
      keys.push(d.keys.slice());
      values.push(d.values.slice());
    }
    return { positions, keys, values };
  }

  /** Fills this empty cache with a (checked) snapshot's entries, with room for exactly them. */
  load(snap: CacheSnapshot) {
    this.relayout(Math.max(1, ...snap.positions.map((p) => p.length)));
    const to = this.live(), hd = this.headDim, counts = this.counts();
    const f = this.arena.f32, i = this.arena.i32;
    for (let s = 0; s < this.slots; s++) {
      const base = s * this.stride;
      i.set(snap.positions[s], to.positions / 4 + base);
      f.set(snap.keys[s], to.keys / 4 + base * hd);
      f.set(snap.values[s], to.values / 4 + base * hd);
      counts[s] = snap.positions[s].length;
    }
  }

  dispose() {
    if (!this.regions) return;
    const a = this.arena;
    a.release(this.regions.keys);
    a.release(this.regions.values);
    a.release(this.regions.positions);
    a.release(this.regions.counts);
    this.regions = null;
  }

  get disposed(): boolean {
    return this.regions === null;
  }
}
