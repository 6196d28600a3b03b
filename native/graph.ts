/**
 * Building and running one ggml graph: a metadata-only context (tensor headers, no data), the ops the
 * native executor uses as small named functions, inputs set after the graph allocator has placed them,
 * and one compute on the backend. Weights and KV caches live in their own buffers; the allocator places
 * only the graph's intermediate tensors, reusing one buffer per executor.
 */
import { type Ggml, GGML_TYPE } from "./library.ts";

export type Tensor = Deno.PointerValue;

/** Tensor headers (and graph nodes) a graph of a model with `layers` layers may need, with room to spare. */
export const graphSizeFor = (layers: number, kvHeads: number) => 64 + layers * (48 + 4 * kvHeads);

const initParams = (bytes: bigint, noAlloc: boolean) => {
  const p = new Uint8Array(24);
  const v = new DataView(p.buffer);
  v.setBigUint64(0, bytes, true);
  v.setUint8(16, noAlloc ? 1 : 0);
  return p;
};

/** A ggml context holding only tensor headers; their data goes into a backend buffer. */
export function headerContext(g: Ggml, tensors: number, graphSize = 0): Deno.PointerValue {
  const s = g.sym;
  const bytes = s.ggml_tensor_overhead() * BigInt(tensors) +
    (graphSize > 0 ? s.ggml_graph_overhead_custom(BigInt(graphSize), false) : 0n);
  const ctx = s.ggml_init(initParams(bytes, true));
  if (!ctx) throw new Error("ggml_init failed");
  return ctx;
}

export type InputData = Int32Array | Float32Array | Uint16Array | BigInt64Array;
type Input = { tensor: Tensor; data: InputData };

/** One graph under construction: ops, inputs, outputs. Free it with `dispose` after `compute`. */
export class GraphBuilder {
  readonly ctx: Deno.PointerValue;
  readonly graph: Deno.PointerValue;
  private readonly inputs: Input[] = [];

  constructor(readonly g: Ggml, size: number) {
    this.ctx = headerContext(g, size, size);
    this.graph = g.sym.ggml_new_graph_custom(this.ctx, BigInt(size), false);
  }

  private s() {
    return this.g.sym;
  }

  /** An input tensor; `data`, when given, is set by `compute` once the graph is allocated, else call `set`. */
  input(type: number, ne: number[], data?: InputData): Tensor {
    const t = this.newTensor(type, ne);
    this.s().ggml_set_input(t);
    if (data) this.inputs.push({ tensor: t, data });
    return t;
  }

  /** Sets an input's data (after `allocate`). */
  set(t: Tensor, data: InputData) {
    this.s().ggml_backend_tensor_set(
      t,
      data as unknown as Uint8Array<ArrayBuffer>,
      0n,
      BigInt(data.byteLength),
    );
  }

  /** Places the graph's tensors with `allocator`; a graph kept with its own allocator stays placed. */
  allocate(allocator: Deno.PointerValue) {
    if (!this.g.sym.ggml_gallocr_alloc_graph(allocator, this.graph)) {
      throw new Error("ggml could not allocate the graph");
    }
  }

  /** Computes the (allocated, filled) graph on the backend. */
  async run(threads: number): Promise<void> {
    this.g.setThreads(threads);
    const status = await this.g.sym.ggml_backend_graph_compute(this.g.backend, this.graph);
    if (status !== 0) throw new Error(`ggml graph compute failed (status ${status})`);
  }

  newTensor(type: number, ne: number[]): Tensor {
    const s = this.s(), c = this.ctx;
    const b = ne.map(BigInt);
    if (ne.length === 1) return s.ggml_new_tensor_1d(c, type, b[0]);
    if (ne.length === 2) return s.ggml_new_tensor_2d(c, type, b[0], b[1]);
    return s.ggml_new_tensor_3d(c, type, b[0], b[1], b[2]);
  }

  /** Marks `t` as a result: the allocator keeps it, and it is added to the graph. */
  output(t: Tensor): Tensor {
    this.s().ggml_set_output(t);
    this.expand(t);
    return t;
  }

  /** Adds `t` (and what it depends on) to the graph now: nodes run in the order they are added. */
  expand(t: Tensor) {
    this.s().ggml_build_forward_expand(this.graph, t);
  }

  mulMat = (a: Tensor, b: Tensor) => this.s().ggml_mul_mat(this.ctx, a, b);
  add = (a: Tensor, b: Tensor) => this.s().ggml_add(this.ctx, a, b);
  mul = (a: Tensor, b: Tensor) => this.s().ggml_mul(this.ctx, a, b);
  rmsNorm = (a: Tensor, eps: number) => this.s().ggml_rms_norm(this.ctx, a, eps);
  getRows = (a: Tensor, rows: Tensor) => this.s().ggml_get_rows(this.ctx, a, rows);
  swiglu = (gate: Tensor, up: Tensor) => this.s().ggml_swiglu_split(this.ctx, gate, up);
  cpy = (src: Tensor, dst: Tensor) => this.s().ggml_cpy(this.ctx, src, dst);
  /** Writes the rows of `src` into rows `index` (i64) of `dst`; returns a view of dst. */
  setRows = (dst: Tensor, src: Tensor, index: Tensor) => this.s().ggml_set_rows(this.ctx, dst, src, index);
  cont = (a: Tensor) => this.s().ggml_cont(this.ctx, a);
  /** a and b joined along dimension `dim`. */
  concat = (a: Tensor, b: Tensor, dim: number) => this.s().ggml_concat(this.ctx, a, b, dim);
  permute = (a: Tensor, a0: number, a1: number, a2: number, a3: number) =>
    this.s().ggml_permute(this.ctx, a, a0, a1, a2, a3);
  reshape2d = (a: Tensor, ne0: number, ne1: number) =>
    this.s().ggml_reshape_2d(this.ctx, a, BigInt(ne0), BigInt(ne1));
  reshape3d = (a: Tensor, ne0: number, ne1: number, ne2: number) =>
    this.s().ggml_reshape_3d(this.ctx, a, BigInt(ne0), BigInt(ne1), BigInt(ne2));
  softMax = (a: Tensor, mask: Tensor, scale: number) =>
    this.s().ggml_soft_max_ext(this.ctx, a, mask, scale, 0);
  /** Attention of q [hd, rows, heads] over k, v [hd, entries, kvHeads]; the result is [hd, heads, rows]. */
  flashAttn = (q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: number) =>
    this.s().ggml_flash_attn_ext(this.ctx, q, k, v, mask, scale, 0, 0);
  sumRows = (a: Tensor) => this.s().ggml_sum_rows(this.ctx, a);
  view2d = (a: Tensor, ne0: number, ne1: number, nb1: number, offset: number) =>
    this.s().ggml_view_2d(this.ctx, a, BigInt(ne0), BigInt(ne1), BigInt(nb1), BigInt(offset));
  view3d = (a: Tensor, ne0: number, ne1: number, ne2: number, nb1: number, nb2: number, offset: number) =>
    this.s().ggml_view_3d(
      this.ctx,
      a,
      BigInt(ne0),
      BigInt(ne1),
      BigInt(ne2),
      BigInt(nb1),
      BigInt(nb2),
      BigInt(offset),
    );

  /** NeoX-style (rotate-half, Hugging Face's layout) RoPE of `a` [headDim, heads, rows] at `pos`. */
  rope(a: Tensor, pos: Tensor, freqFactors: Tensor | null, headDim: number, base: number) {
    return this.s().ggml_rope_ext(this.ctx, a, pos, freqFactors, headDim, 2, 0, base, 1, 0, 1, 32, 1);
  }

  /** Allocates the graph's tensors with `allocator`, sets the inputs, computes on the backend. */
  async compute(allocator: Deno.PointerValue, threads: number): Promise<void> {
    this.allocate(allocator);
    for (const { tensor, data } of this.inputs) this.set(tensor, data);
    await this.run(threads);
  }

  /** Copies a computed tensor out (f32). */
  readF32(t: Tensor, count: number): Float32Array {
    const out = new Float32Array(count);
    this.s().ggml_backend_tensor_get(t, out, 0n, BigInt(out.byteLength));
    return out;
  }

  dispose() {
    this.s().ggml_free(this.ctx);
  }
}

export { GGML_TYPE };
