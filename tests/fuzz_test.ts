/**
 * The fuzzer at CI size (issue 14): 1,000 mutated requests through the app's handler and 500 mutated
 * safetensors and adapter files through the loaders, fixed seed; then that the runner does catch what
 * it is for, that the mutations replay from their seed, and the inputs it found, replayed exactly.
 * Then 500 mutated config.json, tokenizer.json and tokenizer_config.json files and 1,000 mutated API-key
 * headers (fuzz/run_files.ts), and the model files and chat templates those found, replayed exactly.
 * The full size: `deno task fuzz --requests 10000 --headers 2000 --configs 1000 --keys 2000 --seed 1 --seed 2 --seed 3`.
 */
import { generateText, type Model } from "../core/engine.ts";
import { JudgeQError } from "../core/errors.ts";
import { mutateRequest, mutateSafetensors, VALID_BODIES } from "../fuzz/mutate.ts";
import { fuzzHeaders, fuzzRequests } from "../fuzz/run.ts";
import { BASE_CHAT_TEMPLATE, mutateConfig, mutateTokenizer } from "../fuzz/mutate_files.ts";
import { exactKeyOf, fuzzKeys, fuzzModelFiles } from "../fuzz/run_files.ts";
import { loadModelFromBytes, modelFromFiles, parseModelBytes } from "../io/from_bytes.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "../io/model_dir.ts";
import { renderChat } from "../server/openai.ts";
import { loadModel } from "../io/runtime.ts";
import { type App, createApp } from "../server/app.ts";
import { assert, assertEquals } from "./helpers.ts";

const SEED = 14;
const MAX_BODY = 1 << 20; // the server's default

let shared: Promise<Model> | null = null;
/** The embedded model with its adapter (so judgeq requests reach the method), on the CPU executor. */
const model = () => (shared ??= loadModel({ executor: "cpu", warn: () => {} }));

function fuzzApp(m: Model, logged: string[]): App {
  return createApp(m, {
    maxBodyBytes: MAX_BODY,
    bodyTimeoutMs: 2000,
    maxTokensPerRequest: 8,
    maxQuestions: 8,
    queueSize: 4,
    log: (s) => logged.push(s),
  });
}

const read = (name: string) => Deno.readFile(`${EMBEDDED_MODEL_DIR.replace(/\/+$/, "")}/${name}`);

Deno.test("fuzz: 1,000 request mutations (seed 14): no 5xx, no hang, no crash, every error a JSON body", async () => {
  const logged: string[] = [];
  const app = fuzzApp(await model(), logged);
  try {
    const { report, findings } = await fuzzRequests(app, {
      seed: SEED,
      requests: 1000,
      maxBodyBytes: MAX_BODY,
      timeoutMs: 5000,
      drainLog: () => logged.splice(0),
    });
    const detail = JSON.stringify(
      { report, findings: findings.slice(0, 3) },
      (k, v) => k === "bytes" ? undefined : v,
    );
    assertEquals(
      [report.crashes, report.hangs, report.bad_error_bodies, report.left_in_flight],
      [0, 0, 0, 0],
      detail,
    );
    assertEquals(findings.length, 0, detail);
    assertEquals(Object.values(report.by_status).reduce((a, b) => a + b, 0), 1000);
    // The mutations reach every layer: successes, schema errors, size limits, the core's refusals, and
    // clients that leave; and every endpoint.
    for (const s of ["200", "400", "413", "422", "disconnected:499"]) {
      assert((report.by_status[s] ?? 0) > 0, `no ${s} in ${JSON.stringify(report.by_status)}`);
    }
    assertEquals(Object.keys(report.by_endpoint).length, 5);
    assert(({} as Record<string, unknown>).polluted === undefined, "Object.prototype polluted");
  } finally {
    app.close();
  }
});

Deno.test("fuzz: 500 safetensors and adapter header mutations (seed 14): each loads or names its field, from bytes and from disk alike", async () => {
  const [config, tokenizer, safetensors, adapter] = await Promise.all(
    ["config.json", "tokenizer.json", "model.safetensors", "judgeq.safetensors"].map(read),
  );
  const { weights } = await parseModelBytes({ config, tokenizer, safetensors });
  const tempDir = await Deno.makeTempDir({ prefix: "judgeq-fuzz-" });
  await Deno.writeFile(`${tempDir}/config.json`, config);
  await Deno.writeFile(`${tempDir}/tokenizer.json`, tokenizer);
  const { report, findings } = await fuzzHeaders({
    seed: SEED,
    mutations: 500,
    config,
    tokenizer,
    safetensors,
    adapter,
    weights,
    timeoutMs: 5000,
    tempDir,
  }).finally(() => Deno.remove(tempDir, { recursive: true }));
  const detail = JSON.stringify(
    { report, findings: findings.slice(0, 3) },
    (k, v) => k === "bytes" ? undefined : v,
  );
  assertEquals([report.crashes, report.hangs, report.unnamed, findings.length], [0, 0, 0, 0], detail);
  assertEquals(report.mutations, 500);
  // Every adapter and every fourth model file also went through the loaders that read from disk.
  assertEquals([report.from_disk, report.disk_mismatches], [250 + 63, 0], detail);
  // Most are refused, by the right kind of error; some (metadata, extra fields) still load.
  assert(report.model.invalid_model_file > 150 && report.model.ok > 0, detail);
  assert(report.adapter.invalid_adapter > 150 && report.adapter.ok > 0, detail);
  assertEquals(Object.keys(report.model).sort(), ["invalid_model_file", "ok"], detail);
  assertEquals(Object.keys(report.adapter).sort(), ["invalid_adapter", "ok"], detail);
});

/** A stand-in app whose handler misbehaves on purpose: the runner must report each way it does. */
function brokenApp(): App {
  const handler = async (req: Request): Promise<Response> => {
    const text = await req.text();
    if (req.url.endsWith("/v1/contexts") && text === JSON.stringify(VALID_BODIES["/v1/contexts"][0])) {
      return Response.json({ id: "ctx_1", object: "context" });
    }
    if (text.includes('"question":')) return new Promise<Response>(() => {}); // never answers
    if (text.includes('"stream":true')) return new Response("oops", { status: 500 });
    if (text.includes("kv_compression")) throw new TypeError("boom");
    if (text.includes("messages")) {
      return Response.json({ error: { type: "invalid_request_error" } }, { status: 400 });
    }
    return Response.json({ ok: true });
  };
  return {
    handler,
    contexts: { delete: () => true },
    queue: { depth: 0, inFlight: 0 },
    metrics: { render: () => "judgeq_http_requests_in_flight 0\n" },
  } as unknown as App;
}

Deno.test("fuzz: the runner reports 5xx, exceptions, hangs, bad error bodies and logged internal errors", async () => {
  const logged = ["internal error: TypeError: x"];
  const { report, findings } = await fuzzRequests(brokenApp(), {
    seed: SEED,
    requests: 60,
    maxBodyBytes: 4096,
    timeoutMs: 50,
    drainLog: () => logged.splice(0),
  });
  const kinds = new Set(findings.map((f) => f.kind));
  assert(kinds.has("crash") && kinds.has("hang") && kinds.has("bad_error_body"), [...kinds].join());
  assert(findings.some((f) => f.detail.includes("status 500")), "a 5xx");
  assert(findings.some((f) => f.detail.includes("TypeError: boom")), "an exception out of the handler");
  assert(findings.some((f) => f.detail.includes("internal error: TypeError: x")), "a logged internal error");
  assert(findings.some((f) => f.detail.includes("no message")), "an error body without a message");
  assert(report.crashes > 0 && report.hangs > 0 && report.bad_error_bodies > 0);
  // Each finding carries what replays it: the seed, the index, the body and how it was sent.
  for (const f of findings) {
    const m = mutateRequest(f.seed, f.index, 4096);
    assertEquals([...f.bytes], [...m.body]);
    assertEquals(f.request?.path, m.path);
  }
  const headers = await fuzzHeaders({
    seed: SEED,
    mutations: 20,
    config: await read("config.json"),
    tokenizer: await read("tokenizer.json"),
    safetensors: await read("model.safetensors"),
    adapter: await read("judgeq.safetensors"),
    weights: null as never,
    timeoutMs: 5000,
    loadModel: () => Promise.reject(new RangeError("offset is out of bounds")),
    loadAdapter: () => Promise.reject(new JudgeQError("invalid_adapter", "bad")),
  });
  assertEquals([headers.report.crashes, headers.report.unnamed], [10, 10]);
});

Deno.test("fuzz: mutations are a function of (seed, index), and differ between seeds and indices", async () => {
  for (const i of [0, 1, 77, 999]) {
    const a = mutateRequest(SEED, i, MAX_BODY), b = mutateRequest(SEED, i, MAX_BODY);
    assertEquals([a.path, a.ops, [...a.body]], [b.path, b.ops, [...b.body]]);
  }
  const bodies = new Set(
    Array.from({ length: 50 }, (_, i) => new TextDecoder().decode(mutateRequest(SEED, i, 4096).body)),
  );
  assert(bodies.size > 40, `${bodies.size} distinct bodies of 50`);
  const other = new Set(
    Array.from({ length: 50 }, (_, i) => new TextDecoder().decode(mutateRequest(SEED + 1, i, 4096).body)),
  );
  assert([...other].filter((b) => bodies.has(b)).length < 15, "another seed, other bodies");
  const file = await read("judgeq.safetensors");
  const x = mutateSafetensors(SEED, 3, file, "adapter"), y = mutateSafetensors(SEED, 3, file, "adapter");
  assertEquals([...x.bytes], [...y.bytes]);
  assert(
    x.bytes.length !== file.length || x.bytes.some((v, i) => v !== file[i]),
    "a mutation changes the file",
  );
});

/**
 * Found by `deno task fuzz --requests 1500 --seed 1 --max-body-bytes 1048576 --timeout 2` (indices 72,
 * 460, 1059, 1077, 1166): body-sized texts were tokenized whole before being refused, 2 to 5 s each on
 * the event loop (8 s for a 1 MB prompt). Now only a prefix is tokenized: a 422 naming the field, fast.
 */
Deno.test("fuzz regressions: texts far beyond the context are refused without tokenizing them whole", async () => {
  const app = fuzzApp(await model(), []);
  const story = "Once upon a time ".repeat(20555); // 349,435 characters
  const cases: [string, unknown, string][] = [
    [
      "/v1/chat/completions",
      {
        messages: [{ role: "user", content: story }],
        max_tokens: 2,
        tools: [],
        tool_choice: "none",
        user: "x",
      },
      "messages",
    ],
    ["/v1/generate", {
      prompt: story,
      max_tokens: 3,
      kv_compression: { method: "snapkv", budget: 64, window: 4 },
    }, "prompt"],
    [
      "/v1/contexts",
      {
        context: "ab ".repeat(116480),
        kv_compression: { method: "adakv", budget: 8 },
        return_positions: true,
      },
      "context",
    ],
    [
      "/v1/completions",
      {
        prompt: "😀".repeat(87360),
        max_tokens: 2,
        logit_bias: {},
        kv_compression: { method: "tova", budget: 8 },
      },
      "prompt",
    ],
    ["/v1/completions", { prompt: story, max_tokens: 2, temperature: 0 }, "prompt"],
    [
      "/v1/generate",
      { context: "a story", questions: ["Who? ".repeat(200_000)], max_tokens: 1 },
      "questions.0",
    ],
  ];
  try {
    for (const [path, body, param] of cases) {
      const t0 = performance.now();
      const res = await app.handler(
        new Request("http://x" + path, { method: "POST", body: JSON.stringify(body) }),
      );
      const ms = performance.now() - t0;
      const err = (await res.json()).error;
      assertEquals(
        [res.status, err.type, err.param],
        [422, "unprocessable_entity", param],
        `${path}: ${err.message}`,
      );
      // Refused from its length alone (admission, see TextTokenizer.minTokens), not from tokenizing it.
      assert(
        /^\d+ characters are at least \d+ tokens, over the model's context of 512$/.test(err.message),
        err.message,
      );
      assert(ms < 2000, `${path}: ${Math.round(ms)} ms`);
    }
    // A text whose length alone does not rule it out is tokenized, and the core counts its tokens.
    const res = await app.handler(
      new Request("http://x/v1/generate", {
        method: "POST",
        body: JSON.stringify({ prompt: "a".repeat(3000) }),
      }),
    );
    const err = (await res.json()).error;
    assertEquals([res.status, err.param], [422, "prompt"]);
    assert(/^\d+ tokens leave no room in the model's context of 512$/.test(err.message), err.message);
  } finally {
    app.close();
  }
});

const readText = async (name: string) => JSON.parse(new TextDecoder().decode(await read(name)));

/** The fixture's JSON files and weights, as fuzzModelFiles takes them. */
async function modelFiles() {
  const [config, tokenizer, tokenizerConfig, safetensors] = await Promise.all(
    ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"].map(read),
  );
  return { config, tokenizer, tokenizerConfig, safetensors };
}

Deno.test("fuzz: 500 config.json, tokenizer.json and tokenizer_config.json mutations (seed 14): each loads or names its file or field, from bytes and from disk alike; loaded models generate and chat", async () => {
  const tempDir = await Deno.makeTempDir({ prefix: "judgeq-fuzz-files-" });
  const logged: string[] = [];
  const { report, findings } = await fuzzModelFiles({
    seed: SEED,
    mutations: 500,
    ...(await modelFiles()),
    timeoutMs: 5000,
    tempDir,
    appFor: (m) => fuzzApp(m, logged),
  }).finally(() => Deno.remove(tempDir, { recursive: true }));
  const detail = JSON.stringify(
    { report, findings: findings.slice(0, 3), logged: logged.slice(0, 3) },
    (k, v) => k === "bytes" ? undefined : v,
  );
  assertEquals(
    [
      report.crashes,
      report.hangs,
      report.unnamed,
      report.allocations,
      report.disk_mismatches,
      findings.length,
    ],
    [0, 0, 0, 0, 0, 0],
    detail,
  );
  assertEquals(logged, [], detail);
  assertEquals(report.mutations, 500);
  // Every fourth mutation of each kind also loaded from a directory.
  assertEquals(report.from_disk, 2 * 63, detail);
  // All three files mutated; each both refused and (for harmless changes) loaded.
  assertEquals(Object.keys(report.by_file).sort(), [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
  ]);
  for (const [file, outcomes] of Object.entries(report.by_file)) {
    assert(outcomes.ok > 0 && Object.keys(outcomes).length > 1, `${file}: ${JSON.stringify(outcomes)}`);
  }
  assert(report.by_file["config.json"].invalid_config > 50, detail);
  // Lying sizes are refused by name, before anything is sized by them.
  for (
    const p of [
      "config.vocab_size",
      "config.num_hidden_layers",
      "config.num_key_value_heads",
      "model.embed_tokens.weight",
      "tokenizer.json",
    ]
  ) {
    assert(Object.keys(report.error_params).some((k) => k.startsWith(p)), `no ${p} refusal: ${detail}`);
  }
  // Loaded models generated their 2 tokens, and chats were answered, refused by their template (400) or
  // bounded (422): never a 5xx.
  assert(report.generation.ok > 50, detail);
  assert(report.chat["200"] > 50 && report.chat["400"] > 0, detail);
  assert(Object.keys(report.chat).every((s) => Number(s) < 500), detail);
});

const KEYS = ["sk-judgeq-test-0123456789", "k2:abc=def", "\u00ffkey-latin1"];

Deno.test("fuzz: 1,000 API-key header mutations (seed 14): only an exact key passes, every other request a JSON 401, never a 5xx", async () => {
  const app = createApp(await model(), { apiKeys: KEYS.map((key, i) => ({ label: `k${i}`, key })) });
  try {
    const { report, findings } = await fuzzKeys(app, {
      seed: SEED,
      requests: 1000,
      keys: KEYS,
      timeoutMs: 5000,
    });
    const detail = JSON.stringify({ report, findings: findings.slice(0, 3) });
    assertEquals([report.wrong_verdicts, report.crashes, report.bad_error_bodies, findings.length], [
      0,
      0,
      0,
      0,
    ], detail);
    assertEquals(report.requests + report.unsendable, 1000);
    assert(report.exact > 50 && report.refused > 400, detail);
    assert(report.by_status["401"] === report.refused && report.by_status["200"] > 0, detail);
  } finally {
    await app.close();
  }
});

Deno.test("fuzz: the key runner reports a near key let through and an exact key refused", async () => {
  // Lets any header holding a key's text through, and refuses x-api-key: a sloppy checker.
  const sloppy = {
    handler: (req: Request) => {
      const auth = req.headers.get("authorization") ?? "";
      const ok = KEYS.some((k) => auth.includes(k));
      return Promise.resolve(
        ok ? Response.json({ data: [] }) : Response.json({ error: { message: "no" } }, { status: 401 }),
      );
    },
  } as unknown as App;
  const { report, findings } = await fuzzKeys(sloppy, {
    seed: SEED,
    requests: 300,
    keys: KEYS,
    timeoutMs: 1000,
  });
  assert(report.wrong_verdicts > 0, JSON.stringify(report));
  assert(findings.some((f) => f.detail.startsWith("a wrong key let through")), "a near key let through");
  assert(findings.some((f) => f.detail.startsWith("an exact key refused")), "an exact x-api-key refused");
  // The oracle itself: the Bearer scheme in any case, then the key exactly.
  const h = (init: Record<string, string>) => new Headers(init);
  assertEquals(exactKeyOf(h({ authorization: "bEaReR  k" })), "k");
  assertEquals(exactKeyOf(h({ authorization: "Bearer k x" })), null);
  assertEquals(exactKeyOf(h({ authorization: "Basic k", "x-api-key": "k" })), "k");
  assertEquals(exactKeyOf(h({ authorization: "Bearer k", "x-api-key": "other" })), "k");
});

/**
 * Found by `deno task fuzz --requests 0 --headers 0 --configs 1000 --seed 1`: each replayed exactly from its
 * (seed, index). Before the fixes: tokenizer 28 (a vocab id of 2^31) took 120 s and gigabytes in the JS
 * port; config 34 (num_hidden_layers 1e6) never finished listing nine million tensor names, each checked
 * by listing them all again; tokenizers 80, 135 and 148 (ids with gaps, a vocabulary that spells nothing)
 * loaded, then every chat was a 500 (TypeError: piece is not iterable; RangeError: unknown token id
 * undefined); tokenizer_config 32 (a BOM) loaded from bytes but not from disk. And by `deno task fuzz
 * --configs 2000 --seed 3`: tokenizer 469 (a 3-token vocabulary on a 512-row model) loaded, generated id
 * 403, and decoding it threw (RangeError: unknown token id 403, a 500).
 */
Deno.test("fuzz regressions: lying model files are refused by name and fast, or load and chat without a 5xx", async () => {
  const files = await modelFiles();
  const parsed = {
    config: await readText("config.json"),
    tokenizer: await readText("tokenizer.json"),
    tokenizerConfig: await readText("tokenizer_config.json"),
  };
  const load = (file: string, bytes: Uint8Array) =>
    loadModelFromBytes({
      config: file === "config.json" ? bytes : files.config,
      tokenizer: file === "tokenizer.json" ? bytes : files.tokenizer,
      tokenizerConfig: file === "tokenizer_config.json" ? bytes : files.tokenizerConfig,
      safetensors: files.safetensors,
      adapter: null,
      executor: "cpu",
      warn: () => {},
    });
  const refused = async (file: string, bytes: Uint8Array, param: string, message: RegExp) => {
    const t0 = performance.now();
    const e = await load(file, bytes).then(() => null, (e) => e);
    assert(e instanceof JudgeQError, `${file}: ${e}`);
    assertEquals(e.param, param, e.message);
    assert(message.test(e.message), e.message);
    assert(performance.now() - t0 < 2000, `${file}: ${Math.round(performance.now() - t0)} ms`);
  };
  const t28 = mutateTokenizer(1, 28, parsed.tokenizer, parsed.tokenizerConfig);
  await refused(
    t28.file,
    t28.bytes,
    "tokenizer.json",
    /model\.vocab: the id of "<0x00>" is 2147483648, not an integer in \[0, 512\)$/,
  );
  const c34 = mutateConfig(1, 34, parsed.config);
  await refused(
    c34.file,
    c34.bytes,
    "model.layers.5.input_layernorm.weight",
    /tensor is missing$/,
  );
  for (const [seed, index] of [[1, 80], [1, 135], [1, 148], [3, 469]]) {
    const m = mutateTokenizer(seed, index, parsed.tokenizer, parsed.tokenizerConfig);
    assertEquals(m.file, "tokenizer.json");
    const loaded = await load(m.file, m.bytes).catch((e) => e);
    if (loaded instanceof JudgeQError) {
      assertEquals(loaded.param, "tokenizer.json", loaded.message);
      continue;
    }
    assert(!(loaded instanceof Error), `tokenizer ${seed}/${index}: ${loaded}`);
    // 2 greedy tokens: the model's ids the tokenizer lacks are no text, not a throw.
    await generateText(loaded as Model, { prompt: "Once upon a time", maxTokens: 2 }).catch((e) =>
      assert(e instanceof JudgeQError, `tokenizer ${seed}/${index}: ${e}`)
    );
    const logged: string[] = [];
    const app = fuzzApp(loaded as Model, logged);
    try {
      const res = await app.handler(
        new Request("http://x/v1/chat/completions", {
          method: "POST",
          body: JSON.stringify({ messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 2 }),
        }),
      );
      const text = await res.text();
      assert(res.status < 500, `tokenizer ${seed}/${index}: ${res.status} ${text} ${logged}`);
      assertEquals(logged, []);
    } finally {
      await app.close();
      (loaded as Model).executor.dispose();
    }
  }
  // The same verdict from a directory as from bytes, a BOM included.
  const tc32 = mutateTokenizer(1, 32, parsed.tokenizer, parsed.tokenizerConfig);
  assertEquals([tc32.file, tc32.bytes.slice(0, 3)], [
    "tokenizer_config.json",
    new Uint8Array([0xef, 0xbb, 0xbf]),
  ]);
  const dir = await Deno.makeTempDir({ prefix: "judgeq-fuzz-bom-" });
  try {
    const onDisk: [string, Uint8Array][] = [
      ["config.json", files.config],
      ["tokenizer.json", files.tokenizer],
      ["tokenizer_config.json", tc32.bytes],
      ["model.safetensors", files.safetensors],
    ];
    for (const [name, bytes] of onDisk) await Deno.writeFile(`${dir}/${name}`, bytes);
    (await load(tc32.file, tc32.bytes)).executor.dispose();
    const m = await modelFromFiles(await loadModelDir(dir), null, { executor: "cpu", warn: () => {} });
    m.executor.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Found by the chat-template mutations (fuzz/mutate_files.ts BAD_TEMPLATES): @huggingface/jinja has no
 * bound, so these ran for minutes (range builds its list; a nested loop over 10^10 items; a string
 * doubled 40 times) on the event loop. Now each is a 422 naming the bound, within a second.
 */
Deno.test("fuzz regressions: chat templates that loop, build huge ranges or grow strings are a 422, fast", async () => {
  const base = await model();
  const cases: [string, RegExp][] = [
    ["{% for i in range(1000000000) %}x{% endfor %}", /calls range\(\) for 1000000000 items/],
    [
      "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
      /did not finish within \d+ steps/,
    ],
    [
      "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
      /made a value of \d+ characters or items/,
    ],
    [
      "{% set ns = namespace(s=[1]) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
      /made a value of \d+ characters or items/,
    ],
  ];
  for (const [template, message] of cases) {
    const tokenizer = { ...base.tokenizer, chatTemplate: template };
    const app = fuzzApp({ ...base, tokenizer }, []);
    try {
      const t0 = performance.now();
      const res = await app.handler(
        new Request("http://x/v1/chat/completions", {
          method: "POST",
          body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 2 }),
        }),
      );
      const err = (await res.json()).error;
      assertEquals([res.status, err.param], [422, "messages"], err.message);
      assert(message.test(err.message), err.message);
      assert(performance.now() - t0 < 2000, `${template}: ${Math.round(performance.now() - t0)} ms`);
    } finally {
      await app.close();
    }
  }
  // A template that is only slow to read stays fine: a real one renders as before.
  const tokenizer = { ...base.tokenizer, chatTemplate: BASE_CHAT_TEMPLATE };
  assertEquals(
    renderChat(tokenizer, [{ role: "user", content: "Hi" }]),
    "<s>[INST] Hi [/INST]",
  );
});

// ---- GGUF files (fuzz/gguf.ts; full size: deno task fuzz --gguf 2000 --seed 1 --seed 2) ----

Deno.test("fuzz: 300 GGUF file mutations (seed 14): each loads or names its field, from bytes and from disk alike; the runner catches a crash and a hang", async () => {
  const { fuzzGguf, mutateGguf } = await import("../fuzz/gguf.ts");
  const { hfToGguf } = await import("../core/gguf/convert.ts");
  const file = hfToGguf(await loadModelDir(EMBEDDED_MODEL_DIR), "q8_0");
  const tempDir = await Deno.makeTempDir({ prefix: "judgeq-fuzz-gguf-" });
  try {
    const { report, findings } = await fuzzGguf({
      seed: SEED,
      mutations: 300,
      file,
      timeoutMs: 2000,
      tempDir,
    });
    assertEquals(findings.map((f) => `${f.kind} ${f.index} ${f.ops}: ${f.detail}`), []);
    assertEquals([report.crashes, report.hangs, report.unnamed, report.disk_mismatches], [0, 0, 0, 0]);
    assertEquals(report.from_disk, 75);
    assert(
      (report.outcomes.ok ?? 0) > 0 && (report.outcomes.invalid_model_file ?? 0) > 200,
      JSON.stringify(report.outcomes),
    );
    assertEquals(
      Array.from(mutateGguf(SEED, 7, file).bytes),
      Array.from(mutateGguf(SEED, 7, file).bytes),
      "replays",
    );
    // The runner itself: a loader that throws a plain error, or takes too long, is a finding.
    let n = 0;
    const caught = await fuzzGguf({
      seed: SEED,
      mutations: 4,
      file,
      timeoutMs: 50,
      load: async () => {
        if (n++ === 1) throw new TypeError("boom");
        if (n === 3) await new Promise((r) => setTimeout(r, 80));
      },
    });
    assertEquals(caught.findings.map((f) => f.kind), ["crash", "hang"]);
  } finally {
    await Deno.remove(tempDir, { recursive: true });
  }
});
