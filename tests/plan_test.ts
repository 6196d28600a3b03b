/** Plan compilation: bad requests give specific errors; multi-question contexts reuse one compression. */
import { CpuExecutor } from "../core/cpu/executor.ts";
import { runOnSession } from "../core/interpret.ts";
import { compilePlan, type GenerateRequest } from "../core/plan.ts";
import { GREEDY } from "../core/sampling.ts";
import { assert, assertEquals, assertLeft, embeddedModel, right } from "./helpers.ts";

const decode = { maxTokens: 8, sampling: GREEDY, stopTokenIds: [] };
const prompt = (n: number) => Array.from({ length: n }, (_, i) => (i === 0 ? 1 : 10 + (i % 400)));

Deno.test("bad plans give specific errors naming the field", async () => {
  const { config } = await embeddedModel();
  const facts = { config, adapterTokens: null };
  const req = (compression: Record<string, unknown> | null, tokens = prompt(100)): GenerateRequest => ({
    input: { kind: "prompt", tokens },
    compression: compression as never,
    decode,
  });
  const cases: [GenerateRequest, string, string][] = [
    [req({ method: "snapkv", budget: 0 }), "kv_compression.budget", "positive integer"],
    [req({ method: "snapkv", budget: -5 }), "kv_compression.budget", "positive integer"],
    [req({ method: "snapkv", budget: 2.5 }), "kv_compression.budget", "positive integer"],
    [req({ method: "snapkv", compression_ratio: 1 }), "kv_compression.compression_ratio", "[0, 1)"],
    [req({ method: "snapkv", compression_ratio: -0.1 }), "kv_compression.compression_ratio", "[0, 1)"],
    [req({ method: "snapkv", budget: 10, compression_ratio: 0.5 }), "kv_compression.budget", "not both"],
    [req({ method: "snapkv" }), "kv_compression.budget", "needs budget"],
    [req({ method: "snapkv", budget: 16, window: 32 }), "kv_compression.window", "larger than the budget"],
    [req({ method: "bogus", budget: 16 }), "kv_compression.method", "unknown method"],
    [req({ method: "judgeq", budget: 16 }), "kv_compression.method", "needs a Judge Q adapter"],
    [req({ method: "streaming_llm", budget: 16, window: 4 }), "kv_compression.window", "sinks"],
    // SnapKV's queries are its window rows (Lookahead's draft is SnapKV): window 0 leaves none.
    [req({ method: "snapkv", budget: 16, window: 0 }), "kv_compression.window", "no observation rows"],
    [req({ method: "pyramidkv", budget: 16, window: 0 }), "kv_compression.window", "no observation rows"],
    [req({ method: "adakv", budget: 16, window: 0 }), "kv_compression.window", "no observation rows"],
    [req({ method: "lookahead", budget: 16, window: 0 }), "kv_compression.window", "no observation rows"],
    [req(null, prompt(600)), "prompt", "context of 512"],
    [req(null, []), "prompt", "must not be empty"],
    [req(null, [1, 99999]), "prompt", "outside the vocabulary"],
    [{ input: { kind: "context", context: prompt(50), questions: [] }, decode }, "questions", "at least one"],
    [
      { input: { kind: "prompt", tokens: prompt(10) }, decode: { ...decode, maxTokens: -1 } },
      "max_tokens",
      "non-negative",
    ],
  ];
  for (const [r, param, fragment] of cases) {
    const e = assertLeft(compilePlan(r, facts), fragment);
    assertEquals((e as { param: string | null }).param, param, fragment);
  }
  // With soft tokens the prompt must leave room for them too.
  assertLeft(
    compilePlan(req({ method: "judgeq", budget: 16 }, prompt(500)), { config, adapterTokens: 32 }),
    "soft tokens",
  );
  // A ratio-derived budget smaller than a default window shrinks the window instead of failing.
  const p = right(compilePlan(req({ method: "snapkv", compression_ratio: 0.95 }), facts));
  assertEquals([p.options!.budget, p.options!.window], [5, 5]);
});

Deno.test("compress once, answer three questions: same answers as compressing three times; cache restored bit for bit", async () => {
  const { weights } = await embeddedModel();
  const ex = new CpuExecutor(weights);
  const context = prompt(150);
  const questions = [[403, 407, 261], [378, 432], [261, 400, 300, 301]];
  const compression = { method: "snapkv", budget: 40 };
  const facts = { config: weights.config, adapterTokens: null };
  const ctx = { executor: ex, softEmbeddings: null, tokenEmbeddings: weights.embed };
  const plan = right(
    compilePlan({ input: { kind: "context", context, questions }, compression, decode }, facts),
  );
  const session = ex.createSession(plan.capacity);
  const once = await runOnSession(
    { ...plan, steps: plan.steps.filter((s) => s.op !== "answer") },
    ctx,
    session,
  );
  // The live entries of every head: keys, values and positions up to its count.
  const snapshot = () => {
    const c = session.cache,
      live = (a: ArrayLike<number>, s: number, w: number) => Array.from(a).slice(0, c.counts[s] * w);
    return {
      counts: Array.from(c.counts),
      keys: c.keys.map((k, s) => live(k, s, c.headDim)),
      values: c.values.map((v, s) => live(v, s, c.headDim)),
      positions: c.positions.map((p, s) => live(p, s, 1)),
      next: session.nextPosition,
    };
  };
  const before = snapshot();
  const answers: number[][] = [];
  for (const step of plan.steps.filter((s) => s.op === "answer")) {
    const r = await runOnSession({ ...plan, steps: [step] }, ctx, session);
    answers.push(r.outputs[0].tokens);
    assertEquals(snapshot().counts, before.counts, "counts after answer");
    assert(JSON.stringify(snapshot()) === JSON.stringify(before), "cache bit-identical after answer");
  }
  assert(once.compression.kvBytesAfter < once.compression.kvBytesBefore, "compressed");
  for (let i = 0; i < questions.length; i++) {
    const single = right(
      compilePlan(
        { input: { kind: "context", context, questions: [questions[i]] }, compression, decode },
        facts,
      ),
    );
    const s = ex.createSession(single.capacity);
    const r = await runOnSession(single, ctx, s);
    assertEquals(answers[i], r.outputs[0].tokens, `question ${i}`);
    assertEquals(answers[i].length, decode.maxTokens);
  }
});
