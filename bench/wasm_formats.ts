/**
 * The fast CPU executor's weight formats against each other in one run: f32, int8 on relaxed-SIMD integer
 * dot products, int8 on the plain-SIMD fallback, and q8_0 (ggml's blocks of 32, a scale each; q8_0-simd on
 * the fallback), on the random 76M llama, prefill of a 512-token prompt
 * and greedy decode of 32 tokens after it, at each thread count asked. Rounds interleave the configurations
 * (this machine is shared), and each figure is the median over rounds with its min and max; the int8/f32
 * ratios (and q8_0/int8) are per round, then their median. Also: kernel dispatches and barriers (dispatches split over the
 * threads) per decoded token. With --baseline DIR (a checkout of another revision, e.g. a git worktree of
 * main), that tree's wasm executor runs the same configurations in the same rounds ("before ..."), and
 * the ratios now / before are per round too.
 *
 *   deno run -A bench/wasm_formats.ts [--rounds 5] [--threads 1,2] [--prompt 512] [--decode 32]
 *     [--formats f32,int8,int8-simd,q8_0,q8_0-simd] [--baseline DIR] [--json]
 */
import type { DecodeOptions } from "../core/executor.ts";
import type { ModelWeights } from "../core/weights.ts";
import { fixtureWeights, promptTokens } from "../fixtures/testing.ts";
import { parseFlags, usage, UsageError } from "../io/flags.ts";
import { WasmExecutor } from "../wasm/mod.ts";
import type { KernelChoice } from "../wasm/kernels.ts";
import type { WasmWeightFormat as WeightFormat } from "../core/weight_formats.ts";
import { median } from "../core/percentile.ts";

const SPEC = {
  rounds: { kind: "string", help: "interleaved rounds (default 5)" },
  threads: { kind: "string", help: "thread counts, comma-separated (default 1,2)" },
  prompt: { kind: "string", help: "prompt tokens prefilled (default 512)" },
  decode: { kind: "string", help: "tokens decoded greedily after it (default 32)" },
  formats: {
    kind: "string",
    help: "configurations, comma-separated: f32, int8, int8-simd, q8_0, q8_0-simd (default all)",
  },
  baseline: { kind: "string", help: "another checkout whose wasm executor runs the same configurations" },
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

/** The executor class of this tree or of a baseline checkout (its own module graph and kernels). */
type Executor = typeof WasmExecutor;

const FORMATS = ["f32", "int8", "int8-simd", "q8_0", "q8_0-simd"] as const;
type FormatName = typeof FORMATS[number];

interface Config {
  name: string;
  executor: Executor;
  format: WeightFormat;
  kernels: KernelChoice;
  threads: number;
}

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

export async function benchFormats(o: {
  rounds: number;
  threads: number[];
  prompt: number;
  decode: number;
  formats?: readonly FormatName[];
  baseline?: Executor;
}) {
  const w = fixtureWeights("llama76m");
  const formats = o.formats ?? FORMATS;
  const sides: [string, Executor][] = [["", WasmExecutor]];
  if (o.baseline) sides.push(["before ", o.baseline]);
  const configs: Config[] = o.threads.flatMap((threads) =>
    sides.flatMap(([prefix, executor]) =>
      formats.map((f) => ({
        name: `${prefix}${f} t${threads}`,
        executor,
        format: f === "f32" ? "f32" as const : f.startsWith("q8_0") ? "q8_0" as const : "int8" as const,
        kernels: f.endsWith("-simd") ? "simd" as const : "auto" as const,
        threads,
      }))
    )
  );
  const results = new Map<string, Awaited<ReturnType<typeof once>>[]>();
  for (const c of configs) results.set(c.name, []);
  const executors = new Map<string, WasmExecutor>();
  try {
    for (const c of configs) {
      const x = await c.executor.create(w, {
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
  const ratio = (a: string, b: string) => {
    const p = results.get(a), q = results.get(b);
    if (!p || !q) return;
    ratios[`${a} / ${b}`] = {
      prefill: stats(p.map((x, i) => x.prefill / q[i].prefill)),
      decode: stats(p.map((x, i) => x.decode / q[i].decode)),
    };
  };
  for (const t of o.threads) {
    for (const [prefix] of sides) {
      for (const n of ["int8", "int8-simd", "q8_0", "q8_0-simd"]) {
        ratio(`${prefix}${n} t${t}`, `${prefix}f32 t${t}`);
      }
      ratio(`${prefix}q8_0 t${t}`, `${prefix}int8 t${t}`);
      ratio(`${prefix}q8_0-simd t${t}`, `${prefix}int8-simd t${t}`);
    }
    if (o.baseline) { for (const f of formats) ratio(`${f} t${t}`, `before ${f} t${t}`); }
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
    const formats = ((flags.formats as string | undefined) ?? FORMATS.join(",")).split(",").map((f) => {
      if (!(FORMATS as readonly string[]).includes(f)) {
        throw new UsageError(`--formats: expected f32, int8, int8-simd, q8_0 or q8_0-simd, got '${f}'`);
      }
      return f as FormatName;
    });
    let baseline: Executor | undefined;
    if (flags.baseline !== undefined) {
      const url = new URL(`${flags.baseline}/wasm/mod.ts`, `file://${Deno.cwd()}/`);
      try {
        baseline = (await import(url.href)).WasmExecutor;
      } catch (e) {
        throw new UsageError(`--baseline: cannot load ${url.pathname}: ${(e as Error).message}`);
      }
    }
    const r = await benchFormats({
      formats,
      baseline,
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
