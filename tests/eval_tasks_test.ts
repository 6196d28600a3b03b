/** Task generators (seeded, fitted, answers present), config parsing, the store, reports and SVG. */
import { budgetLabel, nominalBudget, parseBudget, quickSuite, VARIANTS } from "../eval/config.ts";
import { aggregate, checks } from "../eval/report.ts";
import type { CellResult } from "../eval/runner.ts";
import { parseStore } from "../eval/store.ts";
import { heatMaps, linePlots, ticks } from "../eval/svg.ts";
import { renderBar } from "../eval/progress.ts";
import { corpusFrom, insertAtBoundaries, splitSentences, takeWords } from "../eval/tasks/haystack.ts";
import { passageCount, passageRetrieval } from "../eval/tasks/longbench.ts";
import { countName, NAME_RECALL_DEFAULTS, nameRecallSpec } from "../eval/tasks/name_recall.ts";
import { gridCell, gridSize } from "../eval/tasks/needle.ts";
import { RULER_TASKS } from "../eval/tasks/ruler.ts";
import { assemble, type GenContext, longestPrompt } from "../eval/tasks/types.ts";
import { assert, assertEquals } from "./helpers.ts";

// A synthetic essay corpus and a crude token counter (characters / 3): generators only need monotone counts.
const corpus = corpusFrom([
  {
    name: "b.txt",
    text: Array.from({ length: 60 }, (_, i) => `Sentence number ${i} talks about startups and cities.`).join(
      " ",
    ),
  },
  { name: "a.txt", text: "First things first.Then a joined sentence! And a question? Yes." },
]);
const ctx = (seed = 0): GenContext => ({ seed, count: (t) => Math.ceil(t.length / 3) + 1, corpus });

Deno.test("haystack: sentences split (also where essays lost their breaks), files in name order", () => {
  assertEquals(splitSentences("One. Two!  Three?\nfour"), ["One.", "Two!", "Three? four"]);
  assertEquals(splitSentences("personality.What next"), ["personality.", "What next"]);
  assertEquals(corpus.files, ["a.txt", "b.txt"]);
  assertEquals(corpus.sentences[0], "First things first.");
});

Deno.test("haystack: needles go to the sentence boundary nearest their depth", () => {
  const words = takeWords(["A b.", "C d.", "E f."], 0, 6);
  assertEquals(words, ["A", "b.", "C", "d.", "E", "f."]);
  assertEquals(insertAtBoundaries(words, [{ text: "N.", depth: 0 }]), "N. A b. C d. E f.");
  assertEquals(insertAtBoundaries(words, [{ text: "N.", depth: 0.6 }]), "A b. C d. N. E f.");
  // Equally near two boundaries: the earlier.
  assertEquals(insertAtBoundaries(words, [{ text: "N.", depth: 0.5 }]), "A b. N. C d. E f.");
  assertEquals(insertAtBoundaries(words, [{ text: "N.", depth: 1 }]), "A b. C d. E f. N.");
  // A cut-off last sentence is not a boundary.
  assertEquals(insertAtBoundaries(["A", "b.", "C"], [{ text: "N.", depth: 1 }]), "A b. N. C");
  // Wrapping around the sentences.
  assertEquals(takeWords(["A b."], 0, 3), ["A", "b.", "A"]);
});

Deno.test("RULER tasks: deterministic per seed, fitted to the target, answers in the context", () => {
  for (const [name, gen] of Object.entries(RULER_TASKS)) {
    const a = gen(ctx(), 0, 300), b = gen(ctx(), 0, 300), c = gen(ctx(7), 0, 300);
    assertEquals(a, b, `${name} is not deterministic`);
    assert(JSON.stringify(a) !== JSON.stringify(c), `${name} ignores the seed`);
    const n = longestPrompt(a, ctx().count);
    assert(n <= 300, `${name}: ${n} tokens > 300`);
    assert(n >= 250, `${name}: ${n} tokens leaves the target underused`);
    assert(a.answers.length > 0, `${name}: no answers`);
    for (const ans of a.answers) {
      assert(a.context.includes(ans), `${name}: answer ${ans} is not in the context`);
    }
    for (const ev of a.evidence) assert(a.context.includes(ev), `${name}: evidence is not in the context`);
    assert(a.question !== "" && !a.genericPrefix.includes(a.answers[0]), `${name}: question layout`);
  }
});

Deno.test("question placement: end, start and after hold the same pieces in different order", () => {
  const t = RULER_TASKS.niah_single_noise(ctx(), 1, 200);
  const end = assemble(t, "end"), start = assemble(t, "start"), after = assemble(t, "after");
  assert(end.compress.endsWith(t.question + t.answerPrefix) && end.append === null);
  assert(
    start.compress.indexOf(t.question) < start.compress.indexOf(t.context) &&
      start.compress.endsWith(t.genericPrefix),
  );
  assert(!start.compress.includes(t.answerPrefix), "start must not restate the question at the end");
  assertEquals(after.compress + after.append, end.compress);
});

Deno.test("LongBench-style tasks: counts and paragraph numbers are right", () => {
  for (let i = 0; i < 5; i++) {
    const c = passageCount(ctx(), i, 400);
    const paras = c.context.split("\n").map((l) => l.replace(/^Paragraph \d+: /, ""));
    assertEquals(String(new Set(paras).size), c.answers[0], "unique paragraphs");
    assert(paras.length >= 3, "at least three paragraphs at 400 tokens");
    const r = passageRetrieval(ctx(), i, 400);
    const quoted = r.question.match(/"(.*)"/)![1];
    const hit = r.context.split("\n").findIndex((l) => l.includes(quoted));
    assertEquals(String(hit + 1), r.answers[0], "retrieval target");
  }
});

Deno.test("name recall spec: seeded, depths cycle, length in range; whole-word name matching", () => {
  const a = nameRecallSpec(0, 3, NAME_RECALL_DEFAULTS), b = nameRecallSpec(0, 3, NAME_RECALL_DEFAULTS);
  assertEquals(a, b);
  assertEquals(a.depth, NAME_RECALL_DEFAULTS.depths[3]);
  assert(a.length >= 256 && a.length <= 400 && a.before === Math.round(a.length * a.depth));
  assertEquals(countName("Tom and Tommy met Tom.", "Tom"), 2);
});

Deno.test("needle grid: index walks lengths x depths", () => {
  const g = { lengths: [100, 200], depths: [0, 50, 100], repeats: 2 };
  assertEquals(gridSize(g), 12);
  assertEquals(gridCell(g, 0), { length: 100, depth: 0, repeat: 0 });
  assertEquals(gridCell(g, 3), { length: 100, depth: 50, repeat: 1 });
  assertEquals(gridCell(g, 11), { length: 200, depth: 100, repeat: 1 });
});

Deno.test("budgets: tokens or ratios, resolved as core/plan.ts does", () => {
  assertEquals(parseBudget("64"), { kind: "tokens", value: 64 });
  assertEquals(parseBudget("r0.75"), { kind: "ratio", value: 0.75 });
  assertEquals(parseBudget("0.5"), { kind: "ratio", value: 0.5 });
  for (const bad of ["0", "r1", "abc", "-3", "1.5"]) {
    let threw = false;
    try {
      parseBudget(bad);
    } catch {
      threw = true;
    }
    assert(threw, `'${bad}' accepted`);
  }
  assertEquals(nominalBudget({ kind: "ratio", value: 0.9 }, 333), 33);
  assertEquals(nominalBudget({ kind: "tokens", value: 512 }, 300), 300);
  assertEquals(budgetLabel({ kind: "ratio", value: 0.5 }), "r0.5");
  assert(
    VARIANTS.every((v) => quickSuite().tasks.some((t) => t.variants.includes(v.id))),
    "quick covers every variant",
  );
});

const cell = (over: Partial<CellResult>): CellResult => ({
  key: "t/0/end|snapkv|32",
  task: "t",
  index: 0,
  placement: "end",
  variant: "snapkv",
  budget: "32",
  B: 32,
  L: 100,
  compressed: true,
  hit: 0.5,
  kl: 0.1,
  top1: 0.9,
  prefix: 3,
  n: 8,
  score: 1,
  evidence: 0.5,
  kv: 0.32,
  ms: 5,
  ...over,
});

Deno.test("reports: aggregation means over samples; checks catch a full cache that is not exact", () => {
  const rows = aggregate([cell({}), cell({ key: "t/1/end|snapkv|32", index: 1, hit: 1, score: null })]);
  assertEquals(rows.length, 1);
  assertEquals([rows[0].samples, rows[0].hit, rows[0].score, rows[0].scored], [2, 0.75, 1, 1]);
  const full = cell({
    variant: "full",
    compressed: false,
    hit: 1,
    kl: 0,
    top1: 1,
    prefix: 8,
    kv: 1,
    evidence: 1,
  });
  assertEquals(checks([full], 1, []), []);
  assert(checks([{ ...full, kl: 1e-3 }], 1, []).length === 1);
  assert(checks([cell({ kl: NaN })], 1, []).some((f) => f.includes("kl")));
  assert(checks([cell({})], 2, []).some((f) => f.includes("expected 2")));
});

Deno.test("store: header, cells by key, torn lines ignored", () => {
  const text = `{"fingerprint":"abc","suite":"quick"}\n${JSON.stringify(cell({}))}\n{"key":"tor`;
  const s = parseStore(text);
  assertEquals(s.header, { fingerprint: "abc", suite: "quick" });
  assertEquals([...s.cells.keys()], ["t/0/end|snapkv|32"]);
});

Deno.test("svg and progress: well-formed output", () => {
  const svg = linePlots("t", [{
    title: "a",
    xLabels: ["32", "64"],
    series: [{ name: "x<y", values: [1, null] }],
    yLabel: "y",
  }]);
  assert(svg.startsWith("<svg") && svg.trim().endsWith("</svg>") && svg.includes("x&lt;y"));
  const heat = heatMaps(
    "h",
    [{ title: "p", rowLabels: ["1"], colLabels: ["0%"], values: [[0.5]] }],
    "r",
    "c",
  );
  assert(heat.includes(">50<"));
  assertEquals(ticks(0, 100), [0, 20, 40, 60, 80, 100]);
  assert(renderBar(5, 10, 5, "x").startsWith("[############............] 5/10 cells 1.0/s eta 5s"));
});
