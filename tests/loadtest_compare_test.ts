/**
 * `deno task loadtest --compare` (ops/loadtest_compare.ts) and bench:batch's level statistics
 * (bench/batch_compare.ts): bad flags are refused naming the flag (exit 2 from the task), before anything is
 * loaded; a level's figures from token arrival times equal the ones worked out by hand.
 */
import { assert, assertEquals } from "./helpers.ts";
import { summarize } from "../bench/batch_compare.ts";
import { UsageError } from "../io/flags.ts";
import { compareOptions } from "../ops/loadtest_compare.ts";

Deno.test("loadtest --compare: bad flags name the flag", () => {
  const cases: [string[], string][] = [
    [["--levels", "0"], "--levels"],
    [["--levels", "4,x"], "--levels"],
    [["--format", "q4_0"], "--format"],
    [["--model", "llama1b"], "--model"],
    [["--max-tokens", "0"], "--max-tokens"],
    [["--max-batch-tokens", "-3"], "--max-batch-tokens"],
    [["--kv-cache-mb", "0"], "--kv-cache-mb"],
    [["--threads", "0"], "--threads"],
    [["--kv", "f8"], "--kv"],
  ];
  for (const [argv, flag] of cases) {
    let caught: unknown = null;
    try {
      compareOptions(["--compare", ...argv]);
    } catch (e) {
      caught = e;
    }
    assert(caught instanceof UsageError, `${argv.join(" ")}: ${caught}`);
    assert((caught as Error).message.includes(flag), `${argv.join(" ")}: ${(caught as Error).message}`);
  }
  const ok = compareOptions(["--compare", "--levels", "1,16", "--format", "f32"]);
  assertEquals(ok.levels, [1, 16]);
  assertEquals(ok.format, "f32");
  assertEquals(ok.kv, "f16"); // llama.cpp's own default KV cache type
});

Deno.test("loadtest --compare: a bad flag exits 2 naming it", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../ops/loadtest.ts", import.meta.url).pathname,
      "--compare",
      "--levels",
      "0",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(out.code, 2);
  assert(new TextDecoder().decode(out.stderr).includes("--levels"));
});

Deno.test("bench:batch level figures from token arrival times", () => {
  // Stream A's tokens at 10, 20, 40 ms, stream B's at 15, 25 ms; the level took 50 ms.
  const l = summarize(2, 50, [[10, 20, 40], [15, 25]]);
  assertEquals(l.tokens, 5);
  assertEquals(l.tokPerS, 100); // 5 tokens in 0.05 s
  assertEquals(l.ttftMs, { p50: 10, p99: 15 });
  assertEquals(l.perTokenMs, { p50: 10, p99: 20 }); // gaps 10, 20, 10
  // Both streams started by 15 ms: 3 tokens after it (20, 25, 40) over the 25 ms to the last one.
  assertEquals(l.decodeTokPerS, 120);
  assertEquals(l.tokPerCpuS, null); // not measured
  assertEquals(summarize(2, 50, [[10, 20, 40], [15, 25]], 25).tokPerCpuS, 200); // 5 tokens in 25 CPU ms
});
