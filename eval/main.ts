/**
 * deno task eval: sweeps KV-compression methods x budgets x question placement over seeded synthetic
 * tasks, scores hit rate, fidelity to the full cache and task scores, and writes results.json,
 * results.md and SVG plots. Resumable: finished cells are kept in cells.jsonl and skipped.
 *
 *   deno task eval --suite quick            # the CI check (~1 minute)
 *   deno task eval --suite full --jobs 2    # the stories260K sweep -> results/full/
 */
import {
  executorFlag,
  executorFlags,
  parseFlags,
  threadsFlag,
  usage,
  UsageError,
  weightsFlag,
} from "../io/flags.ts";
import { JudgeQError } from "../core/errors.ts";
import type { ExecutorChoice, WeightFormatChoice } from "../io/runtime.ts";
import { defaultThreads } from "../wasm/mod.ts";
import { parseBudget, type SuiteConfig, SUITES, VARIANT_IDS } from "./config.ts";
import { loadEvalModel } from "./model.ts";
import {
  aggregate,
  checks,
  markdown,
  needleHeatmap,
  type ReportMeta,
  type Row,
  taskPlots,
} from "./report.ts";
import { type CellResult, ESSAY_TASKS, TASK_NAMES } from "./runner.ts";
import { runSweep } from "./sweep.ts";
import { loadCorpus } from "./tasks/haystack.ts";
import { type Placement, PLACEMENTS } from "./tasks/types.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const DEFAULT_HAYSTACK = `${ROOT}../shared/data/haystack/PaulGrahamEssays`;

export const SPEC = {
  suite: { kind: "string", help: "quick | full (default quick)", default: "quick" },
  model: { kind: "string", help: "model directory (default: the embedded stories260K)" },
  ...executorFlags("cpu", ": deterministic reference numbers"),
  haystack: {
    kind: "string",
    help: "directory of essay .txt files (default ../shared/data/haystack/PaulGrahamEssays)",
  },
  out: { kind: "string", help: "output directory (default results/<suite>)" },
  seed: { kind: "int", help: "seed of every generated task and sample (default 0)", default: 0 },
  jobs: { kind: "int", help: "worker threads, one sample each at a time (default 1)", default: 1 },
  tasks: { kind: "string", help: `comma list restricting the suite's tasks (${TASK_NAMES.join(", ")})` },
  variants: { kind: "string", help: "comma list restricting the variants (see --list)" },
  budgets: { kind: "string", help: "comma list replacing the budgets: tokens (64) or ratios (r0.5)" },
  placements: {
    kind: "string",
    help: "comma list replacing question placements of question tasks (end, start, after)",
  },
  samples: { kind: "int", help: "samples per task (replaces the suite's)" },
  fresh: {
    kind: "boolean",
    help: "discard finished cells in the output directory (the quick suite always does)",
  },
  resume: { kind: "boolean", help: "quick suite: keep finished cells instead of starting fresh" },
  quiet: { kind: "boolean", help: "no progress bar" },
  list: { kind: "boolean", help: "list the variants and tasks, then exit" },
  help: { kind: "boolean", help: "show this help" },
} as const;

export interface EvalArgs {
  cfg: SuiteConfig;
  modelDir: string | undefined;
  executor: ExecutorChoice;
  /** Threads of the wasm executor per model loaded (default: the cores available, shared out over --jobs). */
  threads?: number;
  weightFormat?: WeightFormatChoice;
  haystack: string | null;
  out: string;
  jobs: number;
  fresh: boolean;
  quiet: boolean;
}

const list = (
  s: unknown,
) => (typeof s === "string" ? s.split(",").map((x) => x.trim()).filter(Boolean) : null);

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/** Flags to arguments: the suite with its overrides applied. */
export async function parseArgs(argv: string[]): Promise<EvalArgs | null> {
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno task eval", SPEC));
    return null;
  }
  if (f.list) {
    console.log(`variants: ${VARIANT_IDS.join(", ")}\ntasks: ${TASK_NAMES.join(", ")}`);
    return null;
  }
  if ((f._ as string[]).length) throw new UsageError(`unexpected argument '${f._[0]}'`);
  const suiteFn = SUITES[f.suite as string];
  if (!suiteFn) {
    throw new UsageError(`--suite: expected ${Object.keys(SUITES).join(" or ")}, got '${f.suite}'`);
  }
  const executor = executorFlag(f.executor);
  const threads = threadsFlag(f.threads), weightFormat = weightsFlag(f);
  if ((f.jobs as number) < 1) throw new UsageError("--jobs: expected at least 1");
  let cfg = suiteFn(f.seed as number);
  const tasks = list(f.tasks), variants = list(f.variants), placements = list(f.placements);
  for (const t of tasks ?? []) {
    if (!TASK_NAMES.includes(t)) {
      throw new UsageError(`--tasks: unknown task '${t}' (known: ${TASK_NAMES.join(", ")})`);
    }
  }
  for (const v of variants ?? []) {
    if (!VARIANT_IDS.includes(v)) {
      throw new UsageError(`--variants: unknown variant '${v}' (known: ${VARIANT_IDS.join(", ")})`);
    }
  }
  for (const p of placements ?? []) {
    if (!PLACEMENTS.includes(p as Placement) || p === "none") {
      throw new UsageError(`--placements: expected end, start or after, got '${p}'`);
    }
  }
  let budgets;
  try {
    budgets = list(f.budgets)?.map(parseBudget);
  } catch (e) {
    throw new UsageError(`--budgets: ${(e as Error).message}`);
  }
  if ((f.samples as number | undefined) !== undefined && (f.samples as number) < 1) {
    throw new UsageError("--samples: expected at least 1");
  }
  cfg = {
    ...cfg,
    tasks: cfg.tasks.filter((t) => !tasks || tasks.includes(t.task)).map((t) => ({
      ...t,
      variants: variants ? t.variants.filter((v) => variants.includes(v)) : t.variants,
      budgets: budgets ?? t.budgets,
      placements: placements && !t.placements.includes("none") ? placements as Placement[] : t.placements,
      samples: (f.samples as number | undefined) ?? t.samples,
    })).filter((t) => t.variants.length > 0),
  };
  const haystack = (f.haystack as string | undefined) ??
    ((await isDir(DEFAULT_HAYSTACK)) ? DEFAULT_HAYSTACK : null);
  if (f.haystack !== undefined && !(await isDir(f.haystack as string))) {
    throw new UsageError(`--haystack: ${f.haystack} is not a directory`);
  }
  return {
    cfg,
    modelDir: f.model as string | undefined,
    executor,
    // --jobs workers each load a model: by default they share the cores rather than each taking all.
    threads: threads ??
      ((f.jobs as number) > 1 ? Math.max(1, Math.floor(defaultThreads() / (f.jobs as number))) : undefined),
    weightFormat,
    haystack,
    out: (f.out as string | undefined) ?? `${ROOT}results/${cfg.name}`,
    jobs: f.jobs as number,
    // The quick suite is a check of the current code: it never trusts cells of an earlier run.
    fresh: f.fresh === true || (cfg.name === "quick" && f.resume !== true),
    quiet: f.quiet === true,
  };
}

export interface EvalOutcome {
  rows: Row[];
  failures: string[];
  seconds: number;
  computed: number;
  out: string;
}

/** Runs the sweep and writes every output; `log` gets one-line notes. */
export async function runEval(
  a: EvalArgs,
  log: (m: string) => void = (m) => console.error(m),
): Promise<EvalOutcome> {
  let cfg = a.cfg;
  if (a.haystack === null) {
    const dropped = cfg.tasks.filter((t) => ESSAY_TASKS.has(t.task)).map((t) => t.task);
    if (dropped.length) log(`no essay haystack (--haystack DIR): skipping ${dropped.join(", ")}`);
    cfg = { ...cfg, tasks: cfg.tasks.filter((t) => !ESSAY_TASKS.has(t.task)) };
  }
  const loadOptions = { threads: a.threads, weightFormat: a.weightFormat };
  const model = await loadEvalModel(a.modelDir, a.executor, (m) => log(`warning: ${m}`), loadOptions);
  const corpus = a.haystack ? await loadCorpus(a.haystack) : null;
  log(
    `eval ${cfg.name}: ${model.model.name} on ${model.model.executor.description}; ` +
      (model.adapterId
        ? `Judge Q adapter ${model.adapterId}`
        : `no Judge Q adapter (${model.adapterPath}): trained Judge Q rows skipped`),
  );
  await Deno.mkdir(`${a.out}/plots`, { recursive: true });
  const identity = {
    model: model.model.name,
    config: model.model.config,
    executor: model.model.executor.kind,
    haystack: corpus ? corpus.files : null,
  };
  const t0 = performance.now();
  const sweep = await runSweep({
    cfg,
    model,
    corpus,
    identity,
    storePath: `${a.out}/cells.jsonl`,
    fresh: a.fresh,
    jobs: a.jobs,
    load: { modelDir: a.modelDir, executor: a.executor, ...loadOptions, haystack: a.haystack },
    quiet: a.quiet,
  });
  // Report order is the suite's, whatever order the cells finished in.
  const cells = sweep.enumeration.all.map((c) => sweep.cells.get(c.key)).filter((c) => c !== undefined);
  const rows = aggregate(cells);
  const failures = checks(cells, sweep.enumeration.all.length, sweep.enumeration.skipped);
  const meta: ReportMeta = {
    suite: cfg.name,
    seed: cfg.seed,
    model: model.model.name,
    executor: model.model.executor.kind,
    contextLength: model.model.config.maxSeqLen,
    adapter: model.adapterId,
    haystack: corpus ? `${corpus.files.length} essays` : null,
  };
  const skipped = [...new Map(sweep.enumeration.skipped.map((s) => [s.variant, s.reason])).entries()]
    .map(([variant, reason]) => ({
      variant,
      reason,
      cells: sweep.enumeration.skipped.filter((s) => s.variant === variant).length,
    }));
  const results = {
    meta: {
      ...meta,
      budget_unit:
        "prompt KV entries kept per KV head per layer, window included; rX = compression ratio X (fraction removed)",
      placements: {
        none: "no question (stories)",
        end: "context then question, compressed together",
        start: "question, context, neutral answer cue, compressed together",
        after: "context compressed alone, question appended after compression",
      },
      prompt_tokens: Object.fromEntries(cfg.tasks.map((t) => {
        const Ls = cells.filter((c) => c.task === t.task).map((c) => c.L);
        return [t.task, Ls.length ? { min: Math.min(...Ls), max: Math.max(...Ls) } : null];
      })),
      response_tokens: Object.fromEntries(cfg.tasks.map((t) => [t.task, t.responseTokens])),
    },
    config: cfg,
    rows,
    skipped,
    checks: failures,
  };
  await Deno.writeTextFile(`${a.out}/results.json`, JSON.stringify(results, null, 1) + "\n");
  await Deno.writeTextFile(`${a.out}/results.md`, markdown(cfg, meta, rows, sweep.enumeration.skipped));
  for (const [name, svg] of taskPlots(cfg, rows)) await Deno.writeTextFile(`${a.out}/plots/${name}.svg`, svg);
  const heat = needleHeatmap(cfg, cells);
  if (heat) await Deno.writeTextFile(`${a.out}/needle_heatmap.svg`, heat);
  const seconds = (performance.now() - t0) / 1000;
  await writeRunLog(
    `${a.out}/run.json`,
    a.fresh,
    {
      finished: new Date().toISOString(),
      seconds: Math.round(seconds * 10) / 10,
      cells_computed: sweep.computed,
      jobs: a.jobs,
      executor: model.model.executor.description,
      deno: Deno.version.deno,
    },
    cells,
    sweep.enumeration.all.length,
  );
  model.model.executor.dispose();
  return { rows, failures, seconds, computed: sweep.computed, out: a.out };
}

/**
 * run.json: wall time of every run that computed cells (re-rendering a finished sweep adds nothing), and
 * the mean compute time per cell and variant. Timing varies run to run, so it lives apart from results.json.
 */
async function writeRunLog(
  path: string,
  fresh: boolean,
  run: { seconds: number; cells_computed: number } & Record<string, unknown>,
  cells: CellResult[],
  total: number,
) {
  let runs: (typeof run)[] = [];
  try {
    if (!fresh) runs = JSON.parse(await Deno.readTextFile(path)).runs ?? [];
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (run.cells_computed > 0) runs.push(run);
  const variants = [...new Set(cells.map((c) => c.variant))];
  const log = {
    runs,
    seconds_total: Math.round(runs.reduce((a, r) => a + r.seconds, 0) * 10) / 10,
    cells_total: total,
    cell_ms_by_variant: Object.fromEntries(variants.map((v) => {
      const ms = cells.filter((c) => c.variant === v && c.ms > 0).map((c) => c.ms);
      return [v, ms.length ? Math.round(ms.reduce((x, y) => x + y, 0) / ms.length) : null];
    })),
  };
  await Deno.writeTextFile(path, JSON.stringify(log, null, 1) + "\n");
}

export async function main(argv: string[]): Promise<number> {
  const a = await parseArgs(argv);
  if (!a) return 0;
  const r = await runEval(a);
  console.error(
    `${r.computed} cells computed in ${
      r.seconds.toFixed(1)
    }s; wrote ${r.out}/results.json, results.md, plots/`,
  );
  if (r.failures.length) {
    console.error(`${r.failures.length} check(s) failed:\n  ${r.failures.slice(0, 20).join("\n  ")}`);
    return 1;
  }
  console.error("checks passed: every metric computed; uncompressed runs equal the full cache");
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) console.error(`error: ${e.message}\n${usage("deno task eval", SPEC)}`);
    else if (e instanceof JudgeQError) console.error(`error: ${e.message}`);
    else throw e;
    Deno.exit(2);
  }
}
