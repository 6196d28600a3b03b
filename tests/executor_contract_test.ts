/**
 * The executor contract: every executor of tests/executors.ts (the reference itself included) runs every
 * KvSession operation and every registered compression method next to the CPU reference, the oracle,
 * on the embedded stories260K model and on random Qwen2 (GQA, q/k/v bias) and Llama-3 (GQA, llama3 RoPE
 * scaling) shapes. Backend-specific behaviour (f16 weights, binding splits, syncs, device loss) stays in
 * the backends' own tests.
 *
 * Tolerances: logits within 1e-3 (float32 arithmetic against the reference's float64 accumulation over
 * a few hundred products per output); attention mass within 1e-4 absolute (a sum over at most ~30 rows
 * of softmax probabilities in [0, 1], each with float32 relative error ~1e-6); key norms within 1e-4.
 * Kept positions, tokens (greedy and seeded sampling) and positions are compared exactly.
 *
 *   JUDGEQ_EXECUTORS=gpu deno test -A tests/executor_contract_test.ts   # only the named executors
 */
import { decodeAdapter } from "../core/adapter.ts";
import { CpuExecutor, type CpuSession } from "../core/cpu/executor.ts";
import type { ModelConfig } from "../core/config.ts";
import type {
  CacheSnapshot,
  DecodeOptions,
  Executor,
  KvSession,
  QueryRows,
  SamplingOptions,
} from "../core/executor.ts";
import { FORWARD_CHUNK_ROWS } from "../core/executor.ts";
import { runPlan } from "../core/interpret.ts";
import { METHODS } from "../core/methods/registry.ts";
import { compilePlan, type CompressionRequest } from "../core/plan.ts";
import { GREEDY, nextUniform, seedState } from "../core/sampling.ts";
import { randomSoftTokens } from "../core/soft_tokens.ts";
import type { ModelWeights } from "../core/weights.ts";
import { fixtureWeights, loadWeightsOnly, promptTokens } from "../fixtures/testing.ts";
import { EXECUTORS_UNDER_TEST } from "./executors.ts";
import { assert, assertClose, assertEquals, assertRejects, right } from "./helpers.ts";
import { bruteCompression, type BruteOptions } from "./oracles.ts";

/** Tolerances of the executor under test (its entry may loosen them; see tests/executors.ts). */
let TOL = 1e-3;
let MASS_TOL = 1e-4;

interface ModelCase {
  name: string;
  load(): Promise<ModelWeights>;
  /** Prompt length of the session-operation checks. */
  prompt: number;
  /** Greedy decode steps compared step by step. */
  steps: number;
  /** Prompt length of the method checks, and the two budgets. */
  methodPrompt: number;
  budgets: [number, number];
  /** Judge Q adapter trained for this model, if any. */
  adapter?: URL;
}

/** The same weights object on every call, so that the oracle's runs are shared across executors. */
function once<T>(f: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | null = null;
  return () => (p ??= f());
}

const MODELS: ModelCase[] = [
  {
    name: "stories260K",
    load: once(() => loadWeightsOnly()),
    prompt: 24,
    steps: 64,
    methodPrompt: 150,
    budgets: [40, 100],
    adapter: new URL("../fixtures/models/stories260K/judgeq.safetensors", import.meta.url),
  },
  {
    name: "qwen2 (random, GQA, q/k/v bias)",
    load: once(() => Promise.resolve(fixtureWeights("qwen2"))),
    prompt: 19,
    steps: 32,
    methodPrompt: 110,
    budgets: [30, 70],
  },
  {
    name: "llama3 (random, GQA, llama3 RoPE scaling)",
    load: once(() => Promise.resolve(fixtureWeights("llama3"))),
    prompt: 19,
    steps: 32,
    methodPrompt: 110,
    budgets: [30, 70],
  },
];

const selected = Deno.env.get("JUDGEQ_EXECUTORS")?.split(",").map((s) => s.trim()).filter(Boolean);

const greedy = (maxTokens: number, extra: Partial<DecodeOptions> = {}): DecodeOptions => ({
  maxTokens,
  sampling: GREEDY,
  stopTokenIds: [],
  returnLogits: true,
  ...extra,
});

const tokens = (t: number[]) => ({ kind: "tokens" as const, tokens: t });
const embeddings = (rows: Float32Array, dim: number) => ({
  kind: "embeddings" as const,
  rows,
  count: rows.length / dim,
});
/** Deterministic input vectors (soft-token-like rows), `count` of `dim`. */
const softRows = (count: number, dim: number, phase = 0.37) =>
  new Float32Array(count * dim).map((_, i) => Math.sin(i * phase + 0.1) * 0.5);

/** Bitwise equality of two float arrays (NaN-safe, -0 == 0 is not a concern for logits). */
function assertSame(a: Float32Array, b: Float32Array, message: string) {
  assertEquals(a.length, b.length, `${message}: length`);
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) throw new Error(`${message}: element ${i} is ${a[i]}, expected ${b[i]}`);
  }
}

/** Positions of every head as plain arrays (for exact comparison). */
const plain = (p: Int32Array[][]) => p.map((heads) => heads.map((h) => Array.from(h)));

/** A deterministic per-head subset of [0, L): heads keep different counts, one head keeps nothing. */
function subset(nLayers: number, nKv: number, L: number): Int32Array[][] {
  return Array.from({ length: nLayers }, (_, l) =>
    Array.from({ length: nKv }, (_, g) => {
      if (l === 0 && g === nKv - 1) return new Int32Array(0);
      const keep: number[] = [];
      for (let p = 0; p < L; p++) if ((p * 7 + l * 3 + g * 5) % (2 + ((l + g) % 4)) === 0) keep.push(p);
      return Int32Array.from(keep);
    }));
}

/** Runs `fn` on a fresh session of the executor under test and one of the oracle, disposing both. */
async function pair<T>(
  ex: Executor,
  oracle: Executor,
  capacity: number,
  fn: (s: KvSession, o: KvSession) => Promise<T>,
): Promise<T> {
  const s = ex.createSession(capacity), o = oracle.createSession(capacity);
  try {
    return await fn(s, o);
  } finally {
    s.dispose();
    o.dispose();
  }
}

/** Same call on both sessions. */
async function both<T>(s: KvSession, o: KvSession, f: (x: KvSession) => Promise<T>): Promise<[T, T]> {
  return [await f(s), await f(o)];
}

interface Ctx {
  ex: Executor;
  oracle: Executor;
  w: ModelWeights;
  m: ModelCase;
  toks: number[];
}

async function forwardContract({ ex, oracle, w, m, toks }: Ctx) {
  const c = w.config, V = c.vocabSize, P = m.prompt;
  assertEquals(ex.config, c, "executor config");
  assert(typeof ex.description === "string" && ex.description.length > 0, "description");
  await pair(ex, oracle, P + 32, async (s, o) => {
    assertEquals(s.nextPosition, 0, "nextPosition of a new session");
    assertEquals(s.kvBytes(), 0, "kvBytes of a new session");
    assertEquals(plain(await s.positions()), plain(await o.positions()), "positions of a new session");
    await assertRejects(() => s.decode(greedy(4)));
    // One call, every row's logits.
    const [rs, ro] = await both(s, o, (x) => x.forward(tokens(toks), { logits: "all" }));
    assertEquals(rs.logits!.length, P * V, "all logits length");
    assertClose(rs.logits!, ro.logits!, TOL, "prefill logits (all)");
    assertEquals(rs.queries, null, "no queries unless captured");
    assertEquals(s.nextPosition, P, "nextPosition after prefill");
    assertClose(await s.currentLogits(), ro.logits!.subarray((P - 1) * V), TOL, "current logits = last row");
    // "none" returns null and leaves the current logits exactly as they were.
    const before = (await s.currentLogits()).slice();
    const [ns] = await both(s, o, (x) => x.forward(tokens([3, 4]), { logits: "none" }));
    assertEquals(ns.logits, null, "logits none");
    assertEquals(s.nextPosition, P + 2, "nextPosition after none");
    assertSame(await s.currentLogits(), before, "current logits after a 'none' forward");
    // "last" (the default): one row, which becomes the current logits.
    const [ls, lo] = await both(s, o, (x) => x.forward(tokens([5])));
    assertEquals(ls.logits!.length, V, "last logits length");
    assertClose(ls.logits!, lo.logits!, TOL, "last logits");
    assertClose(await s.currentLogits(), ls.logits!, 0, "current logits after last");
    // Embeddings rows continue the positions.
    const rows = softRows(4, c.dim);
    const [es, eo] = await both(s, o, (x) => x.forward(embeddings(rows, c.dim), { logits: "all" }));
    assertEquals(es.logits!.length, 4 * V, "embedding logits length");
    assertClose(es.logits!, eo.logits!, TOL, "embeddings logits after tokens");
    assertEquals(s.nextPosition, P + 7, "nextPosition after embeddings");
    assertClose(await s.currentLogits(), await o.currentLogits(), TOL, "current logits after embeddings");
    assertEquals(plain(await s.positions()), plain(await o.positions()), "positions");
    assertEquals(s.kvBytes(), o.kvBytes(), "kvBytes");
    assertEquals(s.kvBytes(), (P + 7) * c.nLayers * c.nKvHeads * c.headDim * 8, "kvBytes formula");

    // The same prompt in several chunks (sizes 1, 6, 5, rest) equals the single call.
    const chunked = ex.createSession(P + 8);
    try {
      const parts: Float32Array[] = [];
      for (const [a, b] of [[0, 1], [1, 7], [7, 12], [12, P]]) {
        parts.push((await chunked.forward(tokens(toks.slice(a, b)), { logits: "all" })).logits!);
      }
      const joined = new Float32Array(P * V);
      parts.reduce((at, p) => (joined.set(p, at), at + p.length), 0);
      assertClose(joined, ro.logits!, TOL, "chunked prefill logits");
      assertEquals(chunked.nextPosition, P, "nextPosition after chunks");
    } finally {
      chunked.dispose();
    }
    const quiet = ex.createSession(P + 8);
    try {
      await quiet.forward(tokens(toks.slice(0, 10)), { logits: "none" });
      const last = await quiet.forward(tokens(toks.slice(10)), { logits: "last" });
      assertClose(last.logits!, ro.logits!.subarray((P - 1) * V), TOL, "none then last");
    } finally {
      quiet.dispose();
    }
  });
  // Embeddings as the very first input.
  await pair(ex, oracle, 8, async (s, o) => {
    const rows = softRows(5, c.dim, 0.11);
    const [es, eo] = await both(s, o, (x) => x.forward(embeddings(rows, c.dim), { logits: "all" }));
    assertClose(es.logits!, eo.logits!, TOL, "embeddings logits from position 0");
    assertEquals(s.nextPosition, 5, "nextPosition after embeddings");
  });
}

async function greedyContract({ ex, oracle, m, toks }: Ctx) {
  await pair(ex, oracle, m.prompt + m.steps + 8, async (s, o) => {
    await both(s, o, (x) => x.forward(tokens(toks)));
    const [ds, dOr] = await both(s, o, (x) => x.decode(greedy(m.steps)));
    assertEquals(ds.tokens, dOr.tokens, "greedy tokens");
    assertEquals(ds.finishReason, "length", "finish reason");
    assertEquals(ds.logits!.length, m.steps, "one logits row per step");
    ds.logits!.forEach((l, i) => assertClose(l, dOr.logits![i], TOL, `decode step ${i} logits`));
    assertEquals(ds.queries, null, "no queries unless captured");
    assertEquals(s.nextPosition, o.nextPosition, "nextPosition after decode");
    assertEquals(s.nextPosition, m.prompt + m.steps - 1, "the last token is sampled, not run");
    assertClose(await s.currentLogits(), await o.currentLogits(), TOL, "current logits after decode");
    // Without returnLogits, no logits.
    const more = await s.decode(greedy(3, { returnLogits: false }));
    assertEquals(more.logits, null, "logits only when asked");
    assertEquals(more.tokens, (await o.decode(greedy(3))).tokens, "continued decode");
  });
}

async function samplingContract({ ex, oracle, m, toks }: Ctx) {
  const settings: SamplingOptions[] = [
    { temperature: 1, topP: 1, topK: 0, seed: 1 },
    { temperature: 0.8, topP: 0.9, topK: 0, seed: 2 },
    { temperature: 1.2, topP: 0.95, topK: 12, seed: 3 },
  ];
  for (const sampling of settings) {
    await pair(ex, oracle, m.prompt + 40, async (s, o) => {
      await both(s, o, (x) => x.forward(tokens(toks)));
      const opts = { maxTokens: 24, sampling, stopTokenIds: [] };
      const [ds, dOr] = await both(s, o, (x) => x.decode(opts));
      assertEquals(ds.tokens, dOr.tokens, `sampled tokens ${JSON.stringify(sampling)}`);
      assertEquals(s.nextPosition, o.nextPosition, "nextPosition after sampling");
    });
  }
}

async function stopsContract({ ex, oracle, m, toks }: Ctx) {
  const probe = oracle.createSession(m.prompt + 64);
  await probe.forward(tokens(toks));
  const seq = (await probe.decode(greedy(50, { returnLogits: false }))).tokens;
  const cases: [string, DecodeOptions][] = [
    ["stop token", greedy(30, { stopTokenIds: [seq[10]] })],
    ["stop at the first token", greedy(30, { stopTokenIds: [999999, seq[0]] })],
    ["maxTokens 13", greedy(13)],
    ["maxTokens 1", greedy(1)],
    ["maxTokens 0", greedy(0)],
  ];
  for (const [label, opts] of cases) {
    await pair(ex, oracle, m.prompt + 64, async (s, o) => {
      await both(s, o, (x) => x.forward(tokens(toks)));
      const [ds, dOr] = await both(s, o, (x) => x.decode(opts));
      assertEquals(ds.tokens, dOr.tokens, `${label}: tokens`);
      assertEquals(ds.finishReason, dOr.finishReason, `${label}: finish reason`);
      assertEquals(ds.logits!.length, dOr.logits!.length, `${label}: logits rows`);
      assertEquals(s.nextPosition, o.nextPosition, `${label}: nextPosition`);
      assertEquals(plain(await s.positions()), plain(await o.positions()), `${label}: positions`);
      assertClose(await s.currentLogits(), await o.currentLogits(), TOL, `${label}: current logits`);
      const more = greedy(9, { returnLogits: false });
      const [ms, mo] = await both(s, o, (x) => x.decode(more));
      assertEquals(ms.tokens, mo.tokens, `${label}: decoding on`);
    });
  }

  // Streaming: the batches, flattened, are the tokens in order; an async callback is awaited.
  await pair(ex, oracle, m.prompt + 64, async (s, o) => {
    await both(s, o, (x) => x.forward(tokens(toks)));
    const seen: number[][] = [];
    const r = await s.decode(greedy(20, {
      onTokens: async (ids) => {
        seen.push([...ids]);
        await new Promise((res) => setTimeout(res, 1));
      },
    }));
    assert(seen.every((b) => b.length > 0), "no empty batches");
    assertEquals(seen.flat(), r.tokens, "streamed tokens in order");
    assertEquals(r.tokens, seq.slice(0, 20), "streamed decode tokens");
    const plainOracle = await o.decode(greedy(20));
    assertEquals(r.tokens, plainOracle.tokens, "streaming does not change the tokens");
  });

  // Abort from the callback: "aborted", a prefix of the greedy sequence, and the session decodes on.
  await pair(ex, oracle, m.prompt + 64, async (s) => {
    await s.forward(tokens(toks));
    const ctl = new AbortController();
    const seen: number[] = [];
    const r = await s.decode(greedy(40, {
      returnLogits: false,
      signal: ctl.signal,
      onTokens: (ids) => {
        seen.push(...ids);
        if (seen.length >= 5) ctl.abort();
      },
    }));
    assertEquals(r.finishReason, "aborted", "finish reason after abort");
    assert(r.tokens.length >= 5 && r.tokens.length < 40, `${r.tokens.length} tokens after abort`);
    assertEquals(r.tokens, seq.slice(0, r.tokens.length), "tokens before the abort");
    assertEquals(seen, r.tokens, "streamed tokens before the abort");
    assertEquals(s.nextPosition, m.prompt + r.tokens.length, "every returned token was run");
    const on = await s.decode(greedy(5, { returnLogits: false }));
    assertEquals(on.tokens, seq.slice(r.tokens.length, r.tokens.length + 5), "decoding after an abort");
    // Already aborted: nothing decoded.
    const pre = new AbortController();
    pre.abort();
    const none = await s.decode(greedy(10, { signal: pre.signal }));
    assertEquals(none.finishReason, "aborted", "pre-aborted finish reason");
    assertEquals(none.tokens, [], "pre-aborted tokens");
  });
}

async function queriesContract({ ex, oracle, w, m, toks }: Ctx) {
  const c = w.config, P = m.prompt, split = 9;
  await pair(ex, oracle, P + 40, async (s, o) => {
    // Prompt in two captured chunks, then captured embeddings rows (as Judge Q appends).
    const [a, ao] = await both(
      s,
      o,
      (x) => x.forward(tokens(toks.slice(0, split)), { captureQueries: true }),
    );
    const [b, bo] = await both(s, o, (x) => x.forward(tokens(toks.slice(split)), { captureQueries: true }));
    const rows = softRows(3, c.dim, 0.23);
    const [e, eo] = await both(
      s,
      o,
      (x) => x.forward(embeddings(rows, c.dim), { captureQueries: true, logits: "none" }),
    );
    assertEquals(a.queries!.positions, ao.queries!.positions, "first chunk query positions");
    assertEquals(b.queries!.positions, bo.queries!.positions, "second chunk query positions");
    assertEquals(e.queries!.positions, [P, P + 1, P + 2], "embedding query positions");
    for (
      const [label, q, qo] of [
        ["first chunk", a.queries!, ao.queries!],
        ["second chunk", b.queries!, bo.queries!],
        ["embedding rows", e.queries!, eo.queries!],
      ] as const
    ) {
      for (const L of [P, P - 5]) {
        const ms = await s.attentionMass(q, L), mo = await o.attentionMass(qo, L);
        assertEquals(ms.length, c.nLayers * c.nHeads * L, `${label} mass length`);
        assertClose(ms, mo, MASS_TOL, `${label} attention mass (promptLength ${L})`);
      }
    }
    // Prompt rows see only prompt entries: each row's mass over [0, P) sums to 1 per (layer, head).
    const mb = await s.attentionMass(b.queries!, P);
    for (let lh = 0; lh < c.nLayers * c.nHeads; lh++) {
      const sum = mb.subarray(lh * P, (lh + 1) * P).reduce((x, y) => x + y, 0);
      assert(Math.abs(sum - (P - split)) < 1e-3, `mass of ${P - split} rows sums to ${sum}`);
    }
    for (const L of [P, P - 5]) {
      const [ks, ko] = await both(s, o, (x) => x.keyNorms(L));
      assertEquals(ks.length, c.nLayers * c.nKvHeads * L, "keyNorms length");
      assertClose(ks, ko, MASS_TOL, `key norms (promptLength ${L})`);
    }
    for (const q of [a, b, e, ao, bo, eo]) q.queries!.dispose();

    // Queries captured while decoding: the rows that ran.
    const [d, dOr] = await both(s, o, (x) => x.decode(greedy(12, { captureQueries: true })));
    assertEquals(d.tokens, dOr.tokens, "tokens with captured queries");
    assertEquals(d.queries!.positions, dOr.queries!.positions, "decode query positions");
    for (const L of [P, P + 5]) {
      assertClose(
        await s.attentionMass(d.queries!, L),
        await o.attentionMass(dOr.queries!, L),
        MASS_TOL,
        `decode rows' attention mass (promptLength ${L})`,
      );
    }
    d.queries!.dispose();
  });
}

async function cacheContract({ ex, oracle, w, m, toks }: Ctx) {
  const c = w.config, P = m.prompt;
  const entryBytes = c.headDim * 2 * 4;
  const entries = (p: Int32Array[][]) => p.flat().reduce((n, h) => n + h.length, 0);

  // keepPositions: per-head subsets (one head empty), entries past the prompt kept.
  await pair(ex, oracle, P + 40, async (s, o) => {
    await both(s, o, (x) => x.forward(tokens(toks), { logits: "none" }));
    const [q, qo] = await both(s, o, (x) => x.forward(tokens([7, 8, 9]), { captureQueries: true }));
    const kept = subset(c.nLayers, c.nKvHeads, P);
    await both(s, o, (x) => x.keepPositions(kept, P));
    const pos = await s.positions();
    assertEquals(
      plain(pos),
      kept.map((heads) => heads.map((h) => [...h, P, P + 1, P + 2])),
      "positions after keepPositions",
    );
    assertEquals(plain(pos), plain(await o.positions()), "positions as the reference's");
    assertEquals(s.kvBytes(), entries(pos) * entryBytes, "kvBytes = entries x headDim x 2 x 4");
    assertEquals(s.kvBytes(), o.kvBytes(), "kvBytes as the reference's");
    assertEquals(s.nextPosition, P + 3, "keepPositions keeps nextPosition");
    assertClose(await s.keyNorms(P), await o.keyNorms(P), MASS_TOL, "key norms after pruning");
    assertClose(
      await s.attentionMass(q.queries!, P),
      await o.attentionMass(qo.queries!, P),
      MASS_TOL,
      "attention mass after pruning",
    );
    const [d, dOr] = await both(s, o, (x) => x.decode(greedy(16)));
    assertEquals(d.tokens, dOr.tokens, "tokens after pruning");
    d.logits!.forEach((l, i) => assertClose(l, dOr.logits![i], TOL, `step ${i} after pruning`));
    // Pruning again, to nothing at all in the prompt.
    const empty = kept.map((heads) => heads.map(() => new Int32Array(0)));
    await both(s, o, (x) => x.keepPositions(empty, P));
    assertEquals(plain(await s.positions()), plain(await o.positions()), "positions after pruning all");
    assertEquals(s.kvBytes(), o.kvBytes(), "kvBytes after pruning all");
  });

  // truncateFrom: strips soft rows (and more), decoding continues from the cut.
  await pair(ex, oracle, P + 40, async (s, o) => {
    await both(s, o, (x) => x.forward(tokens(toks)));
    await both(s, o, (x) => x.forward(embeddings(softRows(4, c.dim), c.dim), { logits: "none" }));
    await both(s, o, (x) => x.truncateFrom(P));
    assertEquals(s.nextPosition, P, "nextPosition after truncateFrom");
    assertEquals(plain(await s.positions()), plain(await o.positions()), "positions after truncateFrom");
    assertEquals(s.kvBytes(), P * c.nLayers * c.nKvHeads * entryBytes, "kvBytes after truncateFrom");
    const [fs, fo] = await both(s, o, (x) => x.forward(tokens([7, 8]), { logits: "all" }));
    assertClose(fs.logits!, fo.logits!, TOL, "logits after truncateFrom");
    await both(s, o, (x) => x.truncateFrom(P - 3));
    assertEquals(s.nextPosition, P - 3, "nextPosition after a cut into the prompt");
    const [gs, go] = await both(s, o, (x) => x.forward(tokens([11, 12]), { logits: "all" }));
    assertClose(gs.logits!, go.logits!, TOL, "logits after a cut into the prompt");
    assertEquals(plain(await s.positions()), plain(await o.positions()), "positions after the second cut");
  });

  // mark/rewind: the cache comes back bit-identical, so the same input gives the same logits bitwise.
  await pair(ex, oracle, P + 300, async (s, o) => {
    await both(s, o, (x) => x.forward(tokens(toks)));
    const positions0 = plain(await s.positions()), bytes0 = s.kvBytes();
    const mark = s.mark(), markO = o.mark();
    assertEquals(mark.nextPosition, P, "mark position");
    const X = [9, 10, 11];
    const [x1, x1o] = await both(s, o, (x) => x.forward(tokens(X), { logits: "all" }));
    assertClose(x1.logits!, x1o.logits!, TOL, "logits after the mark");
    const first = x1.logits!.slice();
    await s.decode(greedy(10, { returnLogits: false }));
    // Enough appends that a backend with growing per-head storage relays its cache out.
    await s.forward(tokens(promptTokens(200, c.vocabSize, 9)), { logits: "none" });
    await s.rewind(mark);
    await o.rewind(markO);
    assertEquals(s.nextPosition, P, "nextPosition after rewind");
    assertEquals(plain(await s.positions()), positions0, "positions after rewind");
    assertEquals(s.kvBytes(), bytes0, "kvBytes after rewind");
    const [again] = await both(s, o, (x) => x.forward(tokens(X), { logits: "all" }));
    assertSame(again.logits!, first, "logits after rewind (bit-identical cache)");
    const [d, dOr] = await both(s, o, (x) => x.decode(greedy(8)));
    assertEquals(d.tokens, dOr.tokens, "decode after rewind");
    // Rewinding across a pruning is refused.
    const late = s.mark();
    await s.forward(tokens([1]));
    await s.keepPositions(subset(c.nLayers, c.nKvHeads, P), P);
    await assertRejects(() => s.rewind(late));
  });

  // clone: a deep copy; mutating it leaves the original untouched, and it continues like the original.
  await pair(ex, oracle, P + 40, async (s, o) => {
    await both(s, o, (x) => x.forward(tokens(toks)));
    const positions0 = plain(await s.positions()), bytes0 = s.kvBytes();
    const logits0 = (await s.currentLogits()).slice();
    const copy = await s.clone(), copyO = await o.clone();
    try {
      assertEquals(copy.nextPosition, P, "clone nextPosition");
      assertSame(await copy.currentLogits(), logits0, "clone current logits");
      assertEquals(plain(await copy.positions()), positions0, "clone positions");
      const [cd, cdo] = await both(copy, copyO, (x) => x.decode(greedy(10)));
      assertEquals(cd.tokens, cdo.tokens, "clone decodes like the reference");
      await copy.forward(tokens([3, 3, 3]), { logits: "all" });
      await copy.keepPositions(subset(c.nLayers, c.nKvHeads, P), P);
      await copy.truncateFrom(5);
    } finally {
      copy.dispose();
      copyO.dispose();
    }
    // The original, after its clone was changed and disposed.
    assertEquals(s.nextPosition, P, "original nextPosition");
    assertEquals(plain(await s.positions()), positions0, "original positions");
    assertEquals(s.kvBytes(), bytes0, "original kvBytes");
    assertSame(await s.currentLogits(), logits0, "original current logits");
    const [d, dOr] = await both(s, o, (x) => x.decode(greedy(10)));
    assertEquals(d.tokens, dOr.tokens, "original decodes like the reference");
    d.logits!.forEach((l, i) => assertClose(l, dOr.logits![i], TOL, `original step ${i}`));
  });

  // dispose: a disposed session does not disturb the executor's other or later sessions.
  const a = ex.createSession(P + 8), b = ex.createSession(P + 8);
  try {
    await a.forward(tokens(toks));
    a.dispose();
    const r = await b.forward(tokens(toks), { logits: "all" });
    const ref = oracle.createSession(P + 8);
    assertClose(
      r.logits!,
      (await ref.forward(tokens(toks), { logits: "all" })).logits!,
      TOL,
      "after dispose",
    );
  } finally {
    b.dispose();
  }
}

/** Options of an uncompressed plan (the oracle reads none of them then). */
const NO_OPTIONS: BruteOptions = {
  budget: 0,
  window: 0,
  pooling: "none",
  kernel: 1,
  gqa: "mean",
  sinks: 0,
  normalize: false,
  seed: 0,
  beta: 20,
  floor: 0,
  lookaheadTokens: 0,
  allocation: "uniform",
};

/** The compression requests of a model: every registered method at both budgets, plus a few options. */
/**
 * Memory: a session allocates for what it holds, not for its capacity. On the CPU executors storage is at
 * most the fullest head's entries per head (uniform per-slot room, as the wasm layout has) plus logits, and
 * pruning, cutting and rewinding give the room back; the GPU keeps a little headroom per head, so there the
 * figures are only checked to follow the entries.
 */
async function allocationContract({ ex, w, m, toks }: Ctx) {
  const c = w.config, P = m.prompt, slots = c.nLayers * c.nKvHeads;
  const perEntry = c.headDim * 8 + 4;
  const most = async (s: KvSession) => Math.max(1, ...(await s.positions()).flat().map((h) => h.length));
  const bound = async (s: KvSession) => slots * (await most(s)) * perEntry + slots * 4 + c.vocabSize * 4;
  const capacity = c.maxSeqLen + 64;
  const s = ex.createSession(capacity);
  try {
    await s.forward(tokens(toks), { logits: "last" });
    const full = s.allocatedBytes();
    assert(full >= s.kvBytes(), `allocated ${full} bytes hold the ${s.kvBytes()} KV bytes`);
    if (ex.kind !== "gpu") {
      // Room grows by half again at most, so a prompt of P rows holds < 1.5 x P (+ 16) entries per head.
      const most = slots * Math.ceil(Math.max(P * 1.5, P + 16)) * perEntry + slots * 4 + c.vocabSize * 4;
      assert(full <= most, `after a ${P}-token prompt: ${full} bytes allocated, over ${most}`);
      assert(full < slots * capacity * perEntry, "a session does not allocate its whole capacity up front");
    }
    const kept = subset(c.nLayers, c.nKvHeads, P).map((heads) => heads.map((h) => h.slice(0, 3)));
    await s.keepPositions(kept, P);
    const pruned = s.allocatedBytes();
    assert(pruned <= full, `pruning does not grow the allocation (${full} -> ${pruned})`);
    assert(pruned >= s.kvBytes(), "what is allocated holds what is kept");
    if (ex.kind !== "gpu") {
      assert(pruned <= await bound(s), `after keeping 3 per head: ${pruned} bytes, over ${await bound(s)}`);
    }
    const mark = s.mark();
    await s.forward(tokens([3, 4, 5]), { logits: "last" });
    await s.decode(greedy(24));
    assert(s.allocatedBytes() >= s.kvBytes(), "decoding grows the allocation with the entries");
    await s.rewind(mark);
    if (ex.kind !== "gpu") {
      assertEquals(s.allocatedBytes(), pruned, "rewind gives back the room the answer took");
    }
    await s.truncateFrom(2);
    if (ex.kind !== "gpu") {
      assert(s.allocatedBytes() <= await bound(s), "truncateFrom gives the room back");
    }
  } finally {
    s.dispose();
  }
}

/**
 * `between`: awaited between chunks of a long forward on the CPU executors (never on WebGPU, which records a
 * prefill whole), with another session's forward run inside it as a scheduler would: the logits are the same
 * as without it, and a `between` that throws stops the pass with the rows before it cached.
 */
async function betweenContract({ ex, w, toks }: Ctx) {
  const chunk = ex.forwardChunkRows ?? FORWARD_CHUNK_ROWS;
  const c = w.config, R = Math.min(c.maxSeqLen - 8, chunk * 2 + 40);
  const rows = Array.from({ length: R }, (_, i) => toks[i % toks.length]);
  const calls = ex.kind === "gpu" ? 0 : Math.ceil(R / chunk) - 1;
  const plainRun = ex.createSession(R + 8),
    interleaved = ex.createSession(R + 8),
    other = ex.createSession(R + 8);
  try {
    const want = (await plainRun.forward(tokens(rows), { logits: "all" })).logits!;
    let n = 0;
    const got = (await interleaved.forward(tokens(rows), {
      logits: "all",
      between: async () => {
        n++;
        await other.forward(tokens(toks.slice(0, 9)), { logits: "last" }); // another job's turn
      },
    })).logits!;
    assertEquals(n, calls, "between calls");
    assertSame(got, want, "logits with other work between the chunks");
    if (calls > 0) {
      const stopped = ex.createSession(R + 8);
      try {
        await assertRejects(() =>
          stopped.forward(tokens(rows), {
            between: () => Promise.reject(new Error("time limit")),
          })
        );
        assertEquals(stopped.nextPosition, chunk, "the rows before the throw are cached");
      } finally {
        stopped.dispose();
      }
    }
  } finally {
    plainRun.dispose();
    interleaved.dispose();
    other.dispose();
  }
}

function requests(m: ModelCase): { request: CompressionRequest; adapter: boolean }[] {
  const out: { request: CompressionRequest; adapter: boolean }[] = [];
  for (const name of Object.keys(METHODS)) {
    for (const [i, budget] of m.budgets.entries()) {
      const base: CompressionRequest = { method: name, budget };
      if (name === "random") base.seed = 2 + i;
      if (name === "lookahead") base.lookahead_tokens = 4;
      if (name === "judgeq") {
        out.push({ request: { ...base, random_soft: true, seed: 3 }, adapter: false });
        if (m.adapter) out.push({ request: base, adapter: true });
      } else out.push({ request: base, adapter: false });
    }
  }
  const b = m.budgets[0];
  out.push(
    { request: { method: "snapkv", budget: b, pooling: "max", kernel: 7, window: 8 }, adapter: false },
    { request: { method: "h2o", budget: b, normalize: true }, adapter: false },
    { request: { method: "adakv", budget: b, gqa: "max", window: 4 }, adapter: false },
  );
  return out;
}

const adapters = new Map<string, Promise<{ soft: Float32Array; n: number }>>();
function loadAdapter(url: URL, dim: number) {
  let a = adapters.get(url.href);
  if (!a) {
    a = Deno.readFile(url).then((bytes) => {
      const ad = right(decodeAdapter(bytes, "judgeq.safetensors"));
      assertEquals(ad.dim, dim, "adapter width");
      return { soft: ad.softEmbeddings, n: ad.n };
    });
    adapters.set(url.href, a);
  }
  return a;
}

/** The CPU reference holding a whole prompt, every row's queries captured: the brute-force oracle's input. */
const oracleSessions = new WeakMap<ModelWeights, Promise<{ s: CpuSession; rows: QueryRows }>>();
/** Brute-force compressions and reference tokens, once per weights and request (or kept set). */
const oracleMemo = new WeakMap<ModelWeights, Map<string, Promise<unknown>>>();

function memo<T>(w: ModelWeights, key: string, f: () => Promise<T>): Promise<T> {
  if (!oracleMemo.has(w)) oracleMemo.set(w, new Map());
  const m = oracleMemo.get(w)!;
  if (!m.has(key)) m.set(key, f());
  return m.get(key) as Promise<T>;
}

function oracleSession(w: ModelWeights, prompt: number[]) {
  let p = oracleSessions.get(w);
  if (!p) {
    const s = new CpuExecutor(w).createSession(prompt.length + 64) as CpuSession;
    p = s.forward({ kind: "tokens", tokens: prompt }, { logits: "last", captureQueries: true })
      .then((r) => ({ s, rows: r.queries! }));
    oracleSessions.set(w, p);
  }
  return p;
}

/** The seeded uniform stream `random` ranks by. */
const uniformStream = (seed: number, n: number) => {
  const out = new Float64Array(n);
  let state = seedState(seed);
  for (let k = 0; k < n; k++) [out[k], state] = nextUniform(state);
  return out;
};

/** Greedy tokens of a CPU reference session holding only `kept` of the prompt: what a compressed cache decodes. */
function keptTokens(w: ModelWeights, prompt: number[], kept: number[][][], n: number): Promise<number[]> {
  return memo(w, `tokens ${n} ${JSON.stringify(kept)}`, async () => {
    const s = new CpuExecutor(w).createSession(prompt.length + n + 1);
    try {
      await s.forward({ kind: "tokens", tokens: prompt }, { logits: "last" });
      await s.keepPositions(kept.map((hs) => hs.map((h) => Int32Array.from(h))), prompt.length);
      return (await s.decode({ maxTokens: n, sampling: GREEDY, stopTokenIds: [] })).tokens;
    } finally {
      s.dispose();
    }
  });
}

/**
 * Reference scores closer than this are a near tie: an executor within the contract's 1e-4 on attention
 * mass and key norms may order them either way (stories260K's layer-0 key norms of one token at two
 * positions are equal, or one float32 ulp apart, in the reference; the GPU's differ in the last bits).
 */
const TIE_TOL = 1e-4;

/**
 * Kept positions must equal the reference's, except among near ties of the reference's scores: the
 * positions kept by one side only must all have reference scores within TIE_TOL of each other, per head
 * (per layer for adaptive allocation, which trades entries between heads); per-head counts must match
 * (per-layer totals for adaptive allocation). Returns whether the sets were identical.
 */
function assertKeptMatches(
  got: number[][][],
  want: number[][][],
  scores: ArrayLike<number> | null,
  adaptive: boolean,
  L: number,
  label: string,
): boolean {
  if (JSON.stringify(got) === JSON.stringify(want)) return true;
  if (!scores) assertEquals(got, want, `${label}: kept positions (nothing scored, so no ties)`);
  const nKv = want[0].length;
  for (let l = 0; l < want.length; l++) {
    const total = (k: number[][]) => k.reduce((n, h) => n + h.length, 0);
    assertEquals(total(got[l]), total(want[l]), `${label}: layer ${l} kept entries`);
    let tie: number[] = [];
    for (let g = 0; g < nKv; g++) {
      if (!adaptive) {
        assertEquals(got[l][g].length, want[l][g].length, `${label}: layer ${l} head ${g} kept entries`);
        tie = [];
      }
      const a = new Set(got[l][g]), b = new Set(want[l][g]);
      const differ = [...got[l][g].filter((p) => !b.has(p)), ...want[l][g].filter((p) => !a.has(p))];
      tie.push(...differ.map((p) => scores![(l * nKv + g) * L + p]));
      if (!adaptive || g === nKv - 1) {
        const spread = tie.length ? Math.max(...tie) - Math.min(...tie) : 0;
        if (!(spread <= TIE_TOL)) {
          assertEquals(
            got[l][g],
            want[l][g],
            `${label}: layer ${l} head ${g} kept (reference scores of the differing positions ${tie})`,
          );
        }
      }
    }
  }
  return false;
}

async function methodsContract({ ex, w, m }: Ctx) {
  const c = w.config, L = m.methodPrompt;
  const prompt = promptTokens(L, c.vocabSize, 17).map((t, i) => (i === 0 ? 1 : t));
  const adapter = m.adapter ? await loadAdapter(m.adapter, c.dim) : null;
  const names = new Set<string>();
  const ties: string[] = [];
  for (const { request, adapter: useAdapter } of requests(m)) {
    names.add(request.method);
    const plan = right(compilePlan(
      {
        input: { kind: "prompt", tokens: prompt },
        compression: request,
        decode: { maxTokens: 8, sampling: GREEDY, stopTokenIds: [] },
      },
      { config: c, adapterTokens: useAdapter ? adapter!.n : null },
    ));
    const run = (executor: Executor) =>
      runPlan(plan, {
        executor,
        softEmbeddings: useAdapter ? adapter!.soft : null,
        tokenEmbeddings: w.embed,
      });
    const label = JSON.stringify(request) + (useAdapter ? " (trained adapter)" : "");
    const count = useAdapter ? adapter!.n : 32;
    const soft = useAdapter ? adapter!.soft : randomSoftTokens(w.embed, c.dim, count, request.seed ?? 0);
    // Keyed by the weights too: an executor may run transformed (f16-rounded) weights.
    const want = await memo(w, label, async () => {
      const { s, rows } = await oracleSession(w, prompt);
      return bruteCompression(s, rows, request.method, plan.options ?? NO_OPTIONS, soft, uniformStream);
    });
    const got = await run(ex);
    const adaptive = plan.options?.allocation === "adaptive";
    const same = assertKeptMatches(got.compression.kept, want.kept, want.scores, adaptive, L, label);
    if (!same) ties.push(label);
    const entries = got.compression.kept.flat().reduce((n, h) => n + h.length, 0);
    assertEquals(got.compression.kvBytesAfter, entries * c.headDim * 8, `${label}: kvBytes after`);
    // Whatever was kept among ties, the tokens are those of a reference cache holding exactly that.
    assertEquals(
      got.outputs[0].tokens,
      await keptTokens(w, prompt, got.compression.kept, 8),
      `${label}: decoded tokens`,
    );
    if (plan.compressed) {
      const counts = got.compression.kept.flat().map((k) => k.length);
      assert(counts.some((n) => n < L), `${label}: something was evicted`);
    }
  }
  assertEquals([...names].sort(), Object.keys(METHODS).sort(), "every registered method ran");
  if (ties.length) {
    console.warn(`executor contract: ${m.name}: other positions kept among near ties in ${ties.join(", ")}`);
  }
}

/** Bitwise equality of two snapshots. */
function assertSameSnapshot(a: CacheSnapshot, b: CacheSnapshot, message: string) {
  assertEquals(a.nextPosition, b.nextPosition, `${message}: nextPosition`);
  assertEquals(
    a.positions.map((p) => Array.from(p)),
    b.positions.map((p) => Array.from(p)),
    `${message}: positions`,
  );
  a.keys.forEach((k, s) => assertSame(k, b.keys[s], `${message}: keys of slot ${s}`));
  a.values.forEach((v, s) => assertSame(v, b.values[s], `${message}: values of slot ${s}`));
  assertEquals(a.logits === null, b.logits === null, `${message}: logits present`);
  if (a.logits && b.logits) assertSame(a.logits, b.logits, `${message}: logits`);
}

/** A pruned cache (one head empty) with rows past the prompt: what a compressed context holds. */
async function prunedSession(ex: Executor, c: ModelConfig, toks: number[], P: number): Promise<KvSession> {
  const s = ex.createSession(P + 40);
  await s.forward(tokens(toks), { logits: "none" });
  await s.keepPositions(subset(c.nLayers, c.nKvHeads, P), P);
  await s.forward(tokens([7, 8, 9]));
  return s;
}

async function snapshotContract({ ex, oracle, w, m, toks }: Ctx) {
  const c = w.config, P = m.prompt;
  const s = await prunedSession(ex, c, toks, P), o = await prunedSession(oracle, c, toks, P);
  const restored: KvSession[] = [];
  try {
    // export -> restore on the same executor: the same state, and a following decode bit for bit.
    const snap = await s.exportCache();
    assertEquals(
      snap.positions.map((p) => Array.from(p)),
      plain(await s.positions()).flat(),
      "exported positions",
    );
    const r = await ex.restoreSession(snap, P + 60);
    restored.push(r);
    assertEquals(r.nextPosition, s.nextPosition, "restored nextPosition");
    assertEquals(r.kvBytes(), s.kvBytes(), "restored kvBytes");
    assertSameSnapshot(await r.exportCache(), snap, "re-export of a restored session");
    const [d, dr] = [await s.decode(greedy(12)), await r.decode(greedy(12))];
    assertEquals(dr.tokens, d.tokens, "tokens after restore");
    d.logits!.forEach((l, i) => assertSame(dr.logits![i], l, `step ${i} logits after restore`));
    // The reference's export restored here (and this executor's into the reference) continues as the
    // reference does, within the executor's tolerance.
    const osnap = await o.exportCache();
    const fromRef = await ex.restoreSession(osnap, P + 60);
    restored.push(fromRef);
    assertSameSnapshot(await fromRef.exportCache(), osnap, "reference export restored here, re-exported");
    const [dx, dOr] = [await fromRef.decode(greedy(12)), await o.decode(greedy(12))];
    assertEquals(dx.tokens, dOr.tokens, "tokens of the reference's restored state");
    dx.logits!.forEach((l, i) => assertClose(l, dOr.logits![i], TOL, `step ${i} from the reference's state`));
    const intoRef = await oracle.restoreSession(snap, P + 60);
    restored.push(intoRef);
    assertSameSnapshot(await intoRef.exportCache(), snap, "this export restored into the reference");
    // Shapes that are not the model's, and capacities too small, are refused naming the field.
    await assertRejects(
      () => ex.restoreSession({ ...snap, nLayers: c.nLayers + 1 }, P + 60),
      "snapshot",
    );
    const most = Math.max(...snap.positions.map((p) => p.length));
    await assertRejects(() => ex.restoreSession(snap, most - 1), "capacity");
  } finally {
    for (const x of [s, o, ...restored]) x.dispose();
  }
}

const CONTRACT: [string, (ctx: Ctx) => Promise<void>][] = [
  ["forward: tokens/embeddings, logits all/last/none, chunked prefill, nextPosition", forwardContract],
  ["decode: greedy tokens and per-step logits", greedyContract],
  ["decode: seeded temperature/top-p/top-k sampling", samplingContract],
  ["decode: stop tokens, maxTokens, streaming order, abort", stopsContract],
  ["attentionMass and keyNorms of prompt, embedding and decode rows", queriesContract],
  ["cache: keepPositions, positions, kvBytes, truncateFrom, mark/rewind, clone, dispose", cacheContract],
  ["allocation follows the entries held, not the capacity", allocationContract],
  ["forward: between is awaited between chunks, other work inside it changes nothing", betweenContract],
  ["exportCache / restoreSession: bit for bit on the same executor, across executors", snapshotContract],
  ["every registered method through the plan interpreter, at two budgets", methodsContract],
];

for (const x of EXECUTORS_UNDER_TEST) {
  for (const m of MODELS) {
    Deno.test({
      name: `executor contract: ${x.name} on ${m.name}`,
      ignore: selected !== undefined && !selected.includes(x.name),
      sanitizeResources: false,
      sanitizeOps: false,
      fn: async (t) => {
        const w = x.weights ? x.weights(await m.load()) : await m.load();
        TOL = x.tolerance?.logits ?? 1e-3;
        MASS_TOL = x.tolerance?.mass ?? 1e-4;
        const ex = await x.create(w);
        if (typeof ex === "string") {
          console.warn(`executor_contract_test: ${x.name} on ${m.name} skipped: ${ex}`);
          await t.step({ name: `${x.name} unavailable: ${ex}`, ignore: true, fn: () => {} });
          return;
        }
        const ctx: Ctx = {
          ex,
          oracle: new CpuExecutor(w),
          w,
          m,
          toks: promptTokens(m.prompt, w.config.vocabSize, 5).map((tok, i) => (i === 0 ? 1 : tok)),
        };
        try {
          for (const [name, fn] of CONTRACT) await t.step(name, () => fn(ctx));
        } finally {
          ex.dispose();
        }
      },
    });
  }
}
