/**
 * The model-file and API-key fuzz runs (deno task fuzz --configs N --keys N; tests/fuzz_test.ts):
 *  - fuzzModelFiles: mutated config.json, tokenizer.json and tokenizer_config.json (fuzz/mutate_files.ts)
 *    through loadModelFromBytes on the CPU executor, every fourth also from disk (loadModelDir, then
 *    modelFromFiles), whose verdict must be the same. Each must load or throw a JudgeQError naming the
 *    file or field; anything else is a crash, a load slower than the timeout a hang, and a load that
 *    grows memory past `maxGrowthBytes` an allocation sized by a lying config. Each model that loads
 *    generates 2 greedy tokens, and answers a chat through the app's handler (its template rendered by
 *    server/openai.ts): a JudgeQError or a 4xx is fine, a 5xx, a throw or a slow answer is not.
 *  - fuzzKeys: mutated Authorization and x-api-key headers through an app with keys configured: only a
 *    request presenting a configured key exactly passes; every other one gets a JSON 401; never a 5xx.
 */
import { generateText, type Model } from "../core/engine.ts";
import { JudgeQError } from "../core/errors.ts";
import { loadModelFromBytes, modelFromFiles } from "../io/from_bytes.ts";
import { loadModelDir } from "../io/model_dir.ts";
import type { App } from "../server/app.ts";
import { type ModelFileName, mutateConfig, mutateKeyHeaders, mutateTokenizer } from "./mutate_files.ts";
import type { Finding } from "./run.ts";

/** A model-file or key finding: which file (or "api-key"), and the input that replays it. */
export interface FileFinding extends Omit<Finding, "target" | "request"> {
  target: ModelFileName | "api-key";
  /** api-key findings: the headers, path and method sent. */
  headers?: [string, string][];
  path?: string;
  method?: string;
}

export interface ModelFileReport {
  mutations: number;
  seed: number;
  /** Outcomes by file: "ok" or the JudgeQError kind. */
  by_file: Record<string, Record<string, number>>;
  /** JudgeQError params, by the field they name. */
  error_params: Record<string, number>;
  /** Models that loaded: their 2-token generation and their chat through the app, by outcome. */
  generation: Record<string, number>;
  chat: Record<string, number>;
  crashes: number;
  hangs: number;
  unnamed: number;
  allocations: number;
  from_disk: number;
  disk_mismatches: number;
  slowest_ms: number;
  wall_s: number;
}

export interface ModelFileFuzzOptions {
  seed: number;
  mutations: number;
  config: Uint8Array;
  tokenizer: Uint8Array;
  tokenizerConfig: Uint8Array;
  safetensors: Uint8Array;
  /** A load, a generation or a chat slower than this is a hang. */
  timeoutMs: number;
  /**
   * An empty directory: the valid files are written there once, and every fourth mutation is loaded
   * from it with the mutated file in place.
   */
  tempDir?: string;
  /** An app around a loaded model (the chat check); its close() is called after each. */
  appFor: (model: Model) => App;
  /** Memory growth over one case past which it is an allocation finding (default 256 MiB). */
  maxGrowthBytes?: number;
  onFinding?: (f: FileFinding) => void;
  /** Called before each case with its mutation (a progress line, or the case a hang is in). */
  onCase?: (i: number, m: { file: string; index: number; ops: string[] }) => void;
}

const bump = (m: Record<string, number>, k: string, n = 1) => (m[k] = (m[k] ?? 0) + n);
const describe = (e: unknown) => e instanceof Error ? (e.stack ?? e.message) : String(e);
const CHAT = {
  messages: [{ role: "system", content: "Tell a story." }, { role: "user", content: "Once upon a time" }],
  max_tokens: 2,
  temperature: 0,
};

type Outcome = { outcome: string; param?: string | null; problem?: string; ms: number };

async function attempt<T>(run: () => Promise<T>): Promise<Outcome & { value?: T }> {
  const t = performance.now();
  try {
    const value = await run();
    return { outcome: "ok", ms: performance.now() - t, value };
  } catch (e) {
    const ms = performance.now() - t;
    if (e instanceof JudgeQError) return { outcome: e.kind, param: e.param, ms };
    return { outcome: "crash", problem: describe(e), ms };
  }
}

const memory = () => {
  const m = Deno.memoryUsage();
  return m.heapUsed + m.external;
};

/** Half config.json mutations, half tokenizer.json and tokenizer_config.json ones. */
export async function fuzzModelFiles(
  o: ModelFileFuzzOptions,
): Promise<{ report: ModelFileReport; findings: FileFinding[] }> {
  const t0 = performance.now();
  const findings: FileFinding[] = [];
  const report: ModelFileReport = {
    mutations: 0,
    seed: o.seed,
    by_file: {},
    error_params: {},
    generation: {},
    chat: {},
    crashes: 0,
    hangs: 0,
    unnamed: 0,
    allocations: 0,
    from_disk: 0,
    disk_mismatches: 0,
    slowest_ms: 0,
    wall_s: 0,
  };
  const dec = new TextDecoder();
  const parsed = {
    config: JSON.parse(dec.decode(o.config)),
    tokenizer: JSON.parse(dec.decode(o.tokenizer)),
    tokenizerConfig: JSON.parse(dec.decode(o.tokenizerConfig)),
  };
  const original: Record<ModelFileName, Uint8Array> = {
    "config.json": o.config,
    "tokenizer.json": o.tokenizer,
    "tokenizer_config.json": o.tokenizerConfig,
  };
  if (o.tempDir) {
    for (const [name, bytes] of Object.entries(original)) await Deno.writeFile(`${o.tempDir}/${name}`, bytes);
    await Deno.writeFile(`${o.tempDir}/model.safetensors`, o.safetensors);
  }
  const maxGrowth = o.maxGrowthBytes ?? 256 << 20;
  for (let i = 0; i < o.mutations; i++) {
    const index = Math.floor(i / 2);
    const m = i % 2 === 0
      ? mutateConfig(o.seed, index, parsed.config)
      : mutateTokenizer(o.seed, index, parsed.tokenizer, parsed.tokenizerConfig);
    o.onCase?.(i, m);
    const files = { ...original, [m.file]: m.bytes };
    const finding = (kind: Finding["kind"], detail: string) => {
      const f: FileFinding = {
        kind,
        target: m.file,
        seed: o.seed,
        index,
        detail,
        ops: m.ops,
        bytes: m.bytes,
      };
      findings.push(f);
      o.onFinding?.(f);
    };
    const before = memory();
    let grown = 0;
    const r = await attempt(async () => {
      const model = await loadModelFromBytes({
        config: files["config.json"],
        tokenizer: files["tokenizer.json"],
        tokenizerConfig: files["tokenizer_config.json"],
        safetensors: o.safetensors,
        adapter: null,
        executor: "cpu",
        warn: () => {},
      });
      grown = memory() - before;
      return model;
    });
    report.mutations++;
    report.slowest_ms = Math.max(report.slowest_ms, r.ms);
    bump(report.by_file[m.file] ??= {}, r.outcome);
    if (r.outcome === "crash") {
      report.crashes++;
      finding("crash", r.problem!);
    } else if (r.ms > o.timeoutMs) {
      report.hangs++;
      finding("hang", `loading took ${Math.round(r.ms)} ms`);
    } else if (r.outcome !== "ok") {
      if (!r.param) {
        report.unnamed++;
        finding("bad_error_body", `a ${r.outcome} error naming no field`);
      } else bump(report.error_params, r.param.replace(/\.\d+(?=\.|$)/g, ".<n>"));
    }
    if (grown > maxGrowth) {
      report.allocations++;
      finding("crash", `loading grew memory by ${Math.round(grown / 2 ** 20)} MiB`);
    }
    const model = r.value;
    if (model) {
      try {
        // A loaded-but-wrong model must not crash a short generation: 2 greedy tokens.
        const g = await attempt(() => generateText(model, { prompt: "Once upon a time", maxTokens: 2 }));
        bump(report.generation, g.outcome);
        if (g.outcome === "crash") {
          report.crashes++;
          finding("crash", `generating: ${g.problem}`);
        } else if (g.ms > o.timeoutMs) {
          report.hangs++;
          finding("hang", `generating took ${Math.round(g.ms)} ms`);
        }
        // And a chat through the app: its template rendered, then 2 tokens.
        const app = o.appFor(model);
        try {
          const c = await attempt(async () => {
            const res = await app.handler(
              new Request("http://fuzz.local/v1/chat/completions", {
                method: "POST",
                headers: { "content-type": "application/json" },
                body: JSON.stringify(CHAT),
              }),
            );
            const text = await res.text();
            return { status: res.status, text };
          });
          const status = c.value?.status;
          bump(report.chat, status === undefined ? c.outcome : String(status));
          if (c.outcome === "crash" || (status !== undefined && status >= 500)) {
            report.crashes++;
            finding("crash", `chat: ${c.problem ?? `status ${status}: ${c.value!.text.slice(0, 300)}`}`);
          } else if (c.ms > o.timeoutMs) {
            report.hangs++;
            finding("hang", `chat took ${Math.round(c.ms)} ms`);
          } else if (status !== undefined && status >= 400 && !/^\{"error":\{/.test(c.value!.text)) {
            report.crashes++;
            finding(
              "bad_error_body",
              `chat: status ${status} without a JSON error: ${c.value!.text.slice(0, 200)}`,
            );
          }
        } finally {
          await app.close();
        }
      } finally {
        model.executor.dispose();
      }
    }
    // The same files from disk: the same verdict.
    if (o.tempDir && index % 4 === 0) {
      const path = `${o.tempDir}/${m.file}`;
      await Deno.writeFile(path, m.bytes);
      const d = await attempt(async () => {
        const model = await modelFromFiles(await loadModelDir(o.tempDir!), null, {
          executor: "cpu",
          warn: () => {},
        });
        model.executor.dispose();
      });
      await Deno.writeFile(path, original[m.file]);
      report.from_disk++;
      if (d.outcome !== r.outcome || d.param !== r.param) {
        report.disk_mismatches++;
        const what = (x: Outcome) =>
          `${x.outcome}${x.param ? ` (${x.param})` : ""}${x.problem ? `: ${x.problem}` : ""}`;
        finding(d.outcome === "crash" ? "crash" : "mismatch", `from bytes ${what(r)}, from disk ${what(d)}`);
      }
    }
  }
  report.wall_s = Math.round(performance.now() - t0) / 1000;
  return { report, findings };
}

export interface KeyReport {
  requests: number;
  seed: number;
  /** Requests a client cannot send (a header value Headers refuses): never reach a server. */
  unsendable: number;
  by_status: Record<string, number>;
  /** Requests that presented a configured key exactly, and those that did not (open routes aside). */
  exact: number;
  refused: number;
  /** A non-exact key that passed, or an exact one refused. */
  wrong_verdicts: number;
  crashes: number;
  bad_error_bodies: number;
  wall_s: number;
}

export interface KeyFuzzOptions {
  seed: number;
  requests: number;
  /** The keys the app was created with (`apiKeys`). */
  keys: readonly string[];
  timeoutMs: number;
  onFinding?: (f: FileFinding) => void;
}

/**
 * The key a request presents exactly, by the rule the server documents: `Authorization: Bearer KEY`
 * (the scheme in any case, then spaces, then the key as the header carries it), else `x-api-key: KEY`.
 * Written apart from server/keys.ts on purpose: it is the oracle.
 */
export function exactKeyOf(headers: Headers): string | null {
  const auth = headers.get("authorization");
  if (auth !== null && /^bearer /i.test(auth)) return /^bearer +(\S+)$/i.exec(auth)?.[1] ?? null;
  return headers.get("x-api-key");
}

/** Mutated key headers through `app` (created with `apiKeys` holding `o.keys`). */
export async function fuzzKeys(
  app: App,
  o: KeyFuzzOptions,
): Promise<{ report: KeyReport; findings: FileFinding[] }> {
  const t0 = performance.now();
  const findings: FileFinding[] = [];
  const report: KeyReport = {
    requests: 0,
    seed: o.seed,
    unsendable: 0,
    by_status: {},
    exact: 0,
    refused: 0,
    wrong_verdicts: 0,
    crashes: 0,
    bad_error_bodies: 0,
    wall_s: 0,
  };
  for (let i = 0; i < o.requests; i++) {
    const m = mutateKeyHeaders(o.seed, i, o.keys);
    const finding = (kind: Finding["kind"], detail: string) => {
      const f: FileFinding = {
        kind,
        target: "api-key",
        seed: o.seed,
        index: i,
        detail,
        ops: m.ops,
        bytes: new Uint8Array(),
        headers: m.headers,
        path: m.path,
        method: m.method,
      };
      findings.push(f);
      o.onFinding?.(f);
    };
    let req: Request;
    try {
      const headers = new Headers();
      for (const [k, v] of m.headers) headers.append(k, v);
      req = new Request(`http://fuzz.local${m.path}`, {
        method: m.method,
        headers,
        body: m.method === "POST" ? '{"prompt": "Once", "max_tokens": 1}' : undefined,
      });
    } catch {
      report.unsendable++;
      continue;
    }
    report.requests++;
    const given = exactKeyOf(req.headers);
    const exact = given !== null && o.keys.includes(given);
    const open = m.path === "/healthz";
    if (!open) exact ? report.exact++ : report.refused++;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) =>
      timer = setTimeout(() => resolve("timeout"), o.timeoutMs)
    );
    try {
      const res = await Promise.race([app.handler(req), timeout]);
      if (res === "timeout") {
        finding("hang", `no answer within ${o.timeoutMs} ms`);
        report.crashes++;
        continue;
      }
      const text = await res.text();
      bump(report.by_status, String(res.status));
      if (res.status >= 500) {
        report.crashes++;
        finding("crash", `status ${res.status}: ${text.slice(0, 300)}`);
      } else if (!open && exact === (res.status === 401)) {
        report.wrong_verdicts++;
        finding(
          "crash",
          `${exact ? "an exact key refused" : "a wrong key let through"}: status ${res.status}`,
        );
      } else if (res.status === 401) {
        let ok = false;
        try {
          const e = JSON.parse(text).error;
          ok = res.headers.get("content-type")?.startsWith("application/json") === true &&
            typeof e?.message === "string" && e.message !== "" &&
            (given === null || given.length < 8 || !text.includes(given));
        } catch { /* not JSON */ }
        if (!ok) {
          report.bad_error_bodies++;
          finding("bad_error_body", `a 401 that is not a JSON error without the key: ${text.slice(0, 200)}`);
        }
      }
    } catch (e) {
      report.crashes++;
      finding("crash", `threw ${describe(e)}`);
    } finally {
      clearTimeout(timer);
    }
  }
  report.wall_s = Math.round(performance.now() - t0) / 1000;
  return { report, findings };
}
