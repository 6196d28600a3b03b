import assert from "node:assert";
import * as E from "fp-ts/Either";
import { decodeAdapter } from "../core/adapter.ts";
import { trainModel } from "../core/train/model.ts";
import { seededNormal, seededUniform } from "../core/random.ts";
import { softForward } from "../core/train/soft_pass.ts";
import { UsageError } from "../io/flags.ts";
import { parseArgs } from "../train/args.ts";
import { decodeData } from "../train/data.ts";
import { type FitConfig, runFit, trainSamples, untrainedEmbeddings } from "../train/fit.ts";
import { main } from "../train/main.ts";
import { reportPaths } from "../train/workdir.ts";
import { tinyWeights } from "../fixtures/tiny_models.ts";

function quiet() {
  const out: string[] = [], err: string[] = [];
  return {
    io: { out: (s: string) => out.push(s), err: (s: string) => err.push(s), progress: false },
    out,
    err,
  };
}

Deno.test("train cli: bad flags name the flag", () => {
  const cases: [string[], string][] = [
    [["--steps", "abc"], "--steps"],
    [["--steps", "0"], "--steps"],
    [["--loss", "l2"], "--loss"],
    [["--lr", "-1"], "--lr"],
    [["--bogus", "1"], "--bogus"],
    [["--prompt-len", "300-200"], "--prompt-len"],
    [["--out", "adapter.bin"], "--out"],
    [["--n"], "--n"],
    [["--budgets", "32,x"], "--budgets"],
    [["--warmup", "10", "--steps", "5"], "--warmup"],
    [["train"], "command"],
    [["fit", "--out", "a.safetensors"], "--out"],
  ];
  for (const [argv, flag] of cases) {
    assert.throws(() => parseArgs(argv), (e) => e instanceof UsageError && e.flag === flag, argv.join(" "));
  }
  const a = parseArgs(["fit", "--loss=kl", "--steps", "12", "--resume"]);
  assert.deepStrictEqual([a.command, a.losses, a.steps, a.resume], ["fit", ["kl"], 12, true]);
});

Deno.test("train cli: bad inputs exit 2 with a clear message", async () => {
  const q = quiet();
  assert.strictEqual(await main(["--batch", "many"], q.io), 2);
  assert.match(q.err[0], /--batch: must be an integer/);
  const m = quiet();
  assert.strictEqual(await main(["--model", "/nonexistent/model"], m.io), 2);
  assert.match(m.err[0], /^train: --model: /);
  const long = quiet();
  const work = await Deno.makeTempDir();
  assert.strictEqual(await main(["data", "--work", work, "--prompt-len", "490-500"], long.io), 2);
  assert.match(long.err[0], /--prompt-len: 500 \+ 32 soft tokens exceed the context of 512/);
  const missing = quiet();
  assert.strictEqual(await main(["fit", "--work", work], missing.io), 1);
  assert.match(missing.err[0], /data\.json not found: run `deno task train data` first/);
  await Deno.remove(work, { recursive: true });
});

Deno.test("train cli: a tiny run writes the adapter, report and loss curve", async () => {
  const work = await Deno.makeTempDir(), out = `${work}/jq.safetensors`;
  const q = quiet();
  const flags = [
    ["--work", work, "--out", out, "--samples", "3", "--heldout", "2", "--steps", "3", "--batch", "2"],
    [
      "--prompt-len",
      "40-50",
      "--heldout-len",
      "40-50",
      "--response-len",
      "8-12",
      "--n",
      "4",
      "--budgets",
      "8,16",
    ],
    ["--eval-every", "1", "--checkpoint-every", "2"],
  ].flat();
  assert.strictEqual(await main(flags, q.io), 0, q.err.join("\n"));
  const adapter = decodeAdapter(await Deno.readFile(out));
  assert(E.isRight(adapter));
  assert.strictEqual(adapter.right.n, 4);
  assert.strictEqual(adapter.right.info.steps, "3");
  assert.match(adapter.right.info.data_hash, /^[0-9a-f]{64}$/);
  const report = JSON.parse(await Deno.readTextFile(reportPaths(out).json));
  // 4 SnapKV variants + (mse, kl, random) x 4 Judge Q variants, at 2 budgets.
  assert.strictEqual(report.rows.length, 32);
  assert(["mse", "kl"].includes(report.shipped.loss));
  assert(report.acceptance.length > 0);
  for (const r of report.rows) assert(r.hit >= 0 && r.hit <= 1 && r.kl >= 0 && r.top1 >= 0 && r.top1 <= 1);
  assert.match(await Deno.readTextFile(reportPaths(out).svg), /^<svg [^>]*>[\s\S]*<\/svg>\n$/);
  // `all` reuses the stored data when the options match.
  const again = quiet();
  assert.strictEqual(await main(["report", ...flags], again.io), 0, again.err.join("\n"));
  assert.match(again.out[0], /data: reusing/);
  await Deno.remove(work, { recursive: true });
});

Deno.test("train cli: data files with the wrong shape are refused with the file named", () => {
  const c = tinyWeights().config;
  assert.throws(() => decodeData("{", c, "d.json"), /d\.json: not valid JSON/);
  assert.throws(() => decodeData('{"format":"x","samples":[]}', c, "d.json"), /d\.json: format must be/);
});

Deno.test("train fit: a resumed run equals an uninterrupted one; a changed config is refused", async () => {
  const w = tinyWeights(), m = trainModel(w), rand = seededUniform(3), normal = seededNormal(4);
  const prompts = [10, 12, 11, 13].map((L) => Array.from({ length: L }, () => 3 + Math.floor(rand() * 29)));
  const samples = await trainSamples(
    w,
    prompts.map((prompt) => ({ split: "train", prompt, response: [], target: new Float32Array() })),
  );
  // Targets: the maps of one hidden set of soft rows, so what is learned carries over to held-out prompts.
  const hidden = Float64Array.from({ length: 3 * w.config.dim }, () => normal());
  for (const s of samples) s.target = softForward(m, s.prompt, hidden).maps;
  const cfg: FitConfig = {
    loss: "kl",
    n: 3,
    steps: 6,
    batch: 2,
    lr: 0.05,
    warmup: 1,
    clip: 1,
    noise: 1,
    seed: 5,
    evalEvery: 2,
    checkpointEvery: 100,
  };
  const dir = await Deno.makeTempDir();
  const ctx = (name: string, extra = {}) => ({
    model: m,
    weights: w,
    train: samples.slice(0, 3),
    heldout: samples.slice(3),
    dataHash: "h",
    checkpoint: `${dir}/${name}.json`,
    resume: false,
    progress: false,
    ...extra,
  });
  const whole = await runFit(ctx("a"), cfg);
  await runFit(ctx("b", { stopAt: 4 }), cfg);
  const resumed = await runFit(ctx("b", { resume: true }), cfg);
  assert.deepStrictEqual([...resumed.e], [...whole.e]);
  assert.deepStrictEqual(resumed.steps, whole.steps);
  assert.deepStrictEqual(resumed.evals, whole.evals);
  assert(whole.finalHeldout < whole.evals[0].heldout, "held-out loss did not fall");
  assert.notDeepStrictEqual([...whole.e], [...untrainedEmbeddings(w, 3, 1, 5)]);
  await assert.rejects(
    runFit(ctx("b", { resume: true }), { ...cfg, lr: 0.1 }),
    /--resume: .* lr = 0\.05, not 0\.1/,
  );
  await Deno.remove(dir, { recursive: true });
});
