/**
 * The KV-bound run of batched decoding (issue #22): under a fixed KV cap, how many streams are admitted and
 * decode at once, and at what aggregate rate, with the full cache against Judge Q keeping 25% and 10% of
 * the prompt.
 *   deno run -A bench/kv_bound.ts [--model llama76m|stories260K] [--format q8_0|f32] [--threads 1]
 *     [--kv-cache-mb 150] [--streams 20] [--prompt-tokens 2000] [--max-tokens 64] [--max-batch-tokens 512]
 *     [--text DIR] [--json] [--out FILE]
 * Every request is submitted at once to one scheduler (server/batch_scheduler.ts) on the native executor;
 * prompts are BOS + essay passages (bench/batch_setup.ts), a different one per stream. The 76M model has
 * random weights and no trained adapter, so Judge Q runs with untrained soft tokens (`random_soft`): 32
 * rows of the right width, which is all that memory and throughput depend on (the kept positions differ,
 * their count does not). "Admitted at once" is the most streams holding a KV reservation in one step
 * (decoding or prefilling); "decoding at once" the most decode rows in one step. The cap is checked
 * against what every stream holds allocated at every step, and the run fails if it is ever passed.
 */
import process from "node:process";
import { generateText, type Model, type TextRequest } from "../core/engine.ts";
import { parseFlags, threadsFlag, usage, UsageError } from "../io/flags.ts";
import { loadModel } from "../io/runtime.ts";
import { BatchScheduler } from "../server/batch_scheduler.ts";
import {
  BENCH_FORMATS,
  BENCH_MODELS,
  benchGguf,
  benchWeights,
  DEFAULT_TEXT_DIR,
  essayPrompts,
  parseList,
  tempGguf,
} from "./batch_setup.ts";

const SPEC = {
  model: { kind: "string", help: `${BENCH_MODELS.join(" or ")} (default llama76m)`, default: "llama76m" },
  format: { kind: "string", help: "weights: q8_0 (default) or f32", default: "q8_0" },
  threads: { kind: "int", help: "threads (default 1)", default: 1 },
  "kv-cache-mb": { kind: "number", help: "the KV cap, MiB (default 150)", default: 150 },
  streams: { kind: "int", help: "requests submitted at once (default 20)", default: 20 },
  "prompt-tokens": {
    kind: "int",
    help: "prompt length in tokens, BOS included (default 2000)",
    default: 2000,
  },
  "max-tokens": { kind: "int", help: "tokens generated per request (default 64)", default: 64 },
  "max-batch-tokens": { kind: "int", help: "rows per step (default 512)", default: 512 },
  text: { kind: "string", help: "a folder of .txt files for the prompts (default the shared essays)" },
  json: { kind: "boolean", help: "print one JSON object" },
  out: { kind: "string", help: "also write the JSON to this file" },
  help: { kind: "boolean", help: "show this help" },
} as const;

interface Run {
  label: string;
  admittedAtOnce: number;
  decodingAtOnce: number;
  tokens: number;
  wallS: number;
  tokensPerS: number;
  /** CPU seconds this process used (every thread): a busy machine's share of the cores does not change it. */
  cpuS: number;
  /** Tokens per CPU second: the rate a quiet machine's one thread would give (about). */
  tokensPerCpuS: number;
  /** Decode rows per second of the steps that ran decode rows only (what the batch size buys). */
  decodeStepRowsPerS: number;
  steps: number;
  peakAllocatedBytes: number;
}

const r2 = (x: number) => Math.round(x * 100) / 100;

async function run(model: Model, label: string, reqs: TextRequest[], capBytes: number, rows: number) {
  const scheduler = new BatchScheduler(model.executor, { maxBatchTokens: rows, kvCapBytes: capBytes });
  const m = { ...model, executor: scheduler.wrap() };
  let admitted = 0, decoding = 0, worst = 0, decodeRows = 0, decodeMs = 0;
  scheduler.onStep = (s) => {
    decoding = Math.max(decoding, s.decodeRows);
    admitted = Math.max(admitted, [...scheduler.sessions].filter((x) => x.reserved > 0).length);
    worst = Math.max(worst, scheduler.kvAllocated(), scheduler.kvReserved);
    if (s.rows === s.decodeRows) {
      decodeRows += s.rows;
      decodeMs += s.ms;
    }
  };
  const c0 = process.cpuUsage(), t0 = performance.now();
  const out = await Promise.all(reqs.map((r) => generateText(m, r)));
  const wallS = (performance.now() - t0) / 1000, cpu = process.cpuUsage(c0);
  const cpuS = (cpu.user + cpu.system) / 1e6;
  if (worst > capBytes) throw new Error(`${label}: ${worst} bytes allocated over the cap of ${capBytes}`);
  const tokens = out.reduce((n, o) => n + o.outputs[0].tokens.length, 0);
  return {
    label,
    admittedAtOnce: admitted,
    decodingAtOnce: decoding,
    tokens,
    wallS: r2(wallS),
    tokensPerS: r2(tokens / wallS),
    cpuS: r2(cpuS),
    tokensPerCpuS: r2(tokens / cpuS),
    decodeStepRowsPerS: r2(decodeRows / (decodeMs / 1000)),
    steps: scheduler.steps,
    peakAllocatedBytes: worst,
  } satisfies Run;
}

async function main(argv: string[]): Promise<number> {
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno run -A bench/kv_bound.ts", SPEC));
    return 0;
  }
  const capMb = f["kv-cache-mb"] as number;
  if (!(capMb > 0)) throw new UsageError(`--kv-cache-mb: expected a number > 0, got '${capMb}'`);
  for (const k of ["streams", "prompt-tokens", "max-tokens", "max-batch-tokens"] as const) {
    if (!((f[k] as number) >= 1)) throw new UsageError(`--${k}: expected a number >= 1, got '${f[k]}'`);
  }
  const [modelName] = parseList(String(f.model), BENCH_MODELS, "model");
  const [format] = parseList(String(f.format), BENCH_FORMATS, "format");
  const threads = threadsFlag(f.threads) ?? 1;
  const n = f["prompt-tokens"] as number, maxTokens = f["max-tokens"] as number;
  const weights = await benchWeights(modelName);
  if (n + maxTokens + 33 > weights.config.maxSeqLen) {
    throw new UsageError(
      `--prompt-tokens: ${n} + --max-tokens ${maxTokens} + 32 soft tokens exceed the model's context of ${weights.config.maxSeqLen}`,
    );
  }
  const log = (m: string) => (f.json ? console.error(m) : console.log(m));
  const prompts = await essayPrompts(
    f.streams as number,
    n,
    (f.text as string | undefined) ?? DEFAULT_TEXT_DIR,
  );
  const file = await tempGguf(await benchGguf(weights, format));
  const model = await loadModel({
    model: file.path,
    executor: "native",
    threads,
    weightFormat: format,
    warn: log,
  });
  await Deno.remove(file.dir, { recursive: true }).catch(() => {});
  const requests = (compression: TextRequest["compression"]) =>
    prompts.map((prompt) => ({ prompt, maxTokens, ignoreEos: true, compression }));
  const cap = Math.floor(capMb * 2 ** 20), rows = f["max-batch-tokens"] as number;
  const loadBefore = Deno.loadavg();
  const runs: Run[] = [];
  try {
    await generateText(model, { prompt: prompts[0].slice(0, 64), maxTokens: 2 }); // warm-up
    const plans: [string, TextRequest["compression"]][] = [["full", null]];
    for (const keep of [0.25, 0.1]) {
      const budget = Math.max(1, Math.round(n * keep));
      plans.push([`judgeq ${keep * 100}%`, { method: "judgeq", budget, random_soft: true }]);
    }
    for (const [label, compression] of plans) {
      const r = await run(model, label, requests(compression), cap, rows);
      log(
        `  ${label.padEnd(12)} ${r.admittedAtOnce} admitted, ${r.decodingAtOnce} decoding at once, ` +
          `${r.tokensPerS} tok/s, ${r.tokensPerCpuS} tok per CPU s (decode steps ${r.decodeStepRowsPerS} rows/s), ${r.steps} steps, ${r.wallS} s`,
      );
      runs.push(r);
    }
  } finally {
    model.executor.dispose();
  }
  const vs = (a: number, b: number) => r2(a / b);
  const report = {
    command: `deno task bench:kv-bound ${argv.join(" ")}`.trim(),
    date: new Date().toISOString(),
    model: modelName,
    format,
    threads,
    executor: "native",
    kv_cache_mb: capMb,
    streams: f.streams,
    prompt_tokens: n,
    max_tokens: maxTokens,
    judgeq_soft_tokens: "untrained (random_soft): the 76M model has random weights and no adapter",
    load_average: { before: loadBefore, after: Deno.loadavg() },
    runs: runs.map((r) => ({
      ...r,
      admitted_vs_full: vs(r.admittedAtOnce, runs[0].admittedAtOnce),
      decoding_vs_full: vs(r.decodingAtOnce, runs[0].decodingAtOnce),
      tokens_per_s_vs_full: vs(r.tokensPerS, runs[0].tokensPerS),
      tokens_per_cpu_s_vs_full: vs(r.tokensPerCpuS, runs[0].tokensPerCpuS),
      decode_step_rows_per_s_vs_full: vs(r.decodeStepRowsPerS, runs[0].decodeStepRowsPerS),
    })),
  };
  log(
    `${report.streams} streams of ${n} prompt + ${maxTokens} tokens under ${capMb} MiB of KV, ${modelName} ${format}:`,
  );
  for (const r of report.runs) {
    log(
      `  ${r.label.padEnd(12)} admitted ${r.admitted_vs_full}x, decoding ${r.decoding_vs_full}x, tok/s ` +
        `${r.tokens_per_s_vs_full}x, tok per CPU s ${r.tokens_per_cpu_s_vs_full}x, decode-step rows/s ${r.decode_step_rows_per_s_vs_full}x the full cache's`,
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
    if (e instanceof UsageError) console.error(`error: ${e.message}\n${usage("bench/kv_bound.ts", SPEC)}`);
    else console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(2);
  }
}
