/**
 * README figures against the raw output they come from (issue 26): every cell of the evaluation tables must
 * equal the committed JSON (or the report generated from it) rounded as printed, so a figure cannot drift
 * from its run, and a row cannot mix variants.
 *
 *   training table      fixtures/models/stories260K/judgeq_report.json (`deno task train report`)
 *   stories, placement  results/full/results.md, generated with results.json (`deno task eval --suite full`)
 *   long outputs        results/long_output/results.json (`deno run -A eval/long_output.ts --samples 8`)
 *
 * Bugs this test catches: the "untrained soft tokens, best" cell at budget 64 that took its hit rate from
 * w16 k1 and its KL and top-1 from w0 k1; any figure edited by hand or left behind by a rerun.
 */
import { assert, assertEquals } from "./helpers.ts";

const root = new URL("../", import.meta.url);
const README = await Deno.readTextFile(new URL("README.md", root));

/** The body rows of the first markdown table whose header line starts with `header`, as trimmed cells. */
function table(text: string, header: string): string[][] {
  const lines = text.split("\n");
  const at = lines.findIndex((l) => l.startsWith(header));
  assert(at >= 0, `no table headed ${header}`);
  const rows: string[][] = [];
  for (let i = at + 2; i < lines.length && lines[i].startsWith("|"); i++) {
    rows.push(lines[i].split("|").slice(1, -1).map((c) => c.trim().replaceAll("**", "")));
  }
  return rows;
}

const pct = (x: number) => (x * 100).toFixed(1);

Deno.test("README training table: every cell is the report's row for the variant its header names", async () => {
  const report = JSON.parse(
    await Deno.readTextFile(new URL("fixtures/models/stories260K/judgeq_report.json", root)),
  );
  type Row = {
    method: string;
    window: number;
    kernel: number;
    budget: number;
    hit: number;
    kl: number;
    top1: number;
  };
  const rows: Row[] = report.rows;
  const cell = (method: string, window: number, kernel: number, budget: number) => {
    const r = rows.find((x) =>
      x.method === method && x.window === window && x.kernel === kernel && x.budget === budget
    );
    assert(r, `no report row ${method} w${window} k${kernel} at ${budget}`);
    return `${pct(r.hit)} / ${r.kl.toFixed(4)} / ${pct(r.top1)}`;
  };
  /** The variant with the best hit rate at a budget: the "best" columns pick whole rows, never cells. */
  const best = (method: string, budget: number) =>
    rows.filter((x) => x.method === method && x.budget === budget).reduce((a, b) => (b.hit > a.hit ? b : a));
  const got = table(README, "| budget | SnapKV, best");
  assertEquals(got.map((r) => r[0]), ["32", "64", "128"]);
  for (const [budget, snap, kl, mse, untrained] of got) {
    const b = Number(budget);
    const s = best("SnapKV", b), u = best("random soft tokens", b);
    assertEquals(snap, cell("SnapKV", s.window, s.kernel, b), `SnapKV at ${b}`);
    assertEquals(kl, cell("Judge Q (kl)", 0, 1, b), `Judge Q KL at ${b}`);
    assertEquals(mse, cell("Judge Q (mse)", 0, 1, b), `Judge Q MSE at ${b}`);
    assertEquals(untrained, cell("random soft tokens", u.window, u.kernel, b), `untrained at ${b}`);
  }
  // The header names the variants the best columns hold.
  const header = README.split("\n").find((l) => l.startsWith("| budget | SnapKV, best"))!;
  const wk = (r: Row) => `w${r.window} k${r.kernel}`;
  assert(header.includes(`${wk(best("SnapKV", 32))} at 32`), header);
  assert(
    header.includes(`${wk(best("SnapKV", 64))} at 64/128`) &&
      wk(best("SnapKV", 128)) === wk(best("SnapKV", 64)),
  );
  const u = [32, 64, 128].map((b) => wk(best("random soft tokens", b)));
  assert(u.every((x) => x === u[0]) && header.includes(`untrained soft tokens, best (${u[0]})`), header);
});

Deno.test("README stories and question-placement tables equal results/full/results.md", async () => {
  const md = await Deno.readTextFile(new URL("results/full/results.md", root));
  // README labels -> the report's.
  const label = (m: string) =>
    m.replace(/^H2O, (raw sums|normalised), recent B\/2$/, "H2O ($1, recent B/2)").replace(" (default)", "")
      .replace(/^random$/, "Random");
  const stories = table(md, "| budget | method | hit % | KL | top-1 % |");
  const readme = table(README, "| method                                | budget 32");
  assert(readme.length >= 18, `${readme.length} rows`);
  for (const [method, ...cells] of readme) {
    cells.forEach((c, i) => {
      const budget = ["32", "64", "128"][i];
      const r = stories.find((x) => x[0] === budget && x[1] === label(method));
      assert(r, `results.md has no ${label(method)} at ${budget}`);
      assertEquals(c, `${r[2]} / ${r[3]} / ${r[4]}`, `${method} at ${budget}`);
    });
  }
  const placement = table(md, "| budget | method | hit % (end) |");
  for (const [budget, method, ...cells] of table(README, "| budget | method        | question at the end")) {
    const r = placement.find((x) => x[0] === budget && x[1] === method);
    assert(r, `results.md has no placement row ${method} at ${budget}`);
    // hit / needle kept / top-1 at the end, the start and after compression; "100" is printed for 100.0.
    const want = [[2, 3, 5], [6, 7, 9], [10, 11, 13]].map((ix) =>
      ix.map((j) => r[j].replace(/^100\.0$/, "100")).join(" / ")
    );
    assertEquals(cells, want, `${method} at ${budget}`);
  }
});

Deno.test("README long-output table equals results/long_output/results.json", async () => {
  const raw = JSON.parse(await Deno.readTextFile(new URL("results/long_output/results.json", root)));
  const rows = table(README, "| method        | cap per KV head |");
  assertEquals(rows.length, raw.rows.length, "one README row per measured cell");
  for (const [method, cap, kl, top1, prefix, names, hit, kv] of rows) {
    const key = cap.endsWith("% of tokens") ? `f${Number(cap.split("%")[0]) / 100}` : cap;
    const r = raw.rows.find((x: { method: string; cap: string }) => x.method === method && x.cap === key);
    assert(r, `no raw row for ${method} ${cap}`);
    assertEquals(
      [kl, top1, prefix, names, hit, kv],
      [
        r.kl.toFixed(3),
        r.top1.toFixed(3),
        `${r.prefix.toFixed(1)} / ${Math.round(r.n)}`,
        r.names.toFixed(2),
        r.hit.toFixed(3),
        `${pct(r.kv)}%`,
      ],
      `${method} ${cap}`,
    );
  }
});

Deno.test("README loss choice on the validation split equals results/training/loss_validation.json", async () => {
  const v = JSON.parse(await Deno.readTextFile(new URL("results/training/loss_validation.json", root)));
  type Row = { method: string; budget: number; hit: number; kl: number };
  const mean = (loss: string, by: "hit" | "kl") => {
    const per = [32, 64, 128].map((b) => {
      const rs = (v.rows as Row[]).filter((r) => r.method === `Judge Q (${loss})` && r.budget === b);
      return by === "hit" ? Math.max(...rs.map((r) => r.hit)) : Math.min(...rs.map((r) => r.kl));
    });
    return per.reduce((a, b) => a + b, 0) / per.length;
  };
  const text = README.replace(/\s+/g, " ");
  assertEquals(v.choice.loss, "kl");
  const hit = `mean best hit rate ${pct(mean("kl", "hit"))}% against ${pct(mean("mse", "hit"))}% for MSE`;
  const kl = `mean best KL ${mean("kl", "kl").toFixed(4)} against ${mean("mse", "kl").toFixed(4)}`;
  assert(text.includes(hit), hit);
  assert(text.includes(kl), kl);
  assert(
    text.includes(`data seed ${v.split.seed}`) && text.includes(`${v.split.samples} fresh samples`),
    "split",
  );
});
