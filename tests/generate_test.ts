/** End to end on the embedded model: the converter, the text path and the generate CLI. */
import { generateText } from "../core/engine.ts";
import { convertLlama2c } from "../fixtures/convert_llama2c.ts";
import { EMBEDDED_MODEL_DIR } from "../io/model_dir.ts";
import { loadModel } from "../io/runtime.ts";
import { wasmUnsupportedReason } from "../wasm/mod.ts";
import { assert, assertEquals, assertRejects, GOLDEN, runScript } from "./helpers.ts";

const SHARED = Deno.env.get("JUDGEQ_SHARED_DATA") ?? new URL("../../shared/data/", import.meta.url).pathname;
const hasShared = await Deno.stat(SHARED + "stories260K/stories260K.bin").then(() => true, () => false);

Deno.test({
  name: "converter: stories260K.bin + tok512.bin convert to exactly the committed model files",
  ignore: !hasShared,
  fn: async () => {
    const out = convertLlama2c(
      await Deno.readFile(SHARED + "stories260K/stories260K.bin"),
      await Deno.readFile(SHARED + "stories260K/tok512.bin"),
    );
    for (const [name, data] of Object.entries(out.files)) {
      const committed = await Deno.readFile(EMBEDDED_MODEL_DIR + name);
      const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
      assert(
        bytes.length === committed.length && bytes.every((b, i) => b === committed[i]),
        `${name} differs`,
      );
    }
  },
});

Deno.test("greedy text from BOS equals llama2.c's documented sample byte for byte", async () => {
  const model = await loadModel({ executor: "cpu", adapter: null });
  // run.c -n 256 (its default): 256 forward passes from BOS, each printing the token it samples.
  const r = await generateText(model, { prompt: "", maxTokens: 256 });
  const expected = await Deno.readTextFile(GOLDEN + "upstream_doc_greedy_t0.txt");
  assertEquals(r.outputs[0].text, expected.replace(/\n$/, ""));
  assertEquals(r.promptTokens, [1]);
});

const cli = (...args: string[]) => runScript("cli/generate.ts", ...args);

Deno.test("generate CLI: --json gives text, tokens, prompt ids and compression stats", async () => {
  const r = await cli(
    "--prompt",
    "Once upon a time",
    "--max-tokens",
    "40",
    "--executor",
    "cpu",
    "--json",
    "--method",
    "snapkv",
    "--budget",
    "4",
    "--window",
    "2",
  );
  assertEquals(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assertEquals(j.prompt_tokens, [1, 403, 407, 261, 378]);
  assertEquals(j.tokens.length, 40);
  assert(j.text.startsWith(", there was a little"), j.text);
  assertEquals(j.compression.method, "snapkv");
  assertEquals(j.compression.kept.length, 5);
  for (const heads of j.compression.kept) for (const k of heads) assertEquals(k.length, 4);
  assertEquals([j.compression.kv_bytes_before, j.compression.kv_bytes_after], [
    5 * 5 * 4 * 8 * 2 * 4,
    4 * 5 * 4 * 8 * 2 * 4,
  ]);
});

Deno.test("generate CLI: bad flags and inputs are named, exit code 2", async () => {
  for (
    const [args, fragment] of [
      [["--budget", "abc", "--prompt", "x"], "--budget: expected an integer"],
      [["--prompt", "x", "--bogus", "1"], "unknown flag --bogus"],
      [["--max-tokens", "5"], "give --prompt or --context"],
      [["--prompt", "x", "--executor", "tpu"], "--executor"],
      [
        ["--prompt", "x", "--gpu-weights", "f8"],
        "--gpu-weights: expected auto, f32, f16, int8, q8_0, q4_0, got 'f8'",
      ],
      [
        ["--prompt", "x", "--weights", "f8"],
        "--weights: expected auto, f32, f16, int8, q8_0, q4_0, got 'f8'",
      ],
      [["--prompt", "x", "--kv-cache", "f8"], "--kv-cache: expected f32 or f16, got 'f8'"],
      [
        ["--prompt", "x", "--weights", "f32", "--gpu-weights", "f16"],
        "--gpu-weights: is an alias of --weights",
      ],
      [["--prompt", "x", "--threads", "0"], "--threads: expected a whole number from 1 to 256, got '0'"],
      [["--prompt", "x", "--threads", "-1"], "--threads: expected a whole number from 1 to 256, got '-1'"],
      [["--prompt", "x", "--threads", "1.5"], "--threads: expected a whole number from 1 to 256, got '1.5'"],
      [["--prompt", "x", "--threads", "abc"], "--threads: expected a whole number from 1 to 256, got 'abc'"],
      [["--prompt", "x", "--threads", "257"], "--threads: expected a whole number from 1 to 256, got '257'"],
      [["--prompt", "x", "--threads"], "--threads: missing value"],
      [["--prompt", "x", "--method", "nope", "--budget", "3", "--executor", "cpu"], "kv_compression.method"],
      [["--prompt", "x", "--model", "/nonexistent-model-dir", "--executor", "cpu"], "config.json"],
    ] as const
  ) {
    const r = await cli(...args);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert(r.stderr.includes(fragment), `${args.join(" ")}: ${r.stderr}`);
  }
});

Deno.test({
  name: "generate CLI: --executor wasm prints the CPU reference's greedy text",
  ignore: wasmUnsupportedReason() !== null,
  fn: async () => {
    const args = ["--prompt", "Once upon a time", "--max-tokens", "8"];
    const ref = await cli(...args, "--executor", "cpu");
    assertEquals(ref.code, 0, ref.stderr);
    for (const extra of [[], ["--threads", "2"], ["--threads", "1", "--weights", "f32"]]) {
      const r = await cli(...args, "--executor", "wasm", ...extra);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout, ref.stdout, extra.join(" "));
    }
    assert(ref.stdout.startsWith("Once upon a time, there was"), ref.stdout);
    const j = await cli(...args, "--executor", "wasm", "--json");
    assertEquals(JSON.parse(j.stdout).executor, "wasm");
  },
});

Deno.test("generate CLI: --help lists --executor, --threads and --weights", async () => {
  const r = await cli("--help");
  assertEquals(r.code, 0, r.stderr);
  for (const flag of ["--executor", "--threads", "--weights", "--gpu-weights"]) {
    assert(r.stdout.includes(`  ${flag} `), `${flag} missing from: ${r.stdout}`);
  }
  assert(/auto \| gpu \| native \| wasm \| cpu/.test(r.stdout), r.stdout);
  assert(r.stdout.includes("  --kv-cache "), r.stdout);
});

Deno.test("converter: truncated or malformed llama2.c checkpoints are refused with a clear error", async () => {
  const tok = await Deno.readFile(GOLDEN + "tok512.bin");
  const header = new Int32Array([64, 172, 5, 8, 4, 512, 512]);
  const bytes = (floats: number, h = header) => {
    const b = new Uint8Array(28 + floats * 4);
    b.set(new Uint8Array(h.buffer));
    return b;
  };
  await assertRejects(() => convertLlama2c(new Uint8Array(10), tok), "truncated header");
  await assertRejects(() => convertLlama2c(bytes(1000), tok), "checkpoint: truncated");
  await assertRejects(
    () => convertLlama2c(bytes(10, new Int32Array([64, 0, 5, 8, 4, 512, 512])), tok),
    "bad header",
  );
  // The real size converts: 264,128 floats for stories260K's shape.
  const ok = convertLlama2c(bytes(264128), tok);
  assert(ok.files["model.safetensors"] instanceof Uint8Array, "converted");
});
