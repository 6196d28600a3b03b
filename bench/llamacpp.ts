/**
 * llama.cpp as a benchmark peer: the same weights our executors run, exported to an F32 GGUF and run on
 * the CPU by node-llama-cpp (pinned; its prebuilt CPU binaries ship inside the npm package, nothing is
 * compiled) in a node subprocess (bench/llamacpp_peer.mjs).
 *
 * node-llama-cpp is installed on demand into the gitignored `.cache/llamacpp-peer/` of this repository
 * and reused afterwards. Every entry point returns `{ ok: false, reason }` instead of throwing when node,
 * npm or the package is unavailable, and every subprocess runs under a timeout.
 */
import type { ModelWeights } from "../core/weights.ts";
import type { GgufTensorType } from "../core/gguf/model_writer.ts";
import {
  encodeGgufF32,
  ggufUnsupportedReason,
  type GgufVocab,
  syntheticVocab,
  vocabFromTokenizerJson,
} from "./gguf.ts";

export const LLAMACPP_PEER_VERSION = "3.21.1";
export const LLAMACPP_PEER_DIR = new URL("../.cache/llamacpp-peer/", import.meta.url).pathname;
const PEER_SCRIPT = new URL("./llamacpp_peer.mjs", import.meta.url).pathname;

export type PeerFailure = { ok: false; reason: string };

export interface LlamaCppContextResult {
  context: number;
  prefillTokPerS: number;
  decodeTokPerS: number;
  /** Prompt tokens evaluated (= context) and greedy decode steps timed. */
  promptTokens: number;
  decodeTokens: number;
  /** Context size llama.cpp actually allocated, and its flash attention setting. */
  contextSize: number;
  flashAttention: boolean | "auto";
}

export type LlamaCppMeasurement = {
  ok: true;
  version: typeof LLAMACPP_PEER_VERSION;
  threads: number;
  kvCacheType: "F16" | "F32";
  contexts: LlamaCppContextResult[];
} | PeerFailure;

export interface PeerOptions {
  /** Install node-llama-cpp into the cache when absent (default true). */
  install?: boolean;
  /** Hugging Face tokenizer.json for the GGUF vocabulary; a synthetic vocabulary otherwise. */
  tokenizerJsonPath?: string;
  /** Matrix type of the GGUF written for llama.cpp (default f32: llama.cpp runs exactly our values). */
  tensorType?: GgufTensorType;
  /** Limit for the peer subprocess, in ms (default 10 minutes). */
  timeoutMs?: number;
  log?: (m: string) => void;
}

export interface MeasureOptions extends PeerOptions {
  /** Context lengths: each gets a fresh llama.cpp context and a prompt of that many tokens. */
  contexts: number[];
  /** Greedy decode steps timed per context (they end at the context length, as in bench.ts). */
  decodeTokens: number;
  threads: number;
  /** The prompt for a context length. */
  promptTokens: (len: number) => number[];
  /** llama.cpp KV cache type (default "F16", llama.cpp's own default). */
  kvCacheType?: "F16" | "F32";
  /** llama.cpp flash attention (default "auto", llama.cpp's own default). */
  flashAttention?: boolean | "auto";
}

/** Whether node-llama-cpp at the pinned version is already in the cache (no subprocess, no network). */
export function llamaCppPeerInstalled(dir = LLAMACPP_PEER_DIR): boolean {
  try {
    const pkg = JSON.parse(Deno.readTextFileSync(`${dir}/node_modules/node-llama-cpp/package.json`));
    return pkg.version === LLAMACPP_PEER_VERSION;
  } catch {
    return false;
  }
}

interface CmdResult {
  ok: boolean;
  code: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

async function run(cmd: string, args: string[], timeoutMs: number, cwd?: string): Promise<CmdResult> {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeoutMs);
  try {
    const out = await new Deno.Command(cmd, {
      args,
      cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: controller.signal,
    }).output();
    const dec = new TextDecoder();
    return {
      ok: out.success && !timedOut,
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
      timedOut,
    };
  } finally {
    clearTimeout(timer);
  }
}

const tail = (s: string, n = 1500) => (s.length > n ? "..." + s.slice(-n) : s).trim();
const errText = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** Makes sure node and the pinned node-llama-cpp are usable; installs the package when allowed. */
export async function ensureLlamaCppPeer(opts: PeerOptions = {}): Promise<{ ok: true } | PeerFailure> {
  const log = opts.log ?? (() => {});
  try {
    const node = await run("node", ["--version"], 30_000);
    if (!node.ok) return { ok: false, reason: `node is not usable: ${tail(node.stderr)}` };
    const version = /^v(\d+)\./.exec(node.stdout.trim());
    if (!version) {
      return { ok: false, reason: `"node --version" printed ${JSON.stringify(tail(node.stdout, 80))}` };
    }
    const major = Number(version[1]);
    if (major < 18) {
      return { ok: false, reason: `node ${node.stdout.trim()} is too old (node-llama-cpp needs 18+)` };
    }
  } catch (e) {
    return { ok: false, reason: `node is not available: ${errText(e)}` };
  }
  if (llamaCppPeerInstalled()) return { ok: true };
  if (opts.install === false) {
    return {
      ok: false,
      reason: `node-llama-cpp@${LLAMACPP_PEER_VERSION} is not installed in .cache/llamacpp-peer/`,
    };
  }
  log(`installing node-llama-cpp@${LLAMACPP_PEER_VERSION} into .cache/llamacpp-peer/ ...`);
  try {
    await Deno.mkdir(LLAMACPP_PEER_DIR, { recursive: true });
    const npm = await run("npm", [
      "i",
      "-E",
      "--no-audit",
      "--no-fund",
      `node-llama-cpp@${LLAMACPP_PEER_VERSION}`,
      "--prefix",
      LLAMACPP_PEER_DIR,
    ], 15 * 60_000);
    if (!npm.ok) {
      return {
        ok: false,
        reason: npm.timedOut
          ? "npm install timed out"
          : `npm install failed: ${tail(npm.stderr || npm.stdout)}`,
      };
    }
  } catch (e) {
    return { ok: false, reason: `npm is not available: ${errText(e)}` };
  }
  return llamaCppPeerInstalled()
    ? { ok: true }
    : { ok: false, reason: "node-llama-cpp is still missing after npm install" };
}

async function vocabFor(weights: ModelWeights, tokenizerJsonPath?: string): Promise<GgufVocab> {
  if (!tokenizerJsonPath) return syntheticVocab(weights.config.vocabSize);
  return vocabFromTokenizerJson(
    JSON.parse(await Deno.readTextFile(tokenizerJsonPath)),
    weights.config.vocabSize,
  );
}

export interface PeerRun {
  context: number;
  contextSize: number;
  flashAttention: boolean | "auto";
  promptTokens: number;
  prefillTokPerS: number;
  decodeTokens: number;
  decodeTokPerS: number;
}

interface PeerOutput {
  ok: true;
  version: string;
  threads: number;
  kvCacheType: "F16" | "F32";
  runs: PeerRun[];
  check: { logProbs: (number | null)[]; greedy: number[] } | null;
  tokenized?: number[][];
}

const badToken = (ids: number[], vocab: number) => {
  const i = ids.findIndex((t) => !(Number.isInteger(t) && t >= 0 && t < vocab));
  return i < 0 ? null : `prompt token ${ids[i]} at ${i} is outside the vocabulary of ${vocab}`;
};

/** Writes the GGUF and the spec to temp files, runs the peer script, and parses its JSON line. */
function runPeer(
  weights: ModelWeights,
  spec: Record<string, unknown>,
  opts: PeerOptions,
): Promise<PeerOutput | PeerFailure> {
  const unsupported = ggufUnsupportedReason(weights.config);
  if (unsupported) return Promise.resolve({ ok: false, reason: unsupported });
  return runPeerOn(
    async () =>
      encodeGgufF32(weights, await vocabFor(weights, opts.tokenizerJsonPath), {
        tensorType: opts.tensorType,
      }),
    spec,
    opts,
  );
}

/** Runs the peer script on the GGUF bytes `gguf()` makes (written to a temp file). */
async function runPeerOn(
  gguf: () => Promise<Uint8Array>,
  spec: Record<string, unknown>,
  opts: PeerOptions,
): Promise<PeerOutput | PeerFailure> {
  const log = opts.log ?? (() => {});
  const ready = await ensureLlamaCppPeer(opts);
  if (!ready.ok) return ready;
  let dir: string | null = null;
  try {
    dir = await Deno.makeTempDir({ prefix: "judgeq-llamacpp-" });
    const bytes = await gguf();
    await Deno.writeFile(`${dir}/model.gguf`, bytes);
    log(`llama.cpp peer: GGUF ${(bytes.length / 2 ** 20).toFixed(1)} MiB written`);
    await Deno.writeTextFile(
      `${dir}/spec.json`,
      JSON.stringify({ packageDir: LLAMACPP_PEER_DIR, model: `${dir}/model.gguf`, ...spec }),
    );
    const r = await run("node", [PEER_SCRIPT, "--spec", `${dir}/spec.json`], opts.timeoutMs ?? 10 * 60_000);
    if (r.timedOut) {
      return { ok: false, reason: `llama.cpp peer timed out after ${opts.timeoutMs ?? 600_000} ms` };
    }
    const line = r.stdout.trim().split("\n").filter((l) => l.startsWith("{")).at(-1);
    if (!line) {
      return { ok: false, reason: `llama.cpp peer printed no result (exit ${r.code}): ${tail(r.stderr)}` };
    }
    const parsed = JSON.parse(line) as PeerOutput | PeerFailure;
    if (!parsed.ok) return { ok: false, reason: `llama.cpp peer failed: ${tail(parsed.reason)}` };
    if (parsed.version !== LLAMACPP_PEER_VERSION) {
      return {
        ok: false,
        reason: `node-llama-cpp ${parsed.version} found, ${LLAMACPP_PEER_VERSION} expected`,
      };
    }
    return parsed;
  } catch (e) {
    return { ok: false, reason: `llama.cpp peer: ${errText(e)}` };
  } finally {
    if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Prefill and greedy-decode tokens/s of llama.cpp (CPU, F32) on these weights, one fresh context per
 * length: the prompt of `context` tokens is evaluated in batches of min(context, 512) without
 * generating, then its last `decodeTokens` cells are dropped and as many decode steps are timed.
 */
export async function measureLlamaCpp(
  weights: ModelWeights,
  opts: MeasureOptions,
): Promise<LlamaCppMeasurement> {
  for (const c of opts.contexts) {
    if (!(Number.isInteger(c) && c > opts.decodeTokens && opts.decodeTokens > 0)) {
      return {
        ok: false,
        reason: `context ${c} must be an integer above decodeTokens ${opts.decodeTokens} > 0`,
      };
    }
  }
  const runs = opts.contexts.map((context) => ({
    context,
    prompt: opts.promptTokens(context),
    decodeTokens: opts.decodeTokens,
  }));
  for (const r of runs) {
    if (r.prompt.length !== r.context) {
      return { ok: false, reason: `promptTokens(${r.context}) returned ${r.prompt.length} tokens` };
    }
    const bad = badToken(r.prompt, weights.config.vocabSize);
    if (bad) return { ok: false, reason: bad };
  }
  const out = await runPeer(weights, {
    threads: opts.threads,
    kvCacheType: opts.kvCacheType ?? "F16",
    flashAttention: opts.flashAttention ?? "auto",
    runs,
  }, opts);
  if (!out.ok) return out;
  return {
    ok: true,
    version: LLAMACPP_PEER_VERSION,
    threads: out.threads,
    kvCacheType: out.kvCacheType,
    contexts: out.runs.map((r) => ({
      context: r.context,
      prefillTokPerS: r.prefillTokPerS,
      decodeTokPerS: r.decodeTokPerS,
      promptTokens: r.promptTokens,
      decodeTokens: r.decodeTokens,
      contextSize: r.contextSize,
      flashAttention: r.flashAttention,
    })),
  };
}

export type LlamaCppCheck = {
  ok: true;
  /**
   * llama.cpp's next-token log-probabilities after the prompt (log-softmax of its last-token logits;
   * node-llama-cpp exposes the softmax of the raw logits, not the logits). -Infinity where the float32
   * probability underflowed to 0.
   */
  logProbs: Float64Array;
  /** `steps` greedy tokens after the prompt (the first is the argmax of those logits). */
  greedy: number[];
} | PeerFailure;

/** llama.cpp's last-token log-probabilities and greedy continuation for a prompt, for correctness checks. */
export async function llamaCppLogProbs(
  weights: ModelWeights,
  opts: PeerOptions & { prompt: number[]; steps: number; threads?: number },
): Promise<LlamaCppCheck> {
  if (opts.prompt.length === 0) return { ok: false, reason: "empty prompt" };
  const bad = badToken(opts.prompt, weights.config.vocabSize);
  if (bad) return { ok: false, reason: bad };
  const out = await runPeer(weights, {
    threads: opts.threads ?? 2,
    check: {
      prompt: opts.prompt,
      steps: opts.steps,
      vocabSize: weights.config.vocabSize,
      contextSize: opts.prompt.length + opts.steps + 1,
    },
  }, opts);
  if (!out.ok) return out;
  if (!out.check) return { ok: false, reason: "llama.cpp peer returned no check result" };
  return {
    ok: true,
    logProbs: Float64Array.from(out.check.logProbs, (v) => (v === null ? -Infinity : v)),
    greedy: out.check.greedy,
  };
}

export type LlamaCppGgufRun = {
  ok: true;
  /** As LlamaCppCheck, when a prompt was given. */
  logProbs: Float64Array | null;
  greedy: number[];
  /** llama.cpp's ids of each text (no BOS added), when texts were given. */
  tokenized: number[][];
} | PeerFailure;

/**
 * llama.cpp on a GGUF file as it is (any tensor type llama.cpp reads): its tokenization of `texts`
 * (`special`: control-token text parsed as tokens) and, with a prompt, its last-token log-probabilities
 * and `steps` greedy tokens (F32 KV cache, no flash attention).
 */
export async function llamaCppOnGguf(
  gguf: Uint8Array,
  opts: PeerOptions & {
    vocabSize: number;
    prompt?: number[];
    steps?: number;
    texts?: string[];
    special?: boolean;
  },
): Promise<LlamaCppGgufRun> {
  const spec: Record<string, unknown> = { threads: 2 };
  if (opts.prompt?.length) {
    spec.check = {
      prompt: opts.prompt,
      steps: opts.steps ?? 1,
      vocabSize: opts.vocabSize,
      contextSize: opts.prompt.length + (opts.steps ?? 1) + 1,
    };
  }
  if (opts.texts) spec.tokenize = { texts: opts.texts, special: opts.special ?? false };
  const out = await runPeerOn(() => Promise.resolve(gguf), spec, opts);
  if (!out.ok) return out;
  return {
    ok: true,
    logProbs: out.check ? Float64Array.from(out.check.logProbs, (v) => (v === null ? -Infinity : v)) : null,
    greedy: out.check?.greedy ?? [],
    tokenized: out.tokenized ?? [],
  };
}

export type LlamaCppRuns =
  | { ok: true; threads: number; kvCacheType: "F16" | "F32"; runs: PeerRun[] }
  | PeerFailure;

/**
 * Timed runs of llama.cpp on a GGUF file as it is: each run a fresh context of `context` cells, the prompt
 * evaluated (batches of min(context, 512)) and timed, then its last `decodeTokens` cells dropped and as
 * many greedy steps timed. One node process for all the runs (the model loaded once).
 */
export async function llamaCppRuns(
  gguf: Uint8Array,
  runs: { context: number; prompt: number[]; decodeTokens: number }[],
  opts: PeerOptions & { threads: number; kvCacheType?: "F16" | "F32"; flashAttention?: boolean | "auto" },
): Promise<LlamaCppRuns> {
  const out = await runPeerOn(() => Promise.resolve(gguf), {
    threads: opts.threads,
    kvCacheType: opts.kvCacheType ?? "F16",
    flashAttention: opts.flashAttention ?? "auto",
    runs,
  }, opts);
  if (!out.ok) return out;
  return { ok: true, threads: out.threads, kvCacheType: out.kvCacheType, runs: out.runs };
}
