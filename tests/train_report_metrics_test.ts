/**
 * The training report (`deno task train report`) and the evaluation harness (`deno task eval`) compute
 * a cell the same way: the same compiled plan (compilePlan + runOnSession) and eval/metrics.ts's oracle,
 * hit rate and fidelity, so the same sample, method and budget give the same numbers in both.
 */
import { budgetLabel, type BudgetSpec, type Variant } from "../eval/config.ts";
import { encodePrompt, loadEvalModel } from "../eval/model.ts";
import { buildReference, type CellResult, evaluateCells, type Sample as EvalSample } from "../eval/runner.ts";
import type { Sample } from "../train/data.ts";
import { evaluateSample, requestFor, type Selection } from "../train/evaluate.ts";
import { assert, assertEquals, embeddedModel } from "./helpers.ts";

Deno.test("a training-report cell equals the evaluation harness's number for the same sample, method and budget", async () => {
  const { weights } = await embeddedModel();
  const em = await loadEvalModel(undefined, "cpu", () => {});
  assert(em.model.adapter, "the embedded model ships a Judge Q adapter");
  const text =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
    "One day, she saw a big red ball under a tree. She ran to the ball and picked it up. Her friend Ben came " +
    "to play with her. They threw the ball high in the sky and laughed.";
  const prompt = encodePrompt(em.model, text);
  const es: EvalSample = {
    id: "train_report/0/end",
    task: "train_report",
    index: 0,
    placement: "end",
    compress: prompt,
    append: [],
    answers: [],
    evidence: [],
    metric: "string_match_all",
    meta: {},
    responseTokens: 24,
  };
  const ref = await buildReference(em, es);
  const ts: Sample = { split: "heldout", prompt, response: ref.tokens, target: new Float32Array(0) };

  const snap: Selection[] = [{ window: 16, kernel: 1 }, { window: 8, kernel: 7 }];
  const judge: Selection[] = [{ window: 0, kernel: 1 }, { window: 16, kernel: 7 }];
  const budgets = [16, 32, prompt.length + 5];
  const measures = await evaluateSample(weights, ts, {
    softs: [{ method: "Judge Q", e: em.model.adapter!.softEmbeddings }],
    snapkv: snap,
    judgeq: judge,
    budgets,
  });
  assertEquals(measures.length, (snap.length + judge.length) * budgets.length);

  const variant = (method: "snapkv" | "judgeq", sel: Selection): Variant => {
    const { budget: _, ...request } = requestFor(method, sel, Infinity);
    return {
      id: `${method}-w${sel.window}-k${sel.kernel}`,
      label: method,
      request,
      needsAdapter: method === "judgeq",
    };
  };
  const cells = [
    ...snap.map((s) => ({ m: "SnapKV", sel: s, v: variant("snapkv", s) })),
    ...judge.map((s) => ({
      m: "Judge Q",
      sel: s,
      v: variant("judgeq", s),
    })),
  ].flatMap(({ m, sel, v }) =>
    budgets.map((b) => {
      const budget: BudgetSpec = { kind: "tokens", value: b };
      return { m, sel, b, spec: { variant: v, budget, key: `${v.id}|${budgetLabel(budget)}` } };
    })
  );
  const results = await evaluateCells(em, es, ref, cells.map((c) => c.spec)) as CellResult[];
  let compressedCells = 0;
  cells.forEach((c, i) => {
    const r = results[i];
    const t = measures.find((x) =>
      x.method === c.m && x.window === c.sel.window && x.kernel === c.sel.kernel && x.budget === c.b
    )!;
    const label = `${c.spec.key}`;
    assertEquals(t.hit, r.hit, `${label}: hit`);
    assertEquals(t.kl, r.kl, `${label}: KL`);
    assertEquals(t.top1, r.top1, `${label}: top-1`);
    if (r.compressed) compressedCells++;
  });
  assert(compressedCells >= 8, "most cells really evict entries");
  // Not a vacuous match: methods and budgets differ.
  assert(new Set(measures.map((m) => m.hit)).size > 3, "hit rates vary");
});
