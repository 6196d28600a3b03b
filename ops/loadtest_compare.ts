/**
 * `deno task loadtest --compare`: the service over HTTP against llama.cpp (issue #22). A real
 * `server/main.ts` process (native executor, batched decoding) and llama.cpp (node-llama-cpp, one context
 * with N sequences, bench/llamacpp_parallel.mjs) get the same prompt ids and the same GGUF values, level by
 * level, interleaved (ours, then llama.cpp's, at each level), so a busy machine hits both sides alike.
 *   deno task loadtest --compare [--model llama76m|stories260K] [--format q8_0|f32] [--threads 1]
 *     [--kv f16|f32] [--levels 1,4,16,32] [--prompt-tokens 64] [--max-tokens 64] [--max-batch-tokens 512]
 *     [--kv-cache-mb N] [--text DIR] [--json] [--out FILE]
 * Every stream is one streamed POST /v1/generate (greedy, end of story ignored, its token ids returned per
 * event); its tokens' arrival times give the time to first token and the per-token gaps. Reports per level:
 * aggregate completion tok/s (wall clock, and per CPU second of the server process, read from /proc, and
 * of llama.cpp's), p50/p99 time to first token and per-token latency, for both, and the ratios.
 */
import { parseFlags, threadsFlag, usage, UsageError } from "../io/flags.ts";
import { type Level, llamaCpp, summarize } from "../bench/batch_compare.ts";
import {
  BENCH_FORMATS,
  BENCH_MODELS,
  benchGguf,
  benchWeights,
  DEFAULT_TEXT_DIR,
  essayTexts,
  parseList,
  PEER_COMPARISON_FLAGS,
  tempGguf,
} from "../bench/batch_setup.ts";
import { readSse } from "../server/sse.ts";
import { stopProcess } from "./processes.ts";

const SPEC = {
  compare: { kind: "boolean", help: "this comparison (the flag that chose it)" },
  ...PEER_COMPARISON_FLAGS,
  format: { kind: "string", help: "weights of both: q8_0 (default) or f32", default: "q8_0" },
  "prompt-tokens": { kind: "int", help: "prompt length with BOS, about (default 64)", default: 64 },
  "max-batch-tokens": { kind: "int", help: "the server's --max-batch-tokens (default 512)", default: 512 },
  "kv-cache-mb": { kind: "int", help: "the server's --kv-cache-mb (default: none)" },
} as const;

const USAGE = "deno task loadtest --compare";
const r2 = (x: number) => Math.round(x * 100) / 100;

/** The checked flags, before anything is loaded or started. */
export function compareOptions(argv: string[]) {
  const f = parseFlags(argv, SPEC);
  const levels = String(f.levels).split(",").map(Number);
  if (levels.some((n) => !(Number.isInteger(n) && n >= 1 && n <= 256))) {
    throw new UsageError(`--levels: expected integers 1..256, comma-separated, got '${f.levels}'`);
  }
  for (const k of ["prompt-tokens", "max-tokens", "max-batch-tokens"] as const) {
    if (!((f[k] as number) >= 2)) throw new UsageError(`--${k}: expected an integer >= 2, got '${f[k]}'`);
  }
  const kvMb = f["kv-cache-mb"] as number | undefined;
  if (kvMb !== undefined && !(kvMb >= 1)) {
    throw new UsageError(`--kv-cache-mb: expected an integer >= 1, got '${kvMb}'`);
  }
  return {
    help: f.help === true,
    json: f.json === true,
    out: f.out as string | undefined,
    model: parseList(String(f.model), BENCH_MODELS, "model")[0],
    format: parseList(String(f.format), BENCH_FORMATS, "format")[0],
    threads: threadsFlag(f.threads) ?? 1,
    kv: parseList(String(f.kv), ["f16", "f32"] as const, "kv")[0],
    levels,
    promptTokens: f["prompt-tokens"] as number,
    maxTokens: f["max-tokens"] as number,
    maxBatchTokens: f["max-batch-tokens"] as number,
    kvMb,
    text: (f.text as string | undefined) ?? DEFAULT_TEXT_DIR,
  };
}

type Options = ReturnType<typeof compareOptions>;

/** Starts `server/main.ts` on a free loopback port; resolves with its URL and a stop function. */
async function startServer(o: Options, gguf: string) {
  const args = [
    "run",
    "-A",
    new URL("../server/main.ts", import.meta.url).pathname,
    "--model",
    gguf,
    "--adapter",
    "none",
    "--executor",
    "native",
    "--threads",
    String(o.threads),
    "--kv-cache",
    o.kv,
    "--weights",
    o.format,
    "--port",
    "0",
    "--max-streams",
    String(Math.max(...o.levels)),
    "--max-batch-tokens",
    String(o.maxBatchTokens),
    "--queue-size",
    String(4 * Math.max(...o.levels)),
    "--max-request-seconds",
    "3600",
    ...(o.kvMb !== undefined ? ["--kv-cache-mb", String(o.kvMb)] : []),
  ];
  const child = new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "inherit" }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  const deadline = Date.now() + 300_000;
  while (Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += value;
    const m = seen.match(/at (http:\/\/127\.0\.0\.1:\d+)/);
    if (m) {
      // Keep reading (and dropping) what it prints, so its pipe never fills.
      (async () => {
        while (!(await reader.read()).done);
      })().catch(() => {});
      return { url: m[1], stop: () => stopProcess(child, "SIGTERM"), pid: child.pid };
    }
  }
  await stopProcess(child);
  throw new Error(`the server did not start: ${seen.slice(-2000)}`);
}

/** CPU ms a process has used (every thread), from /proc (Linux); null where it cannot be read. */
function cpuMsOf(pid: number): number | null {
  try {
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th (clock ticks).
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(f[11]) + Number(f[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return null;
  }
}

/** Linux's USER_HZ, the unit of /proc/PID/stat's times (100 on every mainstream build). */
const CLOCK_TICKS = 100;

/** One streamed request's token arrival times (ms since `t0`), and its prompt token count. */
async function stream(url: string, text: string, maxTokens: number, t0: number) {
  const r = await fetch(`${url}/v1/generate`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      prompt: text,
      max_tokens: maxTokens,
      ignore_eos: true,
      temperature: 0,
      stream: true,
      return_tokens: true,
    }),
  });
  if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  const times: number[] = [];
  let promptTokens = -1;
  for await (const data of readSse(r.body)) {
    if (data === "[DONE]") break;
    const e = JSON.parse(data);
    if (e.object === "generation.chunk") {
      for (const _id of e.tokens ?? []) times.push(performance.now() - t0);
    } else if (e.object === "generation.done") promptTokens = e.usage?.prompt_tokens ?? -1;
    else if (e.error) throw new Error(JSON.stringify(e.error));
  }
  return { times, promptTokens };
}

async function oursAt(
  server: { url: string; pid: number },
  prompts: { text: string; ids: number[] }[],
  n: number,
  maxTokens: number,
) {
  const url = server.url, c0 = cpuMsOf(server.pid), t0 = performance.now();
  const out = await Promise.all(
    Array.from({ length: n }, (_, k) => stream(url, prompts[k % prompts.length].text, maxTokens, t0)),
  );
  const wallMs = performance.now() - t0, c1 = cpuMsOf(server.pid);
  out.forEach((o, k) => {
    const want = prompts[k % prompts.length].ids.length;
    if (o.promptTokens !== want) {
      throw new Error(`stream ${k}: the server read ${o.promptTokens} prompt tokens, llama.cpp gets ${want}`);
    }
  });
  return summarize(n, wallMs, out.map((o) => o.times), c0 !== null && c1 !== null ? c1 - c0 : null);
}

export async function compareMain(argv: string[]): Promise<number> {
  const o = compareOptions(argv);
  if (o.help) {
    console.log(usage(USAGE, SPEC));
    return 0;
  }
  const log = (m: string) => (o.json ? console.error(m) : console.log(m));
  const weights = await benchWeights(o.model);
  if (o.promptTokens + o.maxTokens + 8 > weights.config.maxSeqLen) {
    throw new UsageError(
      `--prompt-tokens: ${o.promptTokens} + --max-tokens ${o.maxTokens} exceed ${o.model}'s context of ${weights.config.maxSeqLen}`,
    );
  }
  const prompts = await essayTexts(4, o.promptTokens, o.text);
  const file = await tempGguf(await benchGguf(weights, o.format));
  const loadBefore = Deno.loadavg();
  const ours: Level[] = [], theirs: (Level | null)[] = [];
  let unavailable = "";
  try {
    const server = await startServer(o, file.path);
    try {
      await stream(server.url, prompts[0].text, 2, performance.now()); // warm-up
      for (const n of o.levels) {
        ours.push(await oursAt(server, prompts, n, o.maxTokens));
        const peer = await llamaCpp(file.path, {
          threads: o.threads,
          kvCacheType: o.kv === "f16" ? "F16" : "F32",
          levels: [n],
          prompts: prompts.map((p) => p.ids),
          maxTokens: o.maxTokens,
        });
        if (!peer.ok) unavailable = peer.reason;
        theirs.push(
          peer.ok ? summarize(n, peer.levels[0].wallMs, peer.levels[0].times, peer.levels[0].cpuMs) : null,
        );
        const a = ours.at(-1)!, b = theirs.at(-1);
        log(
          `  ${
            String(n).padStart(3)
          } streams: service ${a.tokPerS} tok/s, ${a.tokPerCpuS} per CPU s (ttft p50 ${a.ttftMs.p50} p99 ${a.ttftMs.p99} ms, ` +
            `per token p50 ${a.perTokenMs.p50} p99 ${a.perTokenMs.p99} ms)` +
            (b
              ? `; llama.cpp ${b.tokPerS} tok/s, ${b.tokPerCpuS} per CPU s (ttft p50 ${b.ttftMs.p50} p99 ${b.ttftMs.p99} ms, per token p50 ` +
                `${b.perTokenMs.p50} p99 ${b.perTokenMs.p99} ms); ratio ${r2(a.tokPerS / b.tokPerS)}`
              : "; llama.cpp unavailable"),
        );
      }
    } finally {
      await server.stop();
    }
  } finally {
    await Deno.remove(file.dir, { recursive: true }).catch(() => {});
  }
  const report = {
    command: `deno task loadtest --compare ${argv.filter((a) => a !== "--compare").join(" ")}`.trim(),
    date: new Date().toISOString(),
    model: o.model,
    format: o.format,
    kv_cache: o.kv,
    threads: o.threads,
    max_tokens: o.maxTokens,
    prompt_tokens: prompts.map((p) => p.ids.length),
    server: { executor: "native", max_batch_tokens: o.maxBatchTokens, kv_cache_mb: o.kvMb ?? null },
    load_average: { before: loadBefore, after: Deno.loadavg() },
    service: ours,
    llamacpp: theirs.every((t) => t) ? theirs : { unavailable },
    tok_per_s_ratio: ours.map((a, i) => (theirs[i] ? r2(a.tokPerS / theirs[i]!.tokPerS) : null)),
    tok_per_cpu_s_ratio: ours.map((a, i) =>
      theirs[i] && a.tokPerCpuS !== null && theirs[i]!.tokPerCpuS !== null
        ? r2(a.tokPerCpuS / theirs[i]!.tokPerCpuS!)
        : null
    ),
    ttft_p50_ratio: ours.map((a, i) => (theirs[i] ? r2(a.ttftMs.p50 / theirs[i]!.ttftMs.p50) : null)),
    per_token_p50_ratio: ours.map((
      a,
      i,
    ) => (theirs[i] ? r2(a.perTokenMs.p50 / theirs[i]!.perTokenMs.p50) : null)),
  };
  const json = JSON.stringify(report);
  if (o.out) await Deno.writeTextFile(o.out, json + "\n");
  if (o.json) console.log(json);
  else {
    log(
      `service/llama.cpp tok/s at ${o.levels.join(", ")} streams: ${report.tok_per_s_ratio.join(", ")}; ` +
        `per CPU s ${report.tok_per_cpu_s_ratio.join(", ")}`,
    );
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await compareMain(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) console.error(`error: ${e.message}\n${usage(USAGE, SPEC)}`);
    else console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(2);
  }
}
