/**
 * The loss choice on a validation split of its own (issue 26). `deno task train` chooses the shipped loss on
 * the same held-out samples its table then reports; this script measures the MSE and KL fits of a train work
 * directory on fresh samples drawn with another data seed (none of them a training or held-out prompt), and
 * applies the same rule (`chooseLoss`: best mean hit rate and KL over the budgets, lower KL on a split).
 *
 *   deno task train --executor cpu --work W          # the fits (the KL one is the shipped adapter)
 *   deno run -A train/validate_loss.ts --work W [--seed 2] [--samples 16] [--out results/training/loss_validation.json]
 */
import { decodeAdapter } from "../core/adapter.ts";
import { modelFingerprint } from "../core/fingerprint.ts";
import { loadWeightsOnly } from "../fixtures/testing.ts";
import { parseFlags, UsageError } from "../io/flags.ts";
import { decodeData, generateData } from "./data.ts";
import { evaluateSample, JUDGEQ_VARIANTS, type Measure } from "./evaluate.ts";
import { aggregate, chooseLoss, judgeqMethod } from "./report.ts";
import { workPaths } from "./workdir.ts";

const SPEC = {
  work: { kind: "string", help: "a `deno task train` work directory holding fit-mse/ and fit-kl/" },
  seed: { kind: "int", help: "data seed of the validation split (default 2; training used 1)", default: 2 },
  samples: { kind: "int", help: "validation samples (default 16)", default: 16 },
  out: { kind: "string", help: "JSON output (default results/training/loss_validation.json)" },
} as const;

export async function main(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, SPEC);
  if (typeof flags.work !== "string") throw new UsageError("--work: give the train work directory");
  const f = { work: flags.work, seed: flags.seed as number, samples: flags.samples as number };
  if (!(f.samples >= 1)) throw new UsageError("--samples: must be >= 1");
  const out = (flags.out as string | undefined) ?? "results/training/loss_validation.json";
  const weights = await loadWeightsOnly();
  const fingerprint = await modelFingerprint(weights);
  const paths = workPaths(f.work);
  const train = decodeData(await Deno.readTextFile(paths.data), weights.config, paths.data);
  const o = train.options;
  if (f.seed === o.seed) throw new UsageError(`--seed: ${f.seed} is the training data's seed; take another`);
  const started = performance.now();
  const data = await generateData(weights, fingerprint, {
    ...o,
    seed: f.seed,
    samples: 0,
    heldout: f.samples,
  });
  const seen = new Set(train.samples.map((s) => s.prompt.join(",")));
  const fresh = data.samples.filter((s) => !seen.has(s.prompt.join(",")));
  if (fresh.length !== data.samples.length) {
    throw new Error("a validation prompt is a training or held-out one");
  }
  const losses = ["mse", "kl"] as const;
  const softs = [];
  for (const loss of losses) {
    const a = decodeAdapter(await Deno.readFile(paths.fit(loss).adapter), paths.fit(loss).adapter);
    if (a._tag === "Left") throw a.left;
    softs.push({ method: judgeqMethod(loss), e: a.right.softEmbeddings });
  }
  const budgets = [32, 64, 128];
  const measures: Measure[] = [];
  for (const [i, s] of data.samples.entries()) {
    measures.push(
      ...await evaluateSample(weights, s, { softs, snapkv: [], judgeq: JUDGEQ_VARIANTS, budgets }),
    );
    console.error(`validation sample ${i + 1}/${data.samples.length}`);
  }
  const rows = aggregate(measures);
  const choice = chooseLoss(rows, [...losses], budgets);
  const report = {
    format: "judgeq-loss-validation-v1",
    split: { seed: f.seed, samples: data.samples.length, trainingSeed: o.seed, disjoint: true },
    promptLengths: data.samples.map((s) => s.prompt.length),
    choice,
    rows,
    seconds: Math.round((performance.now() - started) / 100) / 10,
  };
  await Deno.mkdir(out.split("/").slice(0, -1).join("/") || ".", { recursive: true });
  await Deno.writeTextFile(out, JSON.stringify(report, null, 1) + "\n");
  console.log(
    `validation split (seed ${f.seed}, ${data.samples.length} samples): ${choice.loss}, ${choice.reason}`,
  );
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(e instanceof Error ? e.message : String(e));
    Deno.exit(e instanceof UsageError ? 2 : 1);
  }
}
