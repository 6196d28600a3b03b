/**
 * Model weights on a ggml backend: every matrix in the chosen format (f32, f16, or ggml's Q8_0 / Q4_0 blocks,
 * quantized at load by ggml's own quantizers), norms and biases f32. A matrix a GGUF file holds in a ggml
 * type (`ModelWeights.quantized`: Q8_0, Q4_0, Q4_K, Q6_K, F16, ...) is used as it is, whatever the format.
 * A matrix [out, in] in Hugging Face's row-major layout is the ggml tensor ne = [in, out] with the same bytes.
 * The types follow the project's GGUF writer (and llama.cpp's quantize tool): with Q4_0, the output matrix
 * (the embeddings when tied) is Q8_0; a matrix whose rows are not whole blocks of 32 is f16.
 */
import { type ModelConfig, ropeInverseFrequencies } from "../core/config.ts";
import { fail } from "../core/errors.ts";
import type { ModelWeights } from "../core/weights.ts";
import type { NativeWeightFormat } from "../core/weight_formats.ts";
import { headerContext, type Tensor } from "./graph.ts";
import { type Ggml, GGML_TYPE } from "./library.ts";

const TYPE_OF: Record<NativeWeightFormat, number> = {
  f32: GGML_TYPE.f32,
  f16: GGML_TYPE.f16,
  q8_0: GGML_TYPE.q8_0,
  q4_0: GGML_TYPE.q4_0,
};
/** Values per block of each format (a quantized row must hold whole blocks). */
const BLOCK: Record<NativeWeightFormat, number> = { f32: 1, f16: 1, q8_0: 32, q4_0: 32 };

/**
 * The ggml type a matrix of `cols`-value rows takes in `format`: as the project's GGUF writer does, the output
 * matrix of a Q4_0 model is Q8_0, and rows that are not whole blocks are f16.
 */
function matrixType(format: NativeWeightFormat, cols: number, output: boolean): number {
  const f = format === "q4_0" && output ? "q8_0" : format;
  return cols % BLOCK[f] === 0 ? TYPE_OF[f] : GGML_TYPE.f16;
}

export interface NativeLayer {
  attnNorm: Tensor;
  wq: Tensor;
  wk: Tensor;
  wv: Tensor;
  bq: Tensor | null;
  bk: Tensor | null;
  bv: Tensor | null;
  wo: Tensor;
  mlpNorm: Tensor;
  wGate: Tensor;
  wUp: Tensor;
  wDown: Tensor;
}

interface Matrix {
  name: string;
  /** Its Hugging Face tensor name (the key of `ModelWeights.quantized`). */
  hf: string;
  data: Float32Array;
  rows: number;
  cols: number;
  /** The output matrix (LM head, or the embeddings when tied). */
  output?: boolean;
}

/** The weights of one model in one backend buffer. */
export class NativeWeights {
  readonly layers: NativeLayer[] = [];
  embed!: Tensor;
  lmHead!: Tensor;
  finalNorm!: Tensor;
  /** Llama 3 RoPE: per frequency, the factor its base frequency is divided by; null for plain RoPE. */
  ropeFactors: Tensor | null = null;
  /** Bytes of the weight buffer. */
  bytes = 0;
  /** Matrices kept f16 because their rows are not whole blocks of the format, said once at load. */
  readonly notes: string[] = [];
  private ctx: Deno.PointerValue = null;
  private buffer: Deno.PointerValue = null;
  /** The layers' Q4_0 matrices, in ggml's repacked layout (null where the CPU has no repack type). */
  private repackCtx: Deno.PointerValue = null;
  private repackBuffer: Deno.PointerValue = null;

  private constructor(readonly g: Ggml, readonly config: ModelConfig, readonly format: NativeWeightFormat) {}

  /** Uploads `w` in `format`; throws naming the bytes needed when they exceed the memory available. */
  static create(g: Ggml, w: ModelWeights, format: NativeWeightFormat): NativeWeights {
    const nw = new NativeWeights(g, w.config, format);
    g.quietly(() => nw.load(w));
    return nw;
  }

  private typeFor(m: Matrix): number {
    const type = matrixType(this.format, m.cols, m.output === true);
    if (type === GGML_TYPE.f16 && this.format !== "f16") this.notes.push(m.name);
    return type;
  }

  private load(w: ModelWeights) {
    const c = w.config, s = this.g.sym;
    const q = c.nHeads * c.headDim, kv = c.nKvHeads * c.headDim;
    const mat = (name: string, hf: string, data: Float32Array, rows: number, cols: number): Matrix => ({
      name,
      hf,
      data,
      rows,
      cols,
    });
    const tied = w.lmHead === w.embed;
    const matrices: Matrix[] = [{
      ...mat("embed", "model.embed_tokens.weight", w.embed, c.vocabSize, c.dim),
      output: tied,
    }];
    const vectors: { name: string; data: Float32Array }[] = [{ name: "norm", data: w.finalNorm }];
    w.layers.forEach((l, i) => {
      const p = `model.layers.${i}.`;
      matrices.push(
        mat(`layers.${i}.wq`, p + "self_attn.q_proj.weight", l.wq, q, c.dim),
        mat(`layers.${i}.wk`, p + "self_attn.k_proj.weight", l.wk, kv, c.dim),
        mat(`layers.${i}.wv`, p + "self_attn.v_proj.weight", l.wv, kv, c.dim),
        mat(`layers.${i}.wo`, p + "self_attn.o_proj.weight", l.wo, c.dim, q),
        mat(`layers.${i}.wGate`, p + "mlp.gate_proj.weight", l.wGate, c.hiddenDim, c.dim),
        mat(`layers.${i}.wUp`, p + "mlp.up_proj.weight", l.wUp, c.hiddenDim, c.dim),
        mat(`layers.${i}.wDown`, p + "mlp.down_proj.weight", l.wDown, c.dim, c.hiddenDim),
      );
      vectors.push({ name: `layers.${i}.attnNorm`, data: l.attnNorm }, {
        name: `layers.${i}.mlpNorm`,
        data: l.mlpNorm,
      });
      for (const b of ["bq", "bk", "bv"] as const) {
        const d = l[b];
        if (d) vectors.push({ name: `layers.${i}.${b}`, data: d });
      }
    });
    if (!tied) {
      matrices.push({ ...mat("lmHead", "lm_head.weight", w.lmHead, c.vocabSize, c.dim), output: true });
    }
    const inv = c.ropeScaling.type === "llama3" ? ropeInverseFrequencies(c) : null;

    // Headers first, so the whole size is known (and checked) before anything is allocated.
    this.ctx = headerContext(this.g, matrices.length + vectors.length + 1);
    this.repackCtx = headerContext(this.g, matrices.length);
    let repacked = 0;
    const repackedNames = new Set<string>();
    const tensors = new Map<string, Tensor>();
    const types = new Map<string, number>();
    let need = 0;
    for (const m of matrices) {
      const given = w.quantized?.get(m.hf);
      const type = given ? given.ggmlType : this.typeFor(m);
      types.set(m.name, type);
      // A layer's Q4_0 matrix goes to the repack buffer (never the embeddings: rows are gathered from them).
      const repack = this.g.repackType !== null && type === GGML_TYPE.q4_0 && m.name.startsWith("layers.") &&
        m.rows % 8 === 0;
      if (repack) repacked++, repackedNames.add(m.name);
      const t = s.ggml_new_tensor_2d(
        repack ? this.repackCtx : this.ctx,
        type,
        BigInt(m.cols),
        BigInt(m.rows),
      );
      tensors.set(m.name, t);
      need += Number(s.ggml_nbytes(t));
    }
    for (const v of vectors) {
      const t = s.ggml_new_tensor_1d(this.ctx, GGML_TYPE.f32, BigInt(v.data.length));
      tensors.set(v.name, t);
      need += v.data.byteLength;
    }
    if (inv) {
      this.ropeFactors = s.ggml_new_tensor_1d(this.ctx, GGML_TYPE.f32, BigInt(inv.length));
      need += inv.length * 4;
    }
    const available = Deno.systemMemoryInfo().available;
    if (need > available) {
      s.ggml_free(this.ctx);
      throw fail(
        "invalid_model_file",
        `the ${this.format} weights need ${need} bytes, over the ${available} bytes of memory available`,
        "weights",
      );
    }
    this.buffer = s.ggml_backend_alloc_ctx_tensors_from_buft(this.ctx, this.g.bufferType);
    if (!this.buffer) throw new Error(`ggml could not allocate ${need} bytes for the weights`);
    this.bytes = Number(s.ggml_backend_buffer_get_size(this.buffer));
    if (repacked > 0) {
      this.repackBuffer = s.ggml_backend_alloc_ctx_tensors_from_buft(this.repackCtx, this.g.repackType);
      if (!this.repackBuffer) throw new Error("ggml could not allocate the repacked weights");
      this.bytes += Number(s.ggml_backend_buffer_get_size(this.repackBuffer));
    }

    for (const m of matrices) {
      const given = w.quantized?.get(m.hf), t = tensors.get(m.name)!;
      if (!given) this.setMatrix(t, m, types.get(m.name)!, repackedNames.has(m.name));
      else if (given.bytes.length !== Number(s.ggml_nbytes(t))) {
        throw fail(
          "invalid_model_file",
          `${given.bytes.length} bytes of ${given.typeName}, ggml expects ${s.ggml_nbytes(t)}`,
          m.hf,
        );
      } else {s.ggml_backend_tensor_set(
          t,
          given.bytes as Uint8Array<ArrayBuffer>,
          0n,
          BigInt(given.bytes.length),
        );}
    }
    for (const v of vectors) {
      s.ggml_backend_tensor_set(
        tensors.get(v.name)!,
        v.data as Float32Array<ArrayBuffer>,
        0n,
        BigInt(v.data.byteLength),
      );
    }
    if (inv && this.ropeFactors) {
      const base = ropeInverseFrequencies({ ...c, ropeScaling: { type: "default" } } as ModelConfig);
      const factors = new Float32Array(inv.length).map((_, i) => base[i] / inv[i]);
      s.ggml_backend_tensor_set(this.ropeFactors, factors, 0n, BigInt(factors.byteLength));
    }
    const t = (name: string) => tensors.get(name)!;
    this.embed = t("embed");
    this.lmHead = tied ? this.embed : t("lmHead");
    this.finalNorm = t("norm");
    for (let i = 0; i < c.nLayers; i++) {
      const p = `layers.${i}.`;
      this.layers.push({
        attnNorm: t(p + "attnNorm"),
        wq: t(p + "wq"),
        wk: t(p + "wk"),
        wv: t(p + "wv"),
        bq: tensors.get(p + "bq") ?? null,
        bk: tensors.get(p + "bk") ?? null,
        bv: tensors.get(p + "bv") ?? null,
        wo: t(p + "wo"),
        mlpNorm: t(p + "mlpNorm"),
        wGate: t(p + "wGate"),
        wUp: t(p + "wUp"),
        wDown: t(p + "wDown"),
      });
    }
  }

  /** Writes one matrix, converting/quantizing a few rows at a time (no whole-model copy in another format). */
  private setMatrix(t: Tensor, m: Matrix, type: number, whole: boolean) {
    const s = this.g.sym;
    if (type === GGML_TYPE.f32) {
      s.ggml_backend_tensor_set(t, m.data as Float32Array<ArrayBuffer>, 0n, BigInt(m.data.byteLength));
      return;
    }
    const rowBytes = Number(s.ggml_row_size(type, BigInt(m.cols)));
    // The repack buffer lays a tensor out anew as it is set, so it takes the whole tensor in one call.
    const chunkRows = whole ? m.rows : Math.max(1, Math.floor((4 << 20) / (m.cols * 4)));
    const out = new Uint8Array(rowBytes * chunkRows);
    for (let r = 0; r < m.rows; r += chunkRows) {
      const n = Math.min(chunkRows, m.rows - r);
      const src = m.data.subarray(r * m.cols, (r + n) * m.cols) as Float32Array<ArrayBuffer>;
      s.ggml_quantize_chunk(type, src, out, 0n, BigInt(n), BigInt(m.cols), null);
      s.ggml_backend_tensor_set(t, out.subarray(0, n * rowBytes), BigInt(r * rowBytes), BigInt(n * rowBytes));
    }
  }

  dispose() {
    const s = this.g.sym;
    for (const b of [this.buffer, this.repackBuffer]) if (b) s.ggml_backend_buffer_free(b);
    for (const c of [this.ctx, this.repackCtx]) if (c) s.ggml_free(c);
    this.buffer =
      this.ctx =
      this.repackBuffer =
      this.repackCtx =
        null;
  }
}

/**
 * The weights as `format` represents them, back in f32 (ggml's quantizer, then its dequantizer): what the
 * reference must run to be compared with a native executor of that format.
 */
export function roundToNativeFormat(g: Ggml, w: ModelWeights, format: NativeWeightFormat): ModelWeights {
  if (format === "f32") return w;
  const s = g.sym, c = w.config;
  const round = (data: Float32Array, cols: number, output = false): Float32Array => {
    const type = matrixType(format, cols, output);
    const rows = data.length / cols;
    const bytes = new Uint8Array(Number(s.ggml_row_size(type, BigInt(cols))) * rows);
    s.ggml_quantize_chunk(
      type,
      data as Float32Array<ArrayBuffer>,
      bytes,
      0n,
      BigInt(rows),
      BigInt(cols),
      null,
    );
    const out = new Float32Array(data.length);
    g.toFloat(type, bytes, out);
    return out;
  };
  const tied = w.lmHead === w.embed;
  const embed = round(w.embed, c.dim, tied);
  return {
    ...w,
    embed,
    lmHead: tied ? embed : round(w.lmHead, c.dim, true),
    layers: w.layers.map((l) => ({
      ...l,
      wq: round(l.wq, c.dim),
      wk: round(l.wk, c.dim),
      wv: round(l.wv, c.dim),
      wo: round(l.wo, c.nHeads * c.headDim),
      wGate: round(l.wGate, c.dim),
      wUp: round(l.wUp, c.dim),
      wDown: round(l.wDown, c.hiddenDim),
    })),
  };
}
