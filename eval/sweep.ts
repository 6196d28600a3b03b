/**
 * The sweep: enumerates every cell of a suite (task x sample x placement x variant x budget), skips the
 * ones the store already holds, and runs the rest one sample at a time, in-process or on workers.
 */
import type { ExecutorChoice, WeightFormatChoice } from "../io/runtime.ts";
import { type BudgetSpec, type SuiteConfig, type TaskPlan, variantById } from "./config.ts";
import type { EvalModel } from "./model.ts";
import { Progress } from "./progress.ts";
import {
  buildReference,
  buildSamples,
  cellKey,
  type CellResult,
  type CellSpec,
  evaluateCells,
  sampleCount,
  sampleId,
  type SkippedCell,
} from "./runner.ts";
import { CellStore, fingerprintOf } from "./store.ts";
import type { Corpus } from "./tasks/haystack.ts";
import type { Placement } from "./tasks/types.ts";

/** One sample index of one task: the cells still to run, per placement. */
export interface Unit {
  plan: TaskPlan;
  index: number;
  cells: { placement: Placement; specs: CellSpec[] }[];
}

export interface Enumeration {
  /** Units with at least one cell to run. */
  units: Unit[];
  /** Every cell key of the suite, in report order, with what it is. */
  all: {
    key: string;
    task: string;
    index: number;
    placement: Placement;
    variant: string;
    budget: BudgetSpec;
  }[];
  skipped: SkippedCell[];
}

/** Lists the suite's cells; `done` keys are left out of the units, adapter-less Judge Q cells are skipped. */
export function enumerate(
  cfg: SuiteConfig,
  m: Pick<EvalModel, "adapterId" | "adapterPath">,
  done: Set<string>,
): Enumeration {
  const units: Unit[] = [], all: Enumeration["all"] = [], skipped: SkippedCell[] = [];
  for (const plan of cfg.tasks) {
    for (let index = 0; index < sampleCount(cfg, plan); index++) {
      const unit: Unit = { plan, index, cells: [] };
      for (const placement of plan.placements) {
        const specs: CellSpec[] = [];
        for (const b of plan.budgets) {
          for (const id of plan.variants) {
            const variant = variantById(id);
            const key = cellKey(sampleId(plan.task, index, placement), variant, b, m.adapterId);
            all.push({ key, task: plan.task, index, placement, variant: id, budget: b });
            if (variant.needsAdapter && m.adapterId === null) {
              skipped.push({
                key,
                task: plan.task,
                placement,
                variant: id,
                budget: key.split("|")[2],
                reason: `no Judge Q adapter (${m.adapterPath} is absent)`,
              });
            } else if (!done.has(key)) specs.push({ variant, budget: b, key });
          }
        }
        if (specs.length > 0) unit.cells.push({ placement, specs });
      }
      if (unit.cells.length > 0) units.push(unit);
    }
  }
  return { units, all, skipped };
}

/** Runs one unit on a loaded model; reports each cell as it finishes. */
export async function runUnit(
  m: EvalModel,
  cfg: SuiteConfig,
  corpus: Corpus | null,
  u: Unit,
  onCell: (r: CellResult) => void,
) {
  const samples = await buildSamples(
    m,
    cfg,
    { ...u.plan, placements: u.cells.map((c) => c.placement) },
    u.index,
    corpus,
  );
  for (const s of samples) {
    const specs = u.cells.find((c) => c.placement === s.placement)!.specs;
    const ref = await buildReference(m, s);
    await evaluateCells(m, s, ref, specs, (r) => {
      if ("hit" in r) onCell(r);
    });
  }
}

export interface SweepOptions {
  cfg: SuiteConfig;
  model: EvalModel;
  corpus: Corpus | null;
  /** What identifies the results besides the suite (model, executor, haystack files). */
  identity: Record<string, unknown>;
  storePath: string;
  fresh: boolean;
  jobs: number;
  /** For workers: how to load the same model and haystack. */
  load: {
    modelDir: string | undefined;
    executor: ExecutorChoice;
    threads?: number;
    weightFormat?: WeightFormatChoice;
    haystack: string | null;
  };
  quiet?: boolean;
}

export interface SweepResult {
  enumeration: Enumeration;
  cells: Map<string, CellResult>;
  /** Seconds spent computing in this run (0 when everything was resumed). */
  seconds: number;
  computed: number;
}

export async function runSweep(o: SweepOptions): Promise<SweepResult> {
  const fingerprint = await fingerprintOf({ cfg: o.cfg, ...o.identity });
  const store = await CellStore.open(o.storePath, { fingerprint, suite: o.cfg.name }, o.fresh);
  try {
    const e = enumerate(o.cfg, o.model, new Set(store.cells.keys()));
    const total = e.units.reduce((a, u) => a + u.cells.reduce((b, c) => b + c.specs.length, 0), 0);
    const progress = new Progress(total, o.quiet);
    const onCell = (r: CellResult) => {
      store.add(r);
      progress.tick(`${r.task} ${r.variant} ${r.budget}`);
    };
    if (o.jobs <= 1 || e.units.length <= 1) {
      for (const u of e.units) await runUnit(o.model, o.cfg, o.corpus, u, onCell);
    } else {
      await runOnWorkers(o, e.units, onCell);
    }
    progress.finish();
    return { enumeration: e, cells: store.cells, seconds: progress.elapsedSeconds, computed: total };
  } finally {
    store.close();
  }
}

/** Worker messages: in `init` then `unit`s; out `cell`s, `done` per unit, `error`. */
export type ToWorker =
  | { kind: "init"; cfg: SuiteConfig; load: SweepOptions["load"]; adapterId: string | null }
  | { kind: "unit"; unit: Unit };
export type FromWorker =
  | { kind: "ready" }
  | { kind: "cell"; cell: CellResult }
  | { kind: "done" }
  | { kind: "error"; message: string };

async function runOnWorkers(o: SweepOptions, units: Unit[], onCell: (r: CellResult) => void) {
  const queue = [...units];
  const n = Math.min(o.jobs, units.length);
  const url = new URL("./worker.ts", import.meta.url).href;
  await Promise.all(Array.from({ length: n }, () =>
    new Promise<void>((resolve, reject) => {
      const w = new Worker(url, { type: "module" });
      const next = () => {
        const unit = queue.shift();
        if (!unit) {
          w.terminate();
          resolve();
        } else w.postMessage({ kind: "unit", unit } satisfies ToWorker);
      };
      w.onmessage = (ev: MessageEvent<FromWorker>) => {
        const msg = ev.data;
        if (msg.kind === "cell") onCell(msg.cell);
        else if (msg.kind === "ready" || msg.kind === "done") next();
        else {
          w.terminate();
          reject(new Error(`worker: ${msg.message}`));
        }
      };
      w.onerror = (ev) => {
        ev.preventDefault();
        w.terminate();
        reject(new Error(`worker: ${ev.message}`));
      };
      w.postMessage(
        { kind: "init", cfg: o.cfg, load: o.load, adapterId: o.model.adapterId } satisfies ToWorker,
      );
    })));
}
