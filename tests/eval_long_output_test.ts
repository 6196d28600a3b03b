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

Deno.test("long_output eval: a bounded run to the context end is measured against the full cache", async () => {
  const m = await loadEvalModel(undefined, "cpu", () => {});
  try {
    const rows = await runLongOutput(m, {
      samples: 1,
      seed: 0,
      methods: ["snapkv"],
      caps: ["128"],
      interval: 32,
      buffer: 8,
    });
    assertEquals(rows.length, 1);
    const r = rows[0];
    assert(r.kl >= 0 && r.kl < 1, `kl ${r.kl}`);
    assert(r.top1 > 0.5 && r.top1 <= 1, `top1 ${r.top1}`);
    assert(r.prefix >= 1 && r.prefix <= r.n, `prefix ${r.prefix}`);
    assert(r.hit > 0 && r.hit <= 1, `hit ${r.hit}`);
    assert(r.compressions > 5, `compressions ${r.compressions}`);
    assert(r.kv < 0.5, `kv ${r.kv}`);
    assertEquals(r.n + encodePrompt(m.model, longOutputSpec(0, 0).opening).length, 512);
    assert(longOutputMarkdown(rows).includes("| snapkv | 128 entries |"));
  } finally {
    m.model.executor.dispose();
  }
});
