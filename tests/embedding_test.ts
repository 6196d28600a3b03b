/**
 * Edge and browser embedding (issue 13): no Deno API outside the filesystem and process edges, the
 * library loaded from bytes with zero permissions and without WebGPU, loading from a URL, paths from
 * file URLs, and `deno serve serve.ts` with nothing but read access to the model.
 */
import { decodeToF32, encodeSafetensors, type TensorToWrite } from "../core/safetensors.ts";
import { webgpuBackendName } from "../gpu/device.ts";
import {
  loadModelFromBytes,
  loadModelFromUrl,
  parseModelBytes,
  pathFromFileUrl,
  safetensorsHeaderOf,
} from "../io/from_bytes.ts";
import { EMBEDDED_MODEL_DIR, embeddedModelLocation } from "../io/model_dir.ts";
import { loadModel } from "../io/runtime.ts";
import { generateText, type Model } from "../mod.ts";
import { serveOptionsFromEnv } from "../serve.ts";
import { freePort } from "../ops/processes.ts";
import { assert, assertEquals, assertRejects } from "./helpers.ts";

const ROOT = new URL("../", import.meta.url);
const ROOT_DIR = pathFromFileUrl(ROOT)!;
const MODEL = EMBEDDED_MODEL_DIR.replace(/\/+$/, "");
const PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
const MODEL_FILES = [
  "config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "generation_config.json",
  "model.safetensors",
  "judgeq.safetensors",
];

async function greedy(model: Model) {
  const r = await generateText(model, {
    prompt: PROMPT,
    maxTokens: 24,
    compression: { method: "judgeq", budget: 8 },
  });
  return { text: r.outputs[0].text, kept: r.run.compression.kept };
}

let reference: Promise<{ text: string; kept: number[][][] }> | null = null;
/** The greedy text and Judge Q's kept positions of the embedded model loaded from its directory. */
function referenceRun() {
  return reference ??= (async () => {
    const model = await loadModel({ executor: "cpu" });
    try {
      return await greedy(model);
    } finally {
      model.executor.dispose();
    }
  })();
}

// ---- Deno API confined to the edges ---------------------------------------------------------------

/** A use of the Deno namespace itself (not `globalThis.Deno?.x`, which is guarded). */
const BARE_DENO = /(?<![\w.$])Deno\./;

/**
 * Where the Deno namespace may be used, and why. Library code (core/, gpu/, wasm/, server/ but its
 * entry, io/from_bytes.ts, io/executor_choice.ts, mod.ts, serve.ts) must run in browsers and edge
 * runtimes, so it may not.
 */
const DENO_ALLOWED: Record<string, string> = {
  "io/": "the filesystem edge: reads model directories and adapters, then calls io/from_bytes.ts",
  "cli/": "command-line entry points (args, exit codes, files)",
  "server/main.ts": "the `deno task start` entry (Deno.serve, signals, exit)",
  "server/front/front.ts": "main.ts's TCP front: header and idle deadlines (Deno.serve, a worker)",
  "server/front/worker.ts": "the front's worker: Deno.listen, Deno.connect and the relay",
  "ops/": "operator tools: load tests, soak, cluster (processes, files, signals; entry points)",
  "gpu/train/bench.ts": "a benchmark entry point",
  "native/":
    "the native executor: ggml's libraries through Deno FFI (io/executor_choice.ts imports it only " +
    "where Deno.dlopen exists, by a specifier no bundler follows)",
  "wasm/build.ts": "`deno task build:wasm`: compiles and writes the kernels",
  "bench/": "`deno task bench` and its probes (entry points, files, subprocesses)",
  "train/": "`deno task train`: a work directory on disk, progress on the terminal",
  "eval/": "`deno task eval`: results and caches on disk",
  "fixtures/": "converters and test-model generators (entry points writing files)",
  "tests/": "tests",
  "fuzz/": "`deno task fuzz`: findings saved to disk, mutated files written to a temporary directory",
  "web/build.ts": "`deno task bundle`: runs deno bundle, writes the bundle",
  "web/serve_static.ts": "the demo's static file server",
};
/** Files under allowed folders that browsers and edge runtimes load all the same. */
const MUST_STAY_PORTABLE = ["io/from_bytes.ts", "io/executor_choice.ts"];

async function* sourceFiles(dir: URL, rel = ""): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const path = rel + e.name;
    if (e.isDirectory) {
      if ([".git", ".cache", "node_modules", "scratch", "assembly", "models", "dist"].includes(e.name)) {
        continue;
      }
      yield* sourceFiles(new URL(e.name + "/", dir), path + "/");
    } else if (/\.(ts|js|mjs)$/.test(e.name)) {
      yield path;
    }
  }
}

const allowed = (path: string) =>
  Object.keys(DENO_ALLOWED).find((a) => a.endsWith("/") ? path.startsWith(a) : path === a);

Deno.test("embedding: the Deno namespace is used only in io/, cli/, server/main.ts and the allow-listed entry points", async () => {
  const offenders: string[] = [];
  for await (const path of sourceFiles(ROOT)) {
    const text = await Deno.readTextFile(new URL(path, ROOT));
    const line = text.split("\n").findIndex((l) => BARE_DENO.test(l) && !/^\s*(\*|\/\/)/.test(l));
    if (line < 0) continue;
    if (allowed(path) && !MUST_STAY_PORTABLE.includes(path)) continue;
    offenders.push(`${path}:${line + 1}: ${text.split("\n")[line].trim()}`);
  }
  assertEquals(
    offenders,
    [],
    "Deno API outside the allowed places (guard it as globalThis.Deno?.x or move it)",
  );
});

Deno.test("embedding: the modules mod.ts and serve.ts load use Deno only in io/model_dir.ts and io/runtime.ts", async () => {
  for (const entry of ["mod.ts", "serve.ts"]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entry],
      cwd: ROOT_DIR,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(out.success, `deno info ${entry}: ${new TextDecoder().decode(out.stderr)}`);
    const graph = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: { specifier: string }[] };
    const local = graph.modules.map((m) => m.specifier).filter((s) => s.startsWith(ROOT.href))
      .map((s) => s.slice(ROOT.href.length));
    assert(
      local.length > 20 && local.includes("io/from_bytes.ts"),
      `${entry}: ${local.length} local modules`,
    );
    if (entry === "serve.ts") assert(local.includes("server/app.ts"), "serve.ts loads server/app.ts");
    const offenders: string[] = [];
    for (const path of local) {
      if (["io/model_dir.ts", "io/runtime.ts"].includes(path)) continue;
      const text = await Deno.readTextFile(new URL(path, ROOT));
      if (text.split("\n").some((l) => BARE_DENO.test(l) && !/^\s*(\*|\/\/)/.test(l))) offenders.push(path);
    }
    assertEquals(offenders, [], `${entry} loads modules that use the Deno namespace`);
  }
});

Deno.test("embedding: mod.ts and serve.ts with zero permissions, no WebGPU and no Deno namespace load from bytes and generate on the CPU reference, wasm and auto like loadModel", async () => {
  const parts: Uint8Array[] = [new Uint8Array(new Uint32Array([MODEL_FILES.length]).buffer)];
  for (const name of MODEL_FILES) {
    const n = new TextEncoder().encode(name), bytes = await Deno.readFile(`${MODEL}/${name}`);
    parts.push(new Uint8Array(new Uint32Array([n.length]).buffer), n);
    parts.push(new Uint8Array(new Uint32Array([bytes.length]).buffer), bytes);
  }
  const child = new Deno.Command(Deno.execPath(), {
    // No -A and no --allow-*: every permission is denied, and --no-prompt makes asking an error.
    args: ["run", "--no-prompt", "tests/embedding/zero_permissions.ts"],
    cwd: ROOT_DIR,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  for (const p of parts) await w.write(p);
  await w.close();
  const out = await child.output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert(out.success, `zero-permission run failed: ${stderr}`);
  const { results, warnings, served, denoGone } = JSON.parse(new TextDecoder().decode(out.stdout));
  assert(denoGone, "the script ran without the Deno namespace");
  const ref = await referenceRun();
  for (const [choice, kind] of [["cpu", "cpu"], ["wasm", "wasm"], ["auto", "wasm"]]) {
    assertEquals(results[choice].executor, kind, `${choice}: executor`);
    assertEquals(results[choice].text, ref.text, `${choice}: greedy text`);
    assertEquals(results[choice].kept, ref.kept, `${choice}: kept positions`);
  }
  assertEquals(warnings, [], "warnings");
  assertEquals(served.status, 200, JSON.stringify(served.body));
  assertEquals(served.body.text, ref.text, "createServeHandler's answer");
});

// ---- loading from bytes and URLs ------------------------------------------------------------------

async function modelBytes() {
  const read = (name: string) => Deno.readFile(`${MODEL}/${name}`);
  return {
    config: await read("config.json"),
    tokenizer: await Deno.readTextFile(`${MODEL}/tokenizer.json`),
    tokenizerConfig: JSON.parse(await Deno.readTextFile(`${MODEL}/tokenizer_config.json`)),
    generationConfig: await read("generation_config.json"),
    safetensors: await read("model.safetensors"),
    adapter: await read("judgeq.safetensors"),
  };
}

Deno.test("embedding: loadModelFromBytes takes sharded safetensors in any order; errors name the file or tensor", async () => {
  const b = await modelBytes();
  // Split the file into two shards, tensors alternating.
  const header = safetensorsHeaderOf(b.safetensors, "model.safetensors");
  const shards: Record<string, TensorToWrite>[] = [{}, {}];
  [...header.tensors.values()].forEach((t, i) => {
    const at = header.dataOffset;
    shards[i % 2][t.name] = {
      dtype: "F32",
      shape: t.shape,
      data: decodeToF32(t.dtype, b.safetensors.subarray(at + t.begin, at + t.end)),
    };
  });
  const [s0, s1] = shards.map((s) => encodeSafetensors(s));
  const one = await parseModelBytes(b);
  const two = await parseModelBytes({ ...b, safetensors: [s1, s0.buffer as ArrayBuffer] });
  assertEquals(Array.from(two.weights.embed), Array.from(one.weights.embed), "embeddings");
  assertEquals(
    Array.from(two.weights.layers[4].wDown),
    Array.from(one.weights.layers[4].wDown),
    "layer 4 wDown",
  );

  const model = await loadModelFromBytes({ ...b, safetensors: [s0, s1], executor: "cpu" });
  try {
    assertEquals(await greedy(model), await referenceRun(), "greedy run from shards");
    assertEquals(model.name, "model");
    assert(model.adapter !== null && model.adapter.n === 32, "adapter decoded");
  } finally {
    model.executor.dispose();
  }

  const templated = await loadModelFromBytes({
    ...b,
    chatTemplate: "{{ messages[0].content }}",
    executor: "cpu",
  });
  assertEquals(
    templated.tokenizer.chatTemplate,
    "{{ messages[0].content }}",
    "chatTemplate replaces the file's",
  );
  templated.executor.dispose();

  await assertRejects(() => parseModelBytes({ ...b, safetensors: [s0] }), "model.layers.");
  await assertRejects(() => parseModelBytes({ ...b, safetensors: [s0, s0] }), "more than one shard");
  await assertRejects(() => parseModelBytes({ ...b, safetensors: [] }), "safetensors");
  await assertRejects(() => parseModelBytes({ ...b, config: "{" }), "config.json", "not valid JSON");
  await assertRejects(
    () => parseModelBytes({ ...b, safetensors: b.safetensors.subarray(0, 100) }),
    "model.safetensors",
  );
  // Another model (a different config): the adapter's fingerprint does not match it.
  await assertRejects(
    () =>
      loadModelFromBytes({
        ...b,
        config: JSON.stringify({ ...JSON.parse(new TextDecoder().decode(b.config)), rms_norm_eps: 1e-4 }),
        executor: "cpu",
      }),
    "fingerprint",
  );
});

Deno.test("embedding: loadModelFromUrl fetches a model directory over HTTP like loadModel; a missing file is named", async () => {
  let requests = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    requests++;
    const name = new URL(req.url).pathname.split("/").pop()!;
    if (!new URL(req.url).pathname.startsWith("/models/stories260K/") || !MODEL_FILES.includes(name)) {
      return new Response("not found", { status: 404 });
    }
    return new Response(await Deno.readFile(`${MODEL}/${name}`));
  });
  try {
    const base = `http://127.0.0.1:${server.addr.port}/models/stories260K`;
    const model = await loadModelFromUrl(base, { executor: "cpu" });
    try {
      assertEquals(model.name, "stories260K");
      assertEquals(await greedy(model), await referenceRun(), "greedy run over HTTP");
    } finally {
      model.executor.dispose();
    }
    // loadModel takes a URL as its model too; adapter null skips judgeq.safetensors.
    const plain = await loadModel({ model: base + "/", adapter: null, executor: "cpu" });
    assertEquals(plain.adapter, null);
    plain.executor.dispose();
    await assertRejects(
      () => loadModelFromUrl(`http://127.0.0.1:${server.addr.port}/nothing/`),
      "config.json",
      "404",
    );
    await assertRejects(
      () => loadModelFromUrl(base, { adapter: "missing.safetensors", executor: "cpu" }),
      "missing.safetensors",
      "404",
    );
    assert(requests > 0);
  } finally {
    await server.shutdown();
  }
});

Deno.test("embedding: file URLs become paths with spaces decoded; the embedded model's location never throws", () => {
  assertEquals(pathFromFileUrl(new URL("file:///tmp/a%20dir/m%C3%BCde/")), "/tmp/a dir/müde/");
  assertEquals(pathFromFileUrl(new URL("file:///C:/models/x%20y/")), "C:/models/x y/");
  assertEquals(pathFromFileUrl(new URL("https://example.com/m/")), null);
  assertEquals(embeddedModelLocation(), EMBEDDED_MODEL_DIR);
  assert(EMBEDDED_MODEL_DIR.endsWith("/fixtures/models/stories260K/"), EMBEDDED_MODEL_DIR);
  assert(!EMBEDDED_MODEL_DIR.includes("%"), "percent-decoded");
});

Deno.test("embedding: a model directory whose path has a space loads", async () => {
  const dir = await Deno.makeTempDir({ prefix: "judgeq model " });
  try {
    for (const f of MODEL_FILES) await Deno.copyFile(`${MODEL}/${f}`, `${dir}/${f}`);
    const model = await loadModel({ model: dir, executor: "cpu" });
    assert(model.adapter !== null, "the directory's adapter");
    assertEquals(model.name, dir.split("/").pop());
    model.executor.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embedding: the WebGPU backend name never throws", () => {
  assert(webgpuBackendName().startsWith("default") || webgpuBackendName().length > 0);
});

// ---- serve.ts -------------------------------------------------------------------------------------

Deno.test("embedding: serve.ts options from environment variables, bad values named", () => {
  const env = (vars: Record<string, string>) => (k: string) => vars[k];
  const o = serveOptionsFromEnv(env({
    JUDGEQ_MODEL: "https://example.com/m/",
    JUDGEQ_ADAPTER: "none",
    JUDGEQ_EXECUTOR: "wasm",
    JUDGEQ_THREADS: "2",
    JUDGEQ_WEIGHTS: "int8",
    JUDGEQ_API_KEY: "k",
    JUDGEQ_CONTEXT_TTL: "5",
  }));
  assertEquals(o.model, "https://example.com/m/");
  assertEquals(o.adapter, null);
  assertEquals([o.executor, o.threads, o.weightFormat], ["wasm", 2, "int8"]);
  assertEquals(o.app, { apiKey: "k", contextTtlMs: 5000 });
  assertEquals(serveOptionsFromEnv(env({})).app, { apiKey: null });
  // Several keys (contexts owned by each), fair scheduling and the time limit, as on the command line.
  assertEquals(
    serveOptionsFromEnv(env({
      JUDGEQ_API_KEYS: "alice:a-key\n# comment\nbob:b-key\n",
      JUDGEQ_MAX_STREAMS: "2",
      JUDGEQ_MAX_REQUEST_SECONDS: "0",
    })).app,
    {
      apiKey: null,
      apiKeys: [{ label: "alice", key: "a-key" }, { label: "bob", key: "b-key" }],
      maxStreams: 2,
      maxRequestMs: null,
    },
  );
  for (
    const [k, v] of [
      ["JUDGEQ_EXECUTOR", "tpu"],
      ["JUDGEQ_THREADS", "0"],
      ["JUDGEQ_WEIGHTS", "q4"],
      ["JUDGEQ_API_KEYS", "bad label:key"],
      ["JUDGEQ_MAX_STREAMS", "0"],
    ]
  ) {
    let message = "";
    try {
      serveOptionsFromEnv(env({ [k]: v }));
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.startsWith(k), `${k}=${v}: ${message}`);
  }
});

Deno.test("embedding: deno serve serve.ts with only --allow-read of the model directory answers a generate request", async () => {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "serve",
      "--no-prompt",
      `--allow-read=${MODEL}`,
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "serve.ts",
    ],
    cwd: ROOT_DIR,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const drain = (s: ReadableStream<Uint8Array>) => new Response(s).text();
  const logs = Promise.all([drain(child.stdout), drain(child.stderr)]);
  try {
    let res: Response | null = null;
    for (let i = 0; i < 200 && !res; i++) {
      try {
        res = await fetch(`http://127.0.0.1:${port}/v1/generate`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            prompt: PROMPT,
            max_tokens: 24,
            kv_compression: { method: "judgeq", budget: 8 },
          }),
        });
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    assert(res, "deno serve never listened");
    const body = await res.json();
    assertEquals(res.status, 200, JSON.stringify(body));
    assertEquals(body.text, (await referenceRun()).text, "greedy text");
    assert(body.compression.kv_bytes_saved > 0, "compressed");
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await logs;
  }
});
