/**
 * `deno task bench`: the CPU engines against llama.cpp, the same work on both sides.
 *
 * - The same prompt ids for every engine: BOS + real English text (essays, `--text DIR`) tokenized by the
 *   embedded model's tokenizer, a different passage for every run.
 * - The same weights: the model's values written to GGUF by the project's writer (F32, Q8_0, Q4_0; in a
 *   Q4_0 file the output matrix is Q8_0) for llama.cpp, and the same formats quantized by ggml's own
 *   quantizers for the native executor (the writer rounds as ggml does: the same blocks).
 * - The same threads, the same KV cache type (f16, llama.cpp's default; `--kv f32` for both), the same
 *   lengths: prefill of the whole context, then greedy decode of `--decode` tokens ending at the context.
 * - llama.cpp (npm node-llama-cpp 3.21.1, its prebuilt CPU build, in a node process) runs once alone before
 *   anything of ours is loaded, then before and after our engines; the ratios use its better in-bench run,
 *   and a warning is printed when that is more than 15% below the run alone.
 * - Medians with min and max over `--runs` runs; Judge Q's append + scoring and prune overhead per engine.
 *
 *   deno task bench [--json] [--models llama76m,llama1b,stories260K] [--contexts 512,2048]
 *     [--engines native-f32,native-q8_0,...,llamacpp-q4_0] [--threads 2] [--runs 3] [--decode 32]
 *     [--kv f16|f32] [--text DIR] [--out FILE]
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import type { DecodeOptions, Executor, KvSession } from "../core/executor.ts";
import { vocabFromTokenizerJson } from "../core/gguf/hf_vocab.ts";
import { type GgufTensorType, writeGguf } from "../core/gguf/model_writer.ts";
import { aggregateGqa } from "../core/scoring.ts";
import { topPerHead } from "../core/selection.ts";
import { createTokenizer } from "../core/tokenizer.ts";
import { parameterCount } from "../core/weights.ts";
import type { ModelWeights } from "../core/weights.ts";
import { fixtureWeights, loadWeightsOnly } from "../fixtures/testing.ts";
import { parseFlags, usage, UsageError } from "../io/flags.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "../io/model_dir.ts";
import { NativeExecutor, type NativeWeightFormat } from "../native/mod.ts";
import { WasmExecutor } from "../wasm/mod.ts";
import { llamaCppRuns, type PeerRun } from "./llamacpp.ts";
import { median } from "../core/percentile.ts";

const ENGINES = [
  "native-f32",
  "native-f16",
  "native-q8_0",
  "native-q4_0",
  "wasm-f32",
  "wasm-int8",
  "wasm-q8_0",
  "reference",
  "llamacpp-f32",
  "llamacpp-q8_0",
  "llamacpp-q4_0",
] as const;
type Engine = typeof ENGINES[number];
const MODELS = ["llama76m", "llama1b", "stories260K"] as const;
type ModelName = typeof MODELS[number];
/** The 1B shape runs the quantized formats only (its f32 copy alone is 3.9 GB). */
const QUANTIZED_ONLY: ModelName[] = ["llama1b"];

const SPEC = {
  json: { kind: "boolean", help: "print one JSON object on stdout (progress goes to stderr)" },
  models: { kind: "string", help: `comma list of ${MODELS.join(", ")} (default llama76m)` },
  contexts: { kind: "string", help: "context lengths, each prefilled whole (default 512,2048)" },
  engines: { kind: "string", help: `comma list of ${ENGINES.join(", ")} (default all)` },
  threads: { kind: "string", help: "threads of every engine (default 2)" },
  runs: { kind: "string", help: "runs per engine and context, each on another passage (default 3)" },
  decode: { kind: "string", help: "greedy tokens decoded, ending at the context length (default 32)" },
  kv: { kind: "string", help: "KV cache type of native and llama.cpp: f16 (llama.cpp's default) or f32" },
  text: { kind: "string", help: "a folder of .txt files to take prompts from (default the shared essays)" },
  out: { kind: "string", help: "also write the JSON to this file" },
  help: { kind: "boolean", help: "show this help" },
} as const;

const fail = (m: string): never => {
  console.error(`error: ${m}\n${usage("deno task bench", SPEC)}`);
  Deno.exit(2);
};
let flags: ReturnType<typeof parseFlags<typeof SPEC>>;
try {
  flags = parseFlags(Deno.args, SPEC);
} catch (e) {
  if (!(e instanceof UsageError)) throw e;
  fail(e.message);
}
if (flags!.help) {
  console.log(usage("deno task bench", SPEC));
  Deno.exit(0);
}
const f = flags!;
const list = <T extends string>(v: unknown, all: readonly T[], dflt: readonly T[], flag: string): T[] => {
  const items = v === undefined ? [...dflt] : String(v).split(",").map((s) => s.trim());
  for (const i of items) {
    if (!all.includes(i as T)) fail(`--${flag}: unknown '${i}' (known: ${all.join(", ")})`);
  }
  return items as T[];
};
const posInt = (v: unknown, dflt: number, flag: string): number => {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) fail(`--${flag}: expected a positive integer, got '${v}'`);
  return n;
};
const models = list(f.models, MODELS, ["llama76m"], "models");
const engines = list(f.engines, ENGINES, ENGINES, "engines");
const contexts = String(f.contexts ?? "512,2048").split(",").map((c) => posInt(c, 0, "contexts"));
const threads = posInt(f.threads, 2, "threads");
const runs = posInt(f.runs, 3, "runs");
const decodeTokens = posInt(f.decode, 32, "decode");
const kv = (f.kv ?? "f16") as string;
if (kv !== "f16" && kv !== "f32") fail(`--kv: expected f16 or f32, got '${kv}'`);
const textDir = (f.text as string | undefined) ??
  new URL("../../shared/data/haystack/PaulGrahamEssays/", import.meta.url).pathname;
const asJson = f.json === true;
const log = (m: string) => (asJson ? console.error(m) : console.log(m));

const greedy = (maxTokens: number): DecodeOptions => ({
  maxTokens,
  sampling: { temperature: 0, topP: 1, topK: 0, seed: 1 },
  stopTokenIds: [],
});
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const stats = (xs: number[]) => ({
  median: round(median(xs)),
  min: round(Math.min(...xs)),
  max: round(Math.max(...xs)),
  runs: xs.map((x) => round(x)),
});
type Stats = ReturnType<typeof stats>;

// ---- prompts: BOS + real text, the embedded tokenizer ----
const hf = await loadModelDir(EMBEDDED_MODEL_DIR);
const tokenizerOrError = createTokenizer(hf.tokenizerJson, hf.tokenizerConfig, hf.config.vocabSize);
if (tokenizerOrError._tag === "Left") throw tokenizerOrError.left;
const tokenizer = tokenizerOrError.right;
const passages: string[] = [];
try {
  for (
    const e of [...Deno.readDirSync(textDir)].filter((e) => e.name.endsWith(".txt")).sort((a, b) =>
      a.name < b.name ? -1 : 1
    )
  ) {
    passages.push(Deno.readTextFileSync(`${textDir}/${e.name}`));
  }
} catch (e) {
  fail(`--text: cannot read ${textDir}: ${(e as Error).message}`);
}
if (passages.length === 0) fail(`--text: no .txt files in ${textDir}`);
const allText = passages.join("\n\n");
const allIds = tokenizer.encode(allText, { addBos: false });
const bos = hf.config.bosTokenId ?? 1;
/** Run r's prompt of `len` ids: BOS, then text from the r-th passage boundary on. */
function prompt(len: number, r: number): number[] {
  const start = Math.floor((r * allIds.length) / (runs + 1)) % Math.max(1, allIds.length - len);
  if (allIds.length < len) fail(`--text: ${allIds.length} tokens of text, fewer than a ${len}-token prompt`);
  return [bos, ...allIds.slice(start, start + len - 1)];
}

function modelWeights(name: ModelName): Promise<ModelWeights> {
  return name === "stories260K" ? loadWeightsOnly() : Promise.resolve(fixtureWeights(name));
}

interface Row {
  engine: Engine;
  context: number;
  prefill: Stats;
  decode: Stats;
  /** Judge Q's soft-row forward + attention mass, and with selection, prune and strip (ms, medians). */
  judgeq?: { scoringMs: number; totalMs: number; scoringOverShare: number; totalOverShare: number };
  description?: string;
}

// ---- our engines ----
async function ourExecutor(engine: Engine, w: ModelWeights): Promise<Executor> {
  if (engine === "reference") return new CpuExecutor(w);
  const [kind, format] = engine.split("-");
  if (kind === "native") {
    return await NativeExecutor.create(w, {
      threads,
      weightFormat: format as NativeWeightFormat,
      kvType: kv as "f16" | "f32",
      warn: log,
    });
  }
  return await WasmExecutor.create(w, { threads, weightFormat: format as "f32" | "int8" | "q8_0" });
}

/** Prefill of `ids`, then decode ending at the same length: llama.cpp's measurement, on a KvSession. */
async function measureSession(s: KvSession, ids: number[]): Promise<{ prefill: number; decode: number }> {
  const L = ids.length;
  let t = performance.now();
  await s.forward({ kind: "tokens", tokens: ids }, { logits: "last" });
  const prefill = L / ((performance.now() - t) / 1000);
  const start = L - decodeTokens;
  await s.truncateFrom(start);
  t = performance.now();
  await s.forward({ kind: "tokens", tokens: [ids[start]] }, { logits: "last" });
  const r = await s.decode(greedy(decodeTokens - 1));
  const decode = (r.tokens.length + 1) / ((performance.now() - t) / 1000);
  return { prefill, decode };
}

/** Judge Q's cost after a prefill of L: 32 soft rows forward + their attention mass; then top-B, prune, strip. */
async function judgeqCost(s: KvSession, w: ModelWeights, L: number) {
  const c = w.config, n = 32, budget = Math.round(L / 10);
  const rows = new Float32Array(n * c.dim).map((_, i) => Math.sin(i) * 0.5);
  const t = performance.now();
  const r = await s.forward({ kind: "embeddings", rows, count: n }, { logits: "none", captureQueries: true });
  const mass = await s.attentionMass(r.queries!, L);
  const scoring = performance.now() - t;
  const scores = aggregateGqa(mass, c.nLayers, c.nHeads, c.nKvHeads, L, "mean");
  await s.keepPositions(topPerHead(scores, c.nLayers, c.nKvHeads, L, () => budget, 0), L);
  await s.truncateFrom(L);
  return { scoring, total: performance.now() - t };
}

async function runOurs(engine: Engine, w: ModelWeights, model: ModelName): Promise<Row[]> {
  const x = await ourExecutor(engine, w);
  const out: Row[] = [];
  try {
    log(`  ${engine}: ${x.description}`);
    // Warm-up: first graphs, kernels' hot paths, threads.
    const warm = x.createSession(256);
    await warm.forward({ kind: "tokens", tokens: prompt(128, 0) });
    await warm.decode(greedy(4));
    warm.dispose();
    const ctxs = engine === "reference" ? [contexts[0]] : contexts;
    for (const L of ctxs) {
      if (L > w.config.maxSeqLen) continue;
      const pre: number[] = [],
        dec: number[] = [],
        jq: { scoring: number; total: number; prefillMs: number }[] = [];
      const reps = engine === "reference" ? 1 : runs;
      for (let r = 0; r < reps; r++) {
        // The reference is slow: a 64-row prefill and 8 steps stand for it.
        const ids = engine === "reference" ? prompt(Math.min(64, L), r) : prompt(L, r);
        const s = x.createSession(ids.length + 64);
        try {
          const m = await measureSession(s, ids);
          pre.push(m.prefill);
          dec.push(m.decode);
          if (engine !== "reference") {
            const s2 = x.createSession(L + 64);
            const t = performance.now();
            await s2.forward({ kind: "tokens", tokens: ids }, { logits: "last" });
            const prefillMs = performance.now() - t;
            const cost = await judgeqCost(s2, w, L);
            jq.push({ ...cost, prefillMs });
            s2.dispose();
          }
        } finally {
          s.dispose();
        }
      }
      const row: Row = {
        engine,
        context: L,
        prefill: stats(pre),
        decode: stats(dec),
        description: x.description,
      };
      if (jq.length) {
        const share = (ms: number, p: number) => ms / (p * 32 / L);
        row.judgeq = {
          scoringMs: round(median(jq.map((j) => j.scoring))),
          totalMs: round(median(jq.map((j) => j.total))),
          scoringOverShare: round(median(jq.map((j) => share(j.scoring, j.prefillMs))), 2),
          totalOverShare: round(median(jq.map((j) => share(j.total, j.prefillMs))), 2),
        };
      }
      log(
        `  ${model} ${engine} @${L}: prefill ${row.prefill.median} tok/s [${row.prefill.min}-${row.prefill.max}], ` +
          `decode ${row.decode.median} [${row.decode.min}-${row.decode.max}]` +
          (row.judgeq
            ? `, judgeq scoring ${row.judgeq.scoringMs} ms = ${row.judgeq.scoringOverShare} x (32/L) of prefill ` +
              `(${row.judgeq.totalOverShare} x with select, prune, strip)`
            : ""),
      );
      out.push(row);
    }
  } finally {
    x.dispose();
  }
  return out;
}

// ---- llama.cpp ----
async function runPeer(
  gguf: Uint8Array,
  L: number[],
  label: string,
): Promise<Map<number, { prefill: number[]; decode: number[] }> | string> {
  const specs = L.flatMap((context) =>
    Array.from({ length: runs }, (_, r) => ({ context, prompt: prompt(context, r), decodeTokens }))
  );
  const out = await llamaCppRuns(gguf, specs, { threads, kvCacheType: kv === "f16" ? "F16" : "F32", log });
  if (!out.ok) return out.reason;
  const by = new Map<number, { prefill: number[]; decode: number[] }>();
  for (const r of out.runs as PeerRun[]) {
    const e = by.get(r.context) ?? { prefill: [], decode: [] };
    e.prefill.push(r.prefillTokPerS);
    e.decode.push(r.decodeTokPerS);
    by.set(r.context, e);
  }
  for (const [c, e] of by) {
    log(
      `  llama.cpp ${label} @${c}: prefill ${round(median(e.prefill))} tok/s, decode ${
        round(median(e.decode))
      }`,
    );
  }
  return by;
}

// ---- the run ----
const result: Record<string, unknown> = {
  command: `deno task bench ${Deno.args.join(" ")}`.trim(),
  date: new Date().toISOString(),
  threads,
  runs,
  decodeTokens,
  kvCache: kv,
  cpu: Deno.build.arch,
  loadAverage: Deno.loadavg(),
  models: {} as Record<string, unknown>,
};
const vocab = vocabFromTokenizerJson(hf.tokenizerJson, hf.config.vocabSize);
for (const model of models) {
  log(`${model}: building weights`);
  const w = await modelWeights(model);
  const ctxs = contexts.filter((c) => c <= w.config.maxSeqLen);
  const quantOnly = QUANTIZED_ONLY.includes(model);
  const mine = engines.filter((e) =>
    !e.startsWith("llamacpp") &&
    !(quantOnly && (e.endsWith("f32") || e.endsWith("f16") || e === "reference" || e.startsWith("wasm")))
  );
  const peers = engines.filter((e) => e.startsWith("llamacpp") && !(quantOnly && e.endsWith("f32")));
  const ggufs = new Map<Engine, Uint8Array>();
  for (const p of peers) {
    ggufs.set(p, writeGguf(w, vocab, { tensorType: p.split("-")[1] as GgufTensorType, addBos: false }));
  }
  // llama.cpp alone, before anything of ours is loaded (its own process; nothing else running).
  const alone = new Map<Engine, unknown>();
  for (const p of peers) alone.set(p, await runPeer(ggufs.get(p)!, ctxs, `${p} alone`));
  const before = new Map<Engine, unknown>();
  for (const p of peers) before.set(p, await runPeer(ggufs.get(p)!, ctxs, `${p} before`));
  const rows: Row[] = [];
  for (const e of mine) rows.push(...await runOurs(e, w, model));
  const after = new Map<Engine, unknown>();
  for (const p of peers) after.set(p, await runPeer(ggufs.get(p)!, ctxs, `${p} after`));

  const peerRows: Record<string, unknown>[] = [];
  const ratios: Record<string, unknown>[] = [];
  for (const p of peers) {
    const a = alone.get(p), b = before.get(p), c = after.get(p);
    if (typeof b === "string" || typeof c === "string" || typeof a === "string") {
      peerRows.push({ engine: p, unavailable: [a, b, c].find((x) => typeof x === "string") });
      continue;
    }
    for (const L of ctxs) {
      const pa = (a as Map<number, { prefill: number[]; decode: number[] }>).get(L)!;
      const pb = (b as Map<number, { prefill: number[]; decode: number[] }>).get(L)!;
      const pc = (c as Map<number, { prefill: number[]; decode: number[] }>).get(L)!;
      const better = (k: "prefill" | "decode") => Math.max(median(pb[k]), median(pc[k]));
      const row = {
        engine: p,
        context: L,
        alone: { prefill: stats(pa.prefill), decode: stats(pa.decode) },
        before: { prefill: stats(pb.prefill), decode: stats(pb.decode) },
        after: { prefill: stats(pc.prefill), decode: stats(pc.decode) },
        warnings: [] as string[],
      };
      for (const k of ["prefill", "decode"] as const) {
        if (better(k) < 0.85 * median(pa[k])) {
          const w =
            `${p} @${L}: in-bench ${k} ${round(better(k))} tok/s is more than 15% below its run alone ` +
            `(${round(median(pa[k]))}): the machine was busier during the bench`;
          row.warnings.push(w);
          log(`  warning: ${w}`);
        }
      }
      peerRows.push(row);
      // Each of ours against the peer of the same format (int8 against Q8_0, f16 against F32).
      const fmt = p.split("-")[1];
      for (const r of rows.filter((r) => r.context === L)) {
        const mf = r.engine.split("-")[1];
        const same = mf === fmt || (mf === "int8" && fmt === "q8_0") || (mf === "f16" && fmt === "f32");
        if (!same) continue;
        ratios.push({
          engine: r.engine,
          against: p,
          context: L,
          prefill: round(r.prefill.median / better("prefill"), 2),
          decode: round(r.decode.median / better("decode"), 2),
        });
      }
    }
  }
  for (const r of ratios) {
    log(`  ${model} ${r.engine} / ${r.against} @${r.context}: prefill ${r.prefill}x, decode ${r.decode}x`);
  }
  (result.models as Record<string, unknown>)[model] = {
    parameters: parameterCount(w),
    config: w.config,
    engines: rows,
    llamacpp: peerRows,
    ratios,
  };
}
const json = JSON.stringify(result, null, 2);
if (f.out) await Deno.writeTextFile(String(f.out), json + "\n");
if (asJson) console.log(json);
