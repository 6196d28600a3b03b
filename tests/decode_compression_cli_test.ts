/** deno task generate with --decode-*: decode-time compression from the command line, bad values named. */
import { assert, assertEquals, runScript } from "./helpers.ts";

const cli = (...args: string[]) => runScript("cli/generate.ts", "--executor", "cpu", ...args);

Deno.test("generate CLI: --decode-budget and --decode-interval bound the cache; --json reports each compression", async () => {
  const r = await cli(
    "--prompt",
    "Once upon a time",
    "--max-tokens",
    "60",
    "--decode-budget",
    "16",
    "--decode-interval",
    "8",
    "--decode-buffer",
    "4",
    "--decode-method",
    "h2o",
    "--json",
  );
  assertEquals(r.code, 0, r.stderr);
  const d = JSON.parse(r.stdout).compression.decode;
  assertEquals([d.method, d.budget, d.interval, d.buffer], ["h2o", 16, 8, 4]);
  assert(d.compressions >= 5, JSON.stringify(d));
  for (const e of d.events) assertEquals([e.entries_before, e.entries_after], [24, 16]);
  // At most budget + interval entries in each of 5 layers x 4 KV heads, head size 8, K and V in f32.
  assert(d.kv_bytes_end[0] <= 24 * 5 * 4 * 8 * 2 * 4, JSON.stringify(d.kv_bytes_end));
});

Deno.test("generate CLI: bad --decode-* values are named, exit code 2", async () => {
  for (
    const [args, fragment] of [
      [["--decode-fraction", "1.5"], "kv_compression.decode.fraction"],
      [["--decode-budget", "8", "--decode-interval", "0"], "kv_compression.decode.interval"],
      [["--decode-budget", "8", "--decode-buffer", "8"], "kv_compression.decode.buffer"],
      [["--decode-interval", "4"], "--decode-budget or --decode-fraction"],
      [
        ["--decode-budget", "8", "--decode-method", "bogus"],
        "known: random, streaming_llm, h2o, snapkv, pyramidkv, adakv, tova, knorm, judgeq",
      ],
    ] as const
  ) {
    const r = await cli("--prompt", "x", ...args);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert(r.stderr.includes(fragment), `${args.join(" ")}: ${r.stderr}`);
  }
});
