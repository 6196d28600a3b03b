/**
 * Loads a runnable model: the directory's files, its tokenizer, an executor (io/executor_choice.ts:
 * WebGPU, the fast CPU executor or the CPU reference) and an optional Judge Q adapter checked against
 * the model's fingerprint.
 */
import * as E from "fp-ts/Either";
import { type Adapter, checkAdapterFits, decodeAdapter } from "../core/adapter.ts";
import type { Model } from "../core/engine.ts";
import { fail } from "../core/errors.ts";
import type { Executor } from "../core/executor.ts";
import { modelFingerprint } from "../core/fingerprint.ts";
import type { ModelWeights } from "../core/weights.ts";
import type { WeightFormatChoice } from "../core/weight_formats.ts";
import { chooseExecutor, type ExecutorChoice } from "./executor_choice.ts";
import { isGgufPath, loadModelFromUrl, modelFromFiles } from "./from_bytes.ts";
import { embeddedModelLocation, loadModelDir } from "./model_dir.ts";

export {
  chooseExecutor,
  EXECUTOR_CHOICES,
  type ExecutorChoice,
  type ExecutorOptions,
  isExecutorChoice,
} from "./executor_choice.ts";
export type { WeightFormatChoice } from "../core/weight_formats.ts";

export interface LoadOptions {
  /** A model directory, or an http(s) URL of one (fetched: see loadModelFromUrl); default the embedded model. */
  model?: string;
  /** Adapter file; by default the model directory's judgeq.safetensors when present. */
  adapter?: string | null;
  /** auto (default) | gpu | wasm | cpu | reference: see io/executor_choice.ts. */
  executor?: ExecutorChoice;
  /** Weight storage (default auto: WebGPU f16 where the adapter has shader-f16, the fast CPU executor f32). */
  weightFormat?: WeightFormatChoice;
  /** Threads of the fast CPU executor (default: the cores available). */
  threads?: number;
  /** KV cache storage of the native executor: f32 (default) or f16. */
  kvCache?: "f32" | "f16";
  /** Called with warnings (fallbacks); defaults to console.warn. */
  warn?: (message: string) => void;
}

/** The executor for a choice (kept for callers of the old signature; see chooseExecutor). */
export function createExecutor(
  weights: ModelWeights,
  choice: ExecutorChoice,
  warn: (m: string) => void,
  weightFormat: WeightFormatChoice = "auto",
  threads?: number,
): Promise<Executor> {
  return chooseExecutor(weights, choice, { warn, weightFormat, threads });
}

/** Room for an adapter's safetensors header (a real one is a few hundred bytes). */
const ADAPTER_HEADER_BYTES = 1 << 20;

/**
 * The most bytes an adapter for `weights` can take: fewer soft tokens than the model's context, each of
 * `dim` numbers of at most 8 bytes, and a header. Anything larger is refused before it is read.
 */
export const maxAdapterBytes = (weights: ModelWeights): number =>
  8 + ADAPTER_HEADER_BYTES + weights.config.maxSeqLen * weights.config.dim * 8;

/**
 * Reads and checks an adapter file. Its type and size are checked first: a FIFO or a device would
 * block or never end, and a huge file would be read whole before its header could be refused.
 */
export async function readAdapter(path: string, weights: ModelWeights): Promise<Adapter> {
  const bad = (m: string) => fail("invalid_adapter", m, "adapter");
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    throw bad(`cannot read: ${(e as Error).message}`);
  }
  if (!info.isFile) {
    const kind = info.isDirectory ? "a directory" : info.isFifo ? "a FIFO" : "not a regular file";
    throw bad(`${JSON.stringify(path)} is ${kind.startsWith("not") ? kind : `${kind}, not a regular file`}`);
  }
  const limit = maxAdapterBytes(weights);
  if (info.size > limit) {
    throw bad(`${info.size} bytes is more than an adapter for this model can be (at most ${limit})`);
  }
  let bytes: Uint8Array;
  try {
    bytes = await readAtMost(path, limit);
  } catch (e) {
    throw e instanceof RangeError ? bad(e.message) : bad(`cannot read: ${(e as Error).message}`);
  }
  const fingerprint = await modelFingerprint(weights);
  const a = E.flatMap((a: Adapter) => checkAdapterFits(a, fingerprint, weights.config.dim))(
    decodeAdapter(bytes, "adapter"),
  );
  if (E.isLeft(a)) throw a.left;
  return a.right;
}

/** A file's bytes, RangeError past `limit` (it may grow after the size was checked). */
async function readAtMost(path: string, limit: number): Promise<Uint8Array> {
  using f = await Deno.open(path);
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const buf = new Uint8Array(Math.min(1 << 20, limit + 1 - size));
    const n = await f.read(buf);
    if (n === null) break;
    chunks.push(buf.subarray(0, n));
    size += n;
    if (size > limit) throw new RangeError(`the file grew past ${limit} bytes while being read`);
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** The adapter a model picks up when present: DIR/judgeq.safetensors, or NAME.judgeq.safetensors beside NAME.gguf. */
export const defaultAdapterPath = (model: string): string =>
  isGgufPath(model)
    ? model.replace(/\.gguf$/i, ".judgeq.safetensors")
    : model.replace(/\/+$/, "") + "/judgeq.safetensors";

const isUrl = (s: string) => /^(https?|blob|data):/i.test(s);

export async function loadModel(o: LoadOptions = {}): Promise<Model> {
  const dir = o.model ?? embeddedModelLocation();
  const assembly = {
    executor: o.executor,
    weightFormat: o.weightFormat,
    threads: o.threads,
    kvCache: o.kvCache,
    warn: o.warn,
  };
  if (isUrl(dir)) {
    return await loadModelFromUrl(dir, { ...assembly, adapter: o.adapter });
  }
  const files = await loadModelDir(dir);
  const defaultAdapter = defaultAdapterPath(dir);
  const adapterPath = o.adapter === undefined
    ? ((await exists(defaultAdapter)) ? defaultAdapter : null)
    : o.adapter;
  const adapter = adapterPath ? await readAdapter(adapterPath, files.weights) : null;
  return await modelFromFiles(files, adapter, assembly);
}
