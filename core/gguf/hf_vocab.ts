/**
 * GGUF vocabularies from a Hugging Face tokenizer.json: SentencePiece-style (`llama`: BPE with byte
 * fallback or Unigram, scores) or byte-level BPE (`gpt2`: tokens and merges), padded to the model's size.
 */
import { GGUF_TOKEN_TYPE, type GgufVocab, type GgufWriteOptions } from "./model_writer.ts";
import { preTokenizerOfRegex } from "./tokenizer_files.ts";

const BYTE_TOKEN = /^<0x[0-9A-F]{2}>$/;

interface TokenizerJsonLike {
  model?: {
    type?: string;
    vocab?: Record<string, number> | [string, number][];
    merges?: unknown[];
    byte_fallback?: boolean;
  };
  added_tokens?: { id: number; content: string; special?: boolean }[];
  pre_tokenizer?: unknown;
}

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

const mergeText = (m: unknown) => (Array.isArray(m) ? (m as string[]).join(" ") : String(m));

/** Whether a tokenizer.json is byte-level BPE (GPT-2 style: Llama 3, Qwen2) rather than SentencePiece-style. */
export function isByteLevel(json: unknown): boolean {
  const s = JSON.stringify((json as TokenizerJsonLike).pre_tokenizer ?? null);
  return (json as TokenizerJsonLike).model?.type === "BPE" && s.includes('"ByteLevel"');
}

/**
 * The vocabulary of a tokenizer.json padded to `size` entries (`<judgeq_pad_N>`, user-defined). Byte-level
 * BPE gives a `gpt2` vocabulary with `pre` as its pre-tokenizer name; anything else a `llama` one, scored
 * by Unigram scores when present, else minus the rank of the merge that produces the token.
 */
export function vocabFromTokenizerJson(json: unknown, size: number, pre = "default"): GgufVocab {
  const tj = json as TokenizerJsonLike;
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
  const byteLevel = isByteLevel(json);
  if (!byteLevel && !Array.isArray(model.vocab) && Array.isArray(model.merges)) {
    const ids = model.vocab as Record<string, number>;
    model.merges.forEach((m, rank) => {
      const id = ids[mergeText(m).replace(" ", "")];
      if (id !== undefined && id < size && scores[id] === 0) scores[id] = -(rank + 1);
    });
  }
  const special = new Set<number>(), added = new Set<number>();
  for (const a of tj.added_tokens ?? []) {
    put(a.id, a.content);
    (a.special ? special : added).add(a.id);
  }
  for (let id = 0; id < size; id++) {
    const t = tokens[id];
    if (t === undefined) {
      tokens[id] = `<judgeq_pad_${id}>`;
      types[id] = GGUF_TOKEN_TYPE.userDefined;
    } else if (special.has(id)) types[id] = t === "<unk>" ? GGUF_TOKEN_TYPE.unknown : GGUF_TOKEN_TYPE.control;
    else if (added.has(id)) types[id] = GGUF_TOKEN_TYPE.userDefined;
    else if (t === "<unk>") types[id] = GGUF_TOKEN_TYPE.unknown;
    else if (!byteLevel && BYTE_TOKEN.test(t)) types[id] = GGUF_TOKEN_TYPE.byte;
  }
  if (byteLevel) {
    const merges = (model.merges ?? []).map(mergeText);
    return { model: "gpt2", tokens: tokens as string[], types, merges, pre };
  }
  return { tokens: tokens as string[], scores, types };
}

/** The `tokenizer.ggml.pre` name whose regex a byte-level tokenizer.json's Split pre-tokenizer uses. */
export function preTokenizerName(json: unknown): string {
  const pre = (json as TokenizerJsonLike).pre_tokenizer as Record<string, unknown> | null | undefined;
  const parts = (pre?.type === "Sequence" ? pre.pretokenizers : [pre]) as
    | Record<string, unknown>[]
    | undefined;
  for (const p of parts ?? []) {
    const regex = (p?.pattern as { Regex?: string } | undefined)?.Regex;
    if (p?.type === "Split" && regex !== undefined) {
      const name = preTokenizerOfRegex(regex);
      if (name) return name;
    }
    // GPT-2's own ByteLevel pre-tokenizer (use_regex true) splits with the GPT-2 pattern.
    if (p?.type === "ByteLevel" && p.use_regex === true) return "gpt-2";
  }
  throw new Error("tokenizer.json: its pre-tokenizer matches none of gpt-2, llama-bpe, qwen2");
}

type TokenRef = string | { content?: string } | null | undefined;
const refText = (t: TokenRef) => (typeof t === "string" ? t : t?.content ?? null);

/**
 * A GGUF vocabulary and the writer's tokenizer options (special ids, add_bos, chat template) from a
 * Hugging Face tokenizer.json and tokenizer_config.json, padded to `size` ids.
 */
export function ggufTokenizerFromHf(
  tokenizerJson: unknown,
  tokenizerConfig: unknown,
  size: number,
): { vocab: GgufVocab; options: Partial<GgufWriteOptions> } {
  const byteLevel = isByteLevel(tokenizerJson);
  const vocab = vocabFromTokenizerJson(
    tokenizerJson,
    size,
    byteLevel ? preTokenizerName(tokenizerJson) : "default",
  );
  const tc = (tokenizerConfig ?? {}) as Record<string, unknown>;
  const idOf = (key: string) => {
    const text = refText(tc[key] as TokenRef);
    if (text === null) return null;
    const id = vocab.tokens.indexOf(text);
    if (id < 0) throw new Error(`tokenizer_config.${key}: ${JSON.stringify(text)} is not in the vocabulary`);
    return id;
  };
  const template = tc.chat_template;
  const bosId = idOf("bos_token");
  return {
    vocab,
    options: {
      bosId,
      eosId: idOf("eos_token"),
      unkId: idOf("unk_token"),
      padId: idOf("pad_token"),
      // As core/tokenizer.ts reads a directory: add_bos_token, else whenever there is a BOS token.
      addBos: typeof tc.add_bos_token === "boolean" ? tc.add_bos_token : bosId !== null,
      chatTemplate: typeof template === "string" ? template : null,
    },
  };
}
