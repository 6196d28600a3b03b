/**
 * Allocation (uniform / pyramid / adaptive) composes with any attention scorer, the way kvpress wraps
 * presses: PyramidKV and AdaKV are SnapKV plus an allocation (aliases with identical kept positions),
 * Judge Q and the other attention methods take one too, and the rest refuse it naming the field, in
 * the plan compiler, the HTTP API and the CLI.
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import { runPlan } from "../core/interpret.ts";
import { METHODS } from "../core/methods/registry.ts";
import { compilePlan, type CompressionRequest, type GenerateRequest } from "../core/plan.ts";
import { GREEDY } from "../core/sampling.ts";
import { pyramidBudgets } from "../core/selection.ts";
import { startServer } from "./server_testing.ts";
import { assert, assertEquals, assertLeft, embeddedModel, right, runScript } from "./helpers.ts";

const L = 72;
const PROMPT = Array.from({ length: L }, (_, i) => (i === 0 ? 1 : 3 + ((i * 29 + (i * i) % 13) % 500)));
const decode = { maxTokens: 0, sampling: GREEDY, stopTokenIds: [] };

async function keptBy(compression: CompressionRequest) {
  const { weights } = await embeddedModel();
  const plan = right(compilePlan(
    { input: { kind: "prompt", tokens: PROMPT }, compression, decode },
    { config: weights.config, adapterTokens: null },
  ));
  const r = await runPlan(plan, {
    executor: new CpuExecutor(weights),
    softEmbeddings: null,
    tokenEmbeddings: weights.embed,
  });
  return r.compression.kept;
}

Deno.test("pyramidkv and adakv are snapkv plus an allocation: identical kept positions", async () => {
  for (const [budget, window] of [[24, 8], [40, 16], [12, 1]]) {
    for (const [alias, allocation] of [["pyramidkv", "pyramid"], ["adakv", "adaptive"]]) {
      const extra = alias === "adakv" ? { floor: 0.3 } : { beta: 10 };
      const a = await keptBy({ method: alias, budget, window, ...extra });
      const b = await keptBy({ method: "snapkv", allocation, budget, window, ...extra });
      assertEquals(a, b, `${alias} = snapkv + ${allocation}, budget ${budget}, window ${window}`);
      // The alias accepts its own allocation, and the result is the same again.
      assertEquals(await keptBy({ method: alias, allocation, budget, window, ...extra }), a);
    }
  }
});

Deno.test("allocation composes with every attention scorer: judgeq, h2o, tova, lookahead", async () => {
  const { config: c } = await embeddedModel();
  const B = 24;
  const attention = Object.values(METHODS).filter((m) => m.allocatable).map((m) => m.name);
  assertEquals(attention.sort(), ["adakv", "h2o", "judgeq", "lookahead", "pyramidkv", "snapkv", "tova"]);
  for (const method of ["judgeq", "h2o", "tova", "lookahead"]) {
    const extra: Partial<CompressionRequest> = method === "judgeq" ? { random_soft: true } : {};
    const uniform = await keptBy({ method, budget: B, ...extra });
    assertEquals(await keptBy({ method, budget: B, allocation: "uniform", ...extra }), uniform, method);
    for (const heads of uniform) for (const k of heads) assertEquals(k.length, B, `${method} uniform`);

    const adaptive = await keptBy({ method, budget: B, allocation: "adaptive", ...extra });
    let heterogeneous = false;
    for (let l = 0; l < c.nLayers; l++) {
      const counts = adaptive[l].map((k) => k.length);
      assertEquals(counts.reduce((a, b) => a + b, 0), c.nKvHeads * B, `${method} adaptive layer ${l} total`);
      if (new Set(counts).size > 1) heterogeneous = true;
    }
    assert(heterogeneous, `${method} adaptive: head budgets should differ somewhere`);

    const window = method === "judgeq" || method === "tova" ? 0 : method === "h2o" ? B / 2 : 8;
    const pyramid = await keptBy({ method, budget: B, allocation: "pyramid", ...extra });
    const budgets = pyramidBudgets(c.nLayers, L, B, window, 20);
    for (let l = 0; l < c.nLayers; l++) {
      for (const k of pyramid[l]) assertEquals(k.length, budgets[l], `${method} pyramid layer ${l}`);
    }
    assert(budgets[0] > budgets[c.nLayers - 1], "pyramid budgets decrease");
  }
});

Deno.test("allocation: bad values and methods without attention scores are refused naming the field", async () => {
  const { config } = await embeddedModel();
  const req = (compression: Record<string, unknown>): GenerateRequest => ({
    input: { kind: "prompt", tokens: PROMPT },
    compression: compression as never,
    decode,
  });
  const cases: [Record<string, unknown>, string][] = [
    [{ method: "snapkv", budget: 16, allocation: "bogus" }, "unknown allocation"],
    [{ method: "judgeq", budget: 16, allocation: "Adaptive", random_soft: true }, "unknown allocation"],
    [{ method: "full", allocation: "adaptive" }, "does not score by attention"],
    [{ method: "full", allocation: "uniform" }, "does not score by attention"],
    [{ method: "streaming_llm", budget: 16, allocation: "pyramid" }, "does not score by attention"],
    [{ method: "random", budget: 16, allocation: "adaptive" }, "does not score by attention"],
    [{ method: "knorm", budget: 16, allocation: "adaptive" }, "does not score by attention"],
    [{ method: "pyramidkv", budget: 16, allocation: "adaptive" }, "use method snapkv"],
    [{ method: "adakv", budget: 16, allocation: "uniform" }, "use method snapkv"],
  ];
  for (const [c, fragment] of cases) {
    const e = assertLeft(compilePlan(req(c), { config, adapterTokens: null }), fragment);
    assertEquals((e as { param: string | null }).param, "kv_compression.allocation", JSON.stringify(c));
  }
  const p = right(
    compilePlan(req({ method: "judgeq", budget: 16, allocation: "adaptive", random_soft: true }), {
      config,
      adapterTokens: null,
    }),
  );
  const select = p.steps.find((s) => s.op === "select");
  assertEquals(select && select.op === "select" ? select.allocation : null, "adaptive");
  assertEquals(p.options!.allocation, "adaptive");
});

Deno.test("allocation over HTTP: judgeq + adaptive is served, bad values are a 400 naming allocation", async () => {
  const t = await startServer();
  try {
    const prompt =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
    const ok = await t.post("/v1/generate", {
      prompt,
      max_tokens: 4,
      kv_compression: { method: "judgeq", budget: 8, allocation: "adaptive", random_soft: true },
    });
    assertEquals(ok.status, 200, JSON.stringify(ok.json));
    const kept: number[][] = ok.json.compression.kept_tokens;
    for (const layer of kept) assertEquals(layer.reduce((a, b) => a + b, 0), 8 * layer.length);
    for (
      const kv of [
        { method: "snapkv", budget: 8, allocation: "sideways" },
        { method: "streaming_llm", budget: 8, allocation: "adaptive" },
        { method: "full", allocation: "pyramid" },
      ]
    ) {
      const r = await t.post("/v1/generate", { prompt, max_tokens: 2, kv_compression: kv });
      assertEquals(r.status, 400, JSON.stringify(kv));
      assertEquals(r.json.error.param, "kv_compression.allocation", JSON.stringify(r.json));
    }
  } finally {
    await t.close();
  }
});

Deno.test("allocation on the CLI: --allocation adaptive works, a bad value names allocation", async () => {
  const cli = (...args: string[]) => runScript("cli/generate.ts", ...args);
  const base = ["--prompt", "Once upon a time, there was a little girl named Lily.", "--max-tokens", "2"];
  const good = await cli(
    ...base,
    "--executor",
    "cpu",
    "--method",
    "snapkv",
    "--budget",
    "6",
    "--allocation",
    "adaptive",
    "--json",
  );
  assertEquals(good.code, 0, good.stderr);
  const { config: c } = await embeddedModel();
  const kept: number[][][] = JSON.parse(good.stdout).compression.kept;
  for (const layer of kept) assertEquals(layer.reduce((a, k) => a + k.length, 0), 6 * c.nKvHeads);
  const bad = await cli(
    ...base,
    "--executor",
    "cpu",
    "--method",
    "knorm",
    "--budget",
    "6",
    "--allocation",
    "adaptive",
  );
  assert(bad.code !== 0, "refused");
  assert(bad.stderr.includes("allocation"), bad.stderr);
});
