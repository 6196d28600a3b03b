/**
 * The fuzzer at CI size (issue 14): 1,000 mutated requests through the app's handler and 500 mutated
 * safetensors and adapter files through the loaders, fixed seed; then that the runner does catch what
 * it is for, that the mutations replay from their seed, and the inputs it found, replayed exactly.
 * The full size: `deno task fuzz --requests 10000 --headers 2000 --seed 1 --seed 2 --seed 3`.
 */
import type { Model } from "../core/engine.ts";
import { JudgeQError } from "../core/errors.ts";
import { mutateRequest, mutateSafetensors, VALID_BODIES } from "../fuzz/mutate.ts";
import { fuzzHeaders, fuzzRequests } from "../fuzz/run.ts";
import { parseModelBytes } from "../io/from_bytes.ts";
import { EMBEDDED_MODEL_DIR } from "../io/model_dir.ts";
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
