/**
 * GGUF at the command line: `deno task convert --from DIR --gguf FILE` writes a file that
 * `generate --model FILE` runs, with the same text as the model directory, and `loadtest --model FILE` serves; a truncated file and a bad
 * type id are one-line errors with exit code 2, no stack trace.
 */
import { assert, assertEquals, runScript } from "./helpers.ts";
import { EMBEDDED_MODEL_DIR } from "../io/model_dir.ts";

const tmp = await Deno.makeTempDir({ prefix: "judgeq-gguf-cli-" });

Deno.test("convert --from --gguf, then generate and loadtest --model FILE.gguf (and its bad-file errors)", async () => {
  const file = `${tmp}/stories.gguf`;
  const conv = await runScript(
    "fixtures/convert_llama2c.ts",
    "--from",
    EMBEDDED_MODEL_DIR,
    "--gguf",
    file,
    "--gguf-type",
    "f32",
  );
  assertEquals(conv.code, 0, conv.stderr);
  const gen = (model: string) =>
    runScript(
      "cli/generate.ts",
      "--model",
      model,
      "--prompt",
      "Once upon a time",
      "--max-tokens",
      "24",
      "--executor",
      "cpu",
    );
  const [a, b] = await Promise.all([gen(file), gen(EMBEDDED_MODEL_DIR)]);
  assertEquals(a.code, 0, a.stderr);
  assertEquals(a.stdout, b.stdout, "the F32 file generates the directory's text");
  const load = await runScript(
    "ops/loadtest.ts",
    ...["--model", file, "--requests", "4", "--concurrency", "2", "--max-tokens", "4", "--executor", "cpu"],
  );
  assertEquals(load.code, 0, load.stderr);
  assert(load.stdout.includes("ok 4,"), load.stdout);
  const bytes = await Deno.readFile(file);
  await Deno.writeFile(`${tmp}/short.gguf`, bytes.subarray(0, bytes.length - 1000));
  const short = await gen(`${tmp}/short.gguf`);
  assertEquals(short.code, 2);
  assert(
    /^error: blk\.\d+\.ffn_down\.weight: data .* runs past the end of the file/.test(short.stderr.trim()),
    short.stderr,
  );
  assertEquals(short.stderr.trim().split("\n").length, 1, "one line");
  const bad = await runScript(
    "fixtures/convert_llama2c.ts",
    "--from",
    EMBEDDED_MODEL_DIR,
    "--gguf",
    file,
    "--gguf-type",
    "q5_k",
  );
  assertEquals(bad.code, 2);
  assert(bad.stderr.includes("--gguf-type"), bad.stderr);
});

Deno.test("deno task start --model BAD.gguf: a one-line startup error, exit 2, no server", async () => {
  const bad = `${tmp}/bad_type.gguf`;
  // A valid header whose one tensor has type id 99.
  const bytes = new Uint8Array(64);
  const v = new DataView(bytes.buffer);
  bytes.set(new TextEncoder().encode("GGUF"));
  v.setUint32(4, 3, true);
  v.setBigUint64(8, 1n, true); // one tensor
  v.setBigUint64(16, 0n, true); // no metadata
  v.setBigUint64(24, 1n, true); // name length
  bytes[32] = 0x61; // "a"
  v.setUint32(33, 1, true); // n_dims
  v.setBigUint64(37, 8n, true);
  v.setUint32(45, 99, true); // type id
  v.setBigUint64(49, 0n, true);
  await Deno.writeFile(bad, bytes);
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../server/main.ts", import.meta.url).pathname,
      "--model",
      bad,
      "--port",
      "0",
    ],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  const err = new TextDecoder().decode(out.stderr).trim();
  assertEquals(out.code, 2, err);
  assertEquals(err, "error: a: type id 99 is not a ggml type");
});
