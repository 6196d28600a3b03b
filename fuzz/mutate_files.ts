/**
 * Mutations of a model's JSON files (config.json, tokenizer.json, tokenizer_config.json and its
 * chat_template) and of the API-key headers of a request: pure and seeded like fuzz/mutate.ts, so a
 * (seed, index) pair names one input for good.
 *  - config.json: every field the loader reads dropped, retyped or set to an extreme (zero, negative,
 *    fractional, 1e308, past 2^53, strings, null, nested junk), head counts that do not divide, rope
 *    scaling objects, then the file as a whole (non-object JSON, invalid UTF-8, truncation);
 *  - tokenizer.json: model type, vocab entries, merges, added tokens with bad or duplicate ids, the
 *    normalizer, pre-tokenizer, decoder and post-processor replaced by junk;
 *  - tokenizer_config.json: special tokens, add_bos_token, and chat templates that throw, loop long,
 *    recurse, build huge strings or do not parse.
 *  - API keys: Authorization and x-api-key headers with odd schemes, whitespace, case, huge or non-ASCII
 *    values, repeats and near misses of a configured key.
 */
import { mulberry32, pick, randInt, type Rng, streamSeed } from "../core/random.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

/** Which file a model-file mutation changed. */
export type ModelFileName = "config.json" | "tokenizer.json" | "tokenizer_config.json";

export interface MutatedModelFile {
  seed: number;
  index: number;
  file: ModelFileName;
  bytes: Uint8Array;
  ops: string[];
}

const clone = (v: Json): Json => JSON.parse(JSON.stringify(v));
const utf8 = new TextEncoder();

/** Values where arithmetic on a config breaks: bounds, signs, fractions, overflow, wrong types. */
const EXTREMES: Json[] = [
  0,
  -0,
  -1,
  1,
  2,
  3,
  0.5,
  1.5,
  7.9,
  1e-320,
  1e308,
  -1e308,
  2 ** 31,
  2 ** 32 + 2,
  2e9,
  2 ** 53,
  2 ** 53 + 2,
  1e20,
  "64",
  "",
  "NaN",
  null,
  true,
  [],
  [64],
  {},
  { a: [1, { b: null }] },
];
/** Numbers only JSON text can carry (written verbatim). */
const RAW = "\u0000raw:";
const RAW_NUMBERS = ["1e999", "-1e999", "123456789012345678901234567890", "-0.0", "1E+2"];

/** config.json fields and values worth trying at each (besides EXTREMES). */
const CONFIG_FIELDS: Record<string, Json[]> = {
  architectures: [
    ["MistralForCausalLM"],
    ["Qwen2ForCausalLM"],
    ["GPT2LMHeadModel"],
    [],
    [null],
    [1],
    "LlamaForCausalLM",
    ["LlamaForCausalLM", "x"],
    ["__proto__"],
  ],
  hidden_size: [32, 48, 63, 65, 128, 4096, 2 ** 31],
  intermediate_size: [1, 171, 173, 344, 11008, 2 ** 40],
  num_hidden_layers: [1, 4, 6, 100, 1e6],
  num_attention_heads: [1, 3, 4, 5, 7, 16, 64, 65],
  num_key_value_heads: [1, 2, 3, 5, 8, 16],
  head_dim: [4, 6, 7, 8, 16, 32, null],
  vocab_size: [1, 2, 3, 511, 513, 32000, 2e9, 2 ** 31],
  max_position_embeddings: [1, 2, 3, 8, 511, 513, 131072, 2 ** 31, 2 ** 53 - 1],
  rope_theta: [1, 0.5, 1e-300, 1e300, 500000],
  rope_scaling: [
    null,
    { type: "linear", factor: 2 },
    { rope_type: "dynamic", factor: 2 },
    { rope_type: "yarn", factor: 4, original_max_position_embeddings: 256 },
    { rope_type: "llama3" },
    {
      rope_type: "llama3",
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 256,
    },
    {
      rope_type: "llama3",
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 1,
      original_max_position_embeddings: 256,
    },
    {
      rope_type: "llama3",
      factor: 1e308,
      low_freq_factor: 1e-300,
      high_freq_factor: 1e308,
      original_max_position_embeddings: 2 ** 53 - 1,
    },
    {
      rope_type: "llama3",
      factor: -1,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8,
    },
    { type: "llama3", factor: "8" },
    { rope_type: 3 },
    { rope_type: "default", factor: null },
    [],
    "llama3",
  ],
  rms_norm_eps: [1e-5, 1e-320, 1e308, 1, 0.5],
  tie_word_embeddings: [false, true, "true", 1, null],
  attention_bias: [true, false, "yes"],
  bos_token_id: [0, 1, 511, 512, 1e9, -1, [1, 2], [], null],
  eos_token_id: [0, 2, 511, 512, 2 ** 53, -1, [2, 512], [2, 2], [], null],
  torch_dtype: ["float32", "bfloat16", "float16", "int8", "", null, 7],
  model_type: ["llama", "mistral", "qwen2", "gpt2", "", null],
  hidden_act: ["silu", "gelu", "relu", null],
  sliding_window: [null, 0, 4, 4096, -1],
};

/** The heads and sizes of the fixture, rearranged so one no longer divides another. */
const SHAPE_COMBOS: Record<string, Json>[] = [
  { num_attention_heads: 7 },
  { num_attention_heads: 8, num_key_value_heads: 3 },
  { num_attention_heads: 6, num_key_value_heads: 4 },
  { hidden_size: 60 },
  { hidden_size: 64, num_attention_heads: 16, num_key_value_heads: 4 },
  { hidden_size: 64, num_attention_heads: 32, num_key_value_heads: 32 },
  { head_dim: 16 },
  { head_dim: 6 },
  { num_key_value_heads: 8 },
  { tie_word_embeddings: false },
  { vocab_size: 2e9 },
  { vocab_size: 2 ** 31, tie_word_embeddings: false },
  { hidden_size: 2 ** 30, intermediate_size: 2 ** 30 },
  { num_hidden_layers: 1e6 },
  { max_position_embeddings: 2 ** 53 - 1 },
  { max_position_embeddings: 2 ** 31 },
  { max_position_embeddings: 4 },
  { architectures: ["Qwen2ForCausalLM"], attention_bias: true },
];

/** Junk at any level of a JSON file. */
function junk(r: Rng, depth = 0): Json {
  const c = randInt(r, 0, depth < 2 ? 9 : 6);
  switch (c) {
    case 0:
      return pick(r, EXTREMES);
    case 1:
      return pick(r, ["", "\u0000", "\ud800", "😀", "</s>", "a".repeat(10_000), "{{", "null"]);
    case 2:
      return null;
    case 3:
      return r() < 0.5;
    case 4:
      return RAW + pick(r, RAW_NUMBERS);
    case 5:
      return randInt(r, -3, 600);
    case 6:
      return [];
    case 7:
      return Array.from({ length: randInt(r, 1, 3) }, () => junk(r, depth + 1));
    default: {
      const o: Json = {};
      for (let i = randInt(r, 1, 3); i > 0; i--) {
        setOwn(
          o,
          pick(r, ["type", "content", "id", "__proto__", "pattern", "vocab", "a"]),
          junk(r, depth + 1),
        );
      }
      return o;
    }
  }
}

function setOwn(o: Json, key: string, value: Json) {
  Object.defineProperty(o, key, { value, enumerable: true, writable: true, configurable: true });
}

function serialize(v: Json): string {
  return JSON.stringify(v).replace(/"\\u0000raw:((?:[^"\\]|\\.)*)"/g, (_, raw) => JSON.parse(`"${raw}"`));
}

/** The file as a whole: non-object JSON, invalid UTF-8, truncation, a BOM, trailing junk. */
function mutateWholeFile(r: Rng, bytes: Uint8Array, ops: string[]): Uint8Array {
  const join = (...parts: ArrayLike<number>[]) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) (out.set(p, at), at += p.length);
    return out;
  };
  switch (randInt(r, 0, 6)) {
    case 0:
      ops.push("file:non-object");
      return utf8.encode(pick(r, ["[]", "null", "1", '"x"', "true", "[{}]", "", " ", "1e999", '"\\ud800"']));
    case 1: {
      ops.push("file:invalid-utf8");
      const at = randInt(r, 0, bytes.length);
      const seq = pick(r, [[0xc0, 0x80], [0xed, 0xa0, 0x80], [0xff], [0xe2, 0x82], [0xf8, 0x88, 0x80, 0x80]]);
      return join(bytes.subarray(0, at), seq, bytes.subarray(at));
    }
    case 2:
      ops.push("file:truncate");
      return bytes.slice(0, randInt(r, 0, Math.max(0, bytes.length - 1)));
    case 3:
      ops.push("file:bom");
      return join([0xef, 0xbb, 0xbf], bytes);
    case 4:
      ops.push("file:trailing");
      return join(bytes, utf8.encode(pick(r, ["{}", "]", "\u0000", " x"])));
    case 5: {
      ops.push("file:nested");
      const depth = randInt(r, 100, 20_000);
      return utf8.encode(
        r() < 0.5 ? "[".repeat(depth) + "]".repeat(depth) : '{"a":'.repeat(depth) + "1" + "}".repeat(depth),
      );
    }
    default: {
      ops.push("file:bitflip");
      const b = bytes.slice();
      for (let i = randInt(r, 1, 4); i > 0 && b.length; i--) {
        b[randInt(r, 0, b.length - 1)] ^= 1 << randInt(r, 0, 7);
      }
      return b;
    }
  }
}

/** The `index`th mutation of config.json for `seed` (the valid file's parsed value is `config`). */
export function mutateConfig(seed: number, index: number, config: Json): MutatedModelFile {
  const r = mulberry32(streamSeed(seed, "config.json", index));
  const ops: string[] = [];
  const c = clone(config);
  const fields = Object.keys(CONFIG_FIELDS);
  for (let i = randInt(r, 1, 3); i > 0; i--) {
    const field = pick(r, fields);
    switch (randInt(r, 0, 6)) {
      case 0:
        ops.push(`drop:${field}`);
        delete c[field];
        break;
      case 1:
      case 2:
        ops.push(`value:${field}`);
        c[field] = clone(pick(r, CONFIG_FIELDS[field]));
        break;
      case 3:
        ops.push(`extreme:${field}`);
        setOwn(c, field, clone(pick(r, EXTREMES)));
        break;
      case 4:
        ops.push(`junk:${field}`);
        setOwn(c, field, junk(r));
        break;
      case 5: {
        const combo = pick(r, SHAPE_COMBOS);
        ops.push(`combo:${Object.keys(combo).join("+")}`);
        Object.assign(c, clone(combo));
        break;
      }
      default: {
        // The names older and other configs use: dim, n_layers, n_heads, n_kv_heads, seq_len.
        const alias = pick(r, [
          ["hidden_size", "dim"],
          ["intermediate_size", "hidden_dim"],
          ["num_hidden_layers", "n_layers"],
          ["num_attention_heads", "n_heads"],
          ["num_key_value_heads", "n_kv_heads"],
          ["max_position_embeddings", "seq_len"],
        ]);
        ops.push(`alias:${alias[0]}`);
        c[alias[1]] = c[alias[0]];
        if (r() < 0.5) delete c[alias[0]];
      }
    }
  }
  let bytes = utf8.encode(serialize(c));
  if (r() < 0.15) bytes = mutateWholeFile(r, bytes, ops) as Uint8Array<ArrayBuffer>;
  return { seed, index, file: "config.json", bytes, ops };
}

/** A chat template in the Llama 2 style: the starting point of the template mutations. */
export const BASE_CHAT_TEMPLATE = "{% for message in messages %}" +
  "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}" +
  "{% elif message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}" +
  "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}" +
  "{% else %}{{ raise_exception('Only user, system and assistant roles are supported') }}{% endif %}" +
  "{% endfor %}";

/** Chat templates that misbehave: throw, loop long, recurse, grow strings, do not parse, or are odd. */
const BAD_TEMPLATES = [
  "{{ raise_exception('no') }}",
  "{% for i in range(1000000000) %}x{% endfor %}",
  "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
  "{% for i in range(2147483647, 0, -1) %}{{ i }}{% endfor %}",
  "{% for i in range(0, 10, 0) %}{% endfor %}",
  "{% for i in range('x') %}{% endfor %}",
  "{% for i in range(1e308) %}{% endfor %}",
  "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
  "{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(0) }}",
  "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
  "{% set ns = namespace(s=[1]) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
  "{% for m in messages %}{% for m2 in messages %}{% for i in range(1000) %}{{ m.content }}{% endfor %}{% endfor %}{% endfor %}",
  "{{ messages[0]['content'] * 1000000000 }}",
  "{{ 'x' * 1000000000 }}",
  "{{ 10 ** 400 }}",
  "{{ messages | tojson(indent=1000000000) }}",
  "{{ ' ' | indent(1000000000) }}",
  "{{ messages['role'].content.x.y }}",
  "{{ messages[1000000000] }}",
  "{{ messages[0].content[1e308] }}",
  "{{ undefined_function() }}",
  "{{ messages | unknown_filter }}",
  "{% if %}",
  "{% for %}",
  "{{",
  "{% endfor %}",
  "{% raw %}",
  "{{ 1 / 0 }}",
  "{{ 1 // 0 }}",
  "{{ 1 % 0 }}",
  "{{ strftime_now('%Y') }}{{ strftime_now(1) }}",
  "",
  " ",
  "\u0000",
  "{{ bos_token * 3 }}",
  "</s><s>",
  "{% for m in messages %}{{ m.content | upper | lower | title | trim | replace('a', 'aaaaaaaa') }}{% endfor %}",
  "{% for m in messages %}{{ m.content | replace('', 'xxxxxxxxxxxxxxxx') | replace('x', 'yyyyyyyyyyyyyyyy') }}{% endfor %}",
  "{% set x = messages %}{% for i in range(100) %}{% set x = [x, x] %}{% endfor %}{{ x | length }}",
  "{{ namespace(a=1).b.c }}",
  "{{ messages | map(attribute='content') | join(', ') }}",
  "{% for m in messages | reverse %}{{ m.content }}{% endfor %}",
  "{{ (messages | first).content }}{{ loop }}",
  "{% generation %}{% endgeneration %}",
  "{% call f() %}{% endcall %}",
];

/** Junk inside a template: unclosed tags, tags and expressions in the middle of the template. */
const TEMPLATE_PIECES = [
  "{{",
  "}}",
  "{%",
  "%}",
  "{#",
  "#}",
  "{% endif %}",
  "{{ x.y.z }}",
  "'",
  '"',
  "\\",
  "\u0000",
];

/** The `index`th mutation of tokenizer.json or tokenizer_config.json (valid files' parsed values given). */
export function mutateTokenizer(
  seed: number,
  index: number,
  tokenizer: Json,
  tokenizerConfig: Json,
): MutatedModelFile {
  const r = mulberry32(streamSeed(seed, "tokenizer", index));
  const ops: string[] = [];
  if (r() < 0.45) {
    const t = clone(tokenizer);
    const model = t.model;
    const vocab = Object.keys(model.vocab);
    for (let i = randInt(r, 1, 3); i > 0; i--) {
      switch (randInt(r, 0, 11)) {
        case 0:
          ops.push("model.type");
          model.type = pick(r, [
            "WordPiece",
            "Unigram",
            "WordLevel",
            "bpe",
            "",
            null,
            1,
            "Legacy",
            "__proto__",
          ]);
          break;
        case 1: {
          ops.push("vocab.entry");
          const k = pick(r, vocab);
          if (model.vocab === null || typeof model.vocab !== "object") model.vocab = {};
          model.vocab[k] = pick(r, [-1, 1e9, 2 ** 31, 0.5, "3", null, 5, 1e308, []]);
          break;
        }
        case 2:
          ops.push("vocab.whole");
          model.vocab = pick(r, [{}, [], null, "x", { a: 0 }, { "": 0, " ": 1 }, [["a", 0]]]);
          break;
        case 3: {
          ops.push("merges");
          const m = Array.isArray(tokenizer.model.merges) ? tokenizer.model.merges : [];
          model.merges = pick(r, [
            [],
            null,
            "a b",
            [1, 2],
            [["a"]],
            ["a"],
            ["zz qq"],
            ["a b c"],
            [["▁", "t"], ["nope", "x"]],
            m.concat(m.slice(0, 50)),
            m.slice(0, 10).map((x: Json) => typeof x === "string" ? x.split(" ").reverse().join(" ") : x),
          ]);
          break;
        }
        case 4: {
          ops.push("added_tokens");
          const a = Array.isArray(tokenizer.added_tokens) ? tokenizer.added_tokens : [];
          t.added_tokens = pick(r, [
            [...a, { ...a[0], id: 1e9 }],
            [...a, { ...a[1], id: -1 }],
            [...a, { ...a[2], id: 0.5 }],
            [...a, { ...a[1], content: "<s>", id: 7 }],
            [...a, { ...a[1] }],
            [...a, { id: 3, content: "", special: true }],
            [...a, { id: 512, content: "<extra>", special: true }],
            [...a, { id: 2 ** 31, content: "<huge>", special: false }],
            [...a, { id: 600, content: "<|eot_id|>", special: true }],
            [{ id: 0, content: null }],
            [null],
            "x",
            {},
            a.map((x: Json) => ({ ...x, special: "yes" })),
            a.map((x: Json) => ({ ...x, id: 0 })),
          ]);
          break;
        }
        case 5:
        case 6: {
          const part = pick(r, ["normalizer", "pre_tokenizer", "decoder", "post_processor"]);
          ops.push(part);
          t[part] = pick(r, [
            junk(r),
            { type: "Sequence", normalizers: [junk(r)] },
            {
              type: "Sequence",
              pretokenizers: [{ type: "Split", pattern: { Regex: "(" }, behavior: "Isolated" }],
            },
            { type: "Split", pattern: { Regex: "(a+)+$" }, behavior: "Removed", invert: false },
            { type: "Replace", pattern: { String: "" }, content: "xx" },
            { type: "Replace", pattern: { Regex: "[" }, content: "" },
            { type: "ByteLevel", add_prefix_space: "maybe" },
            { type: "Metaspace", replacement: "", add_prefix_space: true },
            { type: "Strip", content: " ", start: 1e9, stop: -1 },
            { type: "TemplateProcessing", single: [{ SpecialToken: { id: "<nope>", type_id: 0 } }] },
            { type: "Nope" },
            { type: "Sequence", decoders: null },
            null,
          ]);
          break;
        }
        case 7:
          ops.push("model.unk_token");
          model.unk_token = pick(r, ["<nope>", "", null, 0, "<s>"]);
          break;
        case 8:
          ops.push("model.byte_fallback");
          model.byte_fallback = pick(r, [false, "true", null, 1]);
          break;
        case 9:
          ops.push("model.whole");
          t.model = junk(r);
          break;
        case 10:
          ops.push("drop-key");
          delete t[
            pick(r, ["model", "added_tokens", "normalizer", "decoder", "pre_tokenizer", "post_processor"])
          ];
          break;
        default: {
          ops.push("vocab.add");
          if (model.vocab === null || typeof model.vocab !== "object") model.vocab = {};
          model.vocab[pick(r, ["<0x00>", "▁the", "", "\u0000", "\ud800", "x".repeat(5000)])] = pick(r, [
            511,
            512,
            1000,
            2 ** 31,
            0,
          ]);
        }
      }
    }
    let bytes = utf8.encode(serialize(t));
    if (r() < 0.1) bytes = mutateWholeFile(r, bytes, ops) as Uint8Array<ArrayBuffer>;
    return { seed, index, file: "tokenizer.json", bytes, ops };
  }
  const tc = clone(tokenizerConfig);
  tc.chat_template = BASE_CHAT_TEMPLATE;
  for (let i = randInt(r, 1, 2); i > 0; i--) {
    switch (randInt(r, 0, 9)) {
      case 0:
      case 1:
      case 2:
        ops.push("chat_template:bad");
        tc.chat_template = pick(r, BAD_TEMPLATES);
        break;
      case 3: {
        ops.push("chat_template:splice");
        const s = String(tc.chat_template ?? BASE_CHAT_TEMPLATE);
        const at = randInt(r, 0, s.length);
        tc.chat_template = r() < 0.5
          ? s.slice(0, at) + pick(r, TEMPLATE_PIECES) + s.slice(at)
          : s.slice(0, at) + s.slice(at + randInt(r, 1, 12));
        break;
      }
      case 4:
        ops.push("chat_template:shape");
        tc.chat_template = pick(r, [
          null,
          1,
          [],
          {},
          [{ name: "default", template: pick(r, BAD_TEMPLATES) }],
          [{ name: "tool_use", template: "x" }],
          [{ name: 1, template: null }],
          { default: pick(r, BAD_TEMPLATES) },
          { default: 1 },
          ["{{ x }}"],
        ]);
        break;
      case 5:
        ops.push(pick(r, ["bos_token", "eos_token"]));
        tc[ops[ops.length - 1]] = pick(r, [
          "<nope>",
          "",
          null,
          1,
          { content: "</s>" },
          { content: 1 },
          { content: "<s>", lstrip: "x" },
          [],
          "<unk>",
          "a",
        ]);
        break;
      case 6:
        ops.push("add_bos_token");
        tc.add_bos_token = pick(r, [false, null, "true", 1, []]);
        break;
      case 7:
        ops.push("added_tokens_decoder");
        tc.added_tokens_decoder = pick(r, [
          null,
          [],
          { "999999999": { content: "<x>", special: true } },
          { "-1": { content: "<s>" } },
          { x: null },
        ]);
        break;
      case 8:
        ops.push("junk-field");
        setOwn(
          tc,
          pick(r, ["model_max_length", "tokenizer_class", "__proto__", "legacy", "pad_token"]),
          junk(r),
        );
        break;
      default:
        ops.push("whole");
        return {
          seed,
          index,
          file: "tokenizer_config.json",
          bytes: mutateWholeFile(r, utf8.encode(serialize(tc)), ops),
          ops,
        };
    }
  }
  return { seed, index, file: "tokenizer_config.json", bytes: utf8.encode(serialize(tc)), ops };
}

/** One API-key header mutation: the headers to send and whether an exact key was among them. */
export interface MutatedKeyHeaders {
  seed: number;
  index: number;
  /** Header name and value pairs, appended in order (a name may repeat). */
  headers: [string, string][];
  path: string;
  method: string;
  ops: string[];
}

/** The `index`th API-key header mutation for `seed`; `keys` are the configured keys. */
export function mutateKeyHeaders(seed: number, index: number, keys: readonly string[]): MutatedKeyHeaders {
  const r = mulberry32(streamSeed(seed, "api-key", index));
  const ops: string[] = [];
  const key = pick(r, keys);
  const near = (): string => {
    const c = randInt(r, 0, 10);
    ops.push(`near:${c}`);
    switch (c) {
      case 0:
        return key.slice(0, -1);
      case 1:
        return key + pick(r, ["x", "\u0000", " x", "\t", "=", ","]);
      case 2:
        return key.toUpperCase() === key ? key.toLowerCase() : key.toUpperCase();
      case 3:
        return pick(r, keys.filter((k) => k !== key).concat([""])) + key.slice(1);
      case 4:
        return key.replace(/./, (ch) => String.fromCharCode(ch.charCodeAt(0) ^ 1));
      case 5:
        return key + "\u00e9";
      case 6:
        return "\u00ff".repeat(key.length);
      case 7:
        return key.repeat(pick(r, [2, 100, 10_000]));
      case 8:
        return pick(r, ["", " ", "null", "undefined", "Bearer", "*", "%00", "a".repeat(65_536)]);
      case 9:
        return btoa(key);
      default:
        return encodeURIComponent(key + "/é");
    }
  };
  const value = () => (r() < 0.4 ? key : near());
  const scheme = () =>
    pick(r, [
      "Bearer ",
      "bearer ",
      "BEARER ",
      "Bearer  ",
      "Bearer\t",
      "Bearer",
      "Basic ",
      "Token ",
      "",
      "Bearer: ",
      " Bearer ",
    ]);
  const headers: [string, string][] = [];
  const n = randInt(r, 1, 3);
  for (let i = 0; i < n; i++) {
    const c = randInt(r, 0, 5);
    if (c <= 2) {
      const s = scheme();
      ops.push(`authorization:${JSON.stringify(s)}`);
      headers.push(["authorization", s + value() + pick(r, ["", "", " ", "\t", ", Bearer x", ","])]);
    } else if (c <= 4) {
      ops.push("x-api-key");
      headers.push([
        pick(r, ["x-api-key", "X-API-KEY", "x-api-key"]),
        pick(r, ["", " "]) + value() + pick(r, ["", " ", ","]),
      ]);
    } else {
      ops.push("other-header");
      headers.push([pick(r, ["api-key", "x-api-keys", "proxy-authorization", "cookie"]), value()]);
    }
  }
  const path = pick(r, ["/v1/models", "/v1/models", "/metrics", "/v1/generate", "/nope", "/healthz"]);
  const method = path === "/v1/generate" ? "POST" : pick(r, ["GET", "GET", "HEAD", "DELETE"]);
  return { seed, index, headers, path, method, ops };
}
