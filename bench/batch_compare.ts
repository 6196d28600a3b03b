/**
 * Batched decoding against llama.cpp (issue #22): N concurrent greedy streams on the same prompt ids and
 * the same weights, ours through the batch scheduler (server/batch_scheduler.ts, no HTTP) on the native
 * executor, llama.cpp (node-llama-cpp, bench/llamacpp_parallel.mjs) as one context with N sequences.
 *   deno run -A bench/batch_compare.ts [--model llama76m|stories260K] [--formats f32,q8_0] [--threads 1]
 *     [--kv f16|f32] [--levels 1,4,16,32] [--prompt-tokens 64] [--max-tokens 64] [--text DIR] [--json] [--out FILE]
 * The model's values are written once per format as GGUF by the project's writer; both engines load that
 * file (ours quantizes nothing: a Q8_0 file runs as stored), with the same KV cache type (f16 by default,
 * llama.cpp's own: its F32 KV cache decodes at half the speed of its F16 one, a path nobody serves with). Prompts are BOS + essay text, a different
 * passage per stream (4 passages, stream i takes passage i mod 4). The levels run interleaved: ours, then
 * llama.cpp's, level by level, so a busy machine hits both sides alike. Reports per format and level:
 * aggregate completion tok/s (wall from the first request), the decode-phase rate (tokens after every
 * stream has its first, over that span), p50/p99 time to first token and per-token latency, our/llama.cpp
 * ratios and ours over our own single stream.
 */
import process from "node:process";
import { generateText, type Model } from "../core/engine.ts";
import { parseFlags, threadsFlag, usage, UsageError } from "../io/flags.ts";
import { loadModel } from "../io/runtime.ts";
import { BatchScheduler } from "../server/batch_scheduler.ts";
import { median, percentile } from "../core/percentile.ts";
import {
  BENCH_FORMATS,
  BENCH_MODELS,
  type BenchFormat,
  benchGguf,
  benchWeights,
  DEFAULT_TEXT_DIR,
  essayPrompts,
  parseList,
  PEER_COMPARISON_FLAGS,
  tempGguf,
} from "./batch_setup.ts";
import { ensureLlamaCppPeer, LLAMACPP_PEER_DIR } from "./llamacpp.ts";

const SPEC = {
  ...PEER_COMPARISON_FLAGS,
  formats: {
    kind: "string",
    help: "weight formats, comma-separated: f32, q8_0 (default both)",
    default: "f32,q8_0",
  },
  "prompt-tokens": { kind: "int", help: "prompt length with BOS (default 64)", default: 64 },
} as const;

const PASSAGES = 4;
/** Alternating runs of one stream without and with the scheduler. */
const PAIRS = 3;

export interface Level {
  streams: number;
  tokens: number;
  tokPerS: number;
  /** Tokens after every stream had its first, per second of that span (the batched decode rate). */
  decodeTokPerS: number;
  /**
   * Tokens per CPU second of the engine's process (every thread; null where not measured): what a quiet
   * machine's cores would give, about, whatever share of them a busy machine left the engine.
   */
  tokPerCpuS: number | null;
  ttftMs: { p50: number; p99: number };
  perTokenMs: { p50: number; p99: number };
}

const r2 = (x: number) => Math.round(x * 100) / 100;

/** Level statistics from each stream's token arrival times (ms since the level started). */
export function summarize(
  streams: number,
  wallMs: number,
  times: number[][],
  cpuMs: number | null = null,
): Level {
  const tokens = times.reduce((n, t) => n + t.length, 0);
  const ttft = times.filter((t) => t.length > 0).map((t) => t[0]).sort((a, b) => a - b);
  const gaps = times.flatMap((t) => t.slice(1).map((x, i) => x - t[i])).sort((a, b) => a - b);
  const allStarted = ttft.at(-1) ?? 0, end = Math.max(...times.flat());
  const later = times.reduce((n, t) => n + t.filter((x) => x > allStarted).length, 0);
  return {
    streams,
    tokens,
    tokPerS: r2(tokens / (wallMs / 1000)),
    decodeTokPerS: end > allStarted ? r2(later / ((end - allStarted) / 1000)) : NaN,
    tokPerCpuS: cpuMs === null ? null : r2(tokens / (cpuMs / 1000)),
    ttftMs: { p50: r2(percentile(ttft, 50)), p99: r2(percentile(ttft, 99)) },
    perTokenMs: { p50: r2(percentile(gaps, 50)), p99: r2(percentile(gaps, 99)) },
  };
}

type PeerOut =
  | { ok: true; levels: { streams: number; wallMs: number; cpuMs: number; times: number[][] }[] }
  | { ok: false; reason: string };

/** llama.cpp's run of `spec` on the GGUF file at `model`, in its own node process. */
export async function llamaCpp(model: string, spec: Record<string, unknown>): Promise<PeerOut> {
  const ready = await ensureLlamaCppPeer({});
  if (!ready.ok) return ready;
  const dir = await Deno.makeTempDir({ prefix: "judgeq-batch-compare-" });
  try {
    await Deno.writeTextFile(
      `${dir}/spec.json`,
      JSON.stringify({ packageDir: LLAMACPP_PEER_DIR, model, ...spec }),
    );
    const script = new URL("./llamacpp_parallel.mjs", import.meta.url).pathname;
    const out = await new Deno.Command("node", {
      args: [script, "--spec", `${dir}/spec.json`],
      stderr: "piped",
    })
      .output();
    const line = new TextDecoder().decode(out.stdout).trim().split("\n").filter((l) => l.startsWith("{")).at(
      -1,
    );
    if (!line) return { ok: false as const, reason: new TextDecoder().decode(out.stderr).slice(-2000) };
    return JSON.parse(line) as PeerOut;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Each stream's token arrival times (ms since `t0`) through `generateText` on `m`. */
async function streamTimes(m: Model, prompts: number[][], n: number, maxTokens: number) {
  const times: number[][] = Array.from({ length: n }, () => []);
  const c0 = process.cpuUsage(), t0 = performance.now();
  await Promise.all(
    times.map((t, k) =>
      generateText(m, { prompt: prompts[k % prompts.length], maxTokens, ignoreEos: true }, {
        onTokens: (_, ids) => {
          for (const _id of ids) t.push(performance.now() - t0);
        },
      })
    ),
  );
  const cpu = process.cpuUsage(c0);
  return { wallMs: performance.now() - t0, cpuMs: (cpu.user + cpu.system) / 1000, times };
}

interface FormatReport {
  format: BenchFormat;
  description: string;
  /**
   * One stream without the scheduler (today's single-stream path) and through it, run in alternation
   * (PAIRS times each): tok/s of each run and the median of batched / unbatched.
   */
  single_stream: {
    unbatched_tok_per_s: number[];
    batched_tok_per_s: number[];
    batched_over_unbatched: number;
    unbatched_tok_per_cpu_s: number[];
    batched_tok_per_cpu_s: number[];
    batched_over_unbatched_cpu: number;
  };
  ours: Level[];
  llamacpp: Level[] | { unavailable: string };
  tok_per_s_ratio: (number | null)[];
  decode_tok_per_s_ratio: (number | null)[];
  /** Tokens per CPU second, ours over llama.cpp's (the figure a busy machine disturbs least). */
  tok_per_cpu_s_ratio: (number | null)[];
  /** Ours at each level over our own single stream, per CPU second. */
  over_own_single_stream_cpu: number[];
  /** Ours at each level over our own batched single stream. */
  over_own_single_stream: number[];
}

async function runFormat(
  gguf: string,
  format: BenchFormat,
  threads: number,
  kv: "f16" | "f32",
  levels: number[],
  prompts: number[][],
  maxTokens: number,
  log: (m: string) => void,
): Promise<FormatReport> {
  const model = await loadModel({
    model: gguf,
    executor: "native",
    threads,
    weightFormat: format,
    kvCache: kv,
    warn: log,
  });
  const ours: Level[] = [], theirs: (Level | null)[] = [];
  const unbatched: number[] = [],
    batched: number[] = [],
    unbatchedCpu: number[] = [],
    batchedCpu: number[] = [];
  let unavailable = "";
  try {
    // Today's single-stream path (no scheduler) against one stream through it, in alternation.
    await generateText(model, { prompt: prompts[0], maxTokens: 2 });
    for (let r = 0; r < PAIRS; r++) {
      const a = await streamTimes(model, prompts, 1, maxTokens);
      unbatched.push(summarize(1, a.wallMs, a.times).tokPerS);
      unbatchedCpu.push(summarize(1, a.wallMs, a.times, a.cpuMs).tokPerCpuS!);
      const scheduler = new BatchScheduler(model.executor, { maxBatchTokens: 512, kvCapBytes: null });
      const b = await streamTimes({ ...model, executor: scheduler.wrap() }, prompts, 1, maxTokens);
      batched.push(summarize(1, b.wallMs, b.times).tokPerS);
      batchedCpu.push(summarize(1, b.wallMs, b.times, b.cpuMs).tokPerCpuS!);
    }
    log(
      `  ${format} 1 stream, unbatched / batched tok/s: ${unbatched.join(" ")} / ${
        batched.join(" ")
      }; per CPU s ` +
        `${unbatchedCpu.join(" ")} / ${batchedCpu.join(" ")}`,
    );
    for (const n of levels) {
      const scheduler = new BatchScheduler(model.executor, { maxBatchTokens: 512, kvCapBytes: null });
      const m = { ...model, executor: scheduler.wrap() };
      await generateText(m, { prompt: prompts[0], maxTokens: 2 }); // warm-up
      const r = await streamTimes(m, prompts, n, maxTokens);
      ours.push(summarize(n, r.wallMs, r.times, r.cpuMs));
      const peer = await llamaCpp(gguf, {
        threads,
        kvCacheType: kv === "f16" ? "F16" : "F32",
        levels: [n],
        prompts,
        maxTokens,
      });
      if (!peer.ok) unavailable = peer.reason;
      const t = peer.ok
        ? summarize(n, peer.levels[0].wallMs, peer.levels[0].times, peer.levels[0].cpuMs)
        : null;
      theirs.push(t);
      const o = ours.at(-1)!;
      log(
        `  ${format} ${
          String(n).padStart(3)
        } streams: ours ${o.tokPerS} tok/s, ${o.tokPerCpuS} per CPU s (decode ${o.decodeTokPerS}, ` +
          `ttft p50 ${o.ttftMs.p50} ms, per token p50 ${o.perTokenMs.p50} p99 ${o.perTokenMs.p99} ms)` +
          (t
            ? `; llama.cpp ${t.tokPerS} tok/s, ${t.tokPerCpuS} per CPU s (decode ${t.decodeTokPerS}, ttft p50 ${t.ttftMs.p50} ms, per token ` +
              `p50 ${t.perTokenMs.p50} p99 ${t.perTokenMs.p99} ms); ratio ${r2(o.tokPerS / t.tokPerS)}`
            : "; llama.cpp unavailable"),
      );
    }
  } finally {
    model.executor.dispose();
  }
  const one = ours[levels.indexOf(1)]?.tokPerS ?? NaN;
  const oneCpu = ours[levels.indexOf(1)]?.tokPerCpuS ?? NaN;
  return {
    format,
    description: model.executor.description,
    single_stream: {
      unbatched_tok_per_s: unbatched,
      batched_tok_per_s: batched,
      batched_over_unbatched: r2(median(batched.map((b, i) => b / unbatched[i]))),
      unbatched_tok_per_cpu_s: unbatchedCpu,
      batched_tok_per_cpu_s: batchedCpu,
      batched_over_unbatched_cpu: r2(median(batchedCpu.map((b, i) => b / unbatchedCpu[i]))),
    },
    ours,
    llamacpp: theirs.every((t) => t) ? theirs as Level[] : { unavailable },
    tok_per_s_ratio: ours.map((o, i) => (theirs[i] ? r2(o.tokPerS / theirs[i]!.tokPerS) : null)),
    tok_per_cpu_s_ratio: ours.map((o, i) => (theirs[i] ? r2(o.tokPerCpuS! / theirs[i]!.tokPerCpuS!) : null)),
    over_own_single_stream_cpu: ours.map((o) => r2(o.tokPerCpuS! / oneCpu)),
    decode_tok_per_s_ratio: ours.map((
      o,
      i,
    ) => (theirs[i] ? r2(o.decodeTokPerS / theirs[i]!.decodeTokPerS) : null)),
    over_own_single_stream: ours.map((o) => r2(o.tokPerS / one)),
  };
}

async function main(argv: string[]): Promise<number> {
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno run -A bench/batch_compare.ts", SPEC));
    return 0;
  }
  const threads = threadsFlag(f.threads) ?? 1;
  const [kv] = parseList(String(f.kv), ["f16", "f32"] as const, "kv");
  const levels = String(f.levels).split(",").map(Number);
  if (levels.some((n) => !(Number.isInteger(n) && n >= 1 && n <= 256))) {
    throw new UsageError(`--levels: expected integers 1..256, comma-separated, got '${f.levels}'`);
  }
  const [modelName] = parseList(String(f.model), BENCH_MODELS, "model");
  const formats = parseList(String(f.formats), BENCH_FORMATS, "formats");
  const maxTokens = f["max-tokens"] as number, promptLength = f["prompt-tokens"] as number;
  if (!(maxTokens >= 1)) throw new UsageError(`--max-tokens: expected a number >= 1, got '${maxTokens}'`);
  if (!(promptLength >= 2)) {
    throw new UsageError(`--prompt-tokens: expected a number >= 2, got '${promptLength}'`);
  }
  const log = (m: string) => (f.json ? console.error(m) : console.log(m));
  const weights = await benchWeights(modelName);
  if (promptLength + maxTokens > weights.config.maxSeqLen) {
    throw new UsageError(
      `--prompt-tokens: ${promptLength} + --max-tokens ${maxTokens} exceed ${modelName}'s context of ${weights.config.maxSeqLen}`,
    );
  }
  const prompts = await essayPrompts(
    PASSAGES,
    promptLength,
    (f.text as string | undefined) ?? DEFAULT_TEXT_DIR,
  );
  const loadBefore = Deno.loadavg();
  const reports: FormatReport[] = [];
  for (const format of formats) {
    const file = await tempGguf(await benchGguf(weights, format));
    try {
      log(
        `${modelName} ${format}, ${threads} thread(s), ${kv} KV, ${promptLength}-token prompts, ${maxTokens} tokens a stream`,
      );
      reports.push(await runFormat(file.path, format, threads, kv, levels, prompts, maxTokens, log));
    } finally {
      await Deno.remove(file.dir, { recursive: true }).catch(() => {});
    }
  }
  const report = {
    command: `deno task bench:batch ${argv.join(" ")}`.trim(),
    date: new Date().toISOString(),
    model: modelName,
    kv_cache: kv,
    threads,
    prompt_tokens: promptLength,
    max_tokens: maxTokens,
    load_average: { before: loadBefore, after: Deno.loadavg() },
    formats: reports,
  };
  for (const r of reports) {
    log(
      `${r.format}: ours/llama.cpp ${r.tok_per_s_ratio.join(", ")} (decode phase ${
        r.decode_tok_per_s_ratio.join(", ")
      }); ` +
        `ours over our 1 stream ${r.over_own_single_stream.join(", ")} at ${levels.join(", ")} streams; ` +
        `1 stream batched / unbatched ${r.single_stream.batched_over_unbatched} (median of ${PAIRS}); per CPU s: ` +
        `ours/llama.cpp ${r.tok_per_cpu_s_ratio.join(", ")}, over our 1 stream ${
          r.over_own_single_stream_cpu.join(", ")
        }, ` +
        `1 stream batched / unbatched ${r.single_stream.batched_over_unbatched_cpu}`,
    );
  }
  const json = JSON.stringify(report);
  if (f.out) await Deno.writeTextFile(String(f.out), json + "\n");
  if (f.json) console.log(json);
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}\n${usage("bench/batch_compare.ts", SPEC)}`);
    } else console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(2);
  }
}
