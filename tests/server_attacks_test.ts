/**
 * Issue 25, hardening second round: each attack against a real server process (server/main.ts on a free
 * loopback port, through its TCP front), in bounded loops, with the answer it must get. Made-up HTTP
 * methods must not grow /metrics; a client that sends its body and hangs up is a 499, never a 500; a
 * client gone cancels a non-streaming job whatever its body's size; one address holding every connection
 * cannot lock others out; a bad chunk size gets a JSON 400; a forged context blob is refused.
 */
import net from "node:net";
import { decodeContextBlob, encodeContextBlob } from "../core/context_blob.ts";
import { sampleValue } from "../server/metrics.ts";
import { RedisBlobs } from "../server/contexts/redis.ts";
import { runFillCycle } from "../ops/soak.ts";
import { findBinary } from "../ops/cluster.ts";
import { haproxyConfig } from "../ops/haproxy.ts";
import { freePort } from "../ops/processes.ts";
import { createApp } from "../server/app.ts";
import { STREAM_BUFFER_BYTES } from "../server/sse.ts";
import { testModel } from "./server_testing.ts";
import { redisServerPath, startRedis, waitFor } from "./redis_testing.ts";
import { assert, assertEquals, readAll, runServerMain, spawnServerMain } from "./helpers.ts";

const enc = new TextEncoder(), dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A server process on a free loopback port; `stop` ends it with SIGTERM and returns its log. */
async function serve(args: string[]) {
  const child = spawnServerMain(["--port", "0", "--adapter", "none", ...args]);
  const stderr = readAll(child.stderr);
  const lines = child.stdout.getReader();
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await lines.read();
    if (done) break;
    out += dec.decode(value);
  }
  const ready = /at http:\/\/127\.0\.0\.1:(\d+)/.exec(out);
  if (!ready) {
    child.kill("SIGKILL");
    throw new Error(`no ready line: ${out} / ${await stderr}`);
  }
  const port = Number(ready[1]);
  const base = `http://127.0.0.1:${port}`;
  return {
    port,
    base,
    async metrics(): Promise<string> {
      const r = await fetch(`${base}/metrics`);
      return await r.text();
    },
    async stop(): Promise<string> {
      child.kill("SIGTERM");
      const status = await child.status;
      await lines.cancel();
      const log = await stderr;
      assertEquals(status.code, 0, log);
      return log;
    },
  };
}

/** Sends `text` on a fresh connection; reads the answer until the server closes (or `readMs` passes). */
async function exchange(port: number, text: string, readMs = 3000): Promise<string> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  await c.write(enc.encode(text));
  let got = "";
  const timer = setTimeout(() => c.close(), readMs);
  const buf = new Uint8Array(16384);
  try {
    for (let n = await c.read(buf); n !== null; n = await c.read(buf)) got += dec.decode(buf.subarray(0, n));
    c.close();
  } catch { /* closed by the timer */ }
  clearTimeout(timer);
  return got;
}

/** Sends `text` and closes the connection `afterMs` later without reading anything. */
async function sendAndLeave(port: number, text: string, afterMs = 0) {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  await c.write(enc.encode(text));
  if (afterMs > 0) await sleep(afterMs);
  c.close();
}

const post = (path: string, body: string, extra = "") =>
  `POST ${path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: ${
    enc.encode(body).length
  }\r\n${extra}\r\n${body}`;

/** Every `judgeq_http_requests_total` sample with a 5xx status. */
const serverErrors = (metrics: string) =>
  metrics.split("\n").filter((l) => l.startsWith("judgeq_http_requests_total") && /status="5/.test(l));

/** A test against a fresh CPU server process, whose log must hold no stack trace or internal error. */
function attack(name: string, fn: (s: Awaited<ReturnType<typeof serve>>) => Promise<void>) {
  Deno.test({
    name,
    ignore: Deno.build.os === "windows",
    fn: async () => {
      const s = await serve(["--executor", "cpu"]);
      let log = "";
      try {
        await fn(s);
      } finally {
        log = await s.stop();
      }
      // At most a line per event: no stack trace, no internal error.
      assert(!/internal error|BadResource|\n\s+at /.test(log), log.slice(0, 2000));
    },
  });
}

attack(
  'attack: 300 made-up HTTP methods add no series to /metrics (counted as method="other")',
  async (s) => {
    const before = (await s.metrics()).length;
    for (let i = 0; i < 300; i++) {
      const method = "Z" + i.toString(16).padStart(64, "0");
      const answer = await exchange(
        s.port,
        `${method} /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n`,
      );
      assert(answer.startsWith("HTTP/1.1 405"), answer.slice(0, 80));
    }
    const metrics = await s.metrics();
    assert(!metrics.includes('method="Z'), "no client-chosen method in /metrics");
    assertEquals(
      sampleValue(metrics, 'judgeq_http_requests_total{route="/healthz",method="other",status="405"}'),
      300,
    );
    // The scrape grew by the new samples of fixed series (a line each), not by 300 series.
    assert(metrics.length - before < 3000, `/metrics grew ${metrics.length - before} bytes`);
  },
);

attack(
  "attack: 80 clients that send their body (or part of it) and hang up are 499s, never a 5xx or a stack trace",
  async (s) => {
    const body = JSON.stringify({ prompt: "Once upon a time", max_tokens: 4 });
    const cut = `POST /v1/generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: ${
      body.length + 20
    }\r\n\r\n${body}`;
    for (let i = 0; i < 40; i++) {
      await sendAndLeave(s.port, post("/v1/generate", body));
      await sendAndLeave(s.port, cut);
    }
    await sleep(500);
    const metrics = await s.metrics();
    assertEquals(serverErrors(metrics), [], "no 5xx");
    assert(
      sampleValue(metrics, 'judgeq_http_requests_total{route="/v1/generate",method="POST",status="499"}') >=
        40,
      metrics.split("\n").filter((l) => l.includes("/v1/generate")).join("\n"),
    );
  },
);

attack(
  "attack: chunk sizes the HTTP layer cannot parse get a JSON 400, and the server goes on",
  async (s) => {
    for (const chunk of ["zz", "-1", "ffffffffffffffffffffff", "2;\x01"]) {
      const answer = await exchange(
        s.port,
        `POST /v1/generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${chunk}\r\n{}\r\n0\r\n\r\n`,
      );
      assert(answer.startsWith("HTTP/1.1 400 "), `chunk ${JSON.stringify(chunk)}: ${JSON.stringify(answer)}`);
      const error = JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4)).error;
      assertEquals([error.type, error.param], ["invalid_request_error", null]);
    }
    // A bad chunk size after a first chunk the handler already read: the body cannot be read, a 400.
    const first = '{"prompt":"' + "a".repeat(20000) + '",';
    const c = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
    await c.write(enc.encode(
      `POST /v1/generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${
        first.length.toString(16)
      }\r\n${first}\r\n`,
    ));
    await sleep(300);
    await c.write(enc.encode('zz\r\n"max_tokens":2}\r\n0\r\n\r\n'));
    let answer = "";
    const buf = new Uint8Array(8192);
    const timer = setTimeout(() => c.close(), 3000);
    try {
      for (let n = await c.read(buf); n !== null; n = await c.read(buf)) {
        answer += dec.decode(buf.subarray(0, n));
      }
      c.close();
    } catch { /* closed by the timer */ }
    clearTimeout(timer);
    assert(answer.startsWith("HTTP/1.1 400 "), JSON.stringify(answer));
    assertEquals(
      JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4)).error.type,
      "invalid_request_error",
    );
    const ok = await fetch(`${s.base}/v1/generate`, {
      method: "POST",
      body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 4 }),
    });
    assertEquals(ok.status, 200);
    await ok.body?.cancel();
  },
);

/** 64 questions of 400 tokens: tens of seconds on the CPU reference, unless cancelled. */
const LONG = {
  questions: Array.from({ length: 64 }, (_, i) => ` Who is number ${i}?`),
  max_tokens: 400,
  ignore_eos: true,
};

/**
 * Sends `request` to `path`, leaves 400 ms later (the job has started) without reading, and checks that
 * the job is cancelled (not finished) within `withinMs` of the client leaving.
 */
async function leaveAndExpectCancel(
  s: Awaited<ReturnType<typeof serve>>,
  path: string,
  request: Record<string, unknown>,
  withinMs: number,
) {
  const body = JSON.stringify(request);
  const m0 = await s.metrics();
  const cancelled0 = sampleValue(m0, 'judgeq_jobs_total{outcome="cancelled"}');
  await sendAndLeave(s.port, post(path, body), 400);
  const t0 = performance.now();
  let m = await s.metrics();
  while (sampleValue(m, "judgeq_jobs_in_flight") > 0 && performance.now() - t0 < withinMs) {
    await sleep(50);
    m = await s.metrics();
  }
  const what = `${path} with a ${body.length}-byte body`;
  assertEquals(
    sampleValue(m, "judgeq_jobs_in_flight"),
    0,
    `${what}: still running ${withinMs} ms after its client left`,
  );
  assertEquals(sampleValue(m, 'judgeq_jobs_total{outcome="cancelled"}'), cancelled0 + 1, what);
  assertEquals(
    sampleValue(m, 'judgeq_jobs_total{outcome="ok"}'),
    sampleValue(m0, 'judgeq_jobs_total{outcome="ok"}'),
    what,
  );
}

Deno.test({
  name:
    "attack: a client gone cancels its non-streaming job whatever the body's size and the request's shape",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    const s = await serve(["--executor", "cpu"]);
    try {
      const ctx = await fetch(`${s.base}/v1/contexts`, {
        method: "POST",
        body: JSON.stringify({ context: "Once upon a time, there was a cat." }),
      });
      const id = (await ctx.json()).id;
      const cases: [string, Record<string, unknown>][] = [
        ["/v1/generate", { context: "Once upon a time", ...LONG }], // ~1.6 KB
        ["/v1/generate", { context: "Once upon a time", ...LONG, stop: ["x".repeat(300)] }],
        ["/v1/generate", { context: "Once upon a time", ...LONG, stop: ["x".repeat(8000)] }],
        [`/v1/contexts/${id}/generate`, LONG],
      ];
      for (const [path, request] of cases) await leaveAndExpectCancel(s, path, request, 4000);
    } finally {
      await s.stop();
    }
  },
});

Deno.test({
  name:
    "attack: with no header or idle deadline (both 0), a client gone still cancels a job with a large body",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    // Timeouts 0 once meant Deno.serve alone, whose request.signal never fires for a body over ~500 bytes.
    const s = await serve(["--executor", "cpu", "--header-timeout-s", "0", "--idle-timeout-s", "0"]);
    try {
      const request = { context: "Once upon a time", ...LONG, stop: ["x".repeat(4000)] }; // ~5.6 KB
      await leaveAndExpectCancel(s, "/v1/generate", request, 1000);
    } finally {
      await s.stop();
    }
  },
});

/** Whether this machine can connect from 127.0.0.2 (all of 127/8 is loopback on Linux). */
async function secondLoopback(port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const c = net.connect({ host: "127.0.0.1", port, localAddress: "127.0.0.2" });
    c.on("connect", () => (c.destroy(), resolve(true)));
    c.on("error", () => resolve(false));
  });
}

Deno.test({
  name: "attack: one address holding every connection (and reopening them) does not lock other addresses out",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const cap = 24;
    const s = await serve([
      "--executor",
      "cpu",
      "--max-connections",
      String(cap),
      "--header-timeout-s",
      "60",
    ]);
    const held = new Set<net.Socket>();
    let attacking = true, opened = 0, refused = 0;
    try {
      if (!(await secondLoopback(s.port))) {
        console.warn("127.0.0.2 is not reachable here: the attack cannot come from another address; skipped");
        return;
      }
      // The attacker, from 127.0.0.2: 2 x cap connections that send nothing, each reopened when closed.
      const open = () => {
        if (!attacking) return;
        opened++;
        const c = net.connect({ host: "127.0.0.1", port: s.port, localAddress: "127.0.0.2" });
        held.add(c);
        c.on("data", (d) => {
          if (String(d).startsWith("HTTP/1.1 503")) refused++;
        });
        c.on("error", () => {});
        c.on("close", () => {
          held.delete(c);
          setTimeout(open, 20);
        });
      };
      for (let i = 0; i < 2 * cap; i++) open();
      for (let i = 0; i < 100 && refused === 0; i++) await sleep(50);
      assert(refused > 0, "the attacker filled the cap");
      // 12 requests from 127.0.0.1, each on a new connection, while the attacker reopens what it loses.
      const statuses: string[] = [];
      for (let i = 0; i < 12; i++) {
        const answer = await exchange(
          s.port,
          "GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
          10_000, // the suite runs files in parallel: a loaded machine answers slowly (a 503 comes at once)
        );
        statuses.push(answer.slice(9, 12) || "no answer");
        await sleep(20);
      }
      assertEquals(statuses, Array(12).fill("200"), `attacker opened ${opened}, refused ${refused}`);
      await sleep(1100); // the server reads the front's counts every second
      const metrics = await s.metrics();
      const evicted = sampleValue(metrics, "judgeq_connections_evicted_total");
      // At least one place was made by eviction (how many depends on how fast the attacker refilled).
      assert(evicted > 0, `evicted ${evicted}`);
    } finally {
      attacking = false;
      for (const c of held) c.destroy();
      await s.stop();
    }
  },
});

Deno.test({
  name:
    "attack: a context blob in Redis with a valid checksum but fields the model cannot have is a 422, and deleted",
  ignore: redisServerPath() === null || Deno.build.os === "windows",
  sanitizeOps: false, // ioredis keeps timers past close
  sanitizeResources: false,
  fn: async () => {
    const redis = await startRedis();
    const s = await serve(["--executor", "cpu", "--context-store", redis.url]);
    const blobs = new RedisBlobs(redis.url, { log: () => {} });
    try {
      await waitFor(() => blobs.ready, 5000, "redis");
      const made = await fetch(`${s.base}/v1/contexts`, {
        method: "POST",
        body: JSON.stringify({
          context: "Once upon a time, there was a cat.",
          kv_compression: { method: "snapkv", budget: 4 },
        }),
      });
      const id = (await made.json()).id;
      const blob = decodeContextBlob((await blobs.get(id))!);
      const meta = blob.meta as Record<string, unknown>;
      const forgeries: [string, Parameters<typeof encodeContextBlob>[0]][] = [
        ["'nextPosition': 1000000000", { ...blob, snapshot: { ...blob.snapshot, nextPosition: 1e9 } }],
        ["'meta.capacity': 1000000000", { ...blob, meta: { ...meta, capacity: 1e9 } }],
        ["'meta.contextTokens.1': 70000", {
          ...blob,
          meta: {
            ...meta,
            contextTokens: (meta.contextTokens as number[]).map((t, i) => i === 1 ? 70000 : t),
          },
        }],
      ];
      for (const [i, [field, forged]] of forgeries.entries()) {
        const other = `ctx_${String(i).repeat(32)}`;
        await blobs.put(other, encodeContextBlob(forged), 60_000); // a valid checksum: only the fields are wrong
        const r = await fetch(`${s.base}/v1/contexts/${other}/generate`, {
          method: "POST",
          body: JSON.stringify({ question: " Who?", max_tokens: 2 }),
        });
        const json = await r.json();
        assertEquals(
          [r.status, json.error?.param],
          [422, "id"],
          `${field}: ${JSON.stringify(json).slice(0, 300)}`,
        );
        const error = json.error;
        assert(error.message.includes(`header field ${field}`), error.message);
        assertEquals(await blobs.get(other), null, `${field}: deleted`);
      }
      // The genuine one is still served.
      const ok = await fetch(`${s.base}/v1/contexts/${id}/generate`, {
        method: "POST",
        body: JSON.stringify({ question: " Who?", max_tokens: 2 }),
      });
      assertEquals(ok.status, 200);
      await ok.body?.cancel();
    } finally {
      await blobs.close();
      await s.stop();
      await redis.stop();
    }
  },
});

Deno.test("attack: a stream whose client never reads waits off the executor (its slot given to others), then is cut", async () => {
  // In process, so that nothing reads the body at all: over loopback sockets the kernel's buffers (up to
  // tcp_wmem's 4 MB a side) hold a whole stories260K stream (3.6 MB at most) before any backpressure.
  const app = createApp(await testModel(), { log: () => {}, maxStreams: 1, streamStallMs: 1500 });
  const call = (body: unknown) =>
    app.handler(new Request("http://x/v1/generate", { method: "POST", body: JSON.stringify(body) }));
  try {
    const questions = Array.from({ length: 64 }, (_, i) => ` Who is number ${i}?`);
    // 64 x 400 tokens: 25,600 events, 3.6 MB, tens of seconds of the CPU reference if generated whole.
    const stream = await call({
      context: "Once upon a time",
      questions,
      max_tokens: 400,
      ignore_eos: true,
      stream: true,
    });
    assertEquals(stream.status, 200);
    // About 470 events fill its 64 KB buffer.
    const stalled = () => sampleValue(app.metrics.render(), "judgeq_streams_stalled");
    for (let i = 0; i < 100 && stalled() === 0; i++) await sleep(30);
    assertEquals(stalled(), 1, "parked on its full buffer");
    // With one job admitted at a time, a short request runs while the stream waits.
    const t0 = performance.now();
    const short = await call({ prompt: "Once upon a time", max_tokens: 8 });
    assertEquals(short.status, 200);
    await short.body?.cancel();
    const shortMs = performance.now() - t0;
    assert(shortMs < 1000, `the short request took ${shortMs} ms`);
    // Past the stall limit (nothing read meanwhile) the stream is cut: its body ends in an error.
    const cut = () => sampleValue(app.metrics.render(), 'judgeq_jobs_total{outcome="stalled"}');
    for (let i = 0; i < 100 && cut() === 0; i++) await sleep(30);
    let bytes = 0, failed = false;
    try {
      for await (const chunk of stream.body!) bytes += chunk.byteLength;
    } catch {
      failed = true;
    }
    assert(failed, "the stream was cut, not ended");
    assert(bytes <= STREAM_BUFFER_BYTES + 4096, `${bytes} bytes were buffered`);
    const m = app.metrics.render();
    assertEquals(sampleValue(m, 'judgeq_jobs_total{outcome="stalled"}'), 1);
    assertEquals(sampleValue(m, "judgeq_streams_stalled"), 0);
    assertEquals(app.queue.inFlight, 0);
  } finally {
    await app.close();
  }
});

/** Whether python3 runs here (the slow reader's client needs its socket options). */
function hasPython(): boolean {
  try {
    return new Deno.Command("python3", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

const PYTHON = hasPython();

Deno.test({
  name:
    "attack: over a real socket, a stream whose client never reads parks (a short request goes first), then is cut",
  // A client whose kernel buffers stay small needs setsockopt before connect (tests/slow_reader.py).
  ignore: Deno.build.os !== "linux" || !PYTHON,
  fn: async () => {
    const stallS = 2;
    const s = await serve([
      "--executor",
      "cpu",
      "--max-streams",
      "1",
      "--stream-stall-timeout-s",
      String(stallS),
    ]);
    const client = new Deno.Command("python3", {
      args: [new URL("./slow_reader.py", import.meta.url).pathname, String(s.port), "/v1/generate"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const say = client.stdin.getWriter();
    const lines = client.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let pending = "";
    const line = async () => {
      while (!pending.includes("\n")) {
        const { value, done } = await lines.read();
        if (done) throw new Error(`the client ended: ${pending}`);
        pending += value;
      }
      const at = pending.indexOf("\n");
      const text = pending.slice(0, at);
      pending = pending.slice(at + 1);
      return JSON.parse(text);
    };
    const metric = async (name: string) => sampleValue(await s.metrics(), name);
    try {
      // 64 x 400 tokens, 3.6 MB of events: tens of seconds of the CPU reference if generated whole.
      const request = { context: "Once upon a time", ...LONG, stream: true };
      await say.write(enc.encode(JSON.stringify(request) + "\n"));
      await line(); // sent
      const t0 = performance.now();
      while (await metric("judgeq_streams_stalled") === 0 && performance.now() - t0 < 8000) await sleep(50);
      assertEquals(await metric("judgeq_streams_stalled"), 1, "parked once the client's socket was full");
      const parked = performance.now();
      // With one job admitted at a time, a short request runs while the stream waits.
      const short = await fetch(`${s.base}/v1/generate`, {
        method: "POST",
        body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 8 }),
      });
      assertEquals(short.status, 200);
      await short.body?.cancel();
      const shortMs = performance.now() - parked;
      assert(shortMs < 1000, `the short request took ${shortMs} ms`);
      // Nothing read meanwhile: past the stall limit the stream is cut, not before.
      const stalled = 'judgeq_jobs_total{outcome="stalled"}';
      while (await metric(stalled) === 0 && performance.now() - parked < (stallS + 4) * 1000) await sleep(50);
      const cutS = (performance.now() - parked) / 1000;
      assertEquals(await metric(stalled), 1, "cut");
      assert(cutS > stallS - 0.2, `cut ${cutS} s after it parked, before --stream-stall-timeout-s`);
      assertEquals(await metric("judgeq_streams_stalled"), 0);
      assertEquals(await metric("judgeq_jobs_in_flight"), 0);
      // The client reads now: what was written before the cut, no [DONE] (the connection closed).
      await say.write(enc.encode("go\n"));
      const got = await line();
      assertEquals([got.status, got.done], ["HTTP/1.1 200 OK", false], JSON.stringify(got));
      assert(got.bytes < 512 << 10, `${got.bytes} bytes were generated for a client that read none`);
      const [status, stderr] = await Promise.all([client.status, readAll(client.stderr)]);
      assert(status.success, `the client failed: ${stderr}`);
    } finally {
      // On a failure the client may still hold the stream: killing it cancels the job, so the server
      // stops at once instead of finishing the whole stream for nobody.
      try {
        client.kill("SIGKILL");
      } catch { /* already exited */ }
      await say.close().catch(() => {});
      await lines.cancel().catch(() => {});
      await client.stderr.cancel().catch(() => {});
      await client.status;
      await s.stop();
    }
  },
});

Deno.test({
  name: "memory: filling the context cap again after deleting every context reuses what the first fill took",
  ignore: Deno.build.os !== "linux", // resident memory is read from /proc
  fn: async () => {
    // 32 MiB of uncompressed contexts (about 150), all deleted, then the same again. Without bounded V8
    // semi-spaces the second fill ended 14% over the first (twice), the arena's memory unchanged.
    const r = await runFillCycle({ contextMaxMb: 32, executor: "wasm" });
    assert(r.contexts[0] > 50 && r.contexts[0] === r.contexts[1], JSON.stringify(r));
    assert(r.context_mb[0] > 31 && r.context_mb[1] > 31, `each fill reached the cap: ${JSON.stringify(r)}`);
    assert(r.rss_mb.first_fill > r.rss_mb.cold, JSON.stringify(r));
    assert(r.second_over_first <= 0.1, `RSS after the second fill vs the first: ${JSON.stringify(r.rss_mb)}`);
  },
});

/** haproxy's path, or null where it is not installed. */
function haproxyPath(): string | null {
  try {
    return findBinary("haproxy", "haproxy");
  } catch {
    return null;
  }
}

Deno.test({
  name: "balancer: a request whose replica dies before answering is retried on another; no HTML 502",
  ignore: haproxyPath() === null,
  fn: async () => {
    // A real replica, and a dying one: it passes health checks, then closes every POST unanswered, as a
    // replica SIGKILLed with the request in flight.
    const s = await serve(["--executor", "cpu"]);
    let stopped = false;
    const dying = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const conns = new Set<Deno.Conn>();
    const serving = (async () => {
      for await (const c of dying) {
        conns.add(c);
        (async () => {
          const buf = new Uint8Array(65536);
          try {
            for (let n = await c.read(buf); n !== null; n = await c.read(buf)) {
              const head = dec.decode(buf.subarray(0, n));
              if (!head.startsWith("GET /healthz")) break; // a request with a body: die unanswered
              await c.write(enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
            }
          } catch { /* closed */ }
          conns.delete(c);
          try {
            c.close();
          } catch { /* closed */ }
        })();
      }
    })();
    const dir = await Deno.makeTempDir({ prefix: "judgeq-lb-" });
    const lbPort = freePort();
    await Deno.writeTextFile(
      `${dir}/haproxy.cfg`,
      haproxyConfig({
        bindHost: "127.0.0.1",
        bindPort: lbPort,
        backends: [
          { name: "dying", host: "127.0.0.1", port: (dying.addr as Deno.NetAddr).port },
          { name: "alive", host: "127.0.0.1", port: s.port },
        ],
      }),
    );
    const lb = new Deno.Command(haproxyPath()!, {
      args: ["-db", "-f", `${dir}/haproxy.cfg`],
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      for (let i = 0; i < 50; i++) {
        const ok = await fetch(`http://127.0.0.1:${lbPort}/healthz`).then(
          async (r) => (await r.body?.cancel(), r.ok),
          () => false,
        );
        if (ok) break;
        await sleep(100);
      }
      await sleep(1200); // both replicas up (2 checks, 500 ms apart)
      const answers: string[] = [];
      for (let i = 0; i < 12; i++) {
        const r = await fetch(`http://127.0.0.1:${lbPort}/v1/generate`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 2 }),
        });
        const type = r.headers.get("content-type") ?? "";
        answers.push(`${r.status} ${type.split(";")[0]}`);
        await r.body?.cancel();
      }
      assertEquals(answers, Array(12).fill("200 application/json"));
      // Nothing alive behind it: the balancer's own error, in the service's JSON shape.
      await s.stop();
      stopped = true;
      await sleep(1200);
      const r = await fetch(`http://127.0.0.1:${lbPort}/v1/generate`, { method: "POST", body: "{}" });
      const text = await r.text();
      assert([502, 503].includes(r.status), `${r.status} ${text}`);
      assertEquals(r.headers.get("content-type"), "application/json");
      assert(["bad_gateway", "service_unavailable"].includes(JSON.parse(text).error.type), text);
    } finally {
      lb.kill("SIGTERM");
      await lb.status;
      if (!stopped) await s.stop();
      dying.close();
      for (const c of conns) c.close();
      await serving.catch(() => {});
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "server/main.ts: --max-connections-per-peer caps one address; bad values of the new flags exit 2 naming them",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    for (
      const [args, message] of [
        [["--max-connections-per-peer", "0"], "--max-connections-per-peer: expected a number >= 1, got '0'"],
        [["--stream-stall-timeout-s", "-1"], "--stream-stall-timeout-s: expected a number >= 0, got '-1'"],
      ] as [string[], string][]
    ) {
      const { code, stderr } = await runServerMain(args);
      assertEquals(code, 2, stderr);
      assert(stderr.includes(`error: ${message}`), stderr);
    }
    const s = await serve(["--executor", "cpu", "--max-connections-per-peer", "3"]);
    const held: Deno.Conn[] = [];
    try {
      for (let i = 0; i < 3; i++) held.push(await Deno.connect({ hostname: "127.0.0.1", port: s.port }));
      await sleep(100);
      const fourth = await exchange(s.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
      assert(fourth.startsWith("HTTP/1.1 503"), fourth);
      const error = JSON.parse(fourth.slice(fourth.indexOf("\r\n\r\n") + 4)).error;
      assert(error.message.includes("this address holds its maximum of 3 connections"), error.message);
      held.pop()!.close();
      await sleep(100);
      const again = await exchange(s.port, "GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n");
      assert(again.startsWith("HTTP/1.1 200"), again);
    } finally {
      for (const c of held) c.close();
      await s.stop();
    }
  },
});
