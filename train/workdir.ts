/** Layout of the work directory (data, per-objective fits) and reading a finished fit back. */
import * as E from "fp-ts/Either";
import { type Adapter, checkAdapterFits, decodeAdapter } from "../core/adapter.ts";
import type { LossKind } from "../core/train/loss.ts";
import type { FitResult } from "./fit.ts";

/** What a fit leaves in the work directory next to its adapter. */
export interface History extends Omit<FitResult, "e"> {
  dataHash: string;
  /** Prefill of the prompts' K/V before the loop. */
  prepSeconds: number;
  initialHeldout: number;
}

export const workPaths = (work: string) => {
  const w = work.replace(/\/+$/, "");
  const fit = (loss: LossKind) => ({
    dir: `${w}/fit-${loss}`,
    checkpoint: `${w}/fit-${loss}/checkpoint.json`,
    adapter: `${w}/fit-${loss}/adapter.safetensors`,
    history: `${w}/fit-${loss}/history.json`,
  });
  return { data: `${w}/data.json`, fit };
};

/** FILE.safetensors -> FILE_report.json, FILE_loss.svg. */
export const reportPaths = (out: string) => {
  const base = out.replace(/\.safetensors$/, "");
  return { json: `${base}_report.json`, svg: `${base}_loss.svg` };
};

export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** A finished fit: its adapter (checked against the model) and history (checked against the data). */
export async function readFit(
  work: string,
  loss: LossKind,
  model: { fingerprint: string; dim: number },
  dataHash: string,
): Promise<{ bytes: Uint8Array; adapter: Adapter; history: History }> {
  const p = workPaths(work).fit(loss);
  if (!(await exists(p.adapter)) || !(await exists(p.history))) {
    throw new Error(`no ${loss} adapter in ${p.dir}: run \`deno task train fit --loss ${loss}\` first`);
  }
  const bytes = await Deno.readFile(p.adapter);
  const adapter = decodeAdapter(bytes, p.adapter);
  if (E.isLeft(adapter)) throw adapter.left;
  const fits = checkAdapterFits(adapter.right, model.fingerprint, model.dim);
  if (E.isLeft(fits)) throw fits.left;
  const history: History = JSON.parse(await Deno.readTextFile(p.history));
  if (history.dataHash !== dataHash) {
    throw new Error(`${p.dir}: trained on other data than ${workPaths(work).data}; refit`);
  }
  return { bytes, adapter: adapter.right, history };
}
