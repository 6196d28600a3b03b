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
import { createTokenizer } from "../core/tokenizer.ts";
import type { ModelWeights } from "../core/weights.ts";
import { chooseExecutor, type ExecutorChoice, type WeightFormatChoice } from "./executor_choice.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "./model_dir.ts";

export {
  chooseExecutor,
  EXECUTOR_CHOICES,
  type ExecutorChoice,
  type ExecutorOptions,
  isExecutorChoice,
  type WeightFormatChoice,
} from "./executor_choice.ts";

export interface LoadOptions {
  model?: string;
  /** Adapter file; by default the model directory's judgeq.safetensors when present. */
  adapter?: string | null;
  /** auto (default) | gpu | wasm | cpu | reference: see io/executor_choice.ts. */
  executor?: ExecutorChoice;
  /** Weight storage (default auto: WebGPU f16 where the adapter has shader-f16, the fast CPU executor f32). */
  weightFormat?: WeightFormatChoice;
  /** Threads of the fast CPU executor (default: the cores available). */
  threads?: number;
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

export async function readAdapter(path: string, weights: ModelWeights): Promise<Adapter> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw fail("invalid_adapter", `cannot read: ${(e as Error).message}`, "adapter");
  }
  const fingerprint = await modelFingerprint(weights);
  const a = E.flatMap((a: Adapter) => checkAdapterFits(a, fingerprint, weights.config.dim))(
    decodeAdapter(bytes, "adapter"),
  );
  if (E.isLeft(a)) throw a.left;
  return a.right;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function loadModel(o: LoadOptions = {}): Promise<Model> {
  const dir = o.model ?? EMBEDDED_MODEL_DIR;
  const warn = o.warn ?? ((m: string) => console.warn(`warning: ${m}`));
  const files = await loadModelDir(dir);
  const tokenizer = createTokenizer(files.tokenizerJson, files.tokenizerConfig);
  if (E.isLeft(tokenizer)) throw tokenizer.left;
  const defaultAdapter = dir.replace(/\/+$/, "") + "/judgeq.safetensors";
  const adapterPath = o.adapter === undefined
    ? ((await exists(defaultAdapter)) ? defaultAdapter : null)
    : o.adapter;
  const adapter = adapterPath ? await readAdapter(adapterPath, files.weights) : null;
  const executor = await chooseExecutor(files.weights, o.executor ?? "auto", {
    warn,
    weightFormat: o.weightFormat,
    threads: o.threads,
  });
  const eos = files.generationConfig?.eos_token_id;
  const stop = new Set<number>([
    ...files.config.eosTokenIds,
    ...tokenizer.right.eosIds,
    ...(Array.isArray(eos) ? eos : typeof eos === "number" ? [eos] : []),
  ]);
  return {
    name: dir.replace(/\/+$/, "").split("/").pop() ?? "model",
    config: files.config,
    tokenizer: tokenizer.right,
    executor,
    adapter,
    tokenEmbeddings: files.weights.embed,
    stopTokenIds: [...stop],
  };
}
