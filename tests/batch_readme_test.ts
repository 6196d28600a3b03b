/**
 * README's batched decoding figures against the raw output they come from (results/batch/): every cell of
 * the bench:batch, loadtest --compare and bench:kv-bound tables must equal the committed JSON as printed,
 * so a figure cannot drift from its run or be edited by hand.
 */
import { assert, assertEquals } from "./helpers.ts";

const root = new URL("../", import.meta.url);
const README = await Deno.readTextFile(new URL("README.md", root));
const json = async (name: string) =>
  JSON.parse(await Deno.readTextFile(new URL(`results/batch/${name}`, root)));

/** The body rows of every markdown table whose header line starts with `header`, as trimmed cells. */
function tables(header: string): string[][][] {
  const lines = README.split("\n"), out: string[][][] = [];
  lines.forEach((l, at) => {
    if (!l.startsWith(header)) return;
    const rows: string[][] = [];
    for (let i = at + 2; i < lines.length && lines[i].startsWith("|"); i++) {
      rows.push(lines[i].split("|").slice(1, -1).map((c) => c.trim()));
    }
    out.push(rows);
  });
  assert(out.length > 0, `no table headed ${header}`);
  return out;
}

interface Level {
  streams: number;
  tokPerS: number;
  tokPerCpuS: number;
  ttftMs: { p50: number; p99: number };
  perTokenMs: { p50: number; p99: number };
}

Deno.test("README bench:batch tables equal their results/batch/bench_batch_*.json, in order", async () => {
  const files = [...Deno.readDirSync(new URL("results/batch/", root))].map((e) => e.name)
    .filter((n) => n.startsWith("bench_batch_")).sort();
  const got = tables("| weights | streams | ours tok/s");
  assertEquals(got.length, files.length, "one README table per bench:batch run");
  for (const [k, file] of files.entries()) {
    const r = await json(file);
    const want: string[][] = [];
    for (const f of r.formats) {
      f.ours.forEach((o: Level, i: number) => {
        const t: Level = f.llamacpp[i];
        want.push([
          f.format,
          String(o.streams),
          String(o.tokPerS),
          String(t.tokPerS),
          `${f.tok_per_s_ratio[i]}x`,
          String(o.tokPerCpuS),
          String(t.tokPerCpuS),
          `${f.tok_per_cpu_s_ratio[i]}x`,
          `${f.over_own_single_stream[i]}x / ${f.over_own_single_stream_cpu[i]}x`,
          `${o.perTokenMs.p50} / ${t.perTokenMs.p50} ms`,
        ]);
      });
    }
    assertEquals(got[k], want, file);
  }
});

Deno.test("README loadtest --compare table equals results/batch/loadtest_compare_llama76m_q8_0.json", async () => {
  const r = await json("loadtest_compare_llama76m_q8_0.json");
  const want = r.service.map((a: Level, i: number) => {
    const b: Level = r.llamacpp[i];
    return [
      String(a.streams),
      String(a.tokPerS),
      String(b.tokPerS),
      `${r.tok_per_s_ratio[i]}x`,
      String(a.tokPerCpuS),
      String(b.tokPerCpuS),
      `${r.tok_per_cpu_s_ratio[i]}x`,
      `${a.ttftMs.p50} / ${a.ttftMs.p99} ms`,
      `${b.ttftMs.p50} / ${b.ttftMs.p99} ms`,
      `${a.perTokenMs.p50} / ${a.perTokenMs.p99} ms`,
      `${b.perTokenMs.p50} / ${b.perTokenMs.p99} ms`,
    ];
  });
  assertEquals(tables("| streams | service tok/s")[0], want);
});

Deno.test("README bench:kv-bound tables equal their results/batch/kv_bound_*.json, in order", async () => {
  const files = [...Deno.readDirSync(new URL("results/batch/", root))].map((e) => e.name)
    .filter((n) => n.startsWith("kv_bound_")).sort();
  const got = tables("| cache ");
  assertEquals(got.length, files.length, "one README table per kv_bound run");
  const names: Record<string, string> = {
    full: "full",
    "judgeq 25%": "Judge Q 25%",
    "judgeq 10%": "Judge Q 10%",
  };
  for (const [k, file] of files.entries()) {
    const r = await json(file);
    const want = r.runs.map((x: Record<string, number | string>, i: number) => {
      const vs = (v: unknown) => (i === 0 ? "" : ` (${v}x)`);
      return [
        names[x.label as string],
        `${x.admittedAtOnce}${vs(x.admitted_vs_full)}`,
        `${x.decodingAtOnce}${vs(x.decoding_vs_full)}`,
        `${x.tokensPerS}${vs(x.tokens_per_s_vs_full)}`,
        `${x.tokensPerCpuS}${vs(x.tokens_per_cpu_s_vs_full)}`,
        `${x.decodeStepRowsPerS}${vs(x.decode_step_rows_per_s_vs_full)}`,
      ];
    });
    assertEquals(got[k], want, file);
  }
});
