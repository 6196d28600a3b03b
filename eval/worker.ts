/// <reference lib="deno.worker" />
/** A sweep worker: loads the model and haystack once, then runs the units it is sent (sweep.ts). */
import { loadEvalModel } from "./model.ts";
import { type FromWorker, runUnit, type ToWorker } from "./sweep.ts";
import { type Corpus, loadCorpus } from "./tasks/haystack.ts";
import type { SuiteConfig } from "./config.ts";
import type { EvalModel } from "./model.ts";

let state: { m: EvalModel; corpus: Corpus | null; cfg: SuiteConfig } | null = null;
const send = (msg: FromWorker) => self.postMessage(msg);

self.onmessage = async (ev: MessageEvent<ToWorker>) => {
  const msg = ev.data;
  try {
    if (msg.kind === "init") {
      const m = await loadEvalModel(msg.load.modelDir, msg.load.executor, () => {}, {
        threads: msg.load.threads,
        weightFormat: msg.load.weightFormat,
      });
      // Cell keys carry the main thread's adapter digest: a worker must run that same adapter.
      if (m.adapterId !== msg.adapterId) {
        throw new Error(`the Judge Q adapter changed while starting (${msg.adapterId} -> ${m.adapterId})`);
      }
      const corpus = msg.load.haystack ? await loadCorpus(msg.load.haystack) : null;
      state = { m, corpus, cfg: msg.cfg };
      send({ kind: "ready" });
    } else {
      await runUnit(state!.m, state!.cfg, state!.corpus, msg.unit, (cell) => send({ kind: "cell", cell }));
      send({ kind: "done" });
    }
  } catch (e) {
    send({ kind: "error", message: (e as Error).stack ?? String(e) });
  }
};
