/** The long-output evaluation (issue 12): seeded openings, name recall, and one bounded cell end to end. */
import { longOutputMarkdown, runLongOutput } from "../eval/long_output.ts";
import { encodePrompt, loadEvalModel } from "../eval/model.ts";
import { longOutputSpec, nameRecall } from "../eval/tasks/long_output.ts";
import { assert, assertEquals } from "./helpers.ts";

Deno.test("long_output task: seeded openings with two names; name recall over the names the reference uses", () => {
  const a = longOutputSpec(0, 3), b = longOutputSpec(0, 3);
  assertEquals(a, b);
  assertEquals(a.names.length, 2);
  assert(a.names[0] !== a.names[1], JSON.stringify(a.names));
  for (const n of a.names) assert(a.opening.includes(n), a.opening);
  assertEquals(nameRecall(["Tom", "Sue"], "Tom and Sue played.", "Tom ran."), 0.5);
  assertEquals(nameRecall(["Tom", "Sue"], "Sue played.", "Sue ran."), 1);
  assertEquals(nameRecall(["Tom"], "They played.", "Tom ran."), null);
});

/**
 * Golden values of one bounded cell per method, recorded from this code (decode_oracle_test checks what
 * decode-time compression keeps independently; these pin the evaluation built on it, so a change in what
 * is kept, or in how KL, top-1, prefix or hit are measured, shows here and is re-recorded on purpose).
 */
const GOLDEN_CELLS = {
  snapkv: { kl: 0.00046717929051662705, top1: 0.9956709956709957, prefix: 154, hit: 0.8530894886363636 },
  judgeq: { kl: 0.000484475447354027, top1: 0.9913419913419913, prefix: 154, hit: 0.883984375 },
};

Deno.test("long_output eval: a bounded run to the context end is measured against the full cache", async () => {
  const m = await loadEvalModel(undefined, "cpu", () => {});
  try {
    const rows = await runLongOutput(m, {
      samples: 1,
      seed: 0,
      methods: ["snapkv", "judgeq"],
      caps: ["128"],
      interval: 32,
      buffer: 8,
    });
    assertEquals(rows.map((r) => r.method), ["snapkv", "judgeq"]);
    for (const r of rows) {
      const want = GOLDEN_CELLS[r.method as keyof typeof GOLDEN_CELLS];
      for (const k of ["kl", "top1", "hit"] as const) {
        assert(
          Math.abs(r[k] - want[k]) <= 1e-9 * Math.max(1, want[k]),
          `${r.method} ${k} ${r[k]}, golden ${want[k]}`,
        );
      }
      assertEquals([r.prefix, r.n, r.names, r.compressions], [want.prefix, 462, 1, 11], r.method);
      assert(r.kv < 0.5, `kv ${r.kv}`);
      assertEquals(r.n + encodePrompt(m.model, longOutputSpec(0, 0).opening).length, 512);
    }
    assert(longOutputMarkdown(rows).includes("| snapkv | 128 entries |"));
  } finally {
    m.model.executor.dispose();
  }
});
