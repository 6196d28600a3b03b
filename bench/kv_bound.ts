/**
 * The KV-bound run of batched decoding (issue #22): under a fixed KV cap, how many streams decode at once
 * and at what aggregate rate, with the full cache against Judge Q keeping a fraction of the prompt.
 *   deno run -A bench/kv_bound.ts [--executor native] [--threads 1] [--kv-cache-mb 2] [--streams 32]
 *                                 [--prompt-tokens 400] [--max-tokens 64] [--max-batch-tokens 256] [--json]
 * Every request is submitted at once to one scheduler (server/batch_scheduler.ts); "admitted at once" is
 * the most streams that decoded in one step. Prompts are random token ids (the model's context bounds
 * their length: 512 positions for stories260K).
 */
import { generateText, type Model, type TextRequest } from "../core/engine.ts";
import { promptTokens } from "../fixtures/testing.ts";
import { executorFlag, executorFlags, parseFlags, threadsFlag, usage, UsageError } from "../io/flags.ts";
import { loadModel } from "../io/runtime.ts";
import { BatchScheduler } from "../server/batch_scheduler.ts";

const SPEC = {
  ...executorFlags("native"),
  "kv-cache-mb": { kind: "number", help: "the KV cap, MiB (default 2)", default: 2 },
  streams: { kind: "int", help: "requests submitted at once (default 32)", default: 32 },
  "prompt-tokens": { kind: "int", help: "prompt length in tokens (default 400)", default: 400 },
  "max-tokens": { kind: "int", help: "tokens generated per request (default 64)", default: 64 },
  "max-batch-tokens": { kind: "int", help: "rows per step (default 256)", default: 256 },
  json: { kind: "boolean", help: "print one JSON object" },
  help: { kind: "boolean", help: "show this help" },
} as const;

interface Run {
  label: string;
  admittedAtOnce: number;
  tokens: number;
  wallS: number;
  tokensPerS: number;
  steps: number;
}

async function run(model: Model, label: string, reqs: TextRequest[], capBytes: number, rows: number) {
  const scheduler = new BatchScheduler(model.executor, { maxBatchTokens: rows, kvCapBytes: capBytes });
  const m = { ...model, executor: scheduler.wrap() };
  let admitted = 0, worst = 0;
  scheduler.onStep = (s) => {
    admitted = Math.max(admitted, s.decodeRows);
    worst = Math.max(worst, scheduler.kvAllocated());
  };
  const t0 = performance.now();
  const out = await Promise.all(reqs.map((r) => generateText(m, r)));
  const wallS = (performance.now() - t0) / 1000;
  if (worst > capBytes) throw new Error(`${label}: ${worst} bytes allocated over the cap of ${capBytes}`);
  const tokens = out.reduce((n, o) => n + o.outputs[0].tokens.length, 0);
  const r2 = (x: number) => Math.round(x * 100) / 100;
  return {
    label,
    admittedAtOnce: admitted,
    tokens,
    wallS: r2(wallS),
    tokensPerS: r2(tokens / wallS),
    steps: scheduler.steps,
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
  const model = await loadModel({ executor: executorFlag(f.executor), threads: threadsFlag(f.threads) });
  const n = f["prompt-tokens"] as number, maxTokens = f["max-tokens"] as number;
  if (n + maxTokens + 33 > model.config.maxSeqLen) {
    throw new UsageError(
      `--prompt-tokens: ${n} + --max-tokens ${maxTokens} + 32 soft tokens exceed the model's context of ${model.config.maxSeqLen}`,
    );
  }
  const requests = (compression: TextRequest["compression"]) =>
    Array.from({ length: f.streams as number }, (_, i) => ({
      prompt: promptTokens(n, model.config.vocabSize, 100 + i),
      maxTokens,
      ignoreEos: true,
      compression,
    }));
  const cap = Math.floor(capMb * 2 ** 20), rows = f["max-batch-tokens"] as number;
  const runs: Run[] = [];
  runs.push(await run(model, "full", requests(null), cap, rows));
  for (const keep of [0.25, 0.1]) {
    const budget = Math.max(1, Math.round(n * keep));
    runs.push(await run(model, `judgeq ${keep * 100}%`, requests({ method: "judgeq", budget }), cap, rows));
  }
  const report = {
    executor: model.executor.kind,
    kv_cache_mb: capMb,
    streams: f.streams,
    prompt_tokens: n,
    max_tokens: maxTokens,
    runs: runs.map((r) => ({
      ...r,
      admitted_vs_full: Math.round((r.admittedAtOnce / runs[0].admittedAtOnce) * 100) / 100,
      tokens_per_s_vs_full: Math.round((r.tokensPerS / runs[0].tokensPerS) * 100) / 100,
    })),
  };
  if (f.json) console.log(JSON.stringify(report));
  else {
    console.log(
      `${report.streams} streams of ${n} prompt + ${maxTokens} tokens under ${capMb} MiB of KV [${report.executor}]`,
    );
    for (const r of report.runs) {
      console.log(
        `  ${r.label.padEnd(12)} ${r.admittedAtOnce} streams at once (${r.admitted_vs_full}x), ` +
          `${r.tokensPerS} tok/s (${r.tokens_per_s_vs_full}x), ${r.steps} steps, ${r.wallS} s`,
      );
    }
  }
  model.executor.dispose();
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
