/**
 * deno task generate: compress-then-generate from the command line.
 *   deno task generate --prompt "Once upon a time" [--method snapkv --budget 64] [--json]
 */
import { JudgeQError } from "../core/errors.ts";
import { generateText } from "../core/engine.ts";
import type { DecodeCompressionRequest } from "../core/decode_compression.ts";
import type { CompressionRequest } from "../core/plan.ts";
import { loadModel } from "../io/runtime.ts";
import { decodeJson } from "../server/wire.ts";
import {
  executorFlag,
  executorFlags,
  GPU_WEIGHTS_ALIAS,
  kvCacheFlag,
  parseFlags,
  threadsFlag,
  usage,
  UsageError,
  weightsFlag,
} from "../io/flags.ts";

const SPEC = {
  model: { kind: "string", help: "model directory (default: the embedded stories260K)" },
  prompt: { kind: "string", help: "prompt text (compressed as a whole)" },
  context: { kind: "string", help: "context to compress once (use with --question)" },
  question: { kind: "strings", help: "question appended after the compressed context (repeatable)" },
  "max-tokens": { kind: "int", help: "tokens to generate (default 256)", default: 256 },
  temperature: { kind: "number", help: "0 = greedy (default 0)", default: 0 },
  "top-p": { kind: "number", help: "nucleus sampling mass (default 1)", default: 1 },
  "top-k": { kind: "int", help: "keep the k likeliest tokens, 0 = all (default 0)", default: 0 },
  seed: { kind: "int", help: "sampling seed (default 0)", default: 0 },
  ...executorFlags("auto"),
  ...GPU_WEIGHTS_ALIAS,
  method: { kind: "string", help: "KV compression method (default full)" },
  budget: { kind: "int", help: "prompt KV entries kept per KV head per layer, window included" },
  ratio: { kind: "number", help: "compression ratio: fraction of prompt entries removed" },
  window: { kind: "int", help: "last prompt positions always kept" },
  pooling: { kind: "string", help: "max | avg | none" },
  kernel: { kind: "int", help: "pooling kernel size" },
  gqa: { kind: "string", help: "mean | max | sum over a KV head's query heads" },
  allocation: {
    kind: "string",
    help: "uniform | pyramid | adaptive: the budget shared out over layers and heads (attention methods)",
  },
  adapter: { kind: "string", help: "Judge Q adapter (default: the model's judgeq.safetensors)" },
  "random-soft": { kind: "boolean", help: "Judge Q ablation: untrained random soft tokens" },
  "decode-budget": {
    kind: "int",
    help: "compress during decoding: KV entries kept per KV head after each compression",
  },
  "decode-fraction": {
    kind: "number",
    help: "compress during decoding: budget as a share of the positions seen, (0, 1]",
  },
  "decode-interval": { kind: "int", help: "tokens generated between decode-time compressions (default 32)" },
  "decode-buffer": {
    kind: "int",
    help: "most recent positions never evicted during decoding (default min(8, budget - 1))",
  },
  "decode-method": { kind: "string", help: "decode-time method (default: --method, else snapkv)" },
  json: { kind: "boolean", help: "print one JSON object" },
  help: { kind: "boolean", help: "show this help" },
} as const;

const DECODE_FLAGS = [
  "decode-budget",
  "decode-fraction",
  "decode-interval",
  "decode-buffer",
  "decode-method",
];

/** kv_compression.decode from the --decode-* flags, or undefined without any. */
function decodeFrom(f: Record<string, unknown>): DecodeCompressionRequest | undefined {
  if (!DECODE_FLAGS.some((k) => f[k] !== undefined)) return undefined;
  if (f["decode-budget"] === undefined && f["decode-fraction"] === undefined) {
    throw new UsageError("--decode-* needs --decode-budget or --decode-fraction");
  }
  const d: DecodeCompressionRequest = { interval: (f["decode-interval"] as number | undefined) ?? 32 };
  if (f["decode-budget"] !== undefined) d.budget = f["decode-budget"] as number;
  if (f["decode-fraction"] !== undefined) d.fraction = f["decode-fraction"] as number;
  if (f["decode-buffer"] !== undefined) d.buffer = f["decode-buffer"] as number;
  d.method = (f["decode-method"] as string | undefined) ??
    (f.method !== undefined && f.method !== "full" ? f.method as string : "snapkv");
  return d;
}

function compressionFrom(f: Record<string, unknown>): CompressionRequest | null {
  const keys = [
    "method",
    "budget",
    "ratio",
    "window",
    "pooling",
    "kernel",
    "gqa",
    "allocation",
    "random-soft",
  ];
  const decode = decodeFrom(f);
  if (!keys.some((k) => f[k] !== undefined)) return decode ? { method: "full", decode } : null;
  const c: Record<string, unknown> = { method: f.method ?? "snapkv" };
  if (decode) c.decode = decode;
  if (f.budget !== undefined) c.budget = f.budget;
  if (f.ratio !== undefined) c.compression_ratio = f.ratio;
  for (const k of ["window", "pooling", "kernel", "gqa", "allocation"]) if (f[k] !== undefined) c[k] = f[k];
  if (f["random-soft"]) c.random_soft = true;
  return c as CompressionRequest;
}

async function main(argv: string[]): Promise<number> {
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno task generate", SPEC));
    return 0;
  }
  if (f.prompt === undefined && f.context === undefined) throw new UsageError("give --prompt or --context");
  if (f.context !== undefined && !(f.question as string[] | undefined)?.length) {
    throw new UsageError("--context needs --question");
  }
  const executor = executorFlag(f.executor);
  const threads = threadsFlag(f.threads), weightFormat = weightsFlag(f), kvCache = kvCacheFlag(f["kv-cache"]);
  const model = await loadModel({
    model: f.model as string | undefined,
    adapter: f.adapter as string | undefined,
    executor,
    weightFormat,
    kvCache,
    threads,
  });
  const compression = compressionFrom(f);
  const result = await generateText(model, {
    prompt: f.prompt as string | undefined,
    context: f.context as string | undefined,
    questions: f.question as string[] | undefined,
    compression,
    maxTokens: f["max-tokens"] as number,
    temperature: f.temperature as number,
    topP: f["top-p"] as number,
    topK: f["top-k"] as number,
    seed: f.seed as number,
  });
  model.executor.dispose();
  if (f.json) {
    const c = result.run.compression;
    const outputs = result.outputs.map((o) => ({
      text: o.text,
      tokens: o.tokens,
      finish_reason: o.finishReason,
    }));
    console.log(JSON.stringify({
      ...(outputs.length === 1 && f.context === undefined ? outputs[0] : { answers: outputs }),
      prompt_tokens: result.promptTokens,
      executor: model.executor.kind,
      compression: {
        method: c.method,
        budget: c.budget,
        window: c.window,
        kept: c.kept,
        kv_bytes_before: c.kvBytesBefore,
        kv_bytes_after: c.kvBytesAfter,
        ...(c.decode ? { decode: decodeJson(c.decode) } : {}),
      },
      timings_ms: result.run.timings,
    }));
  } else if (result.outputs.length === 1 && f.context === undefined) {
    console.log((f.prompt as string) + result.outputs[0].text);
  } else {
    result.outputs.forEach((o, i) =>
      console.log(`Q${i + 1}: ${(f.question as string[])[i]}\nA${i + 1}: ${o.text}`)
    );
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) console.error(`error: ${e.message}\n${usage("deno task generate", SPEC)}`);
    else if (e instanceof JudgeQError) console.error(`error: ${e.message}`);
    else throw e;
    Deno.exit(2);
  }
}
