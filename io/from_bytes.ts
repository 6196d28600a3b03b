/**
 * Filesystem-free loading: a model from bytes already in memory (fetched, bundled, imported with
 * `type: "bytes"`), or from a base URL with `fetch`. No `Deno` API here, so the same code runs in Deno
 * with no permissions, in browsers and in edge runtimes; io/model_dir.ts and io/runtime.ts only read
 * files and hand their contents to the functions below.
 *
 * ```ts
 * const model = await loadModelFromBytes({
 *   config: await (await fetch(base + "config.json")).bytes(),
 *   tokenizer: await (await fetch(base + "tokenizer.json")).bytes(),
 *   safetensors: [await (await fetch(base + "model.safetensors")).bytes()],
 *   adapter: await (await fetch(base + "judgeq.safetensors")).bytes(),
 *   executor: "wasm",
 * });
 * ```
 */
import * as E from "fp-ts/Either";
import { type Adapter, checkAdapterFits, decodeAdapter } from "../core/adapter.ts";
import { type ModelConfig, parseModelConfig } from "../core/config.ts";
import type { Model } from "../core/engine.ts";
import { fail, type JudgeQError } from "../core/errors.ts";
import { modelFingerprint } from "../core/fingerprint.ts";
import { decodeToF32, headerLength, parseHeader, type SafetensorsHeader } from "../core/safetensors.ts";
import { createTokenizer } from "../core/tokenizer.ts";
import { ggufModel, type TensorReader } from "../core/gguf/model.ts";
import { type GgufFile, parseGguf, tensorBytes } from "../core/gguf/reader.ts";
import {
  assembleWeights,
  checkTensorShape,
  expectedTensorEntries,
  expectedTensors,
  type ModelWeights,
  type NamedTensor,
} from "../core/weights.ts";
import type { WeightFormatChoice } from "../core/weight_formats.ts";
import { chooseExecutor, type ExecutorChoice } from "./executor_choice.ts";

/** A JSON file's content: its bytes, its text, or the value already parsed. */
export type JsonInput = Uint8Array | ArrayBuffer | string | Record<string, unknown>;

/** A model's parsed files, however they were read (a directory, bytes, URLs). */
export interface ModelFiles {
  /** Where the files came from (a directory, a URL) or a caller-given name. */
  dir: string;
  config: ModelConfig;
  weights: ModelWeights;
  /** Parsed tokenizer.json, tokenizer_config.json and generation_config.json (null when absent). */
  tokenizerJson: unknown;
  tokenizerConfig: unknown | null;
  generationConfig: Record<string, unknown> | null;
}

export interface ModelBytes {
  /** config.json */
  config: JsonInput;
  /** tokenizer.json */
  tokenizer: JsonInput;
  /** tokenizer_config.json (chat template, special tokens), optional. */
  tokenizerConfig?: JsonInput | null;
  /** generation_config.json (extra eos ids), optional. */
  generationConfig?: JsonInput | null;
  /** A Jinja chat template, replacing tokenizer_config.json's `chat_template`. */
  chatTemplate?: string;
  /**
   * The safetensors file, or every shard of a sharded model in any order (each tensor is looked up in
   * the shard that has it; no index file needed).
   */
  safetensors: Uint8Array | ArrayBuffer | (Uint8Array | ArrayBuffer)[];
  /** A name for the model (`/v1/models`, results); default "model". */
  name?: string;
}

export interface BytesLoadOptions extends ModelBytes {
  /** A Judge Q adapter's bytes (judgeq.safetensors) or a decoded adapter; checked against the model. */
  adapter?: Uint8Array | ArrayBuffer | Adapter | null;
  /** auto (default) | gpu | wasm | cpu | reference: see io/executor_choice.ts. */
  executor?: ExecutorChoice;
  /** Weight storage (default auto). `weightFormat` is accepted as its alias. */
  weights?: WeightFormatChoice;
  weightFormat?: WeightFormatChoice;
  /** Threads of the fast CPU executor (default: the cores available). */
  threads?: number;
  /** Called with warnings (fallbacks); defaults to console.warn. */
  warn?: (message: string) => void;
}

const orThrow = <A>(e: E.Either<JudgeQError, A>): A => {
  if (E.isLeft(e)) throw e.left;
  return e.right;
};

const asBytes = (b: Uint8Array | ArrayBuffer): Uint8Array => b instanceof Uint8Array ? b : new Uint8Array(b);

/** Parses a JSON input; a missing optional one is null. Errors name the file. */
export function parseJsonInput(input: JsonInput | null | undefined, file: string): unknown {
  if (input === undefined || input === null) return null;
  if (typeof input === "object" && !(input instanceof Uint8Array) && !(input instanceof ArrayBuffer)) {
    return input;
  }
  let text: string;
  try {
    text = typeof input === "string"
      ? input
      : new TextDecoder("utf-8", { fatal: true }).decode(asBytes(input));
  } catch (e) {
    throw fail("invalid_model_file", `not valid UTF-8: ${(e as Error).message}`, file);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw fail("invalid_model_file", `not valid JSON: ${(e as Error).message}`, file);
  }
}

/** Validates a safetensors file in memory (header only; no tensor is decoded). */
export function safetensorsHeaderOf(bytes: Uint8Array, name: string): SafetensorsHeader {
  const n = orThrow(headerLength(bytes.subarray(0, 8), bytes.length, name));
  return orThrow(parseHeader(bytes.subarray(8, 8 + n), bytes.length, name));
}

/**
 * Builds validated weights from a lookup of where each tensor lives: every expected name and shape is
 * checked before any tensor is decoded, so a bad file fails before megabytes are converted.
 */
export async function weightsFromTensors(
  config: ModelConfig,
  headerOf: (name: string) => SafetensorsHeader | undefined,
  read: (name: string) => Promise<NamedTensor> | NamedTensor,
): Promise<ModelWeights> {
  // One name at a time, so a config claiming a million layers fails at the first missing tensor, before
  // nine million names are listed.
  for (const [name, want] of expectedTensorEntries(config)) {
    orThrow(checkTensorShape(name, headerOf(name)?.tensors.get(name)?.shape, config, want));
  }
  const names = [...expectedTensors(config).keys()];
  const tensors = new Map<string, NamedTensor>();
  for (const name of names) tensors.set(name, await read(name));
  return orThrow(assembleWeights(config, (n) => tensors.get(n)));
}

/** Parses and validates a model's files from bytes: config, tokenizer files and safetensors (shards). */
export async function parseModelBytes(b: ModelBytes): Promise<ModelFiles> {
  const config = orThrow(parseModelConfig(parseJsonInput(b.config, "config.json")));
  const tokenizerJson = parseJsonInput(b.tokenizer, "tokenizer.json");
  if (tokenizerJson === null) throw fail("invalid_model_file", "is missing", "tokenizer.json");
  const parsedTokenizerConfig = parseJsonInput(b.tokenizerConfig, "tokenizer_config.json");
  const tokenizerConfig = b.chatTemplate === undefined
    ? parsedTokenizerConfig
    : { ...(parsedTokenizerConfig ?? {}) as Record<string, unknown>, chat_template: b.chatTemplate };
  const generationConfig = parseJsonInput(b.generationConfig, "generation_config.json") as
    | Record<string, unknown>
    | null;
  const files = (Array.isArray(b.safetensors) ? b.safetensors : [b.safetensors]).map(asBytes);
  if (files.length === 0) throw fail("invalid_model_file", "no safetensors file given", "safetensors");
  const label = (i: number) => files.length === 1 ? "model.safetensors" : `safetensors[${i}]`;
  const shards = files.map((bytes, i) => ({ bytes, header: safetensorsHeaderOf(bytes, label(i)) }));
  const owner = new Map<string, (typeof shards)[number]>();
  shards.forEach((s, i) => {
    for (const name of s.header.tensors.keys()) {
      if (owner.has(name)) {
        throw fail("invalid_model_file", `tensor ${name} is in more than one shard`, label(i));
      }
      owner.set(name, s);
    }
  });
  const weights = await weightsFromTensors(config, (name) => owner.get(name)?.header, (name) => {
    const s = owner.get(name)!;
    const info = s.header.tensors.get(name)!;
    const at = s.header.dataOffset;
    return {
      shape: info.shape,
      data: decodeToF32(info.dtype, s.bytes.subarray(at + info.begin, at + info.end)),
    };
  });
  return { dir: b.name ?? "model", config, weights, tokenizerJson, tokenizerConfig, generationConfig };
}

/** Whether a path or URL names a GGUF file (by its extension). */
export const isGgufPath = (p: string): boolean => /\.gguf$/i.test(p.replace(/[?#].*$/, ""));

/** ModelFiles from a parsed GGUF header and a tensor reader (memory or disk). */
export async function modelFilesFromGguf(
  file: GgufFile,
  read: TensorReader,
  name: string,
): Promise<ModelFiles> {
  const m = orThrow(await ggufModel(file, read));
  return {
    dir: name,
    config: m.config,
    weights: m.weights,
    tokenizerJson: m.tokenizerJson,
    tokenizerConfig: m.tokenizerConfig,
    generationConfig: null,
  };
}

/** Parses and validates a GGUF file in memory: config, tokenizer, chat template and tensors. */
export function parseGgufBytes(bytes: Uint8Array | ArrayBuffer, name = "model.gguf"): Promise<ModelFiles> {
  const all = asBytes(bytes);
  const file = orThrow(parseGguf(all, name));
  return modelFilesFromGguf(file, (info) => tensorBytes(file, all, info), name);
}

/** Decodes adapter bytes and checks that the adapter was trained for these weights. */
export function adapterFromBytes(
  bytes: Uint8Array | ArrayBuffer,
  weights: ModelWeights,
  file = "adapter",
): Promise<Adapter> {
  return checkAdapter(orThrow(decodeAdapter(asBytes(bytes), file)), weights);
}

async function checkAdapter(adapter: Adapter, weights: ModelWeights): Promise<Adapter> {
  return orThrow(checkAdapterFits(adapter, await modelFingerprint(weights), weights.config.dim));
}

export interface ModelAssembly {
  executor?: ExecutorChoice;
  weightFormat?: WeightFormatChoice;
  threads?: number;
  /** KV cache storage of the native executor (default f32). */
  kvCache?: "f32" | "f16";
  warn?: (message: string) => void;
}

/** A runnable Model from parsed files and an optional adapter: tokenizer, executor, stop ids. */
export async function modelFromFiles(
  files: ModelFiles,
  adapter: Adapter | null,
  o: ModelAssembly = {},
): Promise<Model> {
  const warn = o.warn ?? ((m: string) => console.warn(`warning: ${m}`));
  const tokenizer = orThrow(
    createTokenizer(files.tokenizerJson, files.tokenizerConfig, files.config.vocabSize),
  );
  const executor = await chooseExecutor(files.weights, o.executor ?? "auto", {
    warn,
    weightFormat: o.weightFormat,
    threads: o.threads,
    kvType: o.kvCache,
  });
  const eos = files.generationConfig?.eos_token_id;
  const stop = new Set<number>([
    ...files.config.eosTokenIds,
    ...tokenizer.eosIds,
    ...(Array.isArray(eos) ? eos : typeof eos === "number" ? [eos] : []),
  ]);
  return {
    name: files.dir.replace(/\/+$/, "").split("/").pop()?.replace(/\.gguf$/i, "") || "model",
    config: files.config,
    tokenizer,
    executor,
    adapter,
    tokenEmbeddings: files.weights.embed,
    stopTokenIds: [...stop],
  };
}

/** Loading from a GGUF file's bytes: one file holds config, tokenizer, chat template and tensors. */
export interface GgufBytesLoadOptions extends Omit<BytesLoadOptions, keyof ModelBytes> {
  gguf: Uint8Array | ArrayBuffer;
  name?: string;
}

/**
 * Loads a runnable model from bytes in memory (a Hugging Face directory's files, or a GGUF file's bytes
 * as `gguf`): no filesystem, no permissions.
 */
export async function loadModelFromBytes(o: BytesLoadOptions | GgufBytesLoadOptions): Promise<Model> {
  const files = "gguf" in o ? await parseGgufBytes(o.gguf, o.name ?? "model.gguf") : await parseModelBytes(o);
  const adapter = o.adapter === undefined || o.adapter === null
    ? null
    : o.adapter instanceof Uint8Array || o.adapter instanceof ArrayBuffer
    ? await adapterFromBytes(o.adapter, files.weights)
    : await checkAdapter(o.adapter, files.weights);
  return await modelFromFiles(files, adapter, {
    executor: o.executor,
    weightFormat: o.weights ?? o.weightFormat,
    threads: o.threads,
    warn: o.warn,
  });
}

export interface UrlLoadOptions extends Omit<BytesLoadOptions, keyof ModelBytes | "adapter"> {
  /**
   * The adapter: a URL (relative to the model's), null for none, or by default the model's
   * judgeq.safetensors when it exists.
   */
  adapter?: string | URL | null;
  /** The fetch to use (default: globalThis.fetch). */
  fetch?: typeof fetch;
  name?: string;
}

/**
 * Fetches a Hugging Face model directory served over HTTP (or any URL fetch supports) and loads it:
 * config.json, tokenizer.json, the optional tokenizer_config.json and generation_config.json,
 * model.safetensors or the shards named by model.safetensors.index.json, and judgeq.safetensors.
 */
export async function loadModelFromUrl(base: string | URL, o: UrlLoadOptions = {}): Promise<Model> {
  const get = o.fetch ?? globalThis.fetch;
  if (isGgufPath(new URL(base).pathname)) return await loadGgufFromUrl(new URL(base), get, o);
  const root = new URL(String(base).replace(/\/*$/, "/"));
  const fetchBytes = async (name: string | URL, optional: boolean): Promise<Uint8Array | null> => {
    const url = new URL(name, root);
    let res: Response;
    try {
      res = await get(url);
    } catch (e) {
      throw fail("invalid_model_file", `cannot fetch ${url.href}: ${(e as Error).message}`, String(name));
    }
    if (res.status === 404 && optional) {
      await res.body?.cancel();
      return null;
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw fail("invalid_model_file", `fetching ${url.href}: HTTP ${res.status}`, String(name));
    }
    return new Uint8Array(await res.arrayBuffer());
  };
  const [config, tokenizer, tokenizerConfig, generationConfig, index] = await Promise.all([
    fetchBytes("config.json", false),
    fetchBytes("tokenizer.json", false),
    fetchBytes("tokenizer_config.json", true),
    fetchBytes("generation_config.json", true),
    fetchBytes("model.safetensors.index.json", true),
  ]);
  let shardNames = ["model.safetensors"];
  if (index) {
    const map = (parseJsonInput(index, "model.safetensors.index.json") as { weight_map?: unknown })
      ?.weight_map;
    if (typeof map !== "object" || map === null || Object.values(map).some((v) => typeof v !== "string")) {
      throw fail(
        "invalid_model_file",
        "weight_map must map tensor names to file names",
        "model.safetensors.index.json",
      );
    }
    shardNames = [...new Set(Object.values(map as Record<string, string>))];
    for (const f of shardNames) {
      if (f.includes("/") || f.includes("..")) {
        throw fail(
          "invalid_model_file",
          `shard ${JSON.stringify(f)} must be a file in the model directory`,
          "weight_map",
        );
      }
    }
  }
  const safetensors = (await Promise.all(shardNames.map((f) => fetchBytes(f, false)))) as Uint8Array[];
  const adapter = o.adapter === null
    ? null
    : await fetchBytes(o.adapter ?? "judgeq.safetensors", o.adapter === undefined);
  return await loadModelFromBytes({
    ...o,
    name: o.name ?? root.pathname.replace(/\/+$/, "").split("/").pop() ?? "model",
    config: config!,
    tokenizer: tokenizer!,
    tokenizerConfig,
    generationConfig,
    safetensors,
    adapter,
  });
}

/** A GGUF file fetched whole; the adapter is given by URL (relative to the file's) or not at all. */
async function loadGgufFromUrl(url: URL, get: typeof fetch, o: UrlLoadOptions): Promise<Model> {
  const fetchBytes = async (u: URL, param: string): Promise<Uint8Array> => {
    let res: Response;
    try {
      res = await get(u);
    } catch (e) {
      throw fail("invalid_model_file", `cannot fetch ${u.href}: ${(e as Error).message}`, param);
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw fail("invalid_model_file", `fetching ${u.href}: HTTP ${res.status}`, param);
    }
    return new Uint8Array(await res.arrayBuffer());
  };
  const name = url.pathname.split("/").pop() || "model.gguf";
  const gguf = await fetchBytes(url, name);
  const adapter = o.adapter ? await fetchBytes(new URL(o.adapter, url), "adapter") : null;
  return await loadModelFromBytes({ ...o, name: o.name ?? name, gguf, adapter });
}

/**
 * A file: URL as a path (percent-decoded, so a directory with a space works; a Windows drive letter
 * loses its leading slash); null for any other scheme (an https import, a bundle).
 */
export function pathFromFileUrl(url: URL): string | null {
  if (url.protocol !== "file:") return null;
  const path = decodeURIComponent(url.pathname);
  return /^\/[A-Za-z]:\//.test(path) ? path.slice(1) : path;
}
