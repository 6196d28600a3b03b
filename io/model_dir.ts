/**
 * Loading a Hugging Face model directory from disk: config.json, one or sharded safetensors files,
 * tokenizer.json and the optional configs. Tensors are read one at a time at their offsets, so the
 * extra memory is bounded by the largest tensor, not the file. Only the reading is here: validation and
 * assembly are io/from_bytes.ts's (`weightsFromTensors`), shared with `loadModelFromBytes`.
 */
import * as E from "fp-ts/Either";
import { parseModelConfig } from "../core/config.ts";
import { fail, type JudgeQError } from "../core/errors.ts";
import { decodeToF32, headerLength, parseHeader, type SafetensorsHeader } from "../core/safetensors.ts";
import type { NamedTensor } from "../core/weights.ts";
import { parseGgufHeader } from "../core/gguf/reader.ts";
import {
  isGgufPath,
  type ModelFiles,
  modelFilesFromGguf,
  parseJsonInput,
  pathFromFileUrl,
  weightsFromTensors,
} from "./from_bytes.ts";

export type { ModelFiles } from "./from_bytes.ts";

/**
 * Where the embedded default model is: a path when this module was loaded from disk (percent-decoded:
 * a directory with a space works), else its URL (an https import: `loadModel` then fetches it), or ""
 * where the runtime gives modules no URL. Never throws.
 */
export function embeddedModelLocation(): string {
  let url: URL;
  try {
    url = new URL("../fixtures/models/stories260K/", import.meta.url);
  } catch {
    return "";
  }
  return pathFromFileUrl(url) ?? url.href;
}

/** The embedded default model shipped with the project (see `embeddedModelLocation`). */
export const EMBEDDED_MODEL_DIR: string = embeddedModelLocation();

const join = (dir: string, name: string) => dir.replace(/\/+$/, "") + "/" + name;

async function readJson(path: string, field: string, optional: boolean): Promise<unknown> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (optional && e instanceof Deno.errors.NotFound) return null;
    throw fail("invalid_model_file", `cannot read: ${(e as Error).message}`, field);
  }
  // As the bytes loader reads it: a BOM skipped, invalid UTF-8 refused (readTextFile would replace it).
  return parseJsonInput(bytes, field);
}

const orThrow = <A>(e: E.Either<JudgeQError, A>): A => {
  if (E.isLeft(e)) throw e.left;
  return e.right;
};

/** Opens a safetensors file and validates its header without reading tensor data. */
export async function openSafetensors(
  path: string,
  name: string,
): Promise<{ file: Deno.FsFile; header: SafetensorsHeader }> {
  const file = await Deno.open(path, { read: true });
  try {
    const size = (await file.stat()).size;
    const first8 = new Uint8Array(8);
    const got = await readFully(file, first8, 0);
    const n = orThrow(headerLength(first8.subarray(0, got), size, name));
    const headerBytes = new Uint8Array(n);
    await readFully(file, headerBytes, 8);
    return { file, header: orThrow(parseHeader(headerBytes, size, name)) };
  } catch (e) {
    file.close();
    throw e;
  }
}

async function readFully(file: Deno.FsFile, into: Uint8Array, at: number): Promise<number> {
  await file.seek(at, Deno.SeekMode.Start);
  let done = 0;
  while (done < into.length) {
    const n = await file.read(into.subarray(done));
    if (n === null) break;
    done += n;
  }
  return done;
}

/** Reads one tensor of an opened file, converting to float32. */
export async function readTensor(
  opened: { file: Deno.FsFile; header: SafetensorsHeader },
  name: string,
): Promise<NamedTensor> {
  const info = opened.header.tensors.get(name)!;
  const bytes = new Uint8Array(info.end - info.begin);
  await readFully(opened.file, bytes, opened.header.dataOffset + info.begin);
  return { shape: info.shape, data: decodeToF32(info.dtype, bytes) };
}

/** Which file holds each tensor: the index's weight_map, or the single model.safetensors. */
async function shardMap(dir: string): Promise<Map<string, string> | null> {
  const index = await readJson(
    join(dir, "model.safetensors.index.json"),
    "model.safetensors.index.json",
    true,
  );
  if (index === null) return null;
  const map = (index as { weight_map?: unknown }).weight_map;
  if (typeof map !== "object" || map === null || Object.values(map).some((v) => typeof v !== "string")) {
    throw fail(
      "invalid_model_file",
      "weight_map must map tensor names to file names",
      "model.safetensors.index.json",
    );
  }
  for (const file of Object.values(map as Record<string, string>)) {
    if (file.includes("/") || file.includes("..")) {
      throw fail(
        "invalid_model_file",
        `shard ${JSON.stringify(file)} must be a file in the model directory`,
        "weight_map",
      );
    }
  }
  return new Map(Object.entries(map as Record<string, string>));
}

/** First read of a GGUF header; it grows (doubling) while the header runs on. */
const GGUF_FIRST_READ = 1 << 20;

/**
 * Loads a GGUF file: the header is read (in growing prefixes) and validated against the file size, then
 * each tensor is read at its offset, so the extra memory is the header and one tensor at a time.
 */
export async function loadGgufFile(path: string): Promise<ModelFiles> {
  const name = path.split("/").pop() || path;
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw fail("invalid_model_file", "file is missing", name);
    throw fail("invalid_model_file", `cannot read: ${(e as Error).message}`, name);
  }
  try {
    const info = await file.stat();
    if (!info.isFile) throw fail("invalid_model_file", "is not a regular file", name);
    let prefix = new Uint8Array(Math.min(info.size, GGUF_FIRST_READ));
    for (;;) {
      const got = await readFully(file, prefix, 0);
      if (got < prefix.length) throw fail("invalid_model_file", "the file shrank while being read", name);
      const r = orThrow(parseGgufHeader(prefix, info.size, name));
      if (r.complete) {
        const header = r.file;
        return await modelFilesFromGguf(header, async (t) => {
          const bytes = new Uint8Array(t.byteLength);
          const n = await readFully(file, bytes, header.dataOffset + t.offset);
          if (n < bytes.length) throw fail("invalid_model_file", "the file shrank while being read", t.name);
          return bytes;
        }, path);
      }
      prefix = new Uint8Array(r.needBytes);
    }
  } finally {
    file.close();
  }
}

/**
 * Loads and validates a whole model directory, or a `.gguf` file; any failure is a JudgeQError naming the
 * file or tensor.
 */
export async function loadModelDir(dir: string): Promise<ModelFiles> {
  if (isGgufPath(dir)) return await loadGgufFile(dir);
  const config = orThrow(parseModelConfig(await readJson(join(dir, "config.json"), "config.json", false)));
  const tokenizerJson = await readJson(join(dir, "tokenizer.json"), "tokenizer.json", false);
  const tokenizerConfig = await readJson(join(dir, "tokenizer_config.json"), "tokenizer_config.json", true);
  const generationConfig = await readJson(
    join(dir, "generation_config.json"),
    "generation_config.json",
    true,
  ) as
    | Record<string, unknown>
    | null;
  const shards = (await shardMap(dir)) ?? null;
  const files = shards ? [...new Set(shards.values())] : ["model.safetensors"];
  const opened = new Map<string, { file: Deno.FsFile; header: SafetensorsHeader }>();
  try {
    for (const f of files) {
      try {
        opened.set(f, await openSafetensors(join(dir, f), f));
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) throw fail("invalid_model_file", "file is missing", f);
        throw e;
      }
    }
    const where = (name: string) => {
      const f = shards ? shards.get(name) : "model.safetensors";
      return f ? opened.get(f) : undefined;
    };
    // Every name and shape is checked first, so a bad file fails before megabytes are read.
    const weights = await weightsFromTensors(
      config,
      (name) => where(name)?.header,
      (name) => readTensor(where(name)!, name),
    );
    return { dir, config, weights, tokenizerJson, tokenizerConfig, generationConfig };
  } finally {
    for (const o of opened.values()) o.file.close();
  }
}
