/**
 * README's wasm-executor figures against the raw output they come from: every ratio cell of the Decoding
 * section's table (six `deno task bench` runs, results/bench/wasm_llama76m_1thread*.json) with its median, and
 * every cell of the browser tables (results/browser_bench.json, browser_bench_q8_0.json), so a figure cannot
 * drift from its run or be edited by hand.
 */
import { assert, assertEquals } from "./helpers.ts";
import { median } from "../core/percentile.ts";

const root = new URL("../", import.meta.url);
const README = await Deno.readTextFile(new URL("README.md", root));
const json = async (path: string) => JSON.parse(await Deno.readTextFile(new URL(path, root)));

/** The body rows of the markdown table whose header line starts with `header`, as trimmed cells. */
function table(header: string): string[][] {
  const lines = README.split("\n"), at = lines.findIndex((l) => l.startsWith(header));
  assert(at >= 0, `no table headed ${header}`);
  const rows: string[][] = [];
  for (let i = at + 2; i < lines.length && lines[i].startsWith("|"); i++) {
    rows.push(lines[i].split("|").slice(1, -1).map((c) => c.trim()));
  }
  return rows;
}

/** A ratio as the README prints it: two decimals, trailing zeros kept, then x. */
const x2 = (v: number) => `${v.toFixed(2)}x`;

Deno.test("README's wasm Decoding table equals the six 1-thread runs in results/bench/, medians included", async () => {
  const runs = ["", "_b", "_c", "_d", "_e", "_f"];
  const ratios = await Promise.all(runs.map(async (r) => {
    const d = await json(`results/bench/wasm_llama76m_1thread${r}.json`);
    assertEquals(d.threads, 1, `run ${r}: threads`);
    return d.models.llama76m.ratios as { engine: string; prefill: number; decode: number }[];
  }));
  const rows = table("| 1 thread, ratio to llama.cpp");
  const want = ["wasm-f32", "wasm-int8", "wasm-q8_0"].flatMap((engine) =>
    (["prefill", "decode"] as const).map((phase) => {
      const v = ratios.map((rs) => rs.find((x) => x.engine === engine)![phase]);
      return [...v.map(x2), x2(median(v))];
    })
  );
  assertEquals(rows.map((r) => r.slice(1)), want);
});

Deno.test("README's browser tables equal results/browser_bench.json and browser_bench_q8_0.json", async () => {
  const check = async (file: string, header: string, order: [string, string][]) => {
    const d = await json(file);
    const rows = table(header);
    assertEquals(rows.length, order.length, `${file}: rows`);
    order.forEach(([config, against], i) => {
      const c = d.configs[config], cells = rows[i];
      const cell = (phase: "prefill" | "decode") => {
        const v = c[`${phase}TokPerS`].median;
        if (!against) return v.toFixed(1);
        const r = d.ratios[`${config.replace(/ t\d$/, "")} / ${against}, ${config.slice(-2)}`][phase];
        return `${v.toFixed(1)} (${x2(r.median)}, ${r.min.toFixed(2)}-${r.max.toFixed(2)})`;
      };
      assertEquals([cells[1], cells[2]], [cell("prefill"), cell("decode")], `${file}: ${cells[0]}`);
    });
  };
  await check("results/browser_bench.json", "| Chromium 150, 76M llama     |", [
    ["wllama F32 t1", ""],
    ["ours f32 t1", "wllama F32"],
    ["wllama F32 t2", ""],
    ["ours f32 t2", "wllama F32"],
  ]);
  await check("results/browser_bench_q8_0.json", "| Chromium 150, 76M llama      |", [
    ["wllama Q8_0 t1", ""],
    ["ours q8_0 t1", "wllama Q8_0"],
    ["ours int8 t1", "wllama Q8_0"],
    ["wllama Q8_0 t2", ""],
    ["ours q8_0 t2", "wllama Q8_0"],
    ["ours int8 t2", "wllama Q8_0"],
  ]);
});

Deno.test("README's figures of wllama alone equal results/browser_bench_wllama_alone.json", async () => {
  const d = await json("results/browser_bench_wllama_alone.json");
  assertEquals(Object.keys(d.ratios).length, 0, "wllama alone: no ratios");
  const prose = README.replace(/\s+/g, " ");
  for (const [name, c] of Object.entries(d.configs) as [string, Record<string, { median: number }>][]) {
    const pair = `${c.prefillTokPerS.median.toFixed(1)} / ${c.decodeTokPerS.median.toFixed(1)}`;
    assert(prose.includes(pair), `${name}: README lacks ${pair}`);
  }
});
