/**
 * Batched decoding against llama.cpp (issue #22): N concurrent greedy streams on the same prompt ids and
 * the same F32 weights, ours through the batch scheduler (server/batch_scheduler.ts, no HTTP) on the native
 * executor, llama.cpp (node-llama-cpp, bench/llamacpp_parallel.mjs) as one context with N sequences.
 *   deno run -A bench/batch_compare.ts [--threads 1] [--levels 1,4,16,32] [--max-tokens 64] [--json]
 * Reports per level: aggregate completion tok/s, p50/p99 time to first token and per-token latency
 * (gaps between a stream's consecutive tokens), and our/llama.cpp ratios.
 */
import { vocabFromTokenizerJson } from "../core/gguf/hf_vocab.ts";
import { writeGguf } from "../core/gguf/model_writer.ts";
import { generateText } from "../core/engine.ts";
import { loadWeightsOnly } from "../fixtures/testing.ts";
import { parseFlags, threadsFlag, usage, UsageError } from "../io/flags.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "../io/model_dir.ts";
import { loadModel } from "../io/runtime.ts";
import { BatchScheduler } from "../server/batch_scheduler.ts";
import { percentile } from "../ops/loadtest.ts";
import { ensureLlamaCppPeer, LLAMACPP_PEER_DIR } from "./llamacpp.ts";

const SPEC = {
  threads: { kind: "int", help: "threads of both engines (default 1)", default: 1 },
  levels: {
    kind: "string",
    help: "concurrent streams, comma-separated (default 1,4,16,32)",
    default: "1,4,16,32",
  },
  "max-tokens": { kind: "int", help: "tokens per stream (default 64)", default: 64 },
  json: { kind: "boolean", help: "print one JSON object" },
  help: { kind: "boolean", help: "show this help" },
} as const;

const PROMPTS = [
  "Once upon a time",
  "One day, a little girl named Lily found a needle in her room.",
  "Tom and his dog went to the park. They saw a big tree and",
  "Once upon a time, there was a little boy named Ben. Ben loved to play outside in the sun. One day, he saw a bird",
];

interface Level {
  streams: number;
  tokPerS: number;
  ttftMs: { p50: number; p99: number };
  perTokenMs: { p50: number; p99: number };
}

const r2 = (x: number) => Math.round(x * 100) / 100;

/** Level statistics from each stream's token arrival times (ms since the level started). */
function summarize(streams: number, wallMs: number, times: number[][]): Level {
  const tokens = times.reduce((n, t) => n + t.length, 0);
  const ttft = times.filter((t) => t.length > 0).map((t) => t[0]).sort((a, b) => a - b);
  const gaps = times.flatMap((t) => t.slice(1).map((x, i) => x - t[i])).sort((a, b) => a - b);
  return {
    streams,
    tokPerS: r2(tokens / (wallMs / 1000)),
    ttftMs: { p50: r2(percentile(ttft, 50)), p99: r2(percentile(ttft, 99)) },
    perTokenMs: { p50: r2(percentile(gaps, 50)), p99: r2(percentile(gaps, 99)) },
  };
}

async function llamaCpp(gguf: Uint8Array, spec: Record<string, unknown>) {
  const ready = await ensureLlamaCppPeer({});
  if (!ready.ok) return ready;
  const dir = await Deno.makeTempDir({ prefix: "judgeq-batch-compare-" });
  try {
    await Deno.writeFile(`${dir}/model.gguf`, gguf);
    await Deno.writeTextFile(
      `${dir}/spec.json`,
      JSON.stringify({ packageDir: LLAMACPP_PEER_DIR, model: `${dir}/model.gguf`, ...spec }),
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
    return JSON.parse(line) as
      | { ok: true; levels: { streams: number; wallMs: number; times: number[][] }[] }
      | { ok: false; reason: string };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

async function main(argv: string[]): Promise<number> {
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno run -A bench/batch_compare.ts", SPEC));
    return 0;
  }
  const threads = threadsFlag(f.threads) ?? 1;
  const levels = String(f.levels).split(",").map(Number);
  if (levels.some((n) => !(Number.isInteger(n) && n >= 1 && n <= 256))) {
    throw new UsageError(`--levels: expected integers 1..256, comma-separated, got '${f.levels}'`);
  }
  const maxTokens = f["max-tokens"] as number;
  if (!(maxTokens >= 1)) throw new UsageError(`--max-tokens: expected a number >= 1, got '${maxTokens}'`);
  const model = await loadModel({ executor: "native", threads, warn: () => {} });
  const prompts = PROMPTS.map((p) => model.tokenizer.encode(p, { addBos: true }));

  // Today's single-stream path (no scheduler), the baseline a batched single stream must keep up with.
  await generateText(model, { prompt: prompts[0], maxTokens: 2 });
  const aloneTimes: number[] = [];
  const a0 = performance.now();
  await generateText(model, { prompt: prompts[0], maxTokens, ignoreEos: true }, {
    onTokens: (_, ids) => {
      for (const _id of ids) aloneTimes.push(performance.now() - a0);
    },
  });
  const alone = summarize(1, performance.now() - a0, [aloneTimes]);

  const ours: Level[] = [];
  for (const n of levels) {
    const scheduler = new BatchScheduler(model.executor, { maxBatchTokens: 512, kvCapBytes: null });
    const m = { ...model, executor: scheduler.wrap() };
    await generateText(m, { prompt: prompts[0], maxTokens: 2 }); // warm-up
    const times: number[][] = Array.from({ length: n }, () => []);
    const t0 = performance.now();
    await Promise.all(
      times.map((t, k) =>
        generateText(m, { prompt: prompts[k % prompts.length], maxTokens, ignoreEos: true }, {
          onTokens: (_, ids) => {
            for (const _id of ids) t.push(performance.now() - t0);
          },
        })
      ),
    );
    ours.push(summarize(n, performance.now() - t0, times));
  }
  model.executor.dispose();

  const hf = await loadModelDir(EMBEDDED_MODEL_DIR);
  const gguf = writeGguf(
    await loadWeightsOnly(),
    vocabFromTokenizerJson(hf.tokenizerJson, hf.config.vocabSize),
    {
      tensorType: "f32",
      addBos: false,
    },
  );
  const peer = await llamaCpp(gguf, { threads, kvCacheType: "F32", levels, prompts, maxTokens });
  const theirs = peer.ok ? peer.levels.map((l) => summarize(l.streams, l.wallMs, l.times)) : null;
  const report = {
    model: "stories260K (F32 weights, F32 KV)",
    threads,
    max_tokens: maxTokens,
    load_average: Deno.loadavg(),
    unbatched_single_stream: alone,
    ours,
    llamacpp: theirs ?? { unavailable: (peer as { reason: string }).reason },
    tok_per_s_ratio: theirs ? ours.map((o, i) => r2(o.tokPerS / theirs[i].tokPerS)) : null,
  };
  if (f.json) console.log(JSON.stringify(report));
  else {
    console.log(
      `${report.model}, ${threads} thread(s), ${maxTokens} tokens a stream, load ${report.load_average}`,
    );
    console.log(
      `  1 stream without the scheduler: ${alone.tokPerS} tok/s (per token p50 ${alone.perTokenMs.p50} ms)`,
    );
    for (const [i, o] of ours.entries()) {
      const t = theirs?.[i];
      console.log(
        `  ${
          String(o.streams).padStart(3)
        } streams: ours ${o.tokPerS} tok/s (ttft p50 ${o.ttftMs.p50} p99 ${o.ttftMs.p99} ms, ` +
          `per token p50 ${o.perTokenMs.p50} p99 ${o.perTokenMs.p99} ms)` +
          (t
            ? `; llama.cpp ${t.tokPerS} tok/s (ttft p50 ${t.ttftMs.p50} p99 ${t.ttftMs.p99} ms, per token p50 ` +
              `${t.perTokenMs.p50} p99 ${t.perTokenMs.p99} ms); ratio ${report.tok_per_s_ratio![i]}`
            : ""),
      );
    }
    if (!theirs) console.log(`  llama.cpp unavailable: ${(peer as { reason: string }).reason}`);
  }
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
