/**
 * Long outputs with a bounded KV cache (issue 12): story openings continued to the model's context end
 * with decode-time compression (kv_compression.decode) capping every KV head, measured along the
 * full-cache output.
 *
 *   deno run -A eval/long_output.ts [--samples 4] [--methods judgeq,snapkv,h2o,streaming_llm,tova]
 *     [--caps 64,128,f0.25] [--interval 16] [--executor cpu] [--out results/long_output]
 *
 * Per (method, cap), averaged over the samples:
 * - KL / top-1: KL(full ‖ bounded) and argmax agreement of the next-token distributions, teacher-forced
 *   along the full-cache output (the bounded cache goes through the same compressions as it would decoding).
 * - prefix: tokens of the bounded greedy output equal to the full-cache output.
 * - names: of the opening's names the full-cache output uses, the share the bounded output uses.
 * - hit: at each compression point P, |kept ∩ oracle| / B per layer and KV head, where the oracle is the
 *   top-B positions below P by the full cache's attention from the next `interval` rows.
 * - KV: bytes held at the end over the full cache's.
 */
import * as E from "fp-ts/Either";
import {
  executorFlag,
  executorFlags,
  parseFlags,
  threadsFlag,
  usage,
  UsageError,
  weightsFlag,
} from "../io/flags.ts";
import { boundedDecode, prefillForBoundedDecode } from "../core/bounded_decode.ts";
import type { DecodeCompression, DecodeCompressionRequest } from "../core/decode_compression.ts";
import type { KvSession } from "../core/executor.ts";
import { kvBytesFor } from "../core/interpret.ts";
import { compilePlan } from "../core/plan.ts";
import { GREEDY } from "../core/sampling.ts";
import { randomSoftTokens } from "../core/soft_tokens.ts";
import { commonPrefix, fidelity, hitRate, oracleSets } from "./metrics.ts";
import { encodePrompt, type EvalModel, loadEvalModel, outputText } from "./model.ts";
import { longOutputSpec, nameRecall } from "./tasks/long_output.ts";

const SPEC = {
  samples: { kind: "int", help: "story openings (default 4)", default: 4 },
  seed: { kind: "int", help: "seed of the openings (default 0)", default: 0 },
  methods: { kind: "string", help: "comma list (default judgeq,snapkv,h2o,streaming_llm,tova)" },
  caps: { kind: "string", help: "comma list: budgets (64) or fractions (f0.25) (default 64,128,f0.25)" },
  interval: { kind: "int", help: "tokens between compressions (default 16)", default: 16 },
  buffer: { kind: "int", help: "recent positions never evicted (default 8)", default: 8 },
  model: { kind: "string", help: "model directory (default: the embedded stories260K)" },
  ...executorFlags("cpu", ": deterministic reference numbers"),
  out: { kind: "string", help: "output directory (default results/long_output)" },
  help: { kind: "boolean", help: "show this help" },
} as const;

export interface LongOutputRow {
  method: string;
  cap: string;
  samples: number;
  kl: number;
  top1: number;
  prefix: number;
  /** Response tokens (the horizon). */
  n: number;
  names: number | null;
  hit: number;
  compressions: number;
  kv: number;
}

interface Reference {
  prompt: number[];
  tokens: number[];
  text: string;
  steps: Float32Array[];
  /** The full cache after the prompt and every response token but the last. */
  session: KvSession;
}

async function reference(m: EvalModel, prompt: number[]): Promise<Reference> {
  const md = m.model, n = md.config.maxSeqLen - prompt.length;
  const s = md.executor.createSession(md.config.maxSeqLen + 1);
  const first = await s.forward({ kind: "tokens", tokens: prompt }, { logits: "last" });
  const copy = await s.clone();
  let tokens: number[];
  try {
    tokens = (await copy.decode({ maxTokens: n, sampling: GREEDY, stopTokenIds: [] })).tokens;
  } finally {
    copy.dispose();
  }
  const r = await s.forward({ kind: "tokens", tokens: tokens.slice(0, -1) }, { logits: "all" });
  const V = md.config.vocabSize;
  const steps = [
    first.logits!,
    ...Array.from({ length: n - 1 }, (_, i) => r.logits!.slice(i * V, (i + 1) * V)),
  ];
  return { prompt, tokens, text: outputText(md, tokens), steps, session: s };
}

/** The oracle at compression point P: top-B positions below P by the full cache's next `rows` rows. */
async function oracleAt(m: EvalModel, ref: Reference, P: number, B: number, rows: number) {
  const c = m.model.config, L = ref.prompt.length;
  const s = await ref.session.clone();
  try {
    await s.truncateFrom(P);
    const next = ref.tokens.slice(P - L, P - L + rows);
    const r = await s.forward({ kind: "tokens", tokens: next }, { logits: "none", captureQueries: true });
    const mass = await s.attentionMass(r.queries!, P);
    r.queries!.dispose();
    return oracleSets(mass, c, P, B);
  } finally {
    s.dispose();
  }
}

function resolve(m: EvalModel, prompt: number[], decode: DecodeCompressionRequest): DecodeCompression {
  const md = m.model;
  const plan = compilePlan({
    input: { kind: "prompt", tokens: prompt },
    compression: { method: "full", decode },
    decode: { maxTokens: md.config.maxSeqLen, sampling: GREEDY, stopTokenIds: [] },
  }, { config: md.config, adapterTokens: md.adapter?.n ?? null });
  if (E.isLeft(plan)) throw plan.left;
  const step = plan.right.steps.find((s) => s.op === "bound_decode");
  if (step?.op !== "bound_decode") throw new Error("no bound_decode step");
  return step.compression;
}

/** One bounded run after the prompt: teacher-forced along `forced`, or greedy without it. */
async function bounded(m: EvalModel, prompt: number[], dc: DecodeCompression, n: number, forced?: number[]) {
  const md = m.model;
  const s = md.executor.createSession(md.config.maxSeqLen + dc.softCount + 1);
  try {
    const promptMass = await prefillForBoundedDecode(s, prompt, dc);
    const kept: { position: number; kept: Int32Array[][] }[] = [];
    const r = await boundedDecode(s, { maxTokens: n, sampling: GREEDY, stopTokenIds: [] }, dc, {
      softEmbeddings: md.adapter?.softEmbeddings ?? null,
      promptMass,
      randomSoft: () => randomSoftTokens(md.tokenEmbeddings, md.config.dim, dc.softCount, dc.options.seed),
      forced,
      onCompress: (e, k) => kept.push({ position: e.position, kept: k }),
    });
    return { ...r, kept };
  } finally {
    s.dispose();
  }
}

export async function runLongOutput(
  m: EvalModel,
  o: { samples: number; seed: number; methods: string[]; caps: string[]; interval: number; buffer: number },
  log: (line: string) => void = () => {},
): Promise<LongOutputRow[]> {
  const cells = new Map<
    string,
    {
      kl: number[];
      top1: number[];
      prefix: number[];
      names: number[];
      hit: number[];
      compressions: number[];
      kv: number[];
      n: number[];
    }
  >();
  for (let i = 0; i < o.samples; i++) {
    const spec = longOutputSpec(o.seed, i);
    const prompt = encodePrompt(m.model, spec.opening);
    const ref = await reference(m, prompt);
    const n = ref.tokens.length;
    const oracles = new Map<string, number[][][]>();
    try {
      for (const method of o.methods) {
        for (const cap of o.caps) {
          const decode: DecodeCompressionRequest = cap.startsWith("f")
            ? { method, fraction: Number(cap.slice(1)), interval: o.interval, buffer: o.buffer }
            : { method, budget: Number(cap), interval: o.interval, buffer: o.buffer };
          const dc = resolve(m, prompt, decode);
          const tf = await bounded(m, prompt, dc, n, ref.tokens);
          const f = fidelity(ref.steps, tf.logits!);
          const hits: number[] = [];
          for (const k of tf.kept) {
            const B = dc.budget ?? Math.max(dc.buffer + 1, Math.floor(dc.fraction! * k.position));
            const key = `${k.position}/${B}`;
            if (!oracles.has(key)) oracles.set(key, await oracleAt(m, ref, k.position, B, o.interval));
            hits.push(hitRate(k.kept, oracles.get(key)!, B));
          }
          const free = await bounded(m, prompt, dc, n);
          const text = outputText(m.model, free.tokens);
          const key = `${method}|${cap}`;
          const c = cells.get(key) ??
            { kl: [], top1: [], prefix: [], names: [], hit: [], compressions: [], kv: [], n: [] };
          c.kl.push(f.kl);
          c.top1.push(f.top1);
          c.prefix.push(commonPrefix(free.tokens, ref.tokens));
          const names = nameRecall(spec.names, ref.text, text);
          if (names !== null) c.names.push(names);
          if (hits.length > 0) c.hit.push(hits.reduce((a, b) => a + b, 0) / hits.length);
          c.compressions.push(free.events.length);
          c.kv.push(free.kvBytesEnd / kvBytesFor(m.model.config, prompt.length + n - 1));
          c.n.push(n);
          cells.set(key, c);
          log(
            `sample ${i} ${method} ${cap}: kl ${f.kl.toFixed(3)} top1 ${f.top1.toFixed(3)} prefix ${
              commonPrefix(free.tokens, ref.tokens)
            }/${n}`,
          );
        }
      }
    } finally {
      ref.session.dispose();
    }
  }
  const mean = (xs: number[]) => xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
  return [...cells.entries()].map(([key, c]) => {
    const [method, cap] = key.split("|");
    return {
      method,
      cap,
      samples: c.kl.length,
      kl: mean(c.kl),
      top1: mean(c.top1),
      prefix: mean(c.prefix),
      n: mean(c.n),
      names: c.names.length === 0 ? null : mean(c.names),
      hit: mean(c.hit),
      compressions: mean(c.compressions),
      kv: mean(c.kv),
    };
  });
}

const capLabel = (cap: string) =>
  cap.startsWith("f") ? `${Math.round(Number(cap.slice(1)) * 100)}% of tokens` : `${cap} entries`;

/** The README table: one row per method and cap. */
export function longOutputMarkdown(rows: LongOutputRow[]): string {
  const f = (x: number, d = 3) => Number.isFinite(x) ? x.toFixed(d) : "-";
  const lines = [
    "| method | cap per KV head | KL (nats) | top-1 | greedy prefix | names | hit | compressions | KV at end |",
    "| ------ | --------------- | --------- | ----- | ------------- | ----- | --- | ------------ | --------- |",
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.method} | ${capLabel(r.cap)} | ${f(r.kl)} | ${f(r.top1)} | ${f(r.prefix, 1)} / ${f(r.n, 0)} | ${
        r.names === null ? "-" : f(r.names, 2)
      } | ${f(r.hit)} | ${f(r.compressions, 1)} | ${f(r.kv * 100, 1)}% |`,
    );
  }
  return lines.join("\n") + "\n";
}

async function main(argv: string[]): Promise<number> {
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno run -A eval/long_output.ts", SPEC));
    return 0;
  }
  const m = await loadEvalModel(f.model as string | undefined, executorFlag(f.executor), undefined, {
    threads: threadsFlag(f.threads),
    weightFormat: weightsFlag(f),
  });
  const methods = ((f.methods as string | undefined) ?? "judgeq,snapkv,h2o,streaming_llm,tova").split(",");
  if (!m.model.adapter && methods.includes("judgeq")) {
    throw new UsageError(`judgeq needs a Judge Q adapter (${m.adapterPath} is absent)`);
  }
  const caps = ((f.caps as string | undefined) ?? "64,128,f0.25").split(",");
  for (const cap of caps) {
    const v = Number(cap.startsWith("f") ? cap.slice(1) : cap);
    if (!Number.isFinite(v) || v <= 0) throw new UsageError(`--caps: '${cap}' is neither 64 nor f0.25`);
  }
  const t0 = performance.now();
  const rows = await runLongOutput(m, {
    samples: f.samples as number,
    seed: f.seed as number,
    methods,
    caps,
    interval: f.interval as number,
    buffer: f.buffer as number,
  }, (line) => console.error(line));
  m.model.executor.dispose();
  const out = (f.out as string | undefined) ?? new URL("../results/long_output", import.meta.url).pathname;
  await Deno.mkdir(out, { recursive: true });
  const md =
    `# Long outputs with a bounded KV cache\n\n${f.samples} story openings, each continued greedily to the ` +
    `context end (${m.model.config.maxSeqLen} tokens), interval ${f.interval}, buffer ${f.buffer}, ` +
    `executor ${m.model.executor.kind}, ${((performance.now() - t0) / 1000).toFixed(0)} s.\n\n` +
    longOutputMarkdown(rows);
  await Deno.writeTextFile(`${out}/results.md`, md);
  await Deno.writeTextFile(
    `${out}/results.json`,
    JSON.stringify({ config: { ...f, out: undefined }, rows }, null, 1) + "\n",
  );
  console.log(md);
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}\n${usage("deno run -A eval/long_output.ts", SPEC)}`);
    } else throw e;
    Deno.exit(2);
  }
}
