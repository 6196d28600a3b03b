/**
 * Contexts shared through a real Redis (started here on a free port; skipped where redis-server is
 * absent): a context's cache restored bit for bit on the CPU reference and the fast CPU executor, the
 * same answers from any replica (two app instances on separately loaded models), restart survival, TTL
 * expiry, model/adapter mismatch (409), a corrupt blob (422, deleted), and Redis killed mid-test (503 with
 * Retry-After while plain generation goes on, then recovery once it is back).
 */
import { decodeContextBlob, encodeContextBlob } from "../core/context_blob.ts";
import { answerOnContext, compressContext, contextCapacity, type Model } from "../core/engine.ts";
import type { CacheSnapshot } from "../core/executor.ts";
import { loadModel } from "../io/runtime.ts";
import { decodeContext, encodeContext, identityOf } from "../server/contexts/codec.ts";
import { RedisBlobs } from "../server/contexts/redis.ts";
import { assert, assertEquals } from "./helpers.ts";
import { REDIS_SKIP, redisServerPath, startRedis, type TestRedis, waitFor } from "./redis_testing.ts";
import { startServer, testModel, type TestServer } from "./server_testing.ts";

const STORY =
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
  "One day, she saw a big red ball under a tree. She wanted to play with it, but her friend Tom had it. ";
const CONTEXT = STORY.repeat(3);
const COMPRESSION = { method: "judgeq", budget: 24 };
const QUESTIONS = [
  { question: " Lily said", max_tokens: 12 },
  { question: " Tom", max_tokens: 12, temperature: 0.9, seed: 7 },
];

const skip = redisServerPath() === null;
if (skip) console.warn(`context_store_redis_test: ${REDIS_SKIP}`);

const test = (name: string, fn: () => Promise<void>) =>
  Deno.test({ name, ignore: skip, sanitizeOps: false, sanitizeResources: false, fn });

const quiet = { warn: () => {} };
let cpuModels: Promise<[Model, Model]> | null = null;
/** Two separately loaded copies of the embedded model with its Judge Q adapter: two "replicas". */
const twoCpuModels = () => (cpuModels ??= Promise.all([
  loadModel({ executor: "cpu", ...quiet }),
  loadModel({ executor: "cpu", ...quiet }),
]));

async function withRedis(fn: (r: TestRedis) => Promise<void>) {
  const r = await startRedis();
  try {
    await fn(r);
  } finally {
    await r.stop();
  }
}

const shared = (r: TestRedis, ttlMs = 60_000) => ({
  sharedStore: new RedisBlobs(r.url, { log: () => {} }),
  contextTtlMs: ttlMs,
});

async function replica(r: TestRedis, model: Model, ttlMs?: number): Promise<TestServer> {
  const s = await startServer(shared(r, ttlMs), model);
  await waitFor(async () => (await s.get("/healthz")).json.context_store?.status === "ok", 5000, "redis");
  return s;
}

async function answers(s: TestServer, id: string) {
  const out = [];
  for (const q of QUESTIONS) {
    const res = await s.post(`/v1/contexts/${id}/generate`, { ...q, return_tokens: true });
    assertEquals(res.status, 200, JSON.stringify(res.json));
    out.push({ text: res.json.outputs[0].text, tokens: res.json.outputs[0].tokens });
  }
  return out;
}

function assertSameSnapshot(a: CacheSnapshot, b: CacheSnapshot) {
  const bits = (x: Float32Array | Int32Array) => new Uint32Array(x.buffer, x.byteOffset, x.length);
  assertEquals(a.nextPosition, b.nextPosition);
  for (const k of ["positions", "keys", "values"] as const) {
    a[k].forEach((x, s) => assertEquals(Array.from(bits(x)), Array.from(bits(b[k][s])), `${k} of slot ${s}`));
  }
  assertEquals(a.logits && Array.from(bits(a.logits)), b.logits && Array.from(bits(b.logits)));
}

test("shared contexts: a Redis round trip restores the cache bit for bit on cpu and wasm", () =>
  withRedis(async (r) => {
    const blobs = new RedisBlobs(r.url, { log: () => {} });
    try {
      await waitFor(() => blobs.ready, 5000, "redis");
      for (const executor of ["cpu", "wasm"] as const) {
        const model = await loadModel({ executor, threads: 1, ...quiet });
        try {
          const who = await identityOf(model);
          assert(who.adapter !== null, "the embedded model comes with its Judge Q adapter");
          const ctx = await compressContext(model, CONTEXT, COMPRESSION);
          const blob = await encodeContext(ctx, who, 1234, contextCapacity(model, ctx.plan.capacity));
          const id = `ctx_${"0".repeat(31)}${executor === "cpu" ? 1 : 2}`;
          await blobs.put(id, blob, 60_000);
          const stored = await blobs.get(id);
          assertEquals(stored?.length, blob.length);
          const { ctx: back, createdAt } = await decodeContext(id, stored!, model, who);
          assertEquals(createdAt, 1234);
          assertEquals(back.contextTokens, ctx.contextTokens);
          assertEquals(back.stats, ctx.stats);
          assertEquals(back.session.kvBytes(), ctx.session.kvBytes());
          assert(ctx.session.kvBytes() < ctx.stats.kvBytesBefore, "the context is really compressed");
          assertSameSnapshot(await back.session.exportCache(), await ctx.session.exportCache());
          for (const q of QUESTIONS) {
            const p = {
              question: q.question,
              maxTokens: q.max_tokens,
              temperature: q.temperature,
              seed: q.seed,
            };
            const [a, b] = [await answerOnContext(model, ctx, p), await answerOnContext(model, back, p)];
            assertEquals(b.tokens, a.tokens, `${executor}: ${q.question}`);
            assertEquals(a.tokens.length, q.max_tokens);
          }
          // The next step's logits after the same token, bit for bit.
          for (const s of [ctx.session, back.session]) await s.forward({ kind: "tokens", tokens: [1, 42] });
          assertSameSnapshot(await back.session.exportCache(), await ctx.session.exportCache());
          ctx.session.dispose();
          back.session.dispose();
        } finally {
          model.executor.dispose();
        }
      }
    } finally {
      await blobs.close();
    }
  }));

test("shared contexts: any replica answers as the one that compressed, and as a single server does", () =>
  withRedis(async (r) => {
    const [m1, m2] = await twoCpuModels();
    const single = await startServer({}, m1);
    const a = await replica(r, m1), b = await replica(r, m2);
    try {
      const ref = await single.post("/v1/contexts", { context: CONTEXT, kv_compression: COMPRESSION });
      const want = await answers(single, ref.json.id);
      const created = await a.post("/v1/contexts", { context: CONTEXT, kv_compression: COMPRESSION });
      assertEquals(created.status, 200, JSON.stringify(created.json));
      const id = created.json.id;
      assertEquals(created.json.kv_bytes, ref.json.kv_bytes);
      assertEquals((await b.get("/healthz")).json.contexts, 0);
      assertEquals(await answers(b, id), want); // restored on b from Redis
      assertEquals((await b.get("/healthz")).json.contexts, 1);
      assertEquals(await answers(a, id), want);
      assertEquals(await answers(b, id), want); // b's own copy now
      const info = await b.get(`/v1/contexts/${id}`);
      assertEquals([info.status, info.json.kv_bytes], [200, ref.json.kv_bytes]);
      // Deleted through b: gone for a too, though a holds a copy.
      const del = await fetch(`${b.base}/v1/contexts/${id}`, { method: "DELETE" });
      assertEquals(del.status, 200);
      await del.body?.cancel();
      const gone = await a.post(`/v1/contexts/${id}/generate`, QUESTIONS[0]);
      assertEquals([gone.status, gone.json.error.param], [404, "id"]);
      assertEquals((await a.get("/healthz")).json.contexts, 0);
    } finally {
      await Promise.all([single.close(), a.close(), b.close()]);
    }
  }));

test("shared contexts: each replica's memory cap bounds the contexts it holds; the rest stay in Redis", () =>
  withRedis(async (r) => {
    const [m1, m2] = await twoCpuModels();
    const a = await replica(r, m1);
    // Room for one compressed context only (30,720 KV bytes each here).
    const b = await startServer({ ...shared(r), contextMaxBytes: 40_000 }, m2);
    try {
      await waitFor(async () => (await b.get("/healthz")).json.context_store?.status === "ok", 5000, "redis");
      const ids: string[] = [], want = [];
      for (const context of [CONTEXT, STORY.repeat(2) + "The end. "]) {
        const created = await a.post("/v1/contexts", { context, kv_compression: COMPRESSION });
        assert(
          created.json.kv_bytes <= 40_000 && created.json.kv_bytes > 20_000,
          String(created.json.kv_bytes),
        );
        ids.push(created.json.id);
        want.push(await answers(a, created.json.id));
      }
      for (const round of [0, 1]) {
        for (const [i, id] of ids.entries()) {
          assertEquals(await answers(b, id), want[i], `round ${round}, context ${i}`);
          assertEquals((await b.get("/healthz")).json.contexts, 1); // the other one was evicted here
        }
      }
      assertEquals(await b.metric("judgeq_contexts_restored_total"), 4);
      assertEquals(await b.metric("judgeq_contexts_evicted_total"), 3);
      assertEquals(await a.metric("judgeq_contexts_restored_total"), 0);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  }));

test("shared contexts: a context outlives the replica that made it; TTL expiry removes it everywhere", () =>
  withRedis(async (r) => {
    const [m1, m2] = await twoCpuModels();
    let a = await replica(r, m1);
    const created = await a.post("/v1/contexts", { context: CONTEXT, kv_compression: COMPRESSION });
    const id = created.json.id;
    const want = await answers(a, id);
    await a.close();
    a = await replica(r, m1); // a restarted: nothing in memory
    try {
      assertEquals(await answers(a, id), want);
    } finally {
      await a.close();
    }
    // A short TTL: used within it, the context stays (sliding); idle past it, it is gone from every replica.
    const x = await replica(r, m1, 700), y = await replica(r, m2, 700);
    try {
      const short = (await x.post("/v1/contexts", { context: CONTEXT, kv_compression: COMPRESSION })).json.id;
      await new Promise((res) => setTimeout(res, 400));
      assertEquals((await y.post(`/v1/contexts/${short}/generate`, QUESTIONS[0])).status, 200);
      await new Promise((res) => setTimeout(res, 400)); // 800 ms after creation, 400 after last use
      assertEquals((await x.post(`/v1/contexts/${short}/generate`, QUESTIONS[0])).status, 200);
      await new Promise((res) => setTimeout(res, 1000));
      for (const s of [x, y]) {
        const res = await s.post(`/v1/contexts/${short}/generate`, QUESTIONS[0]);
        assertEquals([res.status, res.json.error.param], [404, "id"]);
      }
    } finally {
      await Promise.all([x.close(), y.close()]);
    }
  }));

test("shared contexts: another model's or adapter's context is a 409; a corrupt blob is a 422 and deleted", () =>
  withRedis(async (r) => {
    const [m1] = await twoCpuModels();
    const a = await replica(r, m1), noAdapter = await replica(r, await testModel());
    const blobs = new RedisBlobs(r.url, { log: () => {} });
    try {
      await waitFor(() => blobs.ready, 5000, "redis");
      const id = (await a.post("/v1/contexts", { context: CONTEXT, kv_compression: COMPRESSION })).json.id;
      const res = await noAdapter.post(`/v1/contexts/${id}/generate`, QUESTIONS[0]);
      assertEquals(res.status, 409);
      assertEquals(res.json.error.type, "conflict");
      assertEquals(res.json.error.param, "id");
      assert(res.json.error.message.includes("adapter mismatch"), res.json.error.message);
      // The same blob stamped with another model's fingerprint.
      const blob = decodeContextBlob((await blobs.get(id))!);
      const other = `ctx_${"f".repeat(32)}`;
      await blobs.put(other, encodeContextBlob({ ...blob, model: "0".repeat(64) }), 60_000);
      const foreign = await a.post(`/v1/contexts/${other}/generate`, QUESTIONS[0]);
      assertEquals(foreign.status, 409);
      assert(foreign.json.error.message.includes("model mismatch"), foreign.json.error.message);
      assert(foreign.json.error.message.includes("000000000000"), foreign.json.error.message);
      // Truncated in the store: refused with the reason, and deleted.
      const bad = `ctx_${"e".repeat(32)}`;
      const bytes = (await blobs.get(id))!;
      await blobs.put(bad, bytes.subarray(0, bytes.length - 100), 60_000);
      const corrupt = await a.post(`/v1/contexts/${bad}/generate`, QUESTIONS[0]);
      assertEquals([corrupt.status, corrupt.json.error.param], [422, "id"]);
      assert(/corrupt.*checksum/.test(corrupt.json.error.message), corrupt.json.error.message);
      assertEquals(await blobs.get(bad), null);
      assertEquals((await a.post(`/v1/contexts/${bad}/generate`, QUESTIONS[0])).status, 404);
      // Not a blob at all.
      await blobs.put(bad, new TextEncoder().encode("garbage"), 60_000);
      const garbage = await a.get(`/v1/contexts/${bad}`);
      assertEquals(garbage.status, 422);
      assert(garbage.json.error.message.includes("truncated"), garbage.json.error.message);
    } finally {
      await blobs.close();
      await Promise.all([a.close(), noAdapter.close()]);
    }
  }));

test("shared contexts: Redis killed -> 503 with Retry-After, plain generation goes on; back -> answers again", () =>
  withRedis(async (r) => {
    const [m1] = await twoCpuModels();
    const a = await replica(r, m1);
    try {
      const id = (await a.post("/v1/contexts", { context: CONTEXT, kv_compression: COMPRESSION })).json.id;
      const want = await answers(a, id);
      await r.kill();
      await waitFor(async () => (await a.get("/healthz")).json.context_store.status !== "ok", 5000, "down");
      const t0 = Date.now();
      for (
        const [path, body] of [[`/v1/contexts/${id}/generate`, QUESTIONS[0]], ["/v1/contexts", {
          context: STORY,
        }]]
      ) {
        const res = await fetch(a.base + path, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        const json = await res.json();
        assertEquals(res.status, 503, JSON.stringify(json));
        assertEquals(res.headers.get("retry-after"), "2");
        assertEquals(json.error.type, "service_unavailable");
        assert(json.error.message.includes("context store"), json.error.message);
      }
      assert(Date.now() - t0 < 3000, `503s took ${Date.now() - t0} ms`);
      const plain = await a.post("/v1/generate", { prompt: "Once upon a time", max_tokens: 8 });
      assertEquals(plain.status, 200);
      const health = await a.get("/healthz");
      assertEquals([health.status, health.json.context_store.status], [200, "unavailable"]);
      await r.start(); // same port; its append-only file brings the context back
      await waitFor(async () => (await a.get("/healthz")).json.context_store.status === "ok", 10_000, "back");
      assertEquals(await answers(a, id), want);
    } finally {
      await a.close();
    }
  }));

test("shared contexts keep their owner: on every replica another key's request is a 404, the owner's served", () =>
  withRedis(async (r) => {
    const [m1, m2] = await twoCpuModels();
    const apiKeys = [{ label: "alice", key: "alice-key" }, { label: "bob", key: "bob-key" }];
    const start = async (m: Model) => {
      const s = await startServer({ ...shared(r), apiKeys }, m);
      await waitFor(
        async () => (await s.get("/healthz")).json.context_store?.status === "ok",
        5000,
        "redis",
      );
      return s;
    };
    const a = await start(m1), b = await start(m2);
    const alice = { authorization: "Bearer alice-key" }, bob = { authorization: "Bearer bob-key" };
    try {
      const created = await a.post("/v1/contexts", { context: CONTEXT, kv_compression: COMPRESSION }, alice);
      assertEquals(created.status, 200, JSON.stringify(created.json));
      const id = created.json.id;
      for (const s of [b, a]) { // b restores it from Redis: the owner comes with the blob
        const theirs = await s.post(`/v1/contexts/${id}/generate`, QUESTIONS[0], bob);
        assertEquals([theirs.status, theirs.json.error.param], [404, "id"]);
        assertEquals((await s.get(`/v1/contexts/${id}`, bob)).status, 404);
        const del = await fetch(`${s.base}/v1/contexts/${id}`, { method: "DELETE", headers: bob });
        assertEquals(del.status, 404);
        await del.body?.cancel();
        assertEquals((await s.post(`/v1/contexts/${id}/generate`, QUESTIONS[0], alice)).status, 200);
      }
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  }));
