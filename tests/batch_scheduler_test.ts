/**
 * The batch scheduler (server/batch_scheduler.ts) on the CPU reference with stories260K and its Judge Q
 * adapter. The reference is each request run alone on the executor's own sessions; the batched runs must
 * give the same tokens (greedy and seeded sampling) and logits within 1e-4, while steps really carry
 * several streams, the KV cap holds at every step, a cancelled stream frees its KV at once, and a long
 * prefill never holds back the running streams' rows.
 */
import { assert, assertEquals, assertRejects } from "./helpers.ts";
import type { Model, TextRequest } from "../core/engine.ts";
import { generateText } from "../core/engine.ts";
import type { DecodeResult, KvSession } from "../core/executor.ts";
import { promptTokens } from "../fixtures/testing.ts";
import { loadModel } from "../io/runtime.ts";
import { nativeUnsupportedReason } from "../native/mod.ts";
import { BatchScheduler, type StepInfo } from "../server/batch_scheduler.ts";
import { HttpError } from "../server/errors.ts";

interface Suite {
  model: Model;
  vocab: number;
  alone: Awaited<ReturnType<typeof generateText>>[];
}

async function prepare(executor: "cpu" | "native"): Promise<Suite> {
  const model = await loadModel({ executor, threads: 1, warn: () => {} });
  const vocab = model.config.vocabSize;
  const alone = [];
  for (const r of requests(vocab)) alone.push(await generateText(model, r));
  return { model, vocab, alone };
}

function scheduled(model: Model, maxBatchTokens: number, kvCapBytes: number | null = null) {
  const scheduler = new BatchScheduler(model.executor, { maxBatchTokens, kvCapBytes });
  return { scheduler, model: { ...model, executor: scheduler.wrap() } as Model };
}

/** Requests of mixed lengths and methods (full, Judge Q, SnapKV, decode-time compression, sampling). */
const requests = (vocab: number): TextRequest[] =>
  [
    { prompt: promptTokens(40, vocab, 1), maxTokens: 24 },
    { prompt: promptTokens(150, vocab, 2), maxTokens: 40, compression: { method: "judgeq", budget: 32 } },
    { prompt: promptTokens(90, vocab, 3), maxTokens: 12, compression: { method: "snapkv", budget: 24 } },
    {
      prompt: promptTokens(70, vocab, 4),
      maxTokens: 48,
      compression: { method: "full", decode: { method: "h2o", budget: 40, interval: 8 } },
    },
    { prompt: promptTokens(20, vocab, 5), maxTokens: 30, temperature: 0.9, topP: 0.9, seed: 42 },
    {
      prompt: promptTokens(260, vocab, 6),
      maxTokens: 20,
      compression: { method: "judgeq", budget: 48, decode: { budget: 56, interval: 8 } },
    },
  ].map((r) => ({ ...r, ignoreEos: true }));

type Test = [string, (s: Suite) => Promise<void>];
const TESTS: Test[] = [];
const test = (name: string, fn: (s: Suite) => Promise<void>) => TESTS.push([name, fn]);

test("batched streams give each stream the tokens it gets alone, joining and leaving mid-batch", async ({ model, vocab, alone }) => {
  const REQUESTS = requests(vocab);
  const { scheduler, model: m } = scheduled(model, 96);
  let most = 0, steps = 0;
  scheduler.onStep = (s) => {
    most = Math.max(most, s.decodeRows);
    steps++;
  };
  // Staggered arrivals: later requests join while earlier ones decode; different max_tokens leave early.
  const runs = REQUESTS.map(async (r, i) => {
    await new Promise((res) => setTimeout(res, i * 3));
    return await generateText(m, r);
  });
  const got = await Promise.all(runs);
  got.forEach((g, i) => {
    assertEquals(g.outputs[0].tokens, alone[i].outputs[0].tokens, `request ${i}`);
    assertEquals(g.run.compression.kept, alone[i].run.compression.kept, `request ${i} kept positions`);
  });
  assert(most >= 3, `steps carried at most ${most} decode rows: nothing was batched`);
  assert(steps < REQUESTS.reduce((n, r) => n + r.maxTokens, 0), `${steps} steps`);
  assertEquals(scheduler.kvReserved, 0);
  assertEquals(scheduler.kvAllocated(), 0);
});

/** Prefill then greedy decode with every step's logits, on a session of `ex`. */
async function logitsOf(s: KvSession, prompt: number[], maxTokens: number) {
  await s.forward({ kind: "tokens", tokens: prompt }, { logits: "last" });
  const d = await s.decode({
    maxTokens,
    sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
    stopTokenIds: [],
    returnLogits: true,
  });
  s.dispose();
  return d;
}

test("batched logits equal the stream's alone within 1e-4", async ({ model, vocab }) => {
  const { scheduler } = scheduled(model, 64);
  const ex = scheduler.wrap();
  const prompts = [12, 100, 37, 200].map((n, i) => promptTokens(n, vocab, 20 + i));
  const ref: DecodeResult[] = [];
  for (const p of prompts) ref.push(await logitsOf(model.executor.createSession(p.length + 20), p, 16));
  const got = await Promise.all(prompts.map((p) => logitsOf(ex.createSession(p.length + 20), p, 16)));
  let worst = 0;
  got.forEach((g, i) => {
    assertEquals(g.tokens, ref[i].tokens);
    g.logits!.forEach((row, t) => {
      for (let v = 0; v < row.length; v++) worst = Math.max(worst, Math.abs(row[v] - ref[i].logits![t][v]));
    });
  });
  assert(worst <= 1e-4, `max |logit difference| ${worst}`);
});

test("a cancelled stream frees its KV at once", async ({ model, vocab }) => {
  const { scheduler, model: m } = scheduled(model, 64);
  const keep = generateText(m, { prompt: promptTokens(30, vocab, 9), maxTokens: 60, ignoreEos: true });
  const stop = new AbortController();
  let tokens = 0, stepsAfterAbort = -1;
  scheduler.onStep = () => {
    if (stepsAfterAbort >= 0) stepsAfterAbort++;
  };
  const cancelled = generateText(
    m,
    { prompt: promptTokens(120, vocab, 10), maxTokens: 200, ignoreEos: true },
    {
      signal: stop.signal,
      onTokens: () => {
        if (++tokens === 5) {
          stepsAfterAbort = 0;
          stop.abort();
        }
      },
    },
  );
  const baseline = () => [...scheduler.sessions].reduce((n, s) => n + s.reserved, 0);
  const r = await cancelled;
  assertEquals(r.outputs[0].finishReason, "aborted");
  assert(stepsAfterAbort <= 1, `${stepsAfterAbort} steps ran before the cancelled stream ended`);
  // Only the other stream is left: its reservation is all that is reserved.
  assertEquals(scheduler.sessions.size, 1);
  assertEquals(scheduler.kvReserved, baseline());
  await keep;
  assertEquals(scheduler.kvReserved, 0);
  assertEquals(scheduler.kvAllocated(), 0);
});

test("the KV cap is never exceeded, and requests wait for room instead of failing", async ({ model, vocab }) => {
  // Room for about two full-cache streams of 150 + 40 positions at once.
  const probe = new BatchScheduler(model.executor, { maxBatchTokens: 1, kvCapBytes: null });
  const cap = Math.ceil(2.2 * probe.boundBytes(191));
  const { scheduler, model: m } = scheduled(model, 128, cap);
  const seen: StepInfo[] = [];
  let worst = 0, waited = 0;
  scheduler.onStep = (s) => {
    seen.push(s);
    worst = Math.max(worst, scheduler.kvAllocated(), scheduler.kvReserved);
    waited = Math.max(waited, scheduler.kvWaiting);
  };
  const reqs: TextRequest[] = [0, 1, 2, 3, 4].map((i) => ({
    prompt: promptTokens(150, vocab, 30 + i),
    maxTokens: 40,
    ignoreEos: true,
    ...(i % 2 ? { compression: { method: "judgeq" as const, budget: 16 } } : {}),
  }));
  const ref = await Promise.all(reqs.map((r) => generateText(model, r)));
  const got = await Promise.all(reqs.map((r) => generateText(m, r)));
  got.forEach((g, i) => assertEquals(g.outputs[0].tokens, ref[i].outputs[0].tokens));
  assert(worst <= cap, `${worst} bytes over the cap of ${cap}`);
  assert(waited > 0, "no request ever waited: the cap did not bind");
  assert(Math.max(...seen.map((s) => s.decodeRows)) >= 2, "the cap let no two streams decode together");
  assertEquals(scheduler.kvReserved, 0);
});

test("a request waiting for KV room leaves the line once its hook says stop", async ({ model, vocab }) => {
  const probe = new BatchScheduler(model.executor, { maxBatchTokens: 1, kvCapBytes: null });
  const cap = Math.ceil(1.2 * probe.boundBytes(401)); // room for the first stream alone
  const { scheduler, model: m } = scheduled(model, 64, cap);
  const req = (seed: number, maxTokens = 40): TextRequest => ({
    prompt: promptTokens(100, vocab, seed),
    maxTokens,
    ignoreEos: true,
  });
  let firstDone = false;
  const first = generateText(m, req(60, 300)).finally(() => firstDone = true);
  let stop = false;
  const waiting = generateText(m, req(61), {
    between: () => stop ? Promise.reject(new Error("the client left")) : Promise.resolve(),
  });
  const third = generateText(m, req(62));
  while (scheduler.kvWaiting < 2) await new Promise((r) => setTimeout(r, 1));
  const t0 = performance.now();
  stop = true;
  await assertRejects(() => waiting, "the client left");
  const waitedMs = performance.now() - t0;
  assert(!firstDone, `the request left the line only when room came (${waitedMs} ms)`);
  const [a, c] = await Promise.all([first, third]);
  assertEquals(a.outputs[0].tokens.length, 300);
  assertEquals(c.outputs[0].tokens, (await generateText(model, req(62))).outputs[0].tokens);
  assertEquals(scheduler.kvReserved, 0);
});

test("a request whose cache can never fit the cap is refused naming --kv-cache-mb", async ({ model, vocab }) => {
  const { model: m } = scheduled(model, 64, 4096);
  const e = await assertRejects(
    () => generateText(m, { prompt: promptTokens(50, vocab, 1), maxTokens: 10 }),
    "--kv-cache-mb",
  );
  assert(e instanceof HttpError && e.status === 422, String(e));
});

test("a long prefill delays running streams by at most one chunk", async ({ model, vocab }) => {
  const chunk = 32;
  const { scheduler, model: m } = scheduled(model, chunk);
  const log: StepInfo[] = [];
  let phase = 0;
  scheduler.onStep = (s) => {
    if (phase === 1) log.push(s);
  };
  const running = [0, 1].map((i) =>
    generateText(m, { prompt: promptTokens(10, vocab, 40 + i), maxTokens: 120, ignoreEos: true }, {
      onTokens: () => {
        if (phase === 0) phase = 1;
      },
    })
  );
  await new Promise((r) => setTimeout(r, 5));
  const long = generateText(m, { prompt: promptTokens(400, vocab, 50), maxTokens: 4, ignoreEos: true });
  const longDone = long.then(() => phase = 2);
  await Promise.all([...running, longDone]);
  const during = log.filter((s) => s.rows > s.decodeRows); // steps that ran prefill rows
  assert(during.length >= 400 / chunk - 1, `${during.length} prefill steps`);
  for (const s of during) {
    assertEquals(s.decodeRows, 2, "a running stream sat out a prefill step");
    assert(s.rows <= chunk, `${s.rows} rows in a step of ${chunk}`);
  }
});

const nativeReason = await nativeUnsupportedReason();

/** Every test on the CPU reference, and on the native executor (one thread: deterministic) where it loads. */
for (const executor of ["cpu", "native"] as const) {
  const ignore = executor === "native" ? nativeReason !== null : false;
  if (ignore) console.warn(`batch scheduler on native skipped: ${nativeReason}`);
  let setup: Promise<Suite> | null = null;
  const get = () => (setup ??= prepare(executor));
  for (const [name, fn] of TESTS) {
    Deno.test({ name: `${executor}: ${name}`, ignore, fn: async () => await fn(await get()) });
  }
}
