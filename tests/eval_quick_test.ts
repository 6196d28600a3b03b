/**
 * The eval harness end to end on the real stories260K, in-process with a tiny suite: every metric is
 * computed, uncompressed runs equal the full cache exactly, outputs are written, and a second run
 * resumes (computes nothing) while a changed configuration is refused.
 */
import { type SuiteConfig, type TaskPlan, VARIANT_IDS } from "../eval/config.ts";
import { UsageError } from "../io/flags.ts";
import { type EvalArgs, parseArgs, runEval } from "../eval/main.ts";
import { loadEvalModel, tokenSpan } from "../eval/model.ts";
import { defaultThreads } from "../wasm/mod.ts";
import { assert, assertEquals, assertRejects } from "./helpers.ts";

const plan = (task: string, over: Partial<TaskPlan>): TaskPlan => ({
  task,
  samples: 1,
  placements: ["end"],
  budgets: [{ kind: "tokens", value: 32 }],
  variants: ["full", "snapkv"],
  responseTokens: 8,
  minTokens: 170,
  maxTokens: 190,
  ...over,
});

const tiny = (seed: number): SuiteConfig => ({
  name: "tiny",
  seed,
  tasks: [
    plan("name_recall", {
      placements: ["none"],
      variants: VARIANT_IDS,
      // 1000 tokens covers the whole prompt: those runs must equal the full cache.
      budgets: [{ kind: "tokens", value: 32 }, { kind: "ratio", value: 0.5 }, {
        kind: "tokens",
        value: 1000,
      }],
      minTokens: 80,
      maxTokens: 96,
    }),
    plan("niah_single_noise", {
      placements: ["end", "start", "after"],
      variants: ["full", "snapkv", "judgeq_random", "judgeq"],
    }),
    plan("passage_retrieval", {}),
  ],
  nameRecall: { minTokens: 80, maxTokens: 96, depths: [0.3], temperature: 1, attempts: 1 },
  needle: { lengths: [], depths: [], repeats: 1 },
});

Deno.test({
  name: "eval: a tiny suite runs end to end, checks pass, and resumes",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "eval_quick_" });
    const hay = `${dir}/haystack`;
    await Deno.mkdir(hay);
    const essay = Array.from({ length: 40 }, (_, i) => `The small city number ${i} had a park and a river.`)
      .join(" ");
    await Deno.writeTextFile(`${hay}/one.txt`, essay);
    const args = (seed: number): EvalArgs => ({
      cfg: tiny(seed),
      modelDir: undefined,
      executor: "cpu",
      haystack: hay,
      out: `${dir}/out`,
      jobs: 1,
      fresh: false,
      quiet: true,
    });
    const notes: string[] = [];
    const r = await runEval(args(0), (m) => notes.push(m));
    assertEquals(r.failures, []);
    assert(r.computed > 0);
    const results = JSON.parse(await Deno.readTextFile(`${dir}/out/results.json`));
    const rows = results.rows as {
      task: string;
      variant: string;
      budget: string;
      kl: number;
      top1: number;
      hit: number;
    }[];
    for (const task of ["name_recall", "niah_single_noise", "passage_retrieval"]) {
      assert(rows.some((x) => x.task === task), task);
    }
    const full = rows.filter((x) => x.variant === "full" || x.budget === "1000");
    assert(
      full.length > 0 && full.every((x) => x.kl === 0 && x.top1 === 1 && x.hit === 1),
      "uncompressed != full",
    );
    const snap = rows.find((x) => x.task === "name_recall" && x.variant === "snapkv" && x.budget === "32")!;
    assert(snap.kl > 0 && snap.hit < 1, "a budget of 32 on an 80+ token prompt compresses");
    // Trained Judge Q rows exist exactly when the adapter does; otherwise they are skipped with a reason.
    const trained = rows.some((x) => x.variant === "judgeq");
    assertEquals(trained, results.meta.adapter !== null);
    if (!trained) assert(results.skipped.some((s: { variant: string }) => s.variant === "judgeq"));
    for (
      const f of [
        "results.md",
        "cells.jsonl",
        "run.json",
        "plots/name_recall_none.svg",
        "plots/niah_single_noise_start.svg",
      ]
    ) {
      await Deno.stat(`${dir}/out/${f}`);
    }
    const md = await Deno.readTextFile(`${dir}/out/results.md`);
    assert(md.includes("| 32 | SnapKV w16 k1 |") && md.includes("Question placement"));

    const again = await runEval(args(0), () => {});
    assertEquals(again.computed, 0);
    assertEquals(JSON.parse(await Deno.readTextFile(`${dir}/out/results.json`)).rows, results.rows);
    await assertRejects(() => runEval(args(1), () => {}), "another configuration", "--fresh");
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("tokenSpan finds the tokens of a substring in a real tokenization", async () => {
  const { model } = await loadEvalModel(undefined, "cpu", () => {});
  const text = "The grass is green. One of the special magic numbers for apple is: 1234567. The sky is blue.";
  const tokens = model.tokenizer.encode(text, { addBos: true });
  const needle = "One of the special magic numbers for apple is: 1234567.";
  const [a, b] = tokenSpan(model, tokens, needle)!;
  const covered = model.tokenizer.decode(tokens.slice(a, b), { skipSpecial: true });
  assert(covered.includes(needle.slice(1)) && covered.length <= needle.length + 2, `span text '${covered}'`);
  assertEquals(tokenSpan(model, tokens, "absent words"), null);
});

Deno.test("eval flags: --executor, --threads and --weights are checked; --jobs workers share the cores", async () => {
  for (
    const [argv, message] of [
      [
        ["--executor", "tpu"],
        "--executor: expected auto, gpu, native, wasm or cpu (or reference), got 'tpu'",
      ],
      [["--threads", "0"], "--threads: expected a whole number from 1 to 256, got '0'"],
      [["--threads", "1.5"], "--threads: expected a whole number from 1 to 256, got '1.5'"],
      [["--weights", "f8"], "--weights: expected auto, f32, f16, int8, q8_0, q4_0, got 'f8'"],
    ] as [string[], string][]
  ) {
    const e = await assertRejects(() => parseArgs(argv), message);
    assert(e instanceof UsageError, e.message);
  }
  const a = (await parseArgs(["--executor", "wasm", "--threads", "3", "--weights", "f16"]))!;
  assertEquals([a.executor, a.threads, a.weightFormat], ["wasm", 3, "f16"]);
  const shared = (await parseArgs(["--executor", "wasm", "--jobs", "2"]))!;
  assertEquals(shared.threads, Math.max(1, Math.floor(defaultThreads() / 2)));
  assertEquals((await parseArgs([]))!.executor, "cpu", "eval's default stays the CPU reference");
});
