/**
 * The CLI edge as a real process: flags, the ready line, and a graceful SIGTERM that lets an in-flight
 * stream finish before exiting 0.
 */
import { readSse } from "../server/sse.ts";
import { wasmUnsupportedReason } from "../wasm/mod.ts";
import { assert, assertEquals, readAll, runServerMain, spawnServerMain } from "./helpers.ts";

/** What the process has printed up to the end of its first line (the ready line), at least. */
async function untilNewline(lines: ReadableStreamDefaultReader<Uint8Array>): Promise<string> {
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await lines.read();
    if (done) break;
    out += new TextDecoder().decode(value);
  }
  return out;
}

Deno.test({
  name: "server/main.ts: ready line with a curl, then SIGTERM drains an in-flight stream and exits 0",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    const child = spawnServerMain([
      "--port",
      "0",
      "--executor",
      "cpu",
      "--adapter",
      "none",
      "--queue-size",
      "4",
    ]);
    const stderr = readAll(child.stderr);
    const lines = child.stdout.getReader();
    const out = await untilNewline(lines);
    const ready = out.split("\n")[0];
    const base = /at (http:\/\/127\.0\.0\.1:\d+)/.exec(ready)?.[1];
    if (!base) {
      child.kill("SIGKILL");
      throw new Error(`no ready line: ${ready} / ${await stderr}`);
    }
    assert(ready.includes(`curl -s ${base}/v1/generate`), ready);

    const r = await fetch(`${base}/v1/generate`, {
      method: "POST",
      body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 200, ignore_eos: true, stream: true }),
    });
    const events = readSse(r.body!);
    assert((await events.next()).value, "first chunk");
    child.kill("SIGTERM");
    let last = "";
    for await (const data of events) last = data === "[DONE]" ? last : data;
    const done = JSON.parse(last);
    assertEquals([done.object, done.usage.completion_tokens], ["generation.done", 200]); // finished, not cut
    const status = await child.status;
    assertEquals(status.code, 0);
    await lines.cancel();
    const err = await stderr;
    assert(err.includes("SIGTERM: draining") && err.includes("stopped"), err);
  },
});

Deno.test("server/main.ts: a bad flag is a usage error naming it", async () => {
  for (
    const [args, message] of [
      [["--port", "abc"], "--port: expected an integer, got 'abc'"],
      [["--gpu-weights", "int4"], "--gpu-weights: expected auto, f32, f16, int8, q8_0, q4_0, got 'int4'"],
      [["--weights", "int4"], "--weights: expected auto, f32, f16, int8, q8_0, q4_0, got 'int4'"],
      [
        ["--executor", "tpu"],
        "--executor: expected auto, gpu, native, wasm or cpu (or reference), got 'tpu'",
      ],
      [["--threads", "0"], "--threads: expected a whole number from 1 to 256, got '0'"],
      [["--threads", "-1"], "--threads: expected a whole number from 1 to 256, got '-1'"],
      [["--threads", "1.5"], "--threads: expected a whole number from 1 to 256, got '1.5'"],
      [["--threads", "abc"], "--threads: expected a whole number from 1 to 256, got 'abc'"],
      [["--api-key", "a", "--api-key-file", "key.txt"], "give --api-key or --api-key-file, not both"],
      [["--api-key", ""], "--api-key: the key must not be empty"],
      [["--api-key-file", "no-such-key-file"], "--api-key-file: cannot read"],
      [["--api-key-file", "tests"], "--api-key-file: not a regular file"],
      [["--max-questions", "65"], "--max-questions: expected 1 to 64, got '65'"],
      [["--max-tokens-per-request", "0"], "--max-tokens-per-request: expected a number >= 1, got '0'"],
      [["--max-streams", "0"], "--max-streams: expected a number >= 1, got '0'"],
      [["--max-request-seconds", "-1"], "--max-request-seconds: expected a number >= 0, got '-1'"],
      [["--max-connections", "0"], "--max-connections: expected a number >= 1, got '0'"],
      [["--context-store", "http://x"], "--context-store"],
    ] as [string[], string][]
  ) {
    const { code, stdout, stderr } = await runServerMain(args);
    assertEquals(code, 2);
    assert(stderr.includes(message), stderr + stdout);
  }
});

Deno.test({
  name: "server/main.ts: --executor wasm serves a request and reports executor wasm",
  ignore: Deno.build.os === "windows" || wasmUnsupportedReason() !== null,
  fn: async () => {
    const child = spawnServerMain([
      "--port",
      "0",
      "--executor",
      "wasm",
      "--threads",
      "2",
      "--adapter",
      "none",
    ]);
    const stderr = readAll(child.stderr);
    const lines = child.stdout.getReader();
    const out = await untilNewline(lines);
    const ready = out.split("\n")[0];
    const base = /at (http:\/\/127\.0\.0\.1:\d+)/.exec(ready)?.[1];
    try {
      assert(base, `no ready line: ${ready}`);
      assert(ready.includes(" on wasm "), ready);
      const r = await fetch(`${base}/v1/generate`, {
        method: "POST",
        body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 8 }),
      });
      const j = await r.json();
      assertEquals([r.status, j.executor, j.text], [200, "wasm", ", there was a little girl"]);
      const health = await (await fetch(`${base}/healthz`)).json();
      assertEquals([health.status, health.executor], ["ok", "wasm"]);
      const models = await (await fetch(`${base}/v1/models`)).json();
      assertEquals(models.data[0].executor, "wasm");
      assert(
        /WebAssembly SIMD, 2 threads/.test(models.data[0].executor_description),
        models.data[0].executor_description,
      );
    } finally {
      child.kill("SIGTERM");
    }
    assertEquals((await child.status).code, 0, await stderr);
    await lines.cancel();
  },
});

Deno.test("server/main.ts: --help lists --executor, --threads and --weights", async () => {
  const { code, stdout } = await runServerMain(["--help"]);
  assertEquals(code, 0);
  for (const flag of ["--executor", "--threads", "--weights", "--gpu-weights"]) {
    assert(stdout.includes(`  ${flag} `), `${flag} missing from: ${stdout}`);
  }
});

Deno.test({
  name: "server/main.ts: the API key from --api-key-file or $JUDGEQ_API_KEY, never on the command line",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "judgeq-key-" });
    await Deno.writeTextFile(`${dir}/key`, "from-file\n");
    for (
      const [args, env, key] of [
        [["--api-key-file", `${dir}/key`], {}, "from-file"],
        [[], { JUDGEQ_API_KEY: "from-env" }, "from-env"],
      ] as [string[], Record<string, string>, string][]
    ) {
      const child = spawnServerMain(["--port", "0", "--executor", "cpu", "--adapter", "none", ...args], env);
      const stderr = readAll(child.stderr);
      const lines = child.stdout.getReader();
      const out = await untilNewline(lines);
      const base = /at (http:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1];
      try {
        assert(base, `no ready line: ${out}`);
        assert(!out.includes(key), "the key is not printed");
        const without = await fetch(`${base}/v1/models`);
        assertEquals([without.status, (await without.json()).error.type], [401, "authentication_error"]);
        const withKey = await fetch(`${base}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
        assertEquals(withKey.status, 200);
        await withKey.body?.cancel();
      } finally {
        child.kill("SIGTERM");
      }
      assertEquals((await child.status).code, 0, await stderr);
      await lines.cancel();
    }
    await Deno.remove(dir, { recursive: true });
  },
});
