/**
 * The fast CPU executor's weight formats against each other in one run: f32, int8 on relaxed-SIMD integer
 * dot products, and int8 on the plain-SIMD fallback, on the random 76M llama, prefill of a 512-token prompt
 * and greedy decode of 32 tokens after it, at each thread count asked. Rounds interleave the configurations
 * (this machine is shared), and each figure is the median over rounds with its min and max; the int8/f32
 * ratios are per round, then their median. Also: kernel dispatches and barriers (dispatches split over the
 * threads) per decoded token.
 *
 *   deno run -A bench/wasm_formats.ts [--rounds 5] [--threads 1,2] [--prompt 512] [--decode 32] [--json]
 */
import type { DecodeOptions } from "../core/executor.ts";
import type { ModelWeights } from "../core/weights.ts";
import { fixtureWeights, promptTokens } from "../fixtures/testing.ts";
import { parseFlags, usage, UsageError } from "../io/flags.ts";
import { WasmExecutor } from "../wasm/mod.ts";
import type { KernelChoice } from "../wasm/kernels.ts";
import type { WasmWeightFormat as WeightFormat } from "../core/weight_formats.ts";

const SPEC = {
  rounds: { kind: "string", help: "interleaved rounds (default 5)" },
  threads: { kind: "string", help: "thread counts, comma-separated (default 1,2)" },
  prompt: { kind: "string", help: "prompt tokens prefilled (default 512)" },
  decode: { kind: "string", help: "tokens decoded greedily after it (default 32)" },
  json: { kind: "boolean", help: "print one JSON object" },
  help: { kind: "boolean", help: "this help" },
} as const;

function positive(name: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) {
    throw new UsageError(`--${name}: expected a positive integer, got '${v}'`);
  }
  return n;
}

interface Config {
  name: string;
  format: WeightFormat;
  kernels: KernelChoice;
  threads: number;
}

const median = (xs: number[]) => {
  const a = [...xs].sort((x, y) => x - y), m = a.length >> 1;
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
};
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;
const stats = (xs: number[]) => ({
  median: round(median(xs)),
  min: round(Math.min(...xs)),
  max: round(Math.max(...xs)),
});
const greedy = (n: number): DecodeOptions => ({
  maxTokens: n,
  sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
  stopTokenIds: [],
  returnLogits: false,
});

/** One prefill + decode on a fresh session: tokens/s of each, and dispatch counts per decoded token. */
async function once(x: WasmExecutor, w: ModelWeights, prompt: number, decode: number) {
  const s = x.createSession(prompt + decode + 1);
  try {
    const toks = promptTokens(prompt, w.config.vocabSize, prompt);
    let t = performance.now();
    await s.forward({ kind: "tokens", tokens: toks }, { logits: "last" });
    const prefill = prompt / ((performance.now() - t) / 1000);
    const before = x.dispatchCounts();
    t = performance.now();
    const r = await s.decode(greedy(decode));
    const decodeRate = r.tokens.length / ((performance.now() - t) / 1000);
    const after = x.dispatchCounts(), steps = r.tokens.length - 1; // the last token is sampled, not run
    return {
      prefill,
      decode: decodeRate,
      dispatchesPerToken: (after.dispatches - before.dispatches) / steps,
      barriersPerToken: (after.barriers - before.barriers) / steps,
    };
  } finally {
    s.dispose();
  }
}

export async function benchFormats(o: { rounds: number; threads: number[]; prompt: number; decode: number }) {
  const w = fixtureWeights("llama76m");
  const configs: Config[] = o.threads.flatMap((threads) => [
    { name: `f32 t${threads}`, format: "f32" as const, kernels: "auto" as const, threads },
    { name: `int8 t${threads}`, format: "int8" as const, kernels: "auto" as const, threads },
    { name: `int8-simd t${threads}`, format: "int8" as const, kernels: "simd" as const, threads },
  ]);
  const results = new Map<string, Awaited<ReturnType<typeof once>>[]>();
  for (const c of configs) results.set(c.name, []);
  const executors = new Map<string, WasmExecutor>();
  try {
    for (const c of configs) {
      const x = await WasmExecutor.create(w, {
        threads: c.threads,
        weightFormat: c.format,
        kernels: c.kernels,
      });
      executors.set(c.name, x);
      await once(x, w, 64, 4); // warm-up: the kernels' hot paths, the workers
    }
    for (let r = 0; r < o.rounds; r++) {
      for (const c of configs) {
        results.get(c.name)!.push(await once(executors.get(c.name)!, w, o.prompt, o.decode));
      }
    }
  } finally {
    for (const x of executors.values()) x.dispose();
  }
  const out: Record<string, unknown> = {};
  for (const c of configs) {
    const rs = results.get(c.name)!;
    out[c.name] = {
      description: `${c.format} weights, ${
        c.kernels === "simd" ? "plain" : "relaxed"
      } SIMD, ${c.threads} thread(s)`,
      prefillTokPerS: stats(rs.map((x) => x.prefill)),
      decodeTokPerS: stats(rs.map((x) => x.decode)),
      dispatchesPerToken: round(median(rs.map((x) => x.dispatchesPerToken))),
      barriersPerToken: round(median(rs.map((x) => x.barriersPerToken))),
    };
  }
  const ratios: Record<string, unknown> = {};
  for (const t of o.threads) {
    const f = results.get(`f32 t${t}`)!;
    for (const n of [`int8 t${t}`, `int8-simd t${t}`]) {
      const q = results.get(n)!;
      ratios[`${n} / f32 t${t}`] = {
        prefill: stats(q.map((x, i) => x.prefill / f[i].prefill)),
        decode: stats(q.map((x, i) => x.decode / f[i].decode)),
      };
    }
  }
  return {
    model: "llama76m (random)",
    prompt: o.prompt,
    decode: o.decode,
    rounds: o.rounds,
    loadAverage: Deno.loadavg()[0],
    configs: out,
    ratios,
  };
}

if (import.meta.main) {
  let flags;
  try {
    flags = parseFlags(Deno.args, SPEC);
    if (flags.help) {
      console.log(usage("deno run -A bench/wasm_formats.ts", SPEC));
      Deno.exit(0);
    }
    const threads = ((flags.threads as string | undefined) ?? "1,2").split(",").map((t) =>
      positive("threads", t, 1)
    );
    const r = await benchFormats({
      rounds: positive("rounds", flags.rounds as string | undefined, 5),
      threads,
      prompt: positive("prompt", flags.prompt as string | undefined, 512),
      decode: positive("decode", flags.decode as string | undefined, 32),
    });
    console.log(flags.json ? JSON.stringify(r, null, 2) : r);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
}
