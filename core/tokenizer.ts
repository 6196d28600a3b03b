/**
 * Text tokenizer: a thin, pure wrapper over `@huggingface/tokenizers` (the JS port of HF tokenizers) that
 * takes the parsed tokenizer.json / tokenizer_config.json objects of a model directory.
 *
 * The wrapper owns BOS handling (the HF post-processor is never asked to add specials) so that every
 * tokenizer behaves alike, and it never "cleans up" spaces when decoding, so decode(encode(x)) == x and
 * streamed text equals the full decode.
 *
 * Text is text: by default the literal text of a special token ("<s>", "</s>", "<|eot_id|>") is
 * tokenized as ordinary characters, never as the control token (HF's `split_special_tokens`), so user
 * text cannot end a turn or fake a role. `allowSpecial: true` parses it as HF's plain encode does;
 * encodeTemplate lets a chat template's own control tokens through while the values it formats stay text.
 */
import { Tokenizer } from "@huggingface/tokenizers";
import * as E from "fp-ts/Either";
import { z } from "zod";
import { fail, type JudgeQError } from "./errors.ts";

export interface SpecialToken {
  id: number;
  content: string;
}

export interface TextTokenizer {
  /**
   * Token ids of `text`. BOS is prepended when `addBos` (default: `addBosDefault`) unless already first.
   * Special-token text becomes control tokens only with `allowSpecial` (default false: see above).
   */
  encode(text: string, opts?: { addBos?: boolean; allowSpecial?: boolean }): number[];
  /**
   * A lower bound on the number of tokens `text` encodes to, found without encoding it (O(1)), so that
   * a text that cannot fit a context is refused before any tokenizing. 0 for a tokenizer that may drop text.
   */
  minTokens(text: string): number;
  /**
   * UTF-8 bytes of text the vocabulary's longest piece spells (a byte-level vocabulary's characters count one
   * byte each; SentencePiece's space marker three, as written): no token covers more of a text. Infinity
   * for a vocabulary with a piece that is not text. Measured on first use; minTokens and the server's
   * early refusal of overlong texts (server/generation.ts) both read it.
   */
  longestPieceBytes(): number;
  /**
   * Text of `ids`; throws RangeError on an id that is not in the vocabulary (ids of the model's that the
   * tokenizer lacks, below createTokenizer's `maxIds`, are no text).
   */
  decode(ids: readonly number[], opts?: { skipSpecial?: boolean }): string;
  readonly bosId: number | null;
  /** Stop tokens: the config's eos_token plus known end-of-turn specials present in the vocab. */
  readonly eosIds: number[];
  readonly addBosDefault: boolean;
  /** Number of ids, added tokens included (max id + 1). */
  readonly vocabSize: number;
  idToToken(id: number): string | undefined;
  tokenToId(token: string): number | undefined;
  /** The default Jinja chat template from tokenizer_config.json, if any. */
  readonly chatTemplate: string | null;
  /** bos_token / eos_token strings, as chat templates see them. */
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  /** Added tokens marked special, by id. */
  readonly specialTokens: readonly SpecialToken[];
  isSpecial(id: number): boolean;
}

/** Whitespace as text has it (and SentencePiece's space marker), and as byte-level vocabularies spell it. */
const WHITESPACE = new Set([" ", "\n", "\t", "\r", "\u2581"]);
const BYTE_LEVEL_WHITESPACE = new Set(["\u0120", "\u010a", "\u0109", "\u010d"]); // Ġ Ċ ĉ č

/** End-of-turn tokens of common chat formats; a chat model stops on them even without generation_config. */
const END_OF_TURN = ["<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>"];

const addedTokenSchema = z.object({
  id: z.number().int().nonnegative(),
  content: z.string(),
  special: z.boolean().optional(),
}).passthrough();

const tokenizerJsonSchema = z.object({
  // The model types the JS port implements; it would take anything else for a "Legacy" word lookup.
  model: z.object({ type: z.enum(["BPE", "Unigram", "WordPiece"]) }).passthrough(),
  added_tokens: z.array(addedTokenSchema).optional(),
}).passthrough();

/** A token in tokenizer_config.json is a string or an AddedToken-like object. */
const tokenRef = z.union([z.string(), z.object({ content: z.string() }).passthrough()]).nullish();

const configSchema = z.object({
  bos_token: tokenRef,
  eos_token: tokenRef,
  add_bos_token: z.boolean().nullish(),
  chat_template: z.union([
    z.string(),
    z.array(z.object({ name: z.string(), template: z.string() })),
    z.record(z.string(), z.string()),
  ]).nullish(),
}).passthrough();

const tokenText = (t: z.infer<typeof tokenRef>): string | null =>
  t === null || t === undefined ? null : typeof t === "string" ? t : t.content;

const issueText = (e: z.ZodError) => {
  const i = e.issues[0];
  return `${i.path.length ? i.path.join(".") + ": " : ""}${i.message}`;
};

function pickTemplate(t: z.infer<typeof configSchema>["chat_template"]): string | null {
  if (t === null || t === undefined) return null;
  if (typeof t === "string") return t;
  if (Array.isArray(t)) return t.find((x) => x.name === "default")?.template ?? t[0]?.template ?? null;
  return t.default ?? Object.values(t)[0] ?? null;
}

/** The most ids a tokenizer may have when no model bounds it (Llama 3 has 128,256). */
export const MAX_TOKENIZER_IDS = 1 << 24;

/**
 * The first id in the vocabulary or the added tokens that is not an integer in [0, limit), as an error
 * naming where it is. Checked before the JS port sees the file: it sizes arrays by the largest id (an id
 * of 2^31 took two minutes and gigabytes), and takes a non-number id without complaint.
 */
function badTokenId(tj: { model: Record<string, unknown>; added_tokens?: { id: number }[] }, limit: number) {
  const bad = (id: unknown) => typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= limit;
  const vocab = tj.model.vocab;
  if (tj.model.type === "Unigram") {
    if (!Array.isArray(vocab)) return "model.vocab: a Unigram vocabulary must be a list of [piece, score]";
    if (vocab.length > limit) {
      return `model.vocab: ${vocab.length} pieces, more than the ${limit} ids allowed`;
    }
    const i = vocab.findIndex((p) =>
      !Array.isArray(p) || typeof p[0] !== "string" || typeof p[1] !== "number" || !Number.isFinite(p[1])
    );
    if (i >= 0) return `model.vocab.${i}: must be [piece, score]`;
  } else if (vocab !== undefined) {
    if (vocab === null || typeof vocab !== "object" || Array.isArray(vocab)) {
      return "model.vocab: must map tokens to ids";
    }
    for (const [token, id] of Object.entries(vocab)) {
      if (bad(id)) {
        return `model.vocab: the id of ${JSON.stringify(token.slice(0, 40))} is ${
          JSON.stringify(id)
        }, not an integer in [0, ${limit})`;
      }
    }
  }
  for (const [i, t] of (tj.added_tokens ?? []).entries()) {
    if (bad(t.id)) return `added_tokens.${i}.id: ${t.id} is not an integer in [0, ${limit})`;
  }
  return null;
}

/**
 * Builds a tokenizer from parsed tokenizer.json (and tokenizer_config.json) objects. `maxIds` is the model's
 * vocab_size (checked against its embeddings): no tokenizer id may reach past it (default
 * MAX_TOKENIZER_IDS), and the model's ids past the tokenizer's (padding rows) decode as no text.
 */
export function createTokenizer(
  tokenizerJson: unknown,
  tokenizerConfig?: unknown,
  maxIds?: number,
): E.Either<JudgeQError, TextTokenizer> {
  const tj = tokenizerJsonSchema.safeParse(tokenizerJson);
  if (!tj.success) return E.left(fail("invalid_model_file", issueText(tj.error), "tokenizer.json"));
  const badId = badTokenId(tj.data, maxIds ?? MAX_TOKENIZER_IDS);
  if (badId !== null) return E.left(fail("invalid_model_file", badId, "tokenizer.json"));
  const tc = configSchema.safeParse(tokenizerConfig ?? {});
  if (!tc.success) return E.left(fail("invalid_model_file", issueText(tc.error), "tokenizer_config.json"));
  const cfg = tc.data;

  let hf: Tokenizer;
  try {
    // The JS port insists on these keys being present (null is fine), as they are in real files.
    const full = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      added_tokens: [],
      ...tj.data,
    };
    hf = new Tokenizer(full, cfg);
    hf.encode("a b"); // some parts (regexes, merges) only fail when used
  } catch (e) {
    return E.left(fail("invalid_model_file", `cannot load: ${(e as Error).message}`, "tokenizer.json"));
  }

  const added = tj.data.added_tokens ?? [];
  const specialTokens = added.filter((t) => t.special).map(({ id, content }) => ({ id, content }))
    .sort((a, b) => a.id - b.id);
  const specialIds = new Set(specialTokens.map((t) => t.id));
  let vocabSize = 0;
  for (const id of hf.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1);
  if (vocabSize === 0) return E.left(fail("invalid_model_file", "empty vocabulary", "tokenizer.json"));
  const modelIds = maxIds ?? vocabSize;
  const idOfRef = (name: string | null, field: string): E.Either<JudgeQError, number | null> => {
    if (name === null) return E.right(null);
    const id = hf.token_to_id(name);
    return id === undefined
      ? E.left(
        fail(
          "invalid_model_file",
          `${JSON.stringify(name)} is not in the vocabulary`,
          `tokenizer_config.${field}`,
        ),
      )
      : E.right(id);
  };
  const bosToken = tokenText(cfg.bos_token);
  const eosToken = tokenText(cfg.eos_token);
  const bos = idOfRef(bosToken, "bos_token");
  if (E.isLeft(bos)) return bos;
  const eos = idOfRef(eosToken, "eos_token");
  if (E.isLeft(eos)) return eos;
  const bosId = bos.right;
  const eosIds = [eos.right, ...END_OF_TURN.map((t) => hf.token_to_id(t))]
    .filter((id): id is number =>
      id !== undefined && id !== null && (id === eos.right || specialIds.has(id))
    );
  const addBosDefault = cfg.add_bos_token ?? bosId !== null;

  const idToToken = (id: number) => hf.id_to_token(id) ?? undefined;
  // The same tokenizer without its special added tokens: their text is then read by the model's own
  // pieces. Built on first need: text that yields no control token is encoded alike by both.
  let plain: Tokenizer | null = null;
  const plainTokenizer = () =>
    plain ??= new Tokenizer({
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      ...tj.data,
      added_tokens: added.filter((t) => !t.special),
    }, cfg);
  /** Whether token `i` is a special token spelled out (an added token's match, or possibly the model's unk). */
  const isControl = (e: { ids: number[]; tokens: string[] }, i: number) =>
    specialIds.has(e.ids[i]) && idToToken(e.ids[i]) === e.tokens[i];
  // The model's unknown token: without the special added tokens it can only be the model's answer to a
  // piece it cannot spell (WordPiece, Unigram or BPE without byte fallback), as HF gives it too.
  const m = tj.data.model as { unk_token?: unknown; unk_id?: unknown };
  const unkId = typeof m.unk_token === "string"
    ? hf.token_to_id(m.unk_token) ?? null
    : typeof m.unk_id === "number"
    ? m.unk_id
    : null;
  const textIds = (text: string): number[] => {
    const e = hf.encode(text, { add_special_tokens: false });
    if (!e.ids.some((_, i) => isControl(e, i))) return e.ids;
    const p = plainTokenizer().encode(text, { add_special_tokens: false });
    const at = p.ids.findIndex((id, i) => id !== unkId && isControl(p, i));
    if (at >= 0) {
      // A model whose pieces spell a special token whole (none known): refuse rather than obey it.
      throw fail("invalid_request", `the text ${JSON.stringify(p.tokens[at])} reads as a control token`);
    }
    return p.ids;
  };
  // Tokens cover at most `widest` UTF-8 bytes of text each: a decoded piece is never longer than its token's
  // spelling (byte-level characters, "<0x..>" fallbacks, "\u2581" for a space), plus one byte for a space a
  // decoder may add. With decode(encode(x)) === x the text's bytes are the pieces' bytes, and a string's
  // UTF-16 length never exceeds its UTF-8 length: so tokens >= text.length / widest. The same holds for
  // the characters that are not whitespace, against the most any token spells (`solid`): that bound is the
  // tighter one where the vocabulary has long runs of spaces (Llama 3: 128). Measured on first use.
  // A byte-level vocabulary spells each byte as one character (some of them two bytes in UTF-8).
  const byteLevel = JSON.stringify(tj.data.decoder ?? null).includes('"ByteLevel"');
  /** The longest piece, and the most non-whitespace text any piece spells, in UTF-8 bytes. */
  let pieces: { longest: number; solid: number } | null = null;
  const measurePieces = (): { longest: number; solid: number } => {
    if (pieces !== null) return pieces;
    const utf8 = new TextEncoder();
    let longest = 0, solid = 0;
    for (const piece of hf.get_vocab(true).keys() as Iterable<unknown>) {
      // A piece that is not a string (a malformed vocabulary the JS port accepted) has no length to bound.
      if (typeof piece !== "string") return pieces = { longest: Infinity, solid: Infinity };
      longest = Math.max(longest, byteLevel ? piece.length : utf8.encode(piece).length);
      let n = 0;
      for (const ch of piece) {
        if (byteLevel ? !BYTE_LEVEL_WHITESPACE.has(ch) : !WHITESPACE.has(ch)) {
          n += byteLevel ? 1 : utf8.encode(ch).length;
        }
      }
      solid = Math.max(solid, n);
    }
    return pieces = { longest, solid };
  };
  let bounds: { widest: number; solid: number } | null = null;
  const tokenBounds = (): { widest: number; solid: number } => {
    if (bounds !== null) return bounds;
    const probe = "  a\tb\n\u0001 e\u0301 \uff21 \u{1F600}  ";
    let roundTrips = false;
    try {
      roundTrips = tokenizer.decode(tokenizer.encode(probe, { addBos: false })) === probe;
    } catch {
      // A vocabulary that cannot spell the probe (no unknown token, no byte fallback): no bound.
    }
    if (!roundTrips) return bounds = { widest: Infinity, solid: Infinity };
    const { longest, solid } = measurePieces();
    return bounds = { widest: longest + 1, solid: Math.max(1, solid) };
  };
  const tokenizer: TextTokenizer = {
    minTokens(text) {
      const { widest, solid } = tokenBounds();
      let spaces = 0;
      for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (c === 32 || c === 10 || c === 9 || c === 13 || c === 0x2581) spaces++; // WHITESPACE
      }
      return Math.max(Math.ceil(text.length / widest), Math.ceil((text.length - spaces) / solid));
    },
    longestPieceBytes: () => measurePieces().longest,
    encode(text, opts) {
      const ids = opts?.allowSpecial ? hf.encode(text, { add_special_tokens: false }).ids : textIds(text);
      // A vocabulary with no unknown token and no byte fallback gives no id for what it cannot spell.
      if (ids.some((id) => !Number.isInteger(id))) {
        throw fail("invalid_request", "the model's tokenizer has no token for part of this text");
      }
      const addBos = (opts?.addBos ?? addBosDefault) && bosId !== null && ids[0] !== bosId;
      return addBos ? [bosId, ...ids] : ids;
    },
    decode(ids, opts) {
      // Ids within the model's (`maxIds`) that no token has (padded embedding rows past the tokenizer's,
      // or a gap in its ids) can be generated: they have no text.
      const known = ids.filter((id) =>
        !(Number.isInteger(id) && id >= 0 && id < modelIds && idToToken(id) === undefined)
      );
      if (known.length === 0) return ""; // the JS port throws on an empty list
      for (const id of known) {
        if (!Number.isInteger(id) || idToToken(id) === undefined) {
          throw new RangeError(`unknown token id ${id}`);
        }
      }
      return hf.decode(known, {
        skip_special_tokens: opts?.skipSpecial ?? false,
        clean_up_tokenization_spaces: false,
      });
    },
    bosId,
    eosIds,
    addBosDefault,
    vocabSize,
    idToToken,
    tokenToId: (token) => hf.token_to_id(token),
    chatTemplate: pickTemplate(cfg.chat_template),
    bosToken,
    eosToken,
    specialTokens,
    isSpecial: (id) => specialIds.has(id),
  };
  return E.right(tokenizer);
}

export interface StreamDecoder {
  /** Text completed by `id`; "" while a UTF-8 character is still incomplete. */
  push(id: number): string;
  /** Whatever is still held back (e.g. an incomplete character at the end). */
  flush(): string;
}

/**
 * Incremental detokenizer. Decoding each token alone is wrong (SentencePiece drops a leading space,
 * byte tokens are parts of characters), so it decodes a small window of recent ids and emits the text the
 * newest ids added to it, holding back while the text ends in U+FFFD (an incomplete character).
 * The concatenated pushes equal decode(prefixIds + pushed ids) minus decode(prefixIds).
 * `prefixIds` (e.g. the prompt) give context: a first generated " upon" then keeps its space.
 */
export function createStreamDecoder(
  tok: TextTokenizer,
  opts: { skipSpecial?: boolean; prefixIds?: readonly number[] } = {},
): StreamDecoder {
  const skipSpecial = opts.skipSpecial ?? true;
  const ids = [...(opts.prefixIds ?? [])];
  // Text of ids[prefixOffset, readOffset) has been emitted (or belongs to the prefix).
  let prefixOffset = Math.max(0, ids.length - 4);
  let readOffset = ids.length;
  const text = (from: number, to = ids.length) => tok.decode(ids.slice(from, to), { skipSpecial });

  const advance = (final: boolean): string => {
    const before = text(prefixOffset, readOffset);
    const after = text(prefixOffset);
    if (!final && (after.length <= before.length || after.endsWith("\uFFFD") || !after.startsWith(before))) {
      return "";
    }
    prefixOffset = readOffset;
    readOffset = ids.length;
    return after.startsWith(before) ? after.slice(before.length) : "";
  };
  return {
    push(id) {
      ids.push(id);
      return advance(false);
    },
    flush: () => advance(true),
  };
}

/**
 * Text of `ids` as it reads after `prefixIds` (the prompt or question): a first token's leading space
 * is kept, so prefix text + continuation text reads as the whole sequence does.
 */
export function decodeContinuation(
  tok: TextTokenizer,
  prefixIds: readonly number[],
  ids: readonly number[],
): string {
  const stream = createStreamDecoder(tok, { prefixIds });
  let text = "";
  for (const id of ids) text += stream.push(id);
  return text + stream.flush();
}

/** Code points standing for hidden text while a template renders (Supplementary Private Use Area-B). */
const HIDDEN_FIRST = 0x100000, HIDDEN_LAST = 0x10fffd;
const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const hiders = new WeakMap<TextTokenizer, RegExp>();

/**
 * Token ids of a template rendered around untrusted values (a chat template around messages): the
 * template's own special-token text becomes control tokens, the values' never. `render` gets `hide`,
 * to apply to every untrusted value before the template sees it: it swaps each special token's text
 * (and any code point of the range it uses itself) for a private code point, so the rendered text
 * holds no special token from a value; each hidden run is then encoded as plain text. Values without
 * special-token text render and tokenize exactly as without `hide` (as transformers would).
 */
export function encodeTemplate(
  tok: TextTokenizer,
  render: (hide: (value: string) => string) => string,
  opts: { addBos?: boolean } = {},
): number[] {
  let re = hiders.get(tok);
  if (!re) {
    const specials = tok.specialTokens.map((t) => t.content).filter((c) => c !== "")
      .sort((a, b) => b.length - a.length).map(escapeRegExp);
    re = new RegExp([...specials, "[\\u{100000}-\\u{10FFFD}]"].join("|"), "gu");
    hiders.set(tok, re);
  }
  const hidden: string[] = [];
  const hide = (value: string) =>
    value.replace(re, (m) => {
      if (hidden.length > HIDDEN_LAST - HIDDEN_FIRST) {
        throw fail("invalid_request", "too many special tokens");
      }
      hidden.push(m);
      return String.fromCodePoint(HIDDEN_FIRST + hidden.length - 1);
    });
  const text = render(hide);
  const ids: number[] = [];
  // split() with a capturing group: text at even indices, one hidden code point at odd ones.
  text.split(/([\u{100000}-\u{10FFFD}])/u).forEach((part, i) => {
    const h = i % 2 === 1 ? hidden[part.codePointAt(0)! - HIDDEN_FIRST] : undefined;
    const add = h !== undefined
      ? tok.encode(h, { addBos: false })
      : part
      ? tok.encode(part, { addBos: false, allowSpecial: true })
      : [];
    for (const id of add) ids.push(id); // not push(...add): a long text would overflow the stack
  });
  const addBos = (opts.addBos ?? tok.addBosDefault) && tok.bosId !== null && ids[0] !== tok.bosId;
  return addBos ? [tok.bosId!, ...ids] : ids;
}
