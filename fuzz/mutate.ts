/**
 * The fuzzer's mutation engine: pure and seeded (core/random.ts's mulberry32), so a seed and an index
 * name one input for good. Two families:
 *  - requests: valid bodies of every POST endpoint, mutated structure-aware (fields dropped, duplicated,
 *    renamed, retyped; extreme numbers, odd strings, deep nesting, prototype keys), then at the byte
 *    level (truncation, bit flips, insertions, invalid UTF-8), with odd content types, methods, paths and
 *    bodies over the size limit;
 *  - binary headers: safetensors files (8-byte little-endian length, JSON header, data) with their
 *    header's dtype, shape and data_offsets mutated, lengths past the file, overlaps, overflowing shape
 *    products, non-object JSON; the adapter format (core/adapter.ts) with its metadata mutated too.
 */
import { mulberry32, pick, randInt, type Rng, streamSeed } from "../core/random.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

/** The POST routes; `{id}` is the kept context's id, filled in by the runner. */
export const ENDPOINTS = [
  "/v1/generate",
  "/v1/completions",
  "/v1/chat/completions",
  "/v1/contexts",
  "/v1/contexts/{id}/generate",
] as const;
export type Endpoint = (typeof ENDPOINTS)[number];

const STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";

/** Valid bodies per endpoint: the mutations' starting points (each is a 200 on the embedded model). */
export const VALID_BODIES: Record<Endpoint, Json[]> = {
  "/v1/generate": [
    { prompt: "Once upon a time", max_tokens: 2 },
    { prompt: STORY, max_tokens: 3, kv_compression: { method: "snapkv", budget: 8, window: 4 } },
    {
      context: STORY,
      questions: ["Who?", "Where?"],
      max_tokens: 1,
      kv_compression: { method: "judgeq", budget: 8 },
    },
    {
      prompt: STORY,
      max_tokens: 3,
      temperature: 0.7,
      top_p: 0.9,
      top_k: 20,
      seed: 5,
      stop: ["park", 13],
      return_tokens: true,
      return_positions: true,
      kv_compression: { method: "streaming_llm", budget: 8, sinks: 2, decode: { budget: 12, interval: 2 } },
    },
    {
      prompt: STORY,
      max_tokens: 2,
      stream: true,
      kv_compression: { method: "pyramidkv", compression_ratio: 0.5 },
    },
    {
      prompt: STORY,
      max_tokens: 2,
      kv_compression: {
        method: "adakv",
        budget: 6,
        allocation: "adaptive",
        pooling: "max",
        kernel: 3,
        gqa: "max",
      },
    },
    {
      prompt: STORY,
      max_tokens: 2,
      kv_compression: { method: "h2o", budget: 10, normalize: true, beta: 1.5 },
    },
  ],
  "/v1/completions": [
    { prompt: "Once upon a time", max_tokens: 2, temperature: 0 },
    { prompt: [STORY], max_tokens: 2, stream: true, stream_options: { include_usage: true }, n: 1 },
    { prompt: STORY, max_tokens: 2, logit_bias: {}, kv_compression: { method: "tova", budget: 8 } },
  ],
  "/v1/chat/completions": [
    { messages: [{ role: "user", content: "Hi" }], max_tokens: 2 },
    {
      messages: [
        { role: "system", content: "Tell a story." },
        { role: "user", content: [{ type: "text", text: STORY }], name: "lily" },
        { role: "assistant", content: null },
      ],
      max_completion_tokens: 2,
      temperature: 0,
      stream: true,
      kv_compression: { method: "knorm", budget: 8 },
    },
    {
      messages: [{ role: "user", content: STORY }],
      max_tokens: 2,
      tools: [],
      tool_choice: "none",
      user: "x",
    },
  ],
  "/v1/contexts": [
    { context: STORY },
    { context: STORY, kv_compression: { method: "snapkv", budget: 8 }, return_positions: true },
    { context: STORY, allow_special_tokens: true, kv_compression: { method: "random", budget: 6, seed: 3 } },
  ],
  "/v1/contexts/{id}/generate": [
    { question: "Who?", max_tokens: 2 },
    { questions: ["Who?", "Where?"], max_tokens: 1, return_tokens: true },
    {
      question: "What happened?",
      max_tokens: 2,
      stream: true,
      kv_compression: { decode: { budget: 8, interval: 2 } },
    },
  ],
};

/** Names the schemas know: renames and additions draw from them, so mutations reach real fields. */
const FIELD_NAMES = [
  "prompt",
  "context",
  "questions",
  "question",
  "messages",
  "role",
  "content",
  "kv_compression",
  "method",
  "budget",
  "compression_ratio",
  "window",
  "pooling",
  "kernel",
  "gqa",
  "sinks",
  "normalize",
  "seed",
  "beta",
  "floor",
  "lookahead_tokens",
  "allocation",
  "random_soft",
  "decode",
  "interval",
  "fraction",
  "buffer",
  "max_tokens",
  "max_completion_tokens",
  "temperature",
  "top_p",
  "top_k",
  "stop",
  "stream",
  "stream_options",
  "include_usage",
  "ignore_eos",
  "allow_special_tokens",
  "model",
  "return_tokens",
  "return_positions",
  "n",
  "logprobs",
  "logit_bias",
  "tools",
  "echo",
  "suffix",
  "best_of",
  "response_format",
  "type",
  "text",
  "name",
];
const PROTO_KEYS = ["__proto__", "constructor", "prototype", "hasOwnProperty", "toString", "valueOf"];
const METHOD_VALUES = [
  "snapkv",
  "judgeq",
  "full",
  "random",
  "streaming_llm",
  "h2o",
  "pyramidkv",
  "adakv",
  "tova",
  "knorm",
  "lookahead",
  "SNAPKV",
  "snapkv ",
  "",
];

/** Numbers where code tends to break: bounds, signs, precision, overflow. */
const NUMBERS = [
  0,
  -0,
  1,
  -1,
  2,
  0.5,
  -0.5,
  1e-320,
  5e-324,
  1e308,
  -1e308,
  1.7976931348623157e308,
  2 ** 31 - 1,
  2 ** 31,
  2 ** 32,
  2 ** 32 + 1,
  2 ** 53 - 1,
  2 ** 53,
  -(2 ** 53),
  1e9,
  1e9 + 1,
  1e15,
  511,
  512,
  513,
  63,
  64,
  65,
  255,
  256,
  1.0000001,
  0.9999999,
];
/** Numbers only JSON text can carry: written verbatim into the body. */
const RAW_NUMBERS = [
  "1e999",
  "-1e999",
  "9007199254740993",
  "123456789012345678901234567890",
  "-0.0",
  "1E+2",
  "0e0",
];
/** Strings that read as numbers or specials to a lax parser. */
const NUMERIC_STRINGS = [
  "NaN",
  "Infinity",
  "-Infinity",
  "1e308",
  "0x10",
  "4",
  "-1",
  " 4 ",
  "",
  "null",
  "true",
];

const STRINGS = [
  "",
  " ",
  "\u0000",
  "\u0000\u0001\u001f\u007f",
  "\t\n\r",
  "\u001b[31mred",
  "\ud800",
  "\udfff",
  "a\ud800b",
  "\udc00\ud800",
  "😀🎉👩‍👩‍👧",
  "\u202e\u202dRTL",
  "e\u0301\u0301\u0301",
  "\ufeff",
  "\uffff\ufffe",
  "</s>",
  "<s>",
  "<unk>",
  "<s></s><unk><|eot_id|>",
  "{{ raise_exception('x') }}",
  "{% for x in messages %}",
  "../../etc/passwd",
  "%00%2e%2e",
  "null",
  "__proto__",
  "ö".repeat(300),
];

/** The kinds of value a node can be swapped to. */
type Kind = "string" | "number" | "bool" | "null" | "array" | "object";
const KINDS: Kind[] = ["string", "number", "bool", "null", "array", "object"];

const kindOf = (v: Json): Kind =>
  v === null
    ? "null"
    : Array.isArray(v)
    ? "array"
    : typeof v === "object"
    ? "object"
    : typeof v === "boolean"
    ? "bool"
    : typeof v === "number"
    ? "number"
    : "string";

/** A placeholder string swapped for raw JSON text at serialisation (numbers JSON.stringify cannot write). */
const RAW = "\u0000raw:";

function hugeString(r: Rng, limit: number): string {
  const unit = pick(r, ["a", "Once upon a time ", "ö", "😀", "</s>", " ", "\u0000"]);
  const n = Math.ceil(pick(r, [0.05, 0.2, 0.5, 0.95, 1.1]) * limit / Math.max(1, unit.length));
  return unit.repeat(Math.max(1, n));
}

function randomString(r: Rng, limit: number): string {
  const c = r();
  if (c < 0.45) return pick(r, STRINGS);
  if (c < 0.6) return pick(r, NUMERIC_STRINGS);
  if (c < 0.7) return pick(r, [...METHOD_VALUES, ...FIELD_NAMES]);
  if (c < 0.85) {
    // Random code units, lone surrogates and controls included.
    const n = randInt(r, 1, 40);
    let s = "";
    for (let i = 0; i < n; i++) s += String.fromCharCode(randInt(r, 0, 0xffff));
    return s;
  }
  return hugeString(r, limit);
}

function randomNumber(r: Rng): number | string {
  const c = r();
  if (c < 0.6) return pick(r, NUMBERS);
  if (c < 0.75) return RAW + pick(r, RAW_NUMBERS);
  if (c < 0.9) return randInt(r, -5, 600);
  return (r() - 0.5) * 10 ** randInt(r, -10, 20);
}

/** A value of `kind`, small unless `depth` allows nesting. */
function randomValue(r: Rng, kind: Kind, limit: number, depth = 0): Json {
  switch (kind) {
    case "string":
      return randomString(r, limit);
    case "number":
      return randomNumber(r);
    case "bool":
      return r() < 0.5;
    case "null":
      return null;
    case "array": {
      const n = pick(r, [0, 1, 2, 3, 65, 200]);
      const k = pick(r, KINDS.slice(0, 4));
      return Array.from({ length: n }, () => randomValue(r, depth < 2 ? pick(r, KINDS) : k, 64, depth + 1));
    }
    case "object": {
      const o: Json = {};
      const n = randInt(r, 0, 3);
      for (let i = 0; i < n; i++) {
        setOwn(
          o,
          pick(r, [...FIELD_NAMES, ...PROTO_KEYS]),
          randomValue(r, pick(r, KINDS.slice(0, depth < 2 ? 6 : 4)), 64, depth + 1),
        );
      }
      return o;
    }
  }
}

/** Sets an own property, even "__proto__" (a plain assignment would set the prototype instead). */
function setOwn(o: Json, key: string, value: Json) {
  Object.defineProperty(o, key, { value, enumerable: true, writable: true, configurable: true });
}

const clone = (v: Json): Json => JSON.parse(JSON.stringify(v));

/** Every container in a value with the path to it, the root first. */
function containers(v: Json, out: Json[] = []): Json[] {
  if (v !== null && typeof v === "object") {
    out.push(v);
    for (const k of Object.keys(v)) containers(v[k], out);
  }
  return out;
}

/** One structure-aware mutation, in place on `root` (a container); returns the new root. */
function mutateTree(r: Rng, root: Json, limit: number, ops: string[]): Json {
  const all = containers(root);
  const node = pick(r, all);
  const keys = Object.keys(node);
  const isArr = Array.isArray(node);
  const key = keys.length ? pick(r, keys) : null;
  const c = randInt(r, 0, 13);
  const op = (name: string) => ops.push(name);
  switch (c) {
    case 0: // drop a field or element
      if (key === null) break;
      op("drop");
      if (isArr) node.splice(Number(key), 1);
      else delete node[key];
      break;
    case 1: // copy a field under another (known) name, or an element
      if (key === null) break;
      op("copy");
      if (isArr) node.push(clone(node[Number(key)]));
      else setOwn(node, pick(r, FIELD_NAMES), clone(node[key]));
      break;
    case 2: { // rename a field
      if (key === null || isArr) break;
      op("rename");
      const v = node[key];
      delete node[key];
      const to = r() < 0.5
        ? pick(r, FIELD_NAMES)
        : r() < 0.5
        ? pick(r, PROTO_KEYS)
        : pick(r, [key.toUpperCase(), key + " ", ` ${key}`, key.replace(/_/g, "-"), key + "\u0000", ""]);
      setOwn(node, to, v);
      break;
    }
    case 3: // swap a value's type
    case 4: {
      if (key === null) break;
      op("retype");
      const from = kindOf(node[key]);
      setOwn(node, key, randomValue(r, pick(r, KINDS.filter((k) => k !== from)), limit));
      break;
    }
    case 5: // extreme number
      if (key === null) break;
      op("number");
      setOwn(node, key, randomNumber(r));
      break;
    case 6: // odd or huge string
      if (key === null) break;
      op("string");
      setOwn(node, key, randomString(r, limit));
      break;
    case 7: // deep nesting
      if (key === null) break;
      op("nest");
      setOwn(node, key, RAW + nested(r, limit));
      break;
    case 8: // prototype-pollution keys
      op("proto");
      setOwn(
        isArr ? (node[node.length] = {}) : node,
        pick(r, PROTO_KEYS),
        JSON.parse(
          pick(r, ['{"polluted": true}', '{"prototype": {"polluted": true}}', "null", "1", '"x"', "[]"]),
        ),
      );
      break;
    case 9: // a new field of a known name with a random value
      if (isArr) break;
      op("add");
      setOwn(node, pick(r, FIELD_NAMES), randomValue(r, pick(r, KINDS), limit));
      break;
    case 10: // arrays emptied or multiplied
      if (key === null || !Array.isArray(node[key])) {
        if (isArr && node.length) {
          op("multiply");
          const times = pick(r, [2, 16, 65, 300]);
          const n = node.length, size = JSON.stringify(node).length;
          const add = Math.min(times * n, 5000, Math.ceil((2 * limit * n) / size));
          for (let i = 0; i < add; i++) node.push(clone(node[i % n]));
        }
        break;
      }
      op("empty");
      node[key] = [];
      break;
    case 11: // a method name or a number at a kv_compression field
      if (key === null) break;
      op("value");
      setOwn(node, key, r() < 0.5 ? pick(r, METHOD_VALUES) : randInt(r, -2, 2000));
      break;
    case 12: // the whole body replaced by a non-object
      op("root");
      return randomValue(r, pick(r, ["string", "number", "bool", "null", "array"] as Kind[]), limit);
    default: // a value the same kind but at a boundary
      if (key === null) break;
      op("boundary");
      if (typeof node[key] === "number") setOwn(node, key, node[key] + pick(r, [-1, 1, 0.5, 1e9, -1e9]));
      else if (typeof node[key] === "string") {
        const times = Math.min(
          pick(r, [0, 2, 50, 500]),
          Math.ceil((2 * limit) / Math.max(1, node[key].length)),
        );
        setOwn(node, key, node[key].repeat(times)); // at most about twice the body limit
      } else setOwn(node, key, null);
  }
  return root;
}

/**
 * Values each schema accepts, at their edges: mutations that pass the schema and reach the core's
 * compiler, the methods and the decoder (where a 400 from zod would stop the others).
 */
const EDGE_VALUES: Record<string, Json[]> = {
  method: METHOD_VALUES.slice(0, 11),
  budget: [1, 2, 3, 4, 5, 8, 15, 16, 17, 63, 64, 100, 255, 256, 511, 512, 513, 1e9],
  compression_ratio: [0, 5e-324, 1e-9, 0.01, 0.5, 0.9, 0.999999, 0.9999999999999999],
  window: [0, 1, 2, 7, 8, 16, 511, 512, 1e9],
  pooling: ["max", "avg", "none"],
  kernel: [1, 2, 3, 62, 63],
  gqa: ["mean", "max", "sum"],
  sinks: [0, 1, 4, 511, 512, 1e9, 2 ** 53 - 1],
  normalize: [true, false],
  seed: [0, -1, 2 ** 31, 2 ** 32, 2 ** 53 - 1, -(2 ** 53 - 1)],
  beta: [5e-324, 1e-300, 1, 1e300, 1.7976931348623157e308],
  floor: [0, 5e-324, 0.5, 1],
  lookahead_tokens: [1, 2, 63, 64],
  allocation: ["uniform", "pyramid", "adaptive", "Uniform", ""],
  random_soft: [true, false],
  interval: [1, 2, 3, 511, 512, 1e9],
  fraction: [5e-324, 1e-9, 0.01, 0.5, 1],
  buffer: [0, 1, 7, 8, 100, 1e9],
  max_tokens: [0, 1, 2, 4, 8, null],
  max_completion_tokens: [0, 1, 8, null],
  temperature: [0, 5e-324, 1e-300, 0.01, 1, 2],
  top_p: [5e-324, 1e-300, 0.01, 1],
  top_k: [0, 1, 2, 511, 512, 1e9],
  stop: ["a", ".", " ", "\ud800", ["\n", 0], [1, 2, 511], ["park", "Lily", "a", "e", " "], [0]],
  stream: [true, false, null],
  ignore_eos: [true, false],
  allow_special_tokens: [true, false],
  return_tokens: [true, false],
  return_positions: [true, false],
  prompt: ["a", " ", "\u0000", "</s>", "<s><s></s>", "😀", "\ud800", "Once upon a time ".repeat(30), ["x"]],
  context: ["a", " ", "</s>", "<unk>", "\ud83d", "Once upon a time ".repeat(30)],
  question: ["a", " ", "</s>", "\udfff", "Who? ".repeat(100)],
  questions: [["a"], ["</s>"], Array(8).fill("Who?"), Array(9).fill("Who?"), ["Who? ".repeat(100)]],
  model: ["stories260K", "", "model"],
};

/** A schema-valid mutation: a known field set to one of its edge values (kv_compression fields too). */
function mutateEdges(r: Rng, body: Json, ops: string[], limit: number): void {
  if (body === null || typeof body !== "object" || Array.isArray(body)) return;
  const c = r();
  if (c < 0.08) {
    // Schema-valid text as long as the body limit allows: whatever reads it must stay cheap.
    const text = pick(r, ["Once upon a time ", "a", "😀", "ab ", "\u00e9", "</s>"]);
    const long = text.repeat(Math.max(1, Math.floor((limit - 256) / (text.length * 3))));
    for (const k of ["prompt", "context", "question"]) if (typeof body[k] === "string") body[k] = long;
    if (Array.isArray(body.questions)) body.questions = [long];
    if (Array.isArray(body.messages)) body.messages = [{ role: "user", content: long }];
    ops.push("edge:long-text");
    return;
  }
  const fields = Object.keys(EDGE_VALUES);
  if (c < 0.45) {
    const kv = body.kv_compression && typeof body.kv_compression === "object" ? body.kv_compression : {};
    if ("messages" in body || "prompt" in body || "context" in body) {
      body.kv_compression = kv;
      if (kv.method === undefined) kv.method = pick(r, METHOD_VALUES.slice(0, 11));
      const key = pick(r, fields.slice(0, 16));
      if (key === "interval" || key === "fraction" || key === "buffer") {
        kv.decode = {
          ...(typeof kv.decode === "object" ? kv.decode : { interval: 2 }),
          [key]: pick(r, EDGE_VALUES[key]),
        };
        ops.push(`edge:decode.${key}`);
      } else {
        kv[key] = pick(r, EDGE_VALUES[key]);
        ops.push(`edge:kv.${key}`);
      }
      if (r() < 0.3) delete kv[pick(r, ["budget", "compression_ratio", "window", "method"])];
      return;
    }
    // A kept context's answer takes decode compression only.
    const d = kv.decode && typeof kv.decode === "object" ? kv.decode : { interval: 2, budget: 8 };
    const key = pick(r, ["method", "budget", "fraction", "interval", "buffer"]);
    d[key] = pick(r, EDGE_VALUES[key]);
    body.kv_compression = { decode: d };
    ops.push(`edge:decode.${key}`);
    return;
  }
  const key = pick(r, fields.slice(16));
  const v = pick(r, EDGE_VALUES[key]);
  body[key] = clone(v);
  ops.push(`edge:${key}`);
}

/** Deeply nested JSON text, arrays or objects (bounded by the body limit). */
function nested(r: Rng, limit: number): string {
  const depth = Math.min(randInt(r, 50, 20_000), Math.floor(limit / 6));
  return r() < 0.5 ? "[".repeat(depth) + "]".repeat(depth) : '{"a":'.repeat(depth) + "1" + "}".repeat(depth);
}

/** JSON text with the raw placeholders written verbatim. */
export function serialize(v: Json): string {
  return JSON.stringify(v).replace(/"\\u0000raw:((?:[^"\\]|\\.)*)"/g, (_, raw) => JSON.parse(`"${raw}"`));
}

/** Byte-level mutations of a serialized body. */
function mutateBytes(r: Rng, bytes: Uint8Array, ops: string[]): Uint8Array {
  /** `bytes` with `remove` bytes at `at` replaced by `insert` (a copy: typed arrays, never number[]). */
  const splice = (at: number, remove: number, insert: ArrayLike<number> = []) => {
    const end = Math.min(bytes.length, at + remove);
    const out = new Uint8Array(at + insert.length + bytes.length - end);
    out.set(bytes.subarray(0, at));
    out.set(insert, at);
    out.set(bytes.subarray(end), at + insert.length);
    return out;
  };
  const at = () => randInt(r, 0, bytes.length);
  const utf8 = (t: string) => new TextEncoder().encode(t);
  switch (randInt(r, 0, 7)) {
    case 0:
      ops.push("truncate");
      return bytes.slice(0, Math.max(0, at() - 1));
    case 1: {
      ops.push("bitflip");
      const b = bytes.slice();
      const n = randInt(r, 1, 8);
      for (let i = 0; i < n && b.length; i++) b[randInt(r, 0, b.length - 1)] ^= 1 << randInt(r, 0, 7);
      return b;
    }
    case 2: {
      ops.push("insert");
      const n = randInt(r, 1, 8);
      const ins = Array.from(
        { length: n },
        () => pick(r, [0, 0xff, 0x7b, 0x22, 0x5c, 0x2c, 0x5d, randInt(r, 0, 255)]),
      );
      return splice(at(), 0, ins);
    }
    case 3:
      ops.push("delete-range");
      return splice(at(), randInt(r, 1, 16));
    case 4: {
      ops.push("duplicate-range");
      const i = at(), n = randInt(r, 1, 32);
      return splice(i, 0, bytes.slice(i, i + n));
    }
    case 5: {
      ops.push("invalid-utf8");
      const i = at();
      const seq = pick(r, [[0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xe2, 0x82], [
        0xfe,
      ], [0xef, 0xbf, 0xbe]]);
      return splice(i, 0, seq);
    }
    case 6:
      ops.push("bom-or-padding");
      if (r() < 0.5) return splice(0, 0, [0xef, 0xbb, 0xbf]);
      return splice(bytes.length, 0, utf8(pick(r, [" \n\t", "\u0000", "garbage", "}", "]", ",{}"])));
    default:
      ops.push("trailing-json");
      return splice(bytes.length, 0, utf8(pick(r, ["{}", "[]", '{"prompt":"x"}', "null"])));
  }
}

/** One mutated request, as the runner sends it. */
export interface MutatedRequest {
  /** Replays it: the seed and index it came from. */
  seed: number;
  index: number;
  endpoint: Endpoint;
  method: string;
  /** The path, with `{id}` where the kept context's id goes. */
  path: string;
  headers: Record<string, string>;
  body: Uint8Array;
  /** Send the body as a stream of chunks (no content-length), not as one buffer. */
  chunked: boolean;
  /**
   * The client disconnects this many ms after sending (0: as soon as the handler is called, before its
   * first await; -1: before it is called; null: it waits for the answer).
   */
  abortAfterMs: number | null;
  /** The mutations applied, for the report. */
  ops: string[];
}

const CONTENT_TYPES = [
  "application/json",
  "application/json; charset=utf-8",
  "text/plain",
  "application/x-www-form-urlencoded",
  "multipart/form-data; boundary=x",
  "application/json; charset=latin1",
  "",
  "*/*",
  "application/octet-stream",
];

/** The `index`th request mutation of `seed`; bodies stay near `maxBodyBytes` unless meant to pass it. */
export function mutateRequest(seed: number, index: number, maxBodyBytes: number): MutatedRequest {
  const r = mulberry32(streamSeed(seed, "request", index));
  const endpoint = pick(r, ENDPOINTS);
  const ops: string[] = [];
  let body: Json = clone(pick(r, VALID_BODIES[endpoint]));
  const limit = Math.max(64, maxBodyBytes);
  // Half the bodies get schema-valid edge values (they reach the core); most get structural mutations.
  if (r() < 0.5) { for (let i = randInt(r, 1, 3); i > 0; i--) mutateEdges(r, body, ops, limit); }
  const tree = r() < 0.6 ? randInt(r, 0, 4) : 0;
  let text = serialize(body);
  for (let i = 0; i < tree; i++) {
    // Bodies well past the limit are all 413s alike: stop growing them (and the fuzzer's memory).
    if (body === null || typeof body !== "object" || text.length > 2 * limit) break;
    body = mutateTree(r, body, limit, ops);
    text = serialize(body);
  }
  let bytes = new TextEncoder().encode(text);
  if (r() < 0.2) bytes = mutateBytes(r, bytes, ops) as Uint8Array<ArrayBuffer>;
  if (r() < 0.03) {
    ops.push("oversize");
    const pad = new Uint8Array(maxBodyBytes + randInt(r, 1, 4096)).fill(0x20);
    pad.set(bytes.subarray(0, Math.min(bytes.length, pad.length)));
    bytes = pad;
  }
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (r() < 0.1) {
    ops.push("content-type");
    headers["content-type"] = pick(r, CONTENT_TYPES);
  }
  if (r() < 0.03) {
    ops.push("content-length");
    headers["content-length"] = pick(r, [
      String(maxBodyBytes * 10),
      "0",
      "-1",
      "abc",
      "1e3",
      String(2 ** 64),
    ]);
  }
  let method = "POST";
  if (r() < 0.02) {
    ops.push("method");
    method = pick(r, ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]);
  }
  let path: string = endpoint;
  if (endpoint === "/v1/contexts/{id}/generate" && r() < 0.1) {
    ops.push("context-id");
    const id = pick(r, [
      "%2e%2e",
      "ctx_nope",
      "%E0%A4%A",
      "%00",
      "a".repeat(5000),
      "%F0%9F%98%80",
      "{id}%20",
      "",
    ]);
    path = `/v1/contexts/${id}/generate`;
  }
  const chunked = r() < 0.1;
  let abortAfterMs: number | null = null;
  if (r() < 0.04) {
    ops.push("disconnect");
    abortAfterMs = pick(r, [-1, 0, 0, 1, 2, 5, 10]);
  }
  return { seed, index, endpoint, method, path, headers, body: bytes, chunked, abortAfterMs, ops };
}

// ---- binary headers ----

/** A safetensors file split into its header (parsed) and data block. */
export interface SafetensorsParts {
  header: Record<string, Json>;
  data: Uint8Array;
}

export function splitSafetensors(file: Uint8Array): SafetensorsParts {
  const n = Number(new DataView(file.buffer, file.byteOffset, 8).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + n)));
  return { header, data: file.subarray(8 + n) };
}

/** A file image: `length` (default: the header's) as u64 little-endian, the header bytes, the data. */
export function joinSafetensors(headerBytes: Uint8Array, data: Uint8Array, length?: bigint): Uint8Array {
  const out = new Uint8Array(8 + headerBytes.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length ?? BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  out.set(data, 8 + headerBytes.length);
  return out;
}

const DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I64", "BOOL", "f32", "", "F32 "];

/** Shapes that break size arithmetic: products that overflow, lose precision or are zero. */
function oddShape(r: Rng, shape: number[]): Json {
  return pick(r, [
    [],
    [0],
    [-1, ...shape.slice(1)],
    [2 ** 53, 2 ** 53],
    [2 ** 31, 2 ** 31, 2 ** 31],
    [1e308, 1e308],
    [0, 2 ** 53 - 1],
    [0.5, 8],
    [...shape, 1],
    [shape.reduce((a, b) => a * b, 1)],
    shape.slice(1),
    [...shape].reverse(),
    shape.map((d) => d + 1),
    shape.map((d) => d * 2),
    ["8", "64"],
    [null],
    [[8]],
    "8x64",
    null,
    { 0: 8 },
    [2 ** 32 + 1, 1],
    [4294967296, 0],
    [65537, 65537, 65537],
  ]);
}

function oddOffsets(r: Rng, offsets: number[], dataSize: number, other: number[]): Json {
  const [b, e] = offsets;
  return pick(r, [
    [e, b],
    [b, e + 1],
    [b, e - 1],
    [b + 1, e + 1],
    [b, dataSize + 1],
    [dataSize, dataSize + (e - b)],
    [b, 2 ** 53],
    [2 ** 53 - 8, 2 ** 53],
    [-4, e],
    [b, e, e],
    [b],
    [],
    other, // another tensor's: an overlap
    [other[0] + 4, other[0] + 4 + (e - b)], // a partial overlap
    [b + 0.5, e + 0.5],
    [String(b), String(e)],
    null,
    [1e308, 1e308],
    [0, 0],
  ]);
}

/**
 * The `index`th mutation of a safetensors file (a model's or an adapter's) for `seed`. `kind` names
 * the stream, so the model's and the adapter's mutations of one seed differ.
 */
export function mutateSafetensors(
  seed: number,
  index: number,
  file: Uint8Array,
  kind: string,
): { bytes: Uint8Array; ops: string[] } {
  const r = mulberry32(streamSeed(seed, kind, index));
  const { header, data } = splitSafetensors(file);
  const ops: string[] = [];
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  const steps = randInt(r, 1, 3);
  let replaced: string | null = null;
  for (let i = 0; i < steps; i++) {
    const name = pick(r, names);
    const t = header[name];
    if (!t || typeof t !== "object") continue;
    switch (randInt(r, 0, 11)) {
      case 0:
        ops.push("dtype");
        t.dtype = r() < 0.8 ? pick(r, DTYPES) : randomValue(r, pick(r, KINDS), 64);
        break;
      case 1:
      case 2:
        ops.push("shape");
        t.shape = oddShape(r, Array.isArray(t.shape) ? t.shape : [1]);
        break;
      case 3:
      case 4: {
        ops.push("data_offsets");
        const other = header[pick(r, names)]?.data_offsets ?? [0, 4];
        t.data_offsets = oddOffsets(
          r,
          Array.isArray(t.data_offsets) ? t.data_offsets : [0, 4],
          data.length,
          other,
        );
        break;
      }
      case 5:
        ops.push("drop-tensor");
        delete header[name];
        break;
      case 6:
        ops.push("rename-tensor");
        delete header[name];
        setOwn(
          header,
          pick(r, [name + ".x", name.toUpperCase(), "__proto__", "constructor", "", names[0]]),
          t,
        );
        break;
      case 7: {
        ops.push("metadata");
        const m = header.__metadata__;
        const v = pick(r, [
          null,
          1,
          [],
          ["a"],
          { format: 1 },
          { ...(m ?? {}), format: "judgeq-adapter-v0" },
          { ...(m ?? {}), model_fingerprint: "" },
          { ...(m ?? {}), n: "1e999" },
          { ...(m ?? {}), n: "-3" },
          { ...(m ?? {}), extra: { nested: true } },
          JSON.parse('{"__proto__": {"polluted": true}}'),
        ]);
        if (v === null && r() < 0.5) delete header.__metadata__;
        else header.__metadata__ = v;
        break;
      }
      case 8:
        ops.push("entry-type");
        header[name] = randomValue(r, pick(r, ["string", "number", "bool", "null", "array"] as Kind[]), 64);
        break;
      case 9:
        ops.push("extra-field");
        setOwn(t, pick(r, ["extra", "__proto__", "dtype ", "offsets"]), randomValue(r, pick(r, KINDS), 64));
        break;
      case 10:
        ops.push("whole-header");
        replaced = pick(r, ["[]", "null", "1", '"x"', "true", "[{}]", "{", "", "{}", nested(r, 60_000)]);
        break;
      default:
        ops.push("duplicate-tensor");
        header[name + "_copy"] = JSON.parse(JSON.stringify(t));
    }
  }
  let headerBytes = new TextEncoder().encode(replaced ?? JSON.stringify(header));
  let length: bigint | undefined;
  let body = data;
  const c = r();
  if (c < 0.12) {
    ops.push("length");
    length = pick(r, [
      0n,
      1n,
      7n,
      BigInt(headerBytes.length + 1),
      BigInt(headerBytes.length - 1),
      BigInt(headerBytes.length + data.length),
      BigInt(headerBytes.length + data.length + 1),
      100_000_000n,
      100_000_001n,
      2n ** 53n + 1n,
      2n ** 63n,
      2n ** 64n - 1n,
    ]);
  } else if (c < 0.2) {
    ops.push("header-bytes");
    headerBytes = mutateBytes(r, headerBytes, ops) as Uint8Array<ArrayBuffer>;
  } else if (c < 0.26) {
    ops.push("truncate-data");
    body = data.subarray(0, randInt(r, 0, data.length));
  } else if (c < 0.3) {
    ops.push("pad-header");
    const padded = new Uint8Array(headerBytes.length + randInt(r, 1, 64)).fill(pick(r, [0x20, 0x00, 0x0a]));
    padded.set(headerBytes);
    headerBytes = padded;
  }
  let bytes = joinSafetensors(headerBytes, body, length);
  if (r() < 0.03) {
    ops.push("truncate-file");
    bytes = bytes.subarray(0, randInt(r, 0, Math.min(bytes.length, 16 + headerBytes.length)));
  }
  return { bytes, ops };
}
