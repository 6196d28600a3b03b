/**
 * Loads a runnable model: the directory's files, its tokenizer, an executor (WebGPU or CPU) and an
 * optional Judge Q adapter checked against the model's fingerprint.
 */
import * as E from "fp-ts/Either";
import { type Adapter, checkAdapterFits, decodeAdapter } from "../core/adapter.ts";
import type { Model } from "../core/engine.ts";
import { fail } from "../core/errors.ts";
import type { Executor } from "../core/executor.ts";
import { createBestExecutor, GpuExecutor, type WeightFormatChoice } from "../gpu/mod.ts";
import { modelFingerprint } from "../core/fingerprint.ts";
import { createTokenizer } from "../core/tokenizer.ts";
import type { ModelWeights } from "../core/weights.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "./model_dir.ts";

export type ExecutorChoice = "cpu" | "gpu" | "auto";

export interface LoadOptions {
  model?: string;
  /** Adapter file; by default the model directory's judgeq.safetensors when present. */
  adapter?: string | null;
  executor?: ExecutorChoice;
  /** GPU weight storage (default auto: f16 where the adapter has shader-f16). */
  weightFormat?: WeightFormatChoice;
  /** Called with warnings (fallbacks); defaults to console.warn. */
  warn?: (message: string) => void;
}

/** The executor for a choice: "gpu" fails without an adapter, "auto" falls back to the CPU with a warning. */
export async function createExecutor(
  weights: ModelWeights,
  choice: ExecutorChoice,
  warn: (m: string) => void,
  weightFormat: WeightFormatChoice = "auto",
): Promise<Executor> {
  if (choice !== "gpu") {
    return await createBestExecutor(weights, {
      prefer: choice === "cpu" ? "cpu" : "gpu",
      warn,
      weightFormat,
    });
  }
  try {
    return await GpuExecutor.create(weights, { weightFormat });
  } catch (e) {
    throw fail("internal", `WebGPU executor unavailable: ${(e as Error).message}`, "executor");
  }
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
  const executor = await createExecutor(files.weights, o.executor ?? "auto", warn, o.weightFormat);
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
