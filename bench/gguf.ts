/**
 * GGUF v3 writer for llama.cpp: ModelWeights (Hugging Face layout) to a single F32 file of the `llama`
 * architecture, so that llama.cpp can run exactly the weights our executors run.
 *
 * Layout notes:
 * - GGUF lists a tensor's dimensions fastest-varying first, so a row-major [out, in] matrix is written
 *   with dims [in, out] and its bytes unchanged.
 * - Our weights use Hugging Face's rotate-half RoPE (pairs i, i + headDim/2); llama.cpp's `llama`
 *   architecture rotates adjacent pairs (2i, 2i + 1). The rows of every q and k head are therefore
 *   interleaved back: row p of the first half goes to 2p, row p of the second half to 2p + 1 (the inverse
 *   of `permuteRopeRows` in fixtures/convert_llama2c.ts).
 * - Attention biases (Qwen2) and llama3 RoPE scaling are refused: the peer only has to run the
 *   plain Llama/Mistral shapes.
 */
import type { ModelConfig } from "../core/config.ts";
import type { ModelWeights } from "../core/weights.ts";

/** A GGUF vocabulary: one entry per token id. Token types follow llama.cpp (1 normal, 2 unknown, 3 control, 6 byte). */
export interface GgufVocab {
  tokens: string[];
  scores: number[];
  types: number[];
}

export interface GgufOptions {
  /** `general.name`; defaults to "judgeq". */
  name?: string;
  /** Tensor data alignment in bytes (`general.alignment`); defaults to 32. */
  alignment?: number;
  /** `llama.context_length`; defaults to config.maxSeqLen. */
  contextLength?: number;
}

export const GGUF_TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, byte: 6 } as const;

/** GGUF metadata value types. */
export const GGUF_TYPE = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

type MetaValue =
  | { type: "u32"; value: number }
  | { type: "i32"; value: number }
  | { type: "f32"; value: number }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | { type: "strings"; value: string[] }
  | { type: "f32s"; value: ArrayLike<number> }
  | { type: "i32s"; value: ArrayLike<number> };

/** Why a config cannot be written for llama.cpp's `llama` architecture, or null when it can. */
export function ggufUnsupportedReason(c: ModelConfig): string | null {
  if (c.attentionBias) return "attention biases (qwen2) are not supported by the GGUF peer export";
  if (c.ropeScaling.type !== "default") {
    return `rope scaling "${c.ropeScaling.type}" is not supported by the GGUF peer export`;
  }
  if (c.headDim % 2 !== 0) return `head size ${c.headDim} is odd`;
  return null;
}

/** Interleaves each head's rows back from rotate-half to adjacent-pair RoPE order. */
export function unpermuteRopeRows(
  w: Float32Array,
  nHeads: number,
  headDim: number,
  cols: number,
): Float32Array {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < nHeads; h++) {
    const base = h * headDim;
    for (let p = 0; p < half; p++) {
      out.set(w.subarray((base + p) * cols, (base + p + 1) * cols), (base + 2 * p) * cols);
      out.set(w.subarray((base + half + p) * cols, (base + half + p + 1) * cols), (base + 2 * p + 1) * cols);
    }
  }
  return out;
}

const BYTE_TOKEN = /^<0x[0-9A-F]{2}>$/;

/** A minimal valid SentencePiece-style vocabulary of `size` entries (ids are fed directly, never text). */
export function syntheticVocab(size: number): GgufVocab {
  const tokens: string[] = [], scores: number[] = [], types: number[] = [];
  const push = (t: string, score: number, type: number) => {
    if (tokens.length < size) tokens.push(t), scores.push(score), types.push(type);
  };
  push("<unk>", 0, GGUF_TOKEN_TYPE.unknown);
  push("<s>", 0, GGUF_TOKEN_TYPE.control);
  push("</s>", 0, GGUF_TOKEN_TYPE.control);
  for (let b = 0; b < 256; b++) {
    push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`, 0, GGUF_TOKEN_TYPE.byte);
  }
  for (let i = 0; tokens.length < size; i++) push(`\u2581t${i}`, -(i + 1), GGUF_TOKEN_TYPE.normal);
  return { tokens, scores, types };
}

/**
 * The vocabulary of a Hugging Face tokenizer.json (BPE or Unigram model), padded to `size` entries.
 * Scores: Unigram scores when present, else minus the rank of the merge that produces the token.
 */
export function vocabFromTokenizerJson(json: unknown, size: number): GgufVocab {
  const tj = json as {
    model?: { type?: string; vocab?: Record<string, number> | [string, number][]; merges?: unknown[] };
    added_tokens?: { id: number; content: string; special?: boolean }[];
  };
  const model = tj.model;
  if (!model || !model.vocab) throw new Error("tokenizer.json has no model.vocab");
  const tokens: (string | undefined)[] = new Array(size);
  const scores = new Array<number>(size).fill(0);
  const types = new Array<number>(size).fill(GGUF_TOKEN_TYPE.normal);
  const put = (id: number, text: string, score?: number) => {
    if (!Number.isInteger(id) || id < 0 || id >= size) {
      throw new Error(
        `tokenizer.json token ${JSON.stringify(text)} has id ${id}, outside the vocab of ${size}`,
      );
    }
    tokens[id] = text;
    if (score !== undefined) scores[id] = score;
  };
  if (Array.isArray(model.vocab)) model.vocab.forEach(([t, s], id) => put(id, t, s));
  else for (const [t, id] of Object.entries(model.vocab)) put(id, t);
  if (!Array.isArray(model.vocab) && Array.isArray(model.merges)) {
    const ids = model.vocab as Record<string, number>;
    model.merges.forEach((m, rank) => {
      const pair = Array.isArray(m) ? m as string[] : String(m).split(" ");
      const id = ids[pair.join("")];
      if (id !== undefined && id < size && scores[id] === 0) scores[id] = -(rank + 1);
    });
  }
  const special = new Set<number>();
  for (const a of tj.added_tokens ?? []) {
    put(a.id, a.content);
    if (a.special) special.add(a.id);
  }
  for (let id = 0; id < size; id++) {
    const t = tokens[id];
    if (t === undefined) {
      tokens[id] = `<judgeq_pad_${id}>`;
      types[id] = GGUF_TOKEN_TYPE.userDefined;
    } else if (t === "<unk>") types[id] = GGUF_TOKEN_TYPE.unknown;
    else if (special.has(id)) types[id] = GGUF_TOKEN_TYPE.control;
    else if (BYTE_TOKEN.test(t)) types[id] = GGUF_TOKEN_TYPE.byte;
  }
  return { tokens: tokens as string[], scores, types };
}

interface TensorOut {
  name: string;
  dims: number[]; // fastest-varying first
  data: Float32Array;
}

function tensorsOf(w: ModelWeights): TensorOut[] {
  const c = w.config;
  const q = c.nHeads * c.headDim, kv = c.nKvHeads * c.headDim;
  const out: TensorOut[] = [{ name: "token_embd.weight", dims: [c.dim, c.vocabSize], data: w.embed }];
  w.layers.forEach((l, i) => {
    const p = `blk.${i}.`;
    out.push(
      { name: p + "attn_norm.weight", dims: [c.dim], data: l.attnNorm },
      {
        name: p + "attn_q.weight",
        dims: [c.dim, q],
        data: unpermuteRopeRows(l.wq, c.nHeads, c.headDim, c.dim),
      },
      {
        name: p + "attn_k.weight",
        dims: [c.dim, kv],
        data: unpermuteRopeRows(l.wk, c.nKvHeads, c.headDim, c.dim),
      },
      { name: p + "attn_v.weight", dims: [c.dim, kv], data: l.wv },
      { name: p + "attn_output.weight", dims: [q, c.dim], data: l.wo },
      { name: p + "ffn_norm.weight", dims: [c.dim], data: l.mlpNorm },
      { name: p + "ffn_gate.weight", dims: [c.dim, c.hiddenDim], data: l.wGate },
      { name: p + "ffn_up.weight", dims: [c.dim, c.hiddenDim], data: l.wUp },
      { name: p + "ffn_down.weight", dims: [c.hiddenDim, c.dim], data: l.wDown },
    );
  });
  out.push({ name: "output_norm.weight", dims: [c.dim], data: w.finalNorm });
  // Tied embeddings: llama.cpp falls back to token_embd when output.weight is absent.
  if (!(c.tiedEmbeddings || w.lmHead === w.embed)) {
    out.push({ name: "output.weight", dims: [c.dim, c.vocabSize], data: w.lmHead });
  }
  for (const t of out) {
    const n = t.dims.reduce((a, b) => a * b, 1);
    if (t.data.length !== n) {
      throw new Error(`${t.name}: ${t.data.length} values, dims [${t.dims}] need ${n}`);
    }
  }
  return out;
}

/** The metadata key/values written, in order. */
export function ggufMetadata(
  w: ModelWeights,
  vocab: GgufVocab,
  opts: GgufOptions = {},
): [string, MetaValue][] {
  const c = w.config;
  const u32 = (value: number): MetaValue => ({ type: "u32", value });
  const f32 = (value: number): MetaValue => ({ type: "f32", value });
  return [
    ["general.architecture", { type: "string", value: "llama" }],
    ["general.name", { type: "string", value: opts.name ?? "judgeq" }],
    ["general.file_type", u32(0)], // ALL_F32
    ["general.alignment", u32(opts.alignment ?? 32)],
    ["llama.vocab_size", u32(c.vocabSize)],
    ["llama.context_length", u32(opts.contextLength ?? c.maxSeqLen)],
    ["llama.embedding_length", u32(c.dim)],
    ["llama.block_count", u32(c.nLayers)],
    ["llama.feed_forward_length", u32(c.hiddenDim)],
    ["llama.attention.head_count", u32(c.nHeads)],
    ["llama.attention.head_count_kv", u32(c.nKvHeads)],
    ["llama.attention.key_length", u32(c.headDim)],
    ["llama.attention.value_length", u32(c.headDim)],
    ["llama.rope.dimension_count", u32(c.headDim)],
    ["llama.rope.freq_base", f32(c.ropeTheta)],
    ["llama.attention.layer_norm_rms_epsilon", f32(c.rmsNormEps)],
    ["tokenizer.ggml.model", { type: "string", value: "llama" }],
    ["tokenizer.ggml.tokens", { type: "strings", value: vocab.tokens }],
    ["tokenizer.ggml.scores", { type: "f32s", value: vocab.scores }],
    ["tokenizer.ggml.token_type", { type: "i32s", value: vocab.types }],
    ["tokenizer.ggml.bos_token_id", u32(c.bosTokenId ?? 1)],
    ["tokenizer.ggml.eos_token_id", u32(c.eosTokenIds[0] ?? 2)],
    ["tokenizer.ggml.unknown_token_id", u32(0)],
    ["tokenizer.ggml.add_bos_token", { type: "bool", value: false }],
    ["tokenizer.ggml.add_eos_token", { type: "bool", value: false }],
  ];
}

const enc = new TextEncoder();

class Writer {
  bytes: Uint8Array;
  view: DataView;
  at = 0;
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }
  u32(v: number) {
    this.view.setUint32(this.at, v, true);
    this.at += 4;
  }
  i32(v: number) {
    this.view.setInt32(this.at, v, true);
    this.at += 4;
  }
  u64(v: number) {
    this.view.setBigUint64(this.at, BigInt(v), true);
    this.at += 8;
  }
  f32(v: number) {
    this.view.setFloat32(this.at, v, true);
    this.at += 4;
  }
  u8(v: number) {
    this.bytes[this.at++] = v;
  }
  str(s: Uint8Array) {
    this.u64(s.length);
    this.bytes.set(s, this.at);
    this.at += s.length;
  }
}

const pad = (n: number, a: number) => Math.ceil(n / a) * a;

/** Encodes the weights (all tensors F32) and vocabulary as a GGUF v3 file of the `llama` architecture. */
export function encodeGgufF32(weights: ModelWeights, vocab: GgufVocab, opts: GgufOptions = {}): Uint8Array {
  const c = weights.config;
  const why = ggufUnsupportedReason(c);
  if (why) throw new Error(why);
  if (vocab.tokens.length !== c.vocabSize || vocab.scores.length !== c.vocabSize) {
    throw new Error(`vocab has ${vocab.tokens.length} tokens, the model ${c.vocabSize}`);
  }
  if (vocab.types.length !== c.vocabSize) throw new Error("vocab.types length differs from the vocab size");
  const alignment = opts.alignment ?? 32;
  if (!(Number.isInteger(alignment) && alignment > 0 && alignment % 8 === 0)) {
    throw new Error(`alignment ${alignment} must be a positive multiple of 8`);
  }
  const meta = ggufMetadata(weights, vocab, { ...opts, alignment });
  const tensors = tensorsOf(weights);

  // Sizes first, so the file is written into one buffer.
  const keyBytes = meta.map(([k]) => enc.encode(k));
  const strCache = new Map<string, Uint8Array>();
  const sb = (s: string) => {
    let b = strCache.get(s);
    if (!b) strCache.set(s, b = enc.encode(s));
    return b;
  };
  let header = 4 + 4 + 8 + 8;
  meta.forEach(([, v], i) => {
    header += 8 + keyBytes[i].length + 4;
    switch (v.type) {
      case "u32":
      case "i32":
      case "f32":
        header += 4;
        break;
      case "bool":
        header += 1;
        break;
      case "string":
        header += 8 + sb(v.value).length;
        break;
      case "strings":
        header += 4 + 8 + v.value.reduce((a, s) => a + 8 + sb(s).length, 0);
        break;
      case "f32s":
      case "i32s":
        header += 4 + 8 + 4 * v.value.length;
    }
  });
  const offsets: number[] = [];
  let dataSize = 0;
  for (const t of tensors) {
    header += 8 + sb(t.name).length + 4 + 8 * t.dims.length + 4 + 8;
    dataSize = pad(dataSize, alignment);
    offsets.push(dataSize);
    dataSize += t.data.length * 4;
  }
  const dataStart = pad(header, alignment);
  const w = new Writer(dataStart + dataSize);

  w.bytes.set(enc.encode("GGUF"), 0);
  w.at = 4;
  w.u32(3);
  w.u64(tensors.length);
  w.u64(meta.length);
  meta.forEach(([, v], i) => {
    w.str(keyBytes[i]);
    switch (v.type) {
      case "u32":
        w.u32(GGUF_TYPE.u32), w.u32(v.value);
        break;
      case "i32":
        w.u32(GGUF_TYPE.i32), w.i32(v.value);
        break;
      case "f32":
        w.u32(GGUF_TYPE.f32), w.f32(v.value);
        break;
      case "bool":
        w.u32(GGUF_TYPE.bool), w.u8(v.value ? 1 : 0);
        break;
      case "string":
        w.u32(GGUF_TYPE.string), w.str(sb(v.value));
        break;
      case "strings":
        w.u32(GGUF_TYPE.array), w.u32(GGUF_TYPE.string), w.u64(v.value.length);
        for (const s of v.value) w.str(sb(s));
        break;
      case "f32s":
        w.u32(GGUF_TYPE.array), w.u32(GGUF_TYPE.f32), w.u64(v.value.length);
        for (let j = 0; j < v.value.length; j++) w.f32(v.value[j]);
        break;
      case "i32s":
        w.u32(GGUF_TYPE.array), w.u32(GGUF_TYPE.i32), w.u64(v.value.length);
        for (let j = 0; j < v.value.length; j++) w.i32(v.value[j]);
    }
  });
  tensors.forEach((t, i) => {
    w.str(sb(t.name));
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(0); // GGML_TYPE_F32
    w.u64(offsets[i]);
  });
  if (w.at !== header) throw new Error(`GGUF header size mismatch: wrote ${w.at}, planned ${header}`);
  tensors.forEach((t, i) => {
    w.bytes.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), dataStart + offsets[i]);
  });
  return w.bytes;
}
