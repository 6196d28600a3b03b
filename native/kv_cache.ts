/**
 * The native KV cache: per layer a K and a V tensor of [headDim, room, nKvHeads] in one backend buffer, KV
 * head g's entries packed at the front of its slice; per layer and KV head a count and the entries'
 * positions (host side). Heads keep their own counts (per-head pruning), a layer's room is its fullest
 * head's, and the buffer is laid out anew when it must grow (by half again at least) and cut back to what
 * the heads hold after pruning, truncation and rewinds. Room past a head's count is kept zero, so a masked
 * entry can never bring a NaN into attention.
 */
import type { ModelConfig } from "../core/config.ts";
import { GraphBuilder, headerContext, type Tensor } from "./graph.ts";
import { type Ggml, GGML_TYPE } from "./library.ts";

export type KvType = "f32" | "f16";

export class NativeKvCache {
  readonly nLayers: number;
  readonly nKvHeads: number;
  readonly headDim: number;
  /** Entries per slot (layer * nKvHeads + head). */
  readonly counts: Int32Array;
  /** Positions per slot, ascending; length = the slot's layer's room. */
  positions: Int32Array[];
  /** Room per layer (entries per head). */
  room: Int32Array;
  k: Tensor[] = [];
  v: Tensor[] = [];
  /** Changes whenever the tensors are laid out anew (graphs holding the old ones are then stale). */
  generation = 0;
  /** Counts the operations that removed entries (summed attention over entry indexes is stale after one). */
  removals = 0;
  readonly elementBytes: number;
  readonly ggmlType: number;
  private ctx: Deno.PointerValue = null;
  private buffer: Deno.PointerValue = null;

  constructor(readonly g: Ggml, c: ModelConfig, readonly capacity: number, readonly type: KvType = "f32") {
    this.nLayers = c.nLayers;
    this.nKvHeads = c.nKvHeads;
    this.headDim = c.headDim;
    this.counts = new Int32Array(c.nLayers * c.nKvHeads);
    this.positions = Array.from({ length: this.counts.length }, () => new Int32Array(0));
    this.room = new Int32Array(c.nLayers);
    this.elementBytes = type === "f16" ? 2 : 4;
    this.ggmlType = type === "f16" ? GGML_TYPE.f16 : GGML_TYPE.f32;
  }

  slot(layer: number, head: number): number {
    return layer * this.nKvHeads + head;
  }

  /** Most entries any head of the layer holds. */
  most(layer: number): number {
    let m = 0;
    for (let g = 0; g < this.nKvHeads; g++) m = Math.max(m, this.counts[this.slot(layer, g)]);
    return m;
  }

  /** True when every head of the layer holds the same positions (one mask serves them all). */
  uniform(layer: number): boolean {
    const first = this.slot(layer, 0), n = this.counts[first], p0 = this.positions[first];
    for (let g = 1; g < this.nKvHeads; g++) {
      const s = this.slot(layer, g);
      if (this.counts[s] !== n) return false;
      const p = this.positions[s];
      for (let i = 0; i < n; i++) if (p[i] !== p0[i]) return false;
    }
    return true;
  }

  /** Bytes of a head's slice row (one entry). */
  entryBytes(): number {
    return this.headDim * this.elementBytes;
  }

  /** Room for `rows` more entries in every head (a RangeError past the capacity). */
  reserve(rows: number) {
    const want = new Int32Array(this.nLayers);
    let grow = false;
    for (let l = 0; l < this.nLayers; l++) {
      const need = this.most(l) + rows;
      if (need > this.capacity) {
        throw new RangeError(`KV cache full: capacity ${this.capacity} positions per head`);
      }
      const have = this.room[l];
      // Room grows by half again, and a prompt gets a quarter more than it needs: the first decode steps
      // after a prefill then append in place.
      want[l] = need > have
        ? Math.min(this.capacity, Math.max(need, Math.ceil(have * 1.5), Math.ceil(need * 1.25), 16))
        : have;
      grow ||= want[l] !== have;
    }
    if (grow) this.relayout(want);
  }

  /** Room for exactly `rows` more entries than each layer's fullest head holds (capped at the capacity). */
  reserveExact(rows: number) {
    const want = new Int32Array(this.nLayers);
    let change = false;
    for (let l = 0; l < this.nLayers; l++) {
      want[l] = Math.min(this.capacity, this.most(l) + rows);
      change ||= want[l] !== this.room[l];
    }
    if (change) this.relayout(want);
  }

  /** Cuts every layer's room back to its fullest head. */
  trim() {
    const want = new Int32Array(this.nLayers);
    let change = false;
    for (let l = 0; l < this.nLayers; l++) {
      want[l] = this.most(l);
      change ||= want[l] !== this.room[l];
    }
    if (change) this.relayout(want);
  }

  /** Records `rows` entries appended at positions from..from+rows-1 to every head (their K/V written by a graph). */
  appended(from: number, rows: number) {
    for (let s = 0; s < this.counts.length; s++) {
      const n = this.counts[s], p = this.positions[s];
      for (let r = 0; r < rows; r++) p[n + r] = from + r;
      this.counts[s] = n + rows;
    }
  }

  /** Reads layer l's K or V (room x heads) to the host. */
  read(layer: number, which: "k" | "v"): Uint8Array {
    const t = which === "k" ? this.k[layer] : this.v[layer];
    const out = new Uint8Array(this.room[layer] * this.nKvHeads * this.entryBytes());
    if (out.length > 0) this.g.sym.ggml_backend_tensor_get(t, out, 0n, BigInt(out.length));
    return out;
  }

  /** Writes layer l's K or V from the host (room x heads, the current layout). */
  write(layer: number, which: "k" | "v", data: Uint8Array) {
    const t = which === "k" ? this.k[layer] : this.v[layer];
    if (data.length > 0) {
      this.g.sym.ggml_backend_tensor_set(t, data as Uint8Array<ArrayBuffer>, 0n, BigInt(data.length));
    }
  }

  /**
   * Keeps, in order, the entries of slot (layer, head) whose position passes `keep`, through the host.
   * Callers follow it with `trim`.
   */
  filterLayer(layer: number, keep: (head: number, position: number) => boolean) {
    this.removals++;
    const eb = this.entryBytes(), room = this.room[layer];
    const k = this.read(layer, "k"), v = this.read(layer, "v");
    for (let g = 0; g < this.nKvHeads; g++) {
      const s = this.slot(layer, g), p = this.positions[s], base = g * room * eb;
      let w = 0;
      for (let r = 0; r < this.counts[s]; r++) {
        if (!keep(g, p[r])) continue;
        if (w !== r) {
          k.copyWithin(base + w * eb, base + r * eb, base + (r + 1) * eb);
          v.copyWithin(base + w * eb, base + r * eb, base + (r + 1) * eb);
          p[w] = p[r];
        }
        w++;
      }
      k.fill(0, base + w * eb, base + room * eb);
      v.fill(0, base + w * eb, base + room * eb);
      this.counts[s] = w;
    }
    this.write(layer, "k", k);
    this.write(layer, "v", v);
  }

  /** Sets the counts (a rewind: only entries appended since are dropped) and lays out what remains. */
  setCounts(counts: Int32Array) {
    this.removals++;
    this.counts.set(counts);
    // Laid out anew even at the same room: the dropped tails are then not copied, and the new room is zero.
    this.relayout(Int32Array.from({ length: this.nLayers }, (_, l) => this.most(l)));
  }

  /** Lays the buffer out anew with `room` entries per head per layer, copying what the heads hold. */
  relayout(room: Int32Array) {
    const old = { k: this.k, v: this.v, room: this.room, ctx: this.ctx, buffer: this.buffer };
    this.ctx = this.buffer = null; // kept alive until the copy below has run
    this.allocateTensors(room);
    if (old.buffer) {
      // One graph of copies, on the backend: each head's counted entries from the old slices to the new.
      const b = new GraphBuilder(this.g, 64 + 8 * this.nLayers * this.nKvHeads);
      try {
        const rb = this.headDim * this.elementBytes;
        let copies = 0;
        for (let l = 0; l < this.nLayers; l++) {
          for (let g = 0; g < this.nKvHeads; g++) {
            const n = this.counts[this.slot(l, g)];
            if (n === 0) continue;
            for (const [from, to] of [[old.k[l], this.k[l]], [old.v[l], this.v[l]]]) {
              b.expand(b.cpy(
                b.view2d(from, this.headDim, n, rb, g * old.room[l] * rb),
                b.view2d(to, this.headDim, n, rb, g * room[l] * rb),
              ));
              copies++;
            }
          }
        }
        if (copies > 0) b.runSync();
      } finally {
        b.dispose();
        const s = this.g.sym;
        s.ggml_backend_buffer_free(old.buffer);
        if (old.ctx) s.ggml_free(old.ctx);
      }
    } else if (old.ctx) {
      this.g.sym.ggml_free(old.ctx);
    }
  }

  /** Frees the tensors and makes zeroed ones of `room`; positions keep their counted entries. */
  private allocateTensors(room: Int32Array) {
    const s = this.g.sym;
    if (this.buffer) s.ggml_backend_buffer_free(this.buffer);
    if (this.ctx) s.ggml_free(this.ctx);
    this.generation++;
    this.ctx = headerContext(this.g, 2 * this.nLayers);
    this.k = [];
    this.v = [];
    let any = false;
    for (let l = 0; l < this.nLayers; l++) {
      const r = BigInt(Math.max(1, room[l])); // a ggml tensor needs one row; an empty cache allocates nothing
      any ||= room[l] > 0;
      this.k.push(
        s.ggml_new_tensor_3d(this.ctx, this.ggmlType, BigInt(this.headDim), r, BigInt(this.nKvHeads)),
      );
      this.v.push(
        s.ggml_new_tensor_3d(this.ctx, this.ggmlType, BigInt(this.headDim), r, BigInt(this.nKvHeads)),
      );
    }
    this.buffer = any ? s.ggml_backend_alloc_ctx_tensors_from_buft(this.ctx, this.g.bufferType) : null;
    if (any && !this.buffer) throw new Error("ggml could not allocate the KV cache");
    if (this.buffer) s.ggml_backend_buffer_clear(this.buffer, 0);
    this.room = Int32Array.from(room);
    this.positions = this.positions.map((p, i) => {
      const np = new Int32Array(room[Math.floor(i / this.nKvHeads)]);
      np.set(p.subarray(0, this.counts[i]));
      return np;
    });
  }

  entries(): number {
    return this.counts.reduce((a, b) => a + b, 0);
  }

  /** K and V storage (room included) and positions, in bytes. */
  allocatedBytes(): number {
    let bytes = 0;
    for (let l = 0; l < this.nLayers; l++) {
      bytes += this.room[l] * this.nKvHeads * (2 * this.entryBytes() + 4);
    }
    return bytes;
  }

  /** A copy with the same entries and room. */
  clone(): NativeKvCache {
    const c = new NativeKvCache(
      this.g,
      {
        nLayers: this.nLayers,
        nKvHeads: this.nKvHeads,
        headDim: this.headDim,
      } as ModelConfig,
      this.capacity,
      this.type,
    );
    c.counts.set(this.counts);
    c.positions = this.positions.map((p) => p.slice());
    c.allocateTensors(this.room);
    for (let l = 0; l < this.nLayers; l++) {
      if (this.room[l] === 0) continue;
      this.g.sym.ggml_backend_tensor_copy(this.k[l], c.k[l]);
      this.g.sym.ggml_backend_tensor_copy(this.v[l], c.v[l]);
    }
    return c;
  }

  dispose() {
    const s = this.g.sym;
    if (this.buffer) s.ggml_backend_buffer_free(this.buffer);
    if (this.ctx) s.ggml_free(this.ctx);
    this.buffer = this.ctx = null;
    this.k = [];
    this.v = [];
  }
}
