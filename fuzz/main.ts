/**
 * deno task fuzz: seeded fuzzing of the service's inputs, in process (no sockets).
 *   deno task fuzz [--requests 10000] [--headers 2000] [--configs 1000] [--keys 2000] [--gguf 1000] [--seed 1 ...] [--timeout 2]
 *                  [--concurrency 1] [--max-body-bytes 1048576] [--max-tokens-per-request 8] [--executor wasm]
 *                  [--out fuzz/out]
 *   deno task fuzz --replay fuzz/out/<finding>.json
 * Requests go through the app's handler over the embedded stories260K; safetensors and adapter headers
 * through loadModelFromBytes and the adapter decoder; config.json, tokenizer.json and tokenizer_config.json
 * (chat templates included) through loadModelFromBytes and loadModelDir, each model that loads generating
 * 2 tokens and answering a chat; API-key headers through an app with keys (fuzz/run_files.ts); GGUF files (the
 * model as Q8_0) through loadModelFromBytes and loadModelDir (fuzz/gguf.ts: a finding is replayed by its seed and
 * index). Prints one JSON report per seed; every finding
 * (crash, hang, bad error body) is saved under --out with what replays it. Exits 1 on any finding.
 */
import * as E from "fp-ts/Either";
import { decodeAdapter } from "../core/adapter.ts";
import {
  executorFlag,
  executorFlags,
  parseFlags,
  threadsFlag,
  usage,
  UsageError,
  weightsFlag,
} from "../io/flags.ts";
import { adapterFromBytes, loadModelFromBytes, parseModelBytes } from "../io/from_bytes.ts";
import { EMBEDDED_MODEL_DIR } from "../io/model_dir.ts";
import { loadModel } from "../io/runtime.ts";
import { createApp } from "../server/app.ts";
import { type Finding, fuzzHeaders, fuzzRequests, toRequest } from "./run.ts";
import { type FileFinding, fuzzKeys, fuzzModelFiles } from "./run_files.ts";
import { fuzzGguf } from "./gguf.ts";
import { hfToGguf } from "../core/gguf/convert.ts";

/** The keys the API-key fuzz configures (a plain one, one with ':' and '=' in it, one with Latin-1). */
const FUZZ_KEYS = ["sk-judgeq-fuzz-0123456789", "k2:abc=def", "\u00ffkey-latin1"];

const SPEC = {
  requests: { kind: "int", help: "request mutations per seed (default 10000)", default: 10_000 },
  headers: {
    kind: "int",
    help: "safetensors and adapter header mutations per seed (default 2000)",
    default: 2000,
  },
  configs: {
    kind: "int",
    help: "config.json, tokenizer.json and tokenizer_config.json mutations per seed (default 1000)",
    default: 1000,
  },
  keys: { kind: "int", help: "API-key header mutations per seed (default 2000)", default: 2000 },
  gguf: { kind: "int", help: "GGUF file mutations per seed (default 1000)", default: 1000 },
  seed: { kind: "strings", help: "a seed (repeatable; default 1)" },
  concurrency: {
    kind: "int",
    help: "requests in flight at once (default 1: findings replay exactly; more exercises the queue)",
    default: 1,
  },
  timeout: {
    kind: "number",
    help: "seconds after which a request or a parse is a hang (default 2)",
    default: 2,
  },
  "max-body-bytes": {
    kind: "int",
    help: "the server's body limit (default 1048576, the server's own default)",
    default: 1 << 20,
  },
  "max-tokens-per-request": { kind: "int", help: "the server's token limit (default 8)", default: 8 },
  ...executorFlags("wasm"),
  out: { kind: "string", help: "where findings are saved (default fuzz/out)", default: "fuzz/out" },
  replay: { kind: "string", help: "replay one saved finding and print what happens now" },
  help: { kind: "boolean", help: "show this help" },
} as const;

const read = (name: string) => Deno.readFile(`${EMBEDDED_MODEL_DIR.replace(/\/+$/, "")}/${name}`);

function appFor(
  model: Parameters<typeof createApp>[0],
  f: { maxBody: number; maxTokens: number },
  logged: string[],
) {
  return createApp(model, {
    maxBodyBytes: f.maxBody,
    bodyTimeoutMs: 2000,
    maxTokensPerRequest: f.maxTokens,
    maxQuestions: 8,
    queueSize: 4,
    log: (m) => logged.push(m),
  });
}

async function save(dir: string, f: Finding | FileFinding): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  const name = `${dir}/${f.target.replace(/\.json$/, "")}-seed${f.seed}-${f.index}-${f.kind}`;
  await Deno.writeFile(`${name}.bin`, f.bytes);
  const { bytes: _b, ...meta } = f;
  await Deno.writeTextFile(`${name}.json`, JSON.stringify({ ...meta, bytes_file: `${name}.bin` }, null, 2));
  return `${name}.json`;
}

async function main(argv: string[]): Promise<number> {
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno task fuzz", SPEC));
    return 0;
  }
  const requests = f.requests as number, headers = f.headers as number;
  const configs = f.configs as number, keyCount = f.keys as number;
  const ggufCount = f.gguf as number;
  if (requests < 0 || headers < 0 || configs < 0 || keyCount < 0 || ggufCount < 0) {
    throw new UsageError("--requests, --headers, --configs, --keys and --gguf must be >= 0");
  }
  const seeds = ((f.seed as string[] | undefined) ?? ["1"]).map((s) => {
    const n = Number(s);
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new UsageError(`--seed: expected an integer >= 0, got '${s}'`);
    }
    return n;
  });
  const timeoutMs = (f.timeout as number) * 1000;
  const limits = { maxBody: f["max-body-bytes"] as number, maxTokens: f["max-tokens-per-request"] as number };
  const logged: string[] = [];
  const model = await loadModel({
    executor: executorFlag(f.executor),
    threads: threadsFlag(f.threads),
    weightFormat: weightsFlag(f),
    warn: () => {},
  });
  const app = appFor(model, limits, logged);
  let unhandled = 0;
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    unhandled++;
    console.error(`unhandled rejection: ${e.reason instanceof Error ? e.reason.stack : String(e.reason)}`);
  });
  try {
    if (f.replay) return await replay(f.replay as string, app, logged, model);
    const [config, tokenizer, safetensors, adapter, tokenizerConfig] = await Promise.all(
      ["config.json", "tokenizer.json", "model.safetensors", "judgeq.safetensors", "tokenizer_config.json"]
        .map(read),
    );
    const { weights } = await parseModelBytes({ config, tokenizer, safetensors });
    const tempDir = await Deno.makeTempDir({ prefix: "judgeq-fuzz-" });
    await Deno.writeFile(`${tempDir}/config.json`, config);
    await Deno.writeFile(`${tempDir}/tokenizer.json`, tokenizer);
    let findings = 0;
    for (const seed of seeds) {
      const onFinding = (x: Finding | FileFinding) => {
        findings++;
        console.error(
          `${x.kind} (${x.target} ${x.seed}/${x.index}, ${x.ops.join(",")}): ${x.detail.split("\n")[0]}`,
        );
      };
      const r = await fuzzRequests(app, {
        seed,
        requests,
        maxBodyBytes: limits.maxBody,
        timeoutMs,
        concurrency: f.concurrency as number,
        drainLog: () => logged.splice(0),
        onFinding,
      });
      const h = await fuzzHeaders({
        seed,
        mutations: headers,
        config,
        tokenizer,
        safetensors,
        adapter,
        weights,
        timeoutMs,
        tempDir,
        onFinding,
      });
      const filesDir = await Deno.makeTempDir({ prefix: "judgeq-fuzz-files-" });
      const c = await fuzzModelFiles({
        seed,
        mutations: configs,
        config,
        tokenizer,
        tokenizerConfig,
        safetensors,
        timeoutMs,
        tempDir: filesDir,
        appFor: (m) => appFor(m, limits, logged),
        onFinding,
      }).finally(() => Deno.remove(filesDir, { recursive: true }));
      const keyApp = createApp(model, {
        apiKeys: FUZZ_KEYS.map((key, i) => ({ label: `fuzz-${i}`, key })),
        maxTokensPerRequest: limits.maxTokens,
        log: (m) => logged.push(m),
      });
      const k = await fuzzKeys(keyApp, { seed, requests: keyCount, keys: FUZZ_KEYS, timeoutMs, onFinding })
        .finally(() => keyApp.close());
      const ggufDir = await Deno.makeTempDir({ prefix: "judgeq-fuzz-gguf-" });
      const g = await fuzzGguf({
        seed,
        mutations: ggufCount,
        file: hfToGguf(await parseModelBytes({ config, tokenizer, safetensors, tokenizerConfig }), "q8_0"),
        timeoutMs,
        tempDir: ggufDir,
        onFinding: (x) => {
          findings++;
          console.error(
            `${x.kind} (gguf ${x.seed}/${x.index}, ${x.ops.join(",")}): ${x.detail.split("\n")[0]}`,
          );
        },
      }).finally(() => Deno.remove(ggufDir, { recursive: true }));
      const internal = logged.splice(0);
      for (const m of internal) console.error(`logged: ${m.split("\n")[0]}`);
      findings += internal.length;
      for (const x of [...r.findings, ...h.findings, ...c.findings, ...k.findings]) {
        console.error(`saved ${await save(f.out as string, x)}`);
      }
      const polluted = ({} as Record<string, unknown>).polluted !== undefined;
      console.log(
        JSON.stringify({
          seed,
          requests: r.report,
          headers: h.report,
          model_files: c.report,
          api_keys: k.report,
          gguf: g.report,
          prototype_polluted: polluted,
        }),
      );
      if (polluted) findings++;
    }
    await Deno.remove(tempDir, { recursive: true });
    findings += unhandled;
    console.log(JSON.stringify({ seeds, findings, unhandled_rejections: unhandled }));
    return findings === 0 ? 0 : 1;
  } finally {
    app.close();
    model.executor.dispose();
  }
}

/** Sends or parses one saved finding again and prints the outcome. */
async function replay(
  path: string,
  app: ReturnType<typeof createApp>,
  logged: string[],
  model: Parameters<typeof createApp>[0],
): Promise<number> {
  const saved = JSON.parse(await Deno.readTextFile(path)) as
    & Omit<Finding | FileFinding, "bytes">
    & { bytes_file: string };
  const bytes = await Deno.readFile(saved.bytes_file);
  if (saved.target === "api-key") {
    const m = saved as unknown as FileFinding;
    const keyApp = createApp(model, {
      apiKeys: FUZZ_KEYS.map((key, i) => ({ label: `fuzz-${i}`, key })),
    });
    try {
      const headers = new Headers();
      for (const [k, v] of m.headers!) headers.append(k, v);
      const res = await keyApp.handler(
        new Request(`http://fuzz.local${m.path}`, { method: m.method, headers }),
      );
      console.log(`${res.status}: ${await res.text()}`);
    } finally {
      await keyApp.close();
    }
    return 0;
  }
  if (saved.target.endsWith(".json")) {
    const files = Object.fromEntries(
      await Promise.all(
        ["config.json", "tokenizer.json", "tokenizer_config.json"].map(async (n) =>
          [n, await read(n)] as const
        ),
      ),
    );
    files[saved.target] = bytes;
    try {
      const loaded = await loadModelFromBytes({
        config: files["config.json"],
        tokenizer: files["tokenizer.json"],
        tokenizerConfig: files["tokenizer_config.json"],
        safetensors: await read("model.safetensors"),
        adapter: null,
        executor: "cpu",
        warn: () => {},
      });
      console.log("loaded");
      const chat = createApp(loaded, { log: (m) => logged.push(m) });
      const res = await chat.handler(
        new Request("http://fuzz.local/v1/chat/completions", {
          method: "POST",
          body: JSON.stringify({ messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 2 }),
        }),
      );
      console.log(`chat: ${res.status}: ${await res.text()}`);
      await chat.close();
      loaded.executor.dispose();
    } catch (e) {
      console.log(e instanceof Error ? (e.stack ?? e.message) : String(e));
    }
    for (const m of logged) console.log(`logged: ${m}`);
    return logged.length ? 1 : 0;
  }
  const meta = saved as unknown as Omit<Finding, "bytes"> & { bytes_file: string };
  if (meta.target === "request") {
    let id = "ctx_none";
    if (meta.request!.path.includes("{id}")) {
      const made = await app.handler(
        new Request("http://fuzz.local/v1/contexts", {
          method: "POST",
          body: '{"context": "Once upon a time"}',
        }),
      );
      id = (await made.json()).id;
    }
    const abort = new AbortController();
    const after = meta.request!.abortAfterMs;
    if (after !== null && after > 0) setTimeout(() => abort.abort(), after);
    if (after === -1) abort.abort();
    try {
      const t0 = performance.now();
      const answer = app.handler(toRequest({ ...meta.request!, body: bytes }, id, abort.signal));
      if (after === 0) abort.abort();
      const res = await answer;
      const text = await res.text();
      console.log(`${res.status} in ${Math.round(performance.now() - t0)} ms: ${text}`);
    } catch (e) {
      console.log(`${abort.signal.aborted ? "disconnected: " : ""}${e instanceof Error ? e.stack : e}`);
    }
    for (const m of logged) console.log(`logged: ${m}`);
    return logged.length ? 1 : 0;
  }
  try {
    if (meta.target === "model") {
      const [config, tokenizer] = await Promise.all(["config.json", "tokenizer.json"].map(read));
      await loadModelFromBytes({ config, tokenizer, safetensors: bytes, adapter: null, executor: "cpu" });
    } else {
      const d = decodeAdapter(bytes);
      if (E.isLeft(d)) throw d.left;
      const [config, tokenizer, safetensors] = await Promise.all(
        ["config.json", "tokenizer.json", "model.safetensors"].map(read),
      );
      await adapterFromBytes(bytes, (await parseModelBytes({ config, tokenizer, safetensors })).weights);
    }
    console.log("loaded");
  } catch (e) {
    console.log(e instanceof Error ? (e.stack ?? e.message) : String(e));
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) console.error(`error: ${e.message}\n${usage("deno task fuzz", SPEC)}`);
    else console.error(`error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    Deno.exit(2);
  }
}
