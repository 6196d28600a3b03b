/**
 * From cells to reports (pure): aggregated rows, the acceptance checks, results.json's object, the
 * Markdown tables and the SVG plots. Everything here is deterministic for a given set of cells.
 */
import { budgetLabel, type SuiteConfig, variantById } from "./config.ts";
import { meanOf } from "./metrics.ts";
import { type CellResult, EVIDENCE_TASKS, type SkippedCell } from "./runner.ts";
import { heatMaps, type LinePlot, linePlots } from "./svg.ts";
import { gridCell } from "./tasks/needle.ts";

/** Means over the samples of one (task, placement, variant, budget). */
export interface Row {
  task: string;
  placement: string;
  variant: string;
  budget: string;
  samples: number;
  /** Mean nominal budget in tokens, and mean prompt tokens. */
  B: number;
  L: number;
  hit: number;
  kl: number;
  top1: number;
  prefix: number;
  n: number;
  /** Mean task score over the scorable samples; null when none was. */
  score: number | null;
  scored: number;
  /** Mean share of the evidence positions kept; null for tasks without evidence. */
  evidence: number | null;
  kv: number;
}

const groupKey = (c: { task: string; placement: string; variant: string; budget: string }) =>
  `${c.task}|${c.placement}|${c.variant}|${c.budget}`;

/** Rows in first-seen order of the cells. */
export function aggregate(cells: CellResult[]): Row[] {
  const groups = new Map<string, CellResult[]>();
  for (const c of cells) {
    const k = groupKey(c);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k)!.push(c);
  }
  return [...groups.values()].map((g) => {
    const mean = (f: (c: CellResult) => number) => meanOf(g.map(f)) ?? NaN;
    const scores = g.map((c) => c.score);
    return {
      task: g[0].task,
      placement: g[0].placement,
      variant: g[0].variant,
      budget: g[0].budget,
      samples: g.length,
      B: mean((c) => c.B),
      L: mean((c) => c.L),
      hit: mean((c) => c.hit),
      kl: mean((c) => c.kl),
      top1: mean((c) => c.top1),
      prefix: mean((c) => c.prefix),
      n: mean((c) => c.n),
      score: meanOf(scores),
      scored: scores.filter((s) => s !== null).length,
      evidence: meanOf(g.map((c) => c.evidence)),
      kv: mean((c) => c.kv),
    };
  });
}

/**
 * What the quick suite asserts: every metric is a finite number, the full cache (and any run whose
 * budget covers the prompt) is exactly the full cache, and every cell ran or was skipped for a reason.
 */
export function checks(cells: CellResult[], expected: number, skipped: SkippedCell[]): string[] {
  const fail: string[] = [];
  if (cells.length + skipped.length !== expected) {
    fail.push(`${cells.length} cells + ${skipped.length} skipped, expected ${expected}`);
  }
  for (const c of cells) {
    for (const k of ["hit", "kl", "top1", "prefix", "kv"] as const) {
      if (!Number.isFinite(c[k])) fail.push(`${c.key}: ${k} is ${c[k]}`);
    }
    if (c.hit < 0 || c.hit > 1 || c.top1 < 0 || c.top1 > 1 || c.kl < 0) {
      fail.push(`${c.key}: a metric is out of range`);
    }
    if (c.score === null && c.task !== "name_recall") fail.push(`${c.key}: no task score`);
    if (c.evidence === null && EVIDENCE_TASKS.has(c.task)) fail.push(`${c.key}: evidence spans not found`);
    if (c.variant === "full" || !c.compressed) {
      if (
        c.kl !== 0 || c.top1 !== 1 || c.prefix !== c.n || c.hit !== 1 || c.kv !== 1 || (c.evidence ?? 1) !== 1
      ) {
        fail.push(
          `${c.key}: an uncompressed run differs from the full cache (kl ${c.kl}, top1 ${c.top1}, prefix ${c.prefix}/${c.n}, hit ${c.hit})`,
        );
      }
    } else if (!(c.kv < 1)) fail.push(`${c.key}: compressed but KV bytes did not shrink`);
  }
  return fail;
}

const pct = (x: number | null) => (x === null || !Number.isFinite(x) ? "–" : (100 * x).toFixed(1));
const kl = (x: number) => (Number.isFinite(x) ? x.toFixed(4) : "–");
const label = (id: string) => variantById(id).label;

/** A Markdown table. */
export function mdTable(head: string[], rows: string[][]): string {
  return [
    `| ${head.join(" | ")} |`,
    `|${head.map(() => "---").join("|")}|`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ].join("\n");
}

export interface ReportMeta {
  suite: string;
  seed: number;
  model: string;
  executor: string;
  contextLength: number;
  adapter: string | null;
  haystack: string | null;
}

/** Rows of one task/placement, budget-major in the config's order. */
const rowsOf = (rows: Row[], task: string, placement?: string) =>
  rows.filter((r) => r.task === task && (placement === undefined || r.placement === placement));

const find = (rows: Row[], task: string, placement: string, variant: string, budget: string) =>
  rows.find((r) =>
    r.task === task && r.placement === placement && r.variant === variant && r.budget === budget
  );

/** Skipped variants with their reasons, once each. */
function skippedNote(skipped: SkippedCell[]): string {
  const byVariant = new Map<string, string>();
  for (const s of skipped) byVariant.set(s.variant, s.reason);
  if (byVariant.size === 0) return "";
  return "Skipped: " + [...byVariant].map(([v, r]) => `${label(v)} (\`${v}\`): ${r}`).join("; ") + ".\n";
}

export function markdown(cfg: SuiteConfig, meta: ReportMeta, rows: Row[], skipped: SkippedCell[]): string {
  const out: string[] = [];
  const story = cfg.tasks.find((t) => t.task === "name_recall");
  out.push(`# KV-cache compression on ${meta.model}: suite \`${meta.suite}\``);
  out.push("");
  out.push(
    `Model ${meta.model} (context ${meta.contextLength} tokens), ${meta.executor} executor, seed ${meta.seed}` +
      `${meta.adapter ? `, Judge Q adapter ${meta.adapter}` : ", no trained Judge Q adapter"}.` +
      " Budget = prompt KV entries kept per KV head per layer, the kept window included; `rX` = compression ratio X" +
      " (fraction of the prompt removed). hit = critical-KV hit rate against the oracle (top-B prompt positions by the" +
      " full-cache response's attention, GQA mean); KL = mean KL(full ‖ pruned) of the next-token distributions" +
      " along the full-cache greedy response (teacher-forced); top-1 = argmax agreement; prefix = tokens of the" +
      " pruned greedy output equal to the full-cache output. Window w and max-pool kernel k as in the method labels.",
  );
  out.push("");
  if (story) {
    const L = rowsOf(rows, "name_recall").map((r) => r.L);
    const first = rowsOf(rows, "name_recall")[0];
    out.push(`## Stories: every method per budget (name recall, ${first?.samples ?? 0} samples)`);
    out.push("");
    out.push(
      `Model-sampled stories of ${story.minTokens}-${story.maxTokens} tokens (mean ${
        L.length ? (L.reduce((a, b) => a + b) / L.length).toFixed(0) : "?"
      }),` +
        ` a named character introduced at depth ${
          cfg.nameRecall.depths.join("/")
        } of the prompt, ${story.responseTokens}-token greedy` +
        " responses, no question. Recall = share of samples whose pruned continuation reuses the name the full-cache one" +
        ` used (${
          first?.scored ?? 0
        } of the samples, where the full-cache continuation did reuse it); intro kept = share of` +
        " the introduction sentence's tokens kept, over layers and KV heads.",
    );
    out.push("");
    const body: string[][] = [];
    for (const b of story.budgets) {
      for (const v of story.variants) {
        const r = find(rows, "name_recall", "none", v, budgetLabel(b));
        if (!r) continue;
        body.push([
          budgetLabel(b) + (b.kind === "ratio" ? ` (B≈${r.B.toFixed(0)})` : ""),
          label(v),
          pct(r.hit),
          kl(r.kl),
          pct(r.top1),
          `${r.prefix.toFixed(1)}/${r.n}`,
          pct(r.evidence),
          pct(r.score),
        ]);
      }
    }
    out.push(
      mdTable(["budget", "method", "hit %", "KL", "top-1 %", "prefix", "intro kept %", "recall %"], body),
    );
    out.push("");
    out.push(judgeVsSnap(cfg, rows, "name_recall", "none"));
  }
  const placed = [...cfg.tasks].sort((a, b) => b.placements.length - a.placements.length)[0];
  if (placed && placed.placements.length > 1) {
    out.push(`## Question placement: ${placed.task} (${rowsOf(rows, placed.task)[0]?.samples ?? 0} samples)`);
    out.push("");
    out.push(
      "end = context then question (compressed together, query-aware); start = question, context, neutral answer cue;" +
        " after = the context alone is compressed, the question appended afterwards (query-agnostic). Score = RULER" +
        " string_match_all against the needle value (the 260K story model cannot retrieve it: expect ~0), so the" +
        " table shows whether the needle's KV entries survive (needle kept %) and fidelity to the full cache.",
    );
    out.push("");
    const vs = ["snapkv", "snapkv_k7", "h2o_norm", "judgeq_random", "judgeq", "judgeq_k7"].filter((v) =>
      placed.variants.includes(v)
    );
    const body: string[][] = [];
    for (const b of placed.budgets) {
      for (const v of vs) {
        const cells = placed.placements.map((p) => find(rows, placed.task, p, v, budgetLabel(b)));
        if (cells.every((c) => !c)) continue;
        body.push([
          budgetLabel(b),
          label(v),
          ...cells.flatMap((
            c,
          ) => (c ? [pct(c.hit), pct(c.evidence), kl(c.kl), pct(c.top1)] : ["–", "–", "–", "–"])),
        ]);
      }
    }
    out.push(
      mdTable([
        "budget",
        "method",
        ...placed.placements.flatMap((
          p,
        ) => [`hit % (${p})`, `needle kept % (${p})`, `KL (${p})`, `top-1 % (${p})`]),
      ], body),
    );
    out.push("");
  }
  out.push(placementSummary(cfg, rows));
  out.push(taskMatrix(cfg, rows));
  if (cfg.tasks.some((t) => t.task === "needle")) {
    out.push("## Needle in a haystack (essays)\n\n![needle heat map](needle_heatmap.svg)\n");
  }
  out.push("## Plots\n");
  for (const t of cfg.tasks) {
    for (const p of t.placements) out.push(`- [${t.task} (${p})](plots/${t.task}_${p}.svg)`);
  }
  out.push("");
  const note = skippedNote(skipped);
  if (note) out.push(note);
  return out.join("\n") + "\n";
}

/** Judge Q against SnapKV (pooled and not) per budget on one task. */
function judgeVsSnap(cfg: SuiteConfig, rows: Row[], task: string, placement: string): string {
  const plan = cfg.tasks.find((t) => t.task === task)!;
  const vs = ["snapkv", "snapkv_k7", "judgeq_random", "judgeq_random_k7", "judgeq", "judgeq_w16", "judgeq_k7"]
    .filter((v) => plan.variants.includes(v));
  const body: string[][] = [];
  for (const b of plan.budgets) {
    for (const v of vs) {
      const r = find(rows, task, placement, v, budgetLabel(b));
      body.push(
        r
          ? [budgetLabel(b), label(v), pct(r.hit), kl(r.kl), pct(r.top1), pct(r.score)]
          : [budgetLabel(b), label(v), "skipped", "", "", ""],
      );
    }
  }
  return `### Judge Q vs SnapKV (${task})\n\n` +
    mdTable(["budget", "method", "hit %", "KL", "top-1 %", "score %"], body) + "\n";
}

/** Question at the end vs at the start on every question task, at the middle budget. */
function placementSummary(cfg: SuiteConfig, rows: Row[]): string {
  const tasks = cfg.tasks.filter((t) => t.placements.includes("end") && t.placements.includes("start"));
  if (tasks.length === 0) return "";
  const body: string[][] = [];
  for (const t of tasks) {
    const b = budgetLabel(t.budgets[Math.floor((Math.min(3, t.budgets.length) - 1) / 2)]);
    for (const v of ["snapkv", "judgeq", "judgeq_random"].filter((v) => t.variants.includes(v))) {
      const e = find(rows, t.task, "end", v, b), st = find(rows, t.task, "start", v, b);
      if (!e || !st) continue;
      body.push([
        t.task,
        b,
        label(v),
        pct(e.hit),
        pct(st.hit),
        pct(e.evidence),
        pct(st.evidence),
        kl(e.kl),
        kl(st.kl),
        pct(e.top1),
        pct(st.top1),
        pct(e.score),
        pct(st.score),
      ]);
    }
  }
  return "## Question at the end vs at the start, every question task\n\n" +
    mdTable([
      "task",
      "budget",
      "method",
      "hit % end",
      "hit % start",
      "kept % end",
      "kept % start",
      "KL end",
      "KL start",
      "top-1 % end",
      "top-1 % start",
      "score % end",
      "score % start",
    ], body) +
    "\n";
}

/** Task score and top-1 agreement per task for every variant at one budget (the middle one). */
function taskMatrix(cfg: SuiteConfig, rows: Row[]): string {
  const out: string[] = ["## Every task at one budget", ""];
  const tasks = cfg.tasks.filter((t) => t.task !== "name_recall");
  if (tasks.length === 0) return "";
  const variants = [...new Set(tasks.flatMap((t) => t.variants))];
  for (const metric of ["score", "top1"] as const) {
    const body: string[][] = [];
    for (const t of tasks) {
      const b = budgetLabel(t.budgets[Math.floor((Math.min(3, t.budgets.length) - 1) / 2)]);
      for (const p of t.placements) {
        body.push([
          t.task,
          p,
          b,
          ...variants.map((v) => {
            const r = find(rows, t.task, p, v, b);
            return r ? pct(metric === "score" ? r.score : r.top1) : "";
          }),
        ]);
      }
    }
    out.push(
      metric === "score"
        ? "Task score % (RULER string_match_all; LongBench count/retrieval score):"
        : "Top-1 agreement % with the full cache:",
    );
    out.push("");
    out.push(mdTable(["task", "question", "budget", ...variants], body));
    out.push("");
  }
  return out.join("\n");
}

/** Per task and placement: hit, KL, top-1 and score vs budget, one line per variant. */
export function taskPlots(cfg: SuiteConfig, rows: Row[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const t of cfg.tasks) {
    for (const p of t.placements) {
      // Budgets in order of their mean size in tokens, ratios labelled with it: 32, r0.9≈33, 64, ...
      const size = (b: string) => rowsOf(rows, t.task, p).find((r) => r.budget === b)?.B ?? Infinity;
      const xs = t.budgets.map(budgetLabel).sort((a, b) => size(a) - size(b));
      const xLabels = xs.map((
        b,
      ) => (b.startsWith("r") && Number.isFinite(size(b)) ? `${b}≈${Math.round(size(b))}` : b));
      const series = (f: (r: Row) => number | null) =>
        t.variants.filter((v) => rowsOf(rows, t.task, p).some((r) => r.variant === v)).map((v) => ({
          name: label(v),
          values: xs.map((b) => {
            const r = find(rows, t.task, p, v, b);
            return r ? f(r) : null;
          }),
        }));
      const top1 = series((r) => 100 * r.top1);
      const plots: LinePlot[] = [
        {
          title: "critical-KV hit rate %",
          xLabels,
          series: series((r) => 100 * r.hit),
          yLabel: "hit %",
          yMax: 100,
        },
        { title: "KL(full ‖ pruned)", xLabels, series: series((r) => r.kl), yLabel: "nats" },
        {
          title: "top-1 agreement %",
          xLabels,
          series: top1,
          yLabel: "top-1 %",
          // Agreement stays high: zoom in on the range the data uses.
          yMin: Math.max(
            0,
            Math.floor(Math.min(...top1.flatMap((x) => x.values).filter((v) => v !== null)) / 10) * 10,
          ),
          yMax: 100,
        },
        {
          title: "task score %",
          xLabels,
          series: series((r) => (r.score === null ? null : 100 * r.score)),
          yLabel: "score %",
          yMax: 100,
        },
      ];
      out.set(`${t.task}_${p}`, linePlots(`${t.task}, question: ${p} (${cfg.name} suite)`, plots));
    }
  }
  return out;
}

/** Needle grid heat maps per variant over lengths x depths: score, needle entries kept, top-1 agreement. */
export function needleHeatmap(cfg: SuiteConfig, cells: CellResult[]): string | null {
  const plan = cfg.tasks.find((t) => t.task === "needle");
  if (!plan) return null;
  const g = cfg.needle;
  const budget = budgetLabel(plan.budgets[0]);
  const panels = [];
  const metricName = { score: "score", evidence: "needle kept", top1: "top-1 agr." };
  for (const metric of ["score", "evidence", "top1"] as const) {
    for (const v of plan.variants) {
      const mine = cells.filter((c) => c.task === "needle" && c.variant === v && c.budget === budget);
      if (mine.length === 0) continue;
      const values = g.lengths.map((len) =>
        g.depths.map((d) =>
          meanOf(
            mine.filter((c) => {
              const cell = gridCell(g, c.index);
              return cell.length === len && cell.depth === d;
            }).map((c) => c[metric]),
          )
        )
      );
      panels.push({
        title: `${v}: ${metricName[metric]}`,
        rowLabels: g.lengths.map(String),
        colLabels: g.depths.map((d) => `${d}%`),
        values,
      });
    }
  }
  return heatMaps(
    `Needle in essays, budget ${budget}: score / needle entries kept / top-1 agreement with the full cache`,
    panels,
    "context tokens",
    "needle depth",
    plan.variants.length,
  );
}
