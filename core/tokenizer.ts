/**
 * Text tokenizer: a thin, pure wrapper over `@huggingface/tokenizers` (the JS port of HF tokenizers) that
 * takes the parsed tokenizer.json / tokenizer_config.json objects of a model directory.
 *
 * The wrapper owns BOS handling (the HF post-processor is never asked to add specials) so that every
 * tokenizer behaves alike, and it never "cleans up" spaces when decoding, so decode(encode(x)) == x and
 * streamed text equals the full decode.
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
  /** Token ids of `text`. BOS is prepended when `addBos` (default: `addBosDefault`) unless already first. */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  /** Text of `ids`; throws RangeError on an id that is not in the vocabulary. */
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

/** Builds a tokenizer from parsed tokenizer.json (and tokenizer_config.json) objects. */
export function createTokenizer(
  tokenizerJson: unknown,
  tokenizerConfig?: unknown,
): E.Either<JudgeQError, TextTokenizer> {
  const tj = tokenizerJsonSchema.safeParse(tokenizerJson);
  if (!tj.success) return E.left(fail("invalid_model_file", issueText(tj.error), "tokenizer.json"));
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
  const tokenizer: TextTokenizer = {
    encode(text, opts) {
      const ids = hf.encode(text, { add_special_tokens: false }).ids;
      const addBos = (opts?.addBos ?? addBosDefault) && bosId !== null && ids[0] !== bosId;
      return addBos ? [bosId, ...ids] : ids;
    },
    decode(ids, opts) {
      if (ids.length === 0) return ""; // the JS port throws on an empty list
      for (const id of ids) {
        if (!Number.isInteger(id) || idToToken(id) === undefined) {
          throw new RangeError(`unknown token id ${id}`);
        }
      }
      return hf.decode([...ids], {
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
