/**
 * A GGUF file's tokenizer (`tokenizer.ggml.*`) as the Hugging Face tokenizer.json / tokenizer_config.json
 * objects core/tokenizer.ts builds tokenizers from:
 * - `llama` (SentencePiece): BPE with byte fallback over the pieces. llama.cpp merges ANY adjacent pair
 *   whose concatenation is a piece, best score first, so every split of a normal piece into two normal
 *   pieces is a merge, ranked by the piece's score (ties: by id, then shorter left part). The dummy
 *   prefix (`tokenizer.ggml.add_space_prefix`, default true) is a Prepend normalizer.
 * - `gpt2` (byte-level BPE): the vocabulary and merges as stored, the pre-tokenizer regexes of
 *   `tokenizer.ggml.pre` (default, gpt-2, llama3/llama-v3/llama-bpe, qwen2), merges ignored for whole
 *   words in the vocabulary with the Llama 3 ones, as llama.cpp does.
 * Token types: control and unknown tokens are special added tokens, user-defined ones plain added tokens.
 * Absent keys take llama.cpp's defaults: SentencePiece adds BOS (id 1; EOS 2, unknown 0); gpt2 adds BOS
 * with the Llama 3 pre-tokenizers only.
 */
import * as E from "fp-ts/Either";
import { fail, type JudgeQError } from "../errors.ts";
import { metaScalar } from "./model_config.ts";
import type { GgufFile } from "./reader.ts";

const SPACE = "\u2581";
const TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 };

interface PreTokenizer {
  /** Applied one after the other, each splitting the pieces of the last (llama.cpp's regex lists). */
  regexes: string[];
  /** A word that is a token is that token, merges or not (llama.cpp's ignore_merges). */
  ignoreMerges: boolean;
  /** llama.cpp's add_bos when the file does not say. */
  addBos: boolean;
}

const LLAMA3 =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2 =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/**
 * Pre-tokenizers by `tokenizer.ggml.pre` name, as llama.cpp's llama-vocab.cpp maps them (the regexes in
 * the models' tokenizer.json syntax; llama.cpp's "default" is its list of four).
 */
/** The pre-tokenizer name of a single regex (a byte-level tokenizer.json's Split), or null. */
export function preTokenizerOfRegex(regex: string): string | null {
  for (const name of ["llama-bpe", "qwen2", "gpt-2"]) {
    if (PRE_TOKENIZERS[name].regexes[0] === regex) return name;
  }
  return null;
}

export const PRE_TOKENIZERS: Record<string, PreTokenizer> = {
  "default": {
    regexes: [
      "[\\p{P}\\$\\+<=>\\^~\\|]+",
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
      "\\p{N}+",
      "[0-9][0-9][0-9]",
    ],
    ignoreMerges: false,
    addBos: false,
  },
  "gpt-2": { regexes: [GPT2], ignoreMerges: false, addBos: false },
  "llama3": { regexes: [LLAMA3], ignoreMerges: true, addBos: true },
  "llama-v3": { regexes: [LLAMA3], ignoreMerges: true, addBos: true },
  "llama-bpe": { regexes: [LLAMA3], ignoreMerges: true, addBos: true },
  "qwen2": { regexes: [QWEN2], ignoreMerges: false, addBos: false },
  "deepseek-r1-qwen": { regexes: [QWEN2], ignoreMerges: false, addBos: false },
};

export interface TokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
}

const bad = (message: string, key: string) => E.left(fail("invalid_model_file", message, key));

function stringArray(f: GgufFile, key: string): string[] | null {
  const v = f.metadata.get(key);
  return v?.type === "array" && v.itemType === "string" ? v.value : null;
}

function numberArray(f: GgufFile, key: string): ArrayLike<number> | null {
  const v = f.metadata.get(key);
  if (v?.type !== "array" || v.itemType === "string" || v.itemType === "array" || v.itemType === "bool") {
    return null;
  }
  if (v.itemType === "u64" || v.itemType === "i64") return (v.value as bigint[]).map(Number);
  return v.value as ArrayLike<number>;
}

/** The tokenizer.json / tokenizer_config.json objects of a GGUF file; errors name the metadata key. */
export function ggufTokenizerFiles(f: GgufFile): E.Either<JudgeQError, TokenizerFiles> {
  const modelValue = f.metadata.get("tokenizer.ggml.model");
  if (modelValue?.type !== "string") return bad("is missing or not a string", "tokenizer.ggml.model");
  const model = modelValue.value;
  if (model !== "llama" && model !== "gpt2") {
    return bad(
      `unsupported tokenizer ${JSON.stringify(model)} (supported: llama, gpt2)`,
      "tokenizer.ggml.model",
    );
  }
  const tokens = stringArray(f, "tokenizer.ggml.tokens");
  if (!tokens || tokens.length === 0) {
    return bad("is missing or not a non-empty array of strings", "tokenizer.ggml.tokens");
  }
  const n = tokens.length;
  const types = numberArray(f, "tokenizer.ggml.token_type");
  if (f.metadata.has("tokenizer.ggml.token_type") && (!types || types.length !== n)) {
    return bad(`must be ${n} integers, one per token`, "tokenizer.ggml.token_type");
  }
  const typeOf = (id: number) => types?.[id] ?? TYPE.normal;
  const id = (key: string, fallback: number | null): E.Either<JudgeQError, number | null> => {
    const v = metaScalar(f.metadata.get(`tokenizer.ggml.${key}`));
    if (v === undefined) return E.right(fallback !== null && fallback < n ? fallback : null);
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
      return bad("must be a token id", `tokenizer.ggml.${key}`);
    }
    // llama.cpp ignores (with a warning) an id past the vocabulary, as do we.
    return E.right(v < n ? v : null);
  };
  const flag = (key: string, fallback: boolean): E.Either<JudgeQError, boolean> => {
    const v = f.metadata.get(`tokenizer.ggml.${key}`);
    if (v === undefined) return E.right(fallback);
    return v.type === "bool"
      ? E.right(v.value)
      : bad(`must be a bool, got ${v.type}`, `tokenizer.ggml.${key}`);
  };
  const spm = model === "llama";
  let pre = "default";
  if (!spm) {
    const preValue = f.metadata.get("tokenizer.ggml.pre");
    const name = preValue === undefined ? "default" : preValue.type === "string" ? preValue.value : null;
    if (name === null || !Object.hasOwn(PRE_TOKENIZERS, name)) {
      return bad(
        `unsupported pre-tokenizer ${JSON.stringify(name)} (supported: ${
          Object.keys(PRE_TOKENIZERS).join(", ")
        })`,
        "tokenizer.ggml.pre",
      );
    }
    pre = name;
  }
  const ids = {
    bos: id("bos_token_id", spm ? 1 : null),
    eos: id("eos_token_id", spm ? 2 : null),
    unk: id("unknown_token_id", spm ? 0 : null),
  };
  for (const r of Object.values(ids)) if (E.isLeft(r)) return r;
  const [bos, eos, unk] = [ids.bos, ids.eos, ids.unk].map((r) => (r as E.Right<number | null>).right);
  const addBos = flag("add_bos_token", spm || PRE_TOKENIZERS[pre].addBos);
  if (E.isLeft(addBos)) return addBos;
  const spacePrefix = flag("add_space_prefix", spm);
  if (E.isLeft(spacePrefix)) return spacePrefix;
  const template = f.metadata.get("tokenizer.chat_template");
  if (template !== undefined && template.type !== "string") {
    return bad("must be a string", "tokenizer.chat_template");
  }

  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => {
    if (!Object.hasOwn(vocab, t)) vocab[t] = i;
  });
  const added = [];
  for (let i = 0; i < n; i++) {
    const t = typeOf(i);
    if (t === TYPE.control || t === TYPE.unknown || t === TYPE.userDefined) {
      added.push({
        id: i,
        content: tokens[i],
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: t !== TYPE.userDefined,
      });
    }
  }
  let modelJson: Record<string, unknown>;
  let normalizer: unknown = null, preTokenizer: unknown = null, decoder: unknown;
  if (spm) {
    const scores = numberArray(f, "tokenizer.ggml.scores");
    if (f.metadata.has("tokenizer.ggml.scores") && (!scores || scores.length !== n)) {
      return bad(`must be ${n} numbers, one per token`, "tokenizer.ggml.scores");
    }
    modelJson = {
      type: "BPE",
      dropout: null,
      unk_token: unk === null ? null : tokens[unk],
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: spmMerges(tokens, scores, typeOf, vocab),
    };
    const replace = { type: "Replace", pattern: { String: " " }, content: SPACE };
    normalizer = spacePrefix.right
      ? { type: "Sequence", normalizers: [{ type: "Prepend", prepend: SPACE }, replace] }
      : replace;
    decoder = {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: SPACE }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        ...(spacePrefix.right ? [{ type: "Strip", content: " ", start: 1, stop: 0 }] : []),
      ],
    };
  } else {
    const merges = stringArray(f, "tokenizer.ggml.merges");
    if (!merges) return bad("is missing or not an array of strings", "tokenizer.ggml.merges");
    for (let i = 0; i < merges.length; i++) {
      if (merges[i].split(" ").length !== 2) {
        return bad(`merge ${i} ${JSON.stringify(merges[i])} is not "left right"`, "tokenizer.ggml.merges");
      }
    }
    modelJson = {
      type: "BPE",
      dropout: null,
      unk_token: unk === null ? null : tokens[unk],
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: PRE_TOKENIZERS[pre].ignoreMerges,
      vocab,
      merges,
    };
    preTokenizer = {
      type: "Sequence",
      pretokenizers: [
        ...PRE_TOKENIZERS[pre].regexes.map((r) => ({
          type: "Split",
          pattern: { Regex: r },
          behavior: "Isolated",
          invert: false,
        })),
        { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    };
    decoder = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
  }
  return E.right({
    tokenizerJson: {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer,
      pre_tokenizer: preTokenizer,
      post_processor: null,
      decoder,
      model: modelJson,
    },
    tokenizerConfig: {
      add_bos_token: addBos.right && bos !== null,
      add_eos_token: false,
      bos_token: bos === null ? null : tokens[bos],
      eos_token: eos === null ? null : tokens[eos],
      unk_token: unk === null ? null : tokens[unk],
      clean_up_tokenization_spaces: false,
      ...(template ? { chat_template: template.value } : {}),
    },
  });
}

/** SentencePiece merges: every split of a normal piece into two normal pieces, best piece score first. */
function spmMerges(
  tokens: string[],
  scores: ArrayLike<number> | null,
  typeOf: (id: number) => number,
  vocab: Record<string, number>,
): [string, string][] {
  const merges: { id: number; left: string; right: string }[] = [];
  const normal = (s: string) => Object.hasOwn(vocab, s) && typeOf(vocab[s]) === TYPE.normal;
  tokens.forEach((t, id) => {
    if (vocab[t] !== id || typeOf(id) !== TYPE.normal) return;
    const chars = [...t];
    for (let k = 1; k < chars.length; k++) {
      const left = chars.slice(0, k).join(""), right = chars.slice(k).join("");
      if (normal(left) && normal(right)) merges.push({ id, left, right });
    }
  });
  const score = (id: number) => scores?.[id] ?? 0;
  merges.sort((a, b) => score(b.id) - score(a.id) || a.id - b.id || a.left.length - b.left.length);
  return merges.map((m) => [m.left, m.right]);
}
