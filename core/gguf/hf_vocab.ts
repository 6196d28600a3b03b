/**
 * GGUF vocabularies from a Hugging Face tokenizer.json: SentencePiece-style (`llama`: BPE with byte
 * fallback or Unigram, scores) or byte-level BPE (`gpt2`: tokens and merges), padded to the model's size.
 */
import { GGUF_TOKEN_TYPE, type GgufVocab } from "./model_writer.ts";

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
