// deno-lint-ignore-file no-explicit-any
/**
 * Issue 14, service hardening, each as the attack and its expected answer: contexts owned by the key
 * that created them (--api-keys-file), header and idle deadlines on raw connections, JSON bodies for
 * requests the HTTP layer cannot parse, and max_tokens past the model's context.
 */
import { type App, createApp } from "../server/app.ts";
import { sampleValue } from "../server/metrics.ts";
import { errorResponse, toHttpError } from "../server/errors.ts";
import { type FrontedServer, layerAnswer, serveFronted } from "../server/front/front.ts";
import { KeysFileError, parseKeysFile } from "../server/keys.ts";
import { startServer, testModel } from "./server_testing.ts";
import { assert, assertEquals, readAll, runServerMain, spawnServerMain } from "./helpers.ts";

/** A server process on a free port: its base URL, host and port, and a stop that expects exit 0. */
async function serve(args: string[] = []) {
  const child = spawnServerMain(["--port", "0", "--executor", "cpu", "--adapter", "none", ...args]);
  const stderr = readAll(child.stderr);
  const lines = child.stdout.getReader();
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await lines.read();
    if (done) break;
    out += new TextDecoder().decode(value);
  }
  const base = /at (http:\/\/127\.0\.0\.1:(\d+))/.exec(out);
  if (!base) {
    child.kill("SIGKILL");
    throw new Error(`no ready line: ${out} / ${await stderr}`);
  }
  return {
    base: base[1],
    port: Number(base[2]),
    stderr,
    async stop() {
      child.kill("SIGTERM");
      const status = await child.status;
      await lines.cancel();
      const err = await stderr;
      assertEquals(status.code, 0, err);
      return err;
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// 1. Contexts owned by the key that created them.

Deno.test("keys file: LABEL:KEY or KEY a line, comments and blank lines skipped", () => {
  const keys = parseKeysFile("# team keys\n\nalice:key-a\r\n  bob : key-b  \nkey-c\nops.1:x:y\n");
  assertEquals(keys, [
    { label: "alice", key: "key-a" },
    { label: "bob", key: "key-b" },
    { label: "line-5", key: "key-c" },
    { label: "ops.1", key: "x:y" },
  ]);
  for (
    const [text, message] of [
      ["", "--api-keys-file: the file holds no key"],
      ["# only a comment\n\n", "--api-keys-file: the file holds no key"],
      ["alice:k1\nbob:k1\n", "--api-keys-file: line 2: duplicate key (the same as line 1)"],
      ["alice:k1\nalice:k2\n", "--api-keys-file: line 2: duplicate label 'alice' (as on line 1)"],
      [
        "a/b:k1\n",
        "--api-keys-file: line 1: the label (before the first ':') must be 1 to 64 of A-Z a-z 0-9 _ . -",
      ],
      ["alice:\n", "--api-keys-file: line 1: no key after the label 'alice'"],
      ["\n\nk1 k2\n", "--api-keys-file: line 3: the key of 'line-3' contains whitespace"],
    ]
  ) {
    let thrown: unknown = null;
    try {
      parseKeysFile(text);
    } catch (e) {
      thrown = e;
    }
    assert(thrown instanceof KeysFileError, `${JSON.stringify(text)}: refused`);
    assert((thrown as Error).message.startsWith(message), `${(thrown as Error).message} / ${message}`);
  }
});

Deno.test("attack: another key's context is a 404 like an unknown id on GET, DELETE and generate", async () => {
  const s = await startServer({
    apiKeys: [{ label: "alice", key: "key-alice-123" }, { label: "bob", key: "key-bob-456" }],
  });
  const alice = { authorization: "Bearer key-alice-123" };
  const bob = { "x-api-key": "key-bob-456" };
  const call = async (method: string, path: string, headers: Record<string, string>, body?: unknown) => {
    const r = await fetch(s.base + path, {
      method,
      headers: { ...headers, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: r.status, json: await r.json() as any };
  };
  try {
    const created = await call("POST", "/v1/contexts", alice, {
      context: "Once upon a time, there was a cat.",
    });
    assertEquals(created.status, 200);
    const id: string = created.json.id;
    const unknown = "ctx_" + "0".repeat(32);
    const ask = { question: " Who?", max_tokens: 2 };
    for (
      const [method, suffix, body] of [
        ["GET", "", undefined],
        ["POST", "/generate", ask],
        ["DELETE", "", undefined],
      ] as [string, string, unknown][]
    ) {
      const theirs = await call(method, `/v1/contexts/${id}${suffix}`, bob, body);
      const none = await call(method, `/v1/contexts/${unknown}${suffix}`, bob, body);
      assertEquals(theirs.status, 404, `${method} ${suffix}`);
      // The same answer as for an id that never existed: nothing tells that this one does.
      assertEquals(JSON.stringify(theirs.json).replaceAll(id, unknown), JSON.stringify(none.json), method);
      assertEquals(theirs.json.error.param, "id");
    }
    // Alice's context survived Bob's DELETE, and is hers to use.
    assertEquals((await call("GET", `/v1/contexts/${id}`, alice)).status, 200);
    const answer = await call("POST", `/v1/contexts/${id}/generate`, alice, ask);
    assertEquals([answer.status, answer.json.usage.completion_tokens], [200, 2]);
    assertEquals((await call("DELETE", `/v1/contexts/${id}`, alice)).status, 200);
    assertEquals((await call("GET", `/v1/contexts/${id}`, alice)).status, 404);
    // No key, or a wrong one: 401 as before.
    assertEquals((await call("GET", `/v1/contexts/${id}`, {})).status, 401);
    assertEquals((await call("GET", "/v1/models", { authorization: "Bearer key-alice-12" })).status, 401);
    // Metrics name the labels, never a key.
    const metrics = await s.get("/metrics", alice);
    assert(metrics.text.includes('judgeq_http_requests_by_key_total{key="alice"}'), metrics.text);
    assert(metrics.text.includes('judgeq_http_requests_by_key_total{key="bob"} 6'), metrics.text);
    assert(
      !metrics.text.includes("key-alice-123") && !metrics.text.includes("key-bob-456"),
      "no key in metrics",
    );
  } finally {
    await s.close();
  }
});

Deno.test("attack: with one key (--api-key) contexts work as before; with none everything stays open", async () => {
  for (const apiKey of ["only-key", null]) {
    const s = await startServer({ apiKey });
    const h: Record<string, string> = apiKey ? { authorization: `Bearer ${apiKey}` } : {};
    try {
      const created = await s.post("/v1/contexts", { context: "Once upon a time" }, h);
      assertEquals(created.status, 200);
      const got = await s.get(`/v1/contexts/${created.json.id}`, h);
      assertEquals([got.status, got.json.id], [200, created.json.id]);
      const r = await fetch(`${s.base}/v1/contexts/${created.json.id}`, { method: "DELETE", headers: h });
      assertEquals([r.status, (await r.json()).deleted], [200, true]);
    } finally {
      await s.close();
    }
  }
});

Deno.test({
  name: "server/main.ts: --api-keys-file serves each key; a bad keys file exits 2 naming the flag and line",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "judgeq-keys-" });
    try {
      const bad: [string, string][] = [
        ["alice:k1\nbob:k1\n", "--api-keys-file: line 2: duplicate key (the same as line 1)"],
        ["# nothing\n", "--api-keys-file: the file holds no key"],
        ["sk/live:k1\n", "--api-keys-file: line 1: the label (before the first ':')"],
      ];
      for (const [i, [text, message]] of bad.entries()) {
        await Deno.writeTextFile(`${dir}/bad${i}`, text);
        const { code, stderr } = await runServerMain(["--api-keys-file", `${dir}/bad${i}`]);
        assertEquals(code, 2, stderr);
        assert(stderr.includes(`error: ${message}`), stderr);
        assert(!stderr.includes("k1") && !stderr.includes("sk/live"), `no part of a key in: ${stderr}`);
      }
      await Deno.writeTextFile(`${dir}/keys`, "# ops\nalice:secret-alice\nbob:secret-bob\n");
      for (
        const [args, env, message] of [
          [
            ["--api-keys-file", `${dir}/keys`, "--api-key", "x"],
            {},
            "give --api-keys-file or --api-key, not both",
          ],
          [
            ["--api-keys-file", `${dir}/keys`],
            { JUDGEQ_API_KEY: "x" },
            "give --api-keys-file or $JUDGEQ_API_KEY",
          ],
          [["--api-keys-file", dir], {}, "--api-keys-file: not a regular file"],
        ] as [string[], Record<string, string>, string][]
      ) {
        const { code, stderr } = await runServerMain(args, env);
        assertEquals(code, 2, stderr);
        assert(stderr.includes(message), stderr);
      }
      const s = await serve(["--api-keys-file", `${dir}/keys`]);
      let err = "";
      try {
        for (const key of ["secret-alice", "secret-bob"]) {
          const r = await fetch(`${s.base}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
          assertEquals(r.status, 200);
          await r.body?.cancel();
        }
        const r = await fetch(`${s.base}/v1/models`, { headers: { authorization: "Bearer secret-carol" } });
        assertEquals(r.status, 401);
        await r.body?.cancel();
      } finally {
        err = await s.stop();
      }
      assert(err.includes("2 API keys: alice, bob"), err);
      assert(!err.includes("secret-"), `no key in the log: ${err}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// ---------------------------------------------------------------------------------------------------
// 4. An explicit max_tokens past the model's context: a 400 naming it, as OpenAI's "maximum context
// length" error, unless the request opts in to truncation. A default stays bounded by the room left.

Deno.test("attack: max_tokens past the model's context is a 400 naming it, on every generating endpoint", async () => {
  const s = await startServer();
  const n = s.model.config.maxSeqLen;
  const tokens = (text: string, bos = true) => s.model.tokenizer.encode(text, { addBos: bos }).length;
  let prompt = "Once upon a time";
  while (tokens(prompt) < n - 12) prompt += " there was a cat";
  const used = tokens(prompt), room = n - used;
  assert(room > 0 && room <= 12, `room ${room}`);
  const question = " Who was there?";
  const q = tokens(question, false);
  try {
    const cases: [string, string, Record<string, unknown>, number, string][] = [
      ["/v1/generate", "prompt", { prompt }, room, "max_tokens"],
      ["/v1/completions", "prompt", { prompt }, room, "max_tokens"],
      [
        "/v1/chat/completions",
        "max_tokens",
        { messages: [{ role: "user", content: prompt }] },
        room,
        "max_tokens",
      ],
      [
        "/v1/chat/completions",
        "max_completion_tokens",
        { messages: [{ role: "user", content: prompt }] },
        room,
        "max_completion_tokens",
      ],
      ["/v1/generate", "context", { context: prompt, questions: [question] }, room - q, "max_tokens"],
    ];
    for (const [path, , body, left, param] of cases) {
      const over = { ...body, [param]: left + 1, ignore_eos: true };
      // POST {path} {..., "max_tokens": left + 1}: refused before any work, naming the field and the room.
      for (const stream of [false, true]) {
        const r = await s.post(path, { ...over, stream });
        assertEquals([r.status, r.json.error?.type, r.json.error?.param], [
          400,
          "invalid_request_error",
          param,
        ], path);
        assert(r.json.error.message.includes(`at most ${left} can be generated`), r.json.error.message);
        assert(r.json.error.message.includes(`${n - left} `), r.json.error.message);
      }
      // Exactly the room: served in full.
      const fits = await s.post(path, { ...body, [param]: left, ignore_eos: true });
      assertEquals(
        [fits.status, fits.json.usage?.completion_tokens],
        [200, left],
        `${path}: ${JSON.stringify(fits.json)}`,
      );
      // Opted in: cut at the context's end.
      const cut = await s.post(path, { ...over, [param]: left + 100, truncate_max_tokens: true });
      assertEquals([cut.status, cut.json.usage?.completion_tokens], [200, left], path);
    }
    // No max_tokens: bounded by the room left, not refused.
    const dflt = await s.post("/v1/generate", { prompt, ignore_eos: true });
    assertEquals([dflt.status, dflt.json.usage.completion_tokens], [200, room]);

    // A kept context's answers: context and question tokens count.
    const ctx = await s.post("/v1/contexts", { context: prompt });
    assertEquals(ctx.status, 200);
    const path = `/v1/contexts/${ctx.json.id}/generate`;
    const over = await s.post(path, { question, max_tokens: room - q + 1 });
    assertEquals([over.status, over.json.error.param], [400, "max_tokens"]);
    assert(over.json.error.message.includes(`at most ${room - q} can be generated`), over.json.error.message);
    const ok = await s.post(path, { question, max_tokens: room - q, ignore_eos: true });
    assertEquals([ok.status, ok.json.usage.completion_tokens], [200, room - q]);
    const cut = await s.post(path, {
      question,
      max_tokens: 400,
      ignore_eos: true,
      truncate_max_tokens: true,
    });
    assertEquals([cut.status, cut.json.usage.completion_tokens], [200, room - q]);
    // A bad opt-in is a 400 naming it.
    const bad = await s.post("/v1/generate", { prompt: "Once", truncate_max_tokens: "yes" });
    assertEquals([bad.status, bad.json.error.param], [400, "truncate_max_tokens"]);
    assertEquals(await s.metric('judgeq_jobs_total{outcome="error"}'), 0); // refused before the queue
  } finally {
    await s.close();
  }
});

// ---------------------------------------------------------------------------------------------------
// 2. Header and idle deadlines, on raw connections. 3. JSON bodies for requests HTTP cannot parse.

const HEADER_S = 0.6, IDLE_S = 1.2;

/** The app behind the TCP front (front.ts), as main.ts serves it, with short deadlines. */
async function fronted(
  timeouts = { headerTimeoutMs: HEADER_S * 1000, idleTimeoutMs: IDLE_S * 1000 },
  bodyTimeoutMs = 30_000,
  maxConnections = 0,
): Promise<{ port: number; server: FrontedServer; app: App; close(): Promise<void> }> {
  const app = createApp(await testModel(), { log: () => {}, bodyTimeoutMs });
  const server = await serveFronted({
    hostname: "127.0.0.1",
    port: 0,
    maxConnections,
    ...timeouts,
    onError: (e) => errorResponse(toHttpError(e, () => {})),
  }, app.handler);
  return {
    port: server.addr.port,
    server,
    app,
    async close() {
      await server.shutdown();
      app.close();
    },
  };
}

const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A raw connection: what it received, and after how many seconds the server closed it. */
async function raw(port: number, talk: (c: Deno.Conn) => Promise<void>, giveUpS = 10) {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  const t0 = performance.now();
  let text = "", closedAfterS = Infinity, stop = false;
  const reading = (async () => {
    const buf = new Uint8Array(4096);
    try {
      for (let n = await c.read(buf); n !== null; n = await c.read(buf)) {
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
    } catch { /* reset: closed too */ }
    closedAfterS = (performance.now() - t0) / 1000;
    stop = true;
  })();
  const talking = talk(c).catch(() => {}); // writes fail once the server closes
  await Promise.race([reading, sleep(giveUpS * 1000)]);
  stop = true;
  await talking;
  try {
    c.close();
  } catch { /* closed */ }
  await reading;
  return { text, closedAfterS, stopped: () => stop };
}

Deno.test("attack: a connection that sends nothing is closed after the header timeout", async () => {
  const s = await fronted();
  try {
    // connect, then silence
    const r = await raw(s.port, async () => {});
    assertEquals(r.text, "");
    assert(
      r.closedAfterS >= HEADER_S * 0.9 && r.closedAfterS < HEADER_S + 2,
      `closed after ${r.closedAfterS} s`,
    );
  } finally {
    await s.close();
  }
});

Deno.test("attack: connections past --max-connections get a JSON 503 and are closed; freed places serve again", async () => {
  const s = await fronted({ headerTimeoutMs: 5000, idleTimeoutMs: 5000 }, 30_000, 3);
  const held: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 3; i++) held.push(await Deno.connect({ hostname: "127.0.0.1", port: s.port }));
    await sleep(100); // the front has taken them
    const r = await raw(s.port, async () => {});
    assert(r.text.startsWith("HTTP/1.1 503 Service Unavailable\r\n"), r.text);
    assert(/\r\nretry-after: 1\r\n/i.test(r.text), r.text);
    const body = JSON.parse(r.text.slice(r.text.indexOf("\r\n\r\n") + 4));
    assertEquals(body.error.type, "service_unavailable");
    assert(r.closedAfterS < 2, `closed after ${r.closedAfterS} s`);
    held.pop()!.close();
    await sleep(100);
    const ok = await fetch(`http://127.0.0.1:${s.port}/healthz`);
    assertEquals(ok.status, 200);
    await ok.body?.cancel();
  } finally {
    for (const c of held) c.close();
    await s.close();
  }
});

Deno.test("attack: headers sent a byte at a time past the header timeout are cut", async () => {
  const s = await fronted();
  try {
    const head = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + "a".repeat(200) + "\r\n\r\n";
    let sent = 0;
    // "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaa..." one byte every 50 ms: 12 s in all
    const r = await raw(s.port, async (c) => {
      for (const ch of head) {
        await c.write(enc.encode(ch));
        sent++;
        await sleep(50);
      }
    });
    assertEquals(r.text, ""); // never answered: the headers never completed in time
    assert(
      r.closedAfterS >= HEADER_S * 0.9 && r.closedAfterS < HEADER_S + 2,
      `closed after ${r.closedAfterS} s`,
    );
    assert(sent < head.length, `cut after ${sent} of ${head.length} bytes`);
  } finally {
    await s.close();
  }
});

Deno.test("attack: an idle keep-alive connection is closed after the idle timeout; each request gets its own header deadline", async () => {
  const s = await fronted();
  try {
    let answers = 0;
    const r = await raw(s.port, async (c) => {
      // Two requests on one connection, the second after a pause shorter than the idle timeout, then idle.
      await c.write(enc.encode("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
      await sleep(IDLE_S * 500);
      await c.write(enc.encode("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    });
    answers = r.text.split("HTTP/1.1 200").length - 1;
    assertEquals(answers, 2, r.text);
    // Closed an idle timeout after the second answer (sent at about IDLE_S / 2), not before.
    assert(
      r.closedAfterS >= IDLE_S * 1.4 && r.closedAfterS < IDLE_S * 1.5 + 2,
      `closed after ${r.closedAfterS} s`,
    );
    assertEquals(await s.server.connections(), 0);
  } finally {
    await s.close();
  }
});

Deno.test("hardening: a request being handled is not cut by the header or idle deadline (its body has its own)", async () => {
  const s = await fronted(undefined, 5_000);
  try {
    const body = JSON.stringify({ prompt: "Once upon a time", max_tokens: 4 });
    const r = await raw(s.port, async (c) => {
      // Headers at once, then the body in pieces over 2 s: longer than both deadlines.
      await c.write(enc.encode(
        `POST /v1/generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n` +
          `content-length: ${body.length}\r\nconnection: close\r\n\r\n`,
      ));
      for (let i = 0; i < 4; i++) {
        await sleep(500);
        await c.write(
          enc.encode(body.slice(i * Math.ceil(body.length / 4), (i + 1) * Math.ceil(body.length / 4))),
        );
      }
    });
    assert(r.text.startsWith("HTTP/1.1 200"), r.text);
    assert(r.text.includes('"completion_tokens":4'), r.text);
    assert(r.closedAfterS >= 2, `answered after the body, ${r.closedAfterS} s`);
  } finally {
    await s.close();
  }
});

Deno.test("attack: a request line or header HTTP cannot parse gets a JSON 400", async () => {
  const s = await fronted();
  try {
    for (
      const request of [
        "GET /healthz HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n",
        "NOT A REQUEST LINE\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad\x01: y\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: " + "a".repeat(1 << 20) + "\r\n\r\n", // over the layer's buffer
      ]
    ) {
      const r = await raw(s.port, async (c) => {
        await c.write(enc.encode(request));
      });
      const [head, body] = r.text.split("\r\n\r\n");
      assert(
        head.startsWith("HTTP/1.1 400 "),
        `${JSON.stringify(request.slice(0, 60))}: ${r.text.slice(0, 300)}`,
      );
      assert(/content-type: application\/json/i.test(head), head);
      const err = JSON.parse(body).error;
      assertEquals([err.type, err.param], ["invalid_request_error", null]);
      assert(err.message.includes("could not be parsed"), err.message);
      assert(r.closedAfterS < HEADER_S, "closed with the answer, not by the deadline");
    }
    // The same on a kept-alive connection, after answers it had: a 200, then the JSON 400.
    const r = await raw(s.port, async (c) => {
      await c.write(enc.encode("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
      await sleep(100);
      await c.write(
        enc.encode("GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nBroken\r\n\r\n"),
      );
    });
    const answers = r.text.split(/(?=HTTP\/1\.1 )/);
    assertEquals(
      answers.map((a) => a.slice(0, 12)),
      ["HTTP/1.1 200", "HTTP/1.1 200", "HTTP/1.1 400"],
      r.text.slice(0, 400),
    );
    assertEquals(JSON.parse(answers[2].split("\r\n\r\n")[1]).error.type, "invalid_request_error");
    // And the server still answers.
    const ok = await fetch(`http://127.0.0.1:${s.port}/healthz`);
    assertEquals([ok.status, (await ok.json()).status], [200, "ok"]);
  } finally {
    await s.close();
  }
});

Deno.test("attack: the private port behind the front refuses requests that did not come through it", async () => {
  const s = await fronted();
  try {
    assert(s.server.inner && s.server.inner.port !== s.port);
    // GET http://127.0.0.1:{private port}/healthz, bypassing the front and its deadlines
    const r = await fetch(`http://127.0.0.1:${s.server.inner.port}/healthz`);
    const err = (await r.json()).error;
    assertEquals([r.status, err.type, err.param], [403, "permission_error", null]);
  } finally {
    await s.close();
  }
});

Deno.test("hardening: through the front, a stream is relayed as it comes and a client gone cancels its job", async () => {
  const s = await fronted();
  try {
    const ac = new AbortController();
    const r = await fetch(`http://127.0.0.1:${s.port}/v1/generate`, {
      method: "POST",
      body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 480, ignore_eos: true, stream: true }),
      signal: ac.signal,
    });
    assertEquals(r.status, 200);
    const reader = r.body!.getReader();
    assert(!(await reader.read()).done, "a first chunk before the end");
    ac.abort();
    await reader.cancel().catch(() => {});
    for (let i = 0; i < 100 && s.app.queue.inFlight > 0; i++) await sleep(50);
    assertEquals(s.app.queue.inFlight, 0);
    assertEquals(sampleValue(s.app.metrics.render(), 'judgeq_jobs_total{outcome="cancelled"}'), 1);
  } finally {
    await s.close();
  }
});

Deno.test({
  name:
    "server/main.ts: --header-timeout-s and --idle-timeout-s are checked; the real server cuts each attack",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    for (
      const [args, message] of [
        [["--header-timeout-s", "-1"], "--header-timeout-s: expected a number >= 0, got '-1'"],
        [["--idle-timeout-s", "soon"], "--idle-timeout-s: expected a number, got 'soon'"],
        [["--body-timeout-s", "0"], "--body-timeout-s: expected a number >= 0.001, got '0'"],
      ] as [string[], string][]
    ) {
      const { code, stderr } = await runServerMain(args);
      assertEquals(code, 2, stderr);
      assert(stderr.includes(`error: ${message}`), stderr);
    }
    const s = await serve(["--header-timeout-s", "1", "--idle-timeout-s", "1"]);
    try {
      // The four attacks against the real process, at once: silence, a byte every 100 ms, an idle
      // keep-alive connection, a broken header line.
      const [silent, trickle, idle, broken] = await Promise.all([
        raw(s.port, async () => {}),
        raw(s.port, async (c) => {
          for (const ch of "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + "a".repeat(100)) {
            await c.write(enc.encode(ch));
            await sleep(100);
          }
        }),
        raw(s.port, async (c) => {
          await c.write(enc.encode("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
        }),
        raw(s.port, async (c) => {
          await c.write(enc.encode("GET /healthz HTTP/1.1\r\nHost: x\r\nBroken\r\n\r\n"));
        }),
      ]);
      for (const [name, r] of [["silent", silent], ["trickle", trickle], ["idle", idle]] as const) {
        assert(r.closedAfterS >= 0.9 && r.closedAfterS < 4, `${name}: closed after ${r.closedAfterS} s`);
      }
      assertEquals([silent.text, trickle.text], ["", ""]);
      assert(idle.text.startsWith("HTTP/1.1 200"), idle.text);
      assert(broken.text.startsWith("HTTP/1.1 400"), broken.text);
      assertEquals(JSON.parse(broken.text.split("\r\n\r\n")[1]).error.type, "invalid_request_error");
      const ok = await fetch(`${s.base}/healthz`);
      assertEquals(ok.status, 200);
      await ok.body?.cancel();
    } finally {
      await s.stop();
    }
  },
});

Deno.test("front: only the HTTP layer's own empty answer is taken for one, never a service answer", () => {
  const bytes = (s: string) => new TextEncoder().encode(s);
  const deno =
    "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 04:01:06 GMT\r\nconnection: close\r\n\r\n";
  const json = '{"error":{"type":"not_found_error","message":"no context","param":"id"}}';
  assertEquals(layerAnswer(bytes(deno)), { at: 0, status: 400 });
  const tail = "0\r\n\r\n"; // the end of a chunked answer read together with the layer's own
  assertEquals(layerAnswer(bytes(tail + deno)), { at: tail.length, status: 400 });
  for (
    const service of [
      // A JSON error (with connection: close, as for a client that asked for it).
      `HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: ${json.length}\r\nconnection: close\r\n\r\n${json}`,
      // HEAD of an error: no body, but its content-type.
      "HTTP/1.1 405 Method Not Allowed\r\ncontent-type: application/json\r\nallow: POST\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
      // A stream's event that quotes such text: JSON escapes CR and LF.
      `data: ${JSON.stringify({ text: deno })}\n\n`,
      "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ]
  ) assertEquals(layerAnswer(bytes(service)), null, service.slice(0, 40));
});
