/** Command-line flags of `deno task train`: parsed, range-checked, and every error names its flag. */
import { LOSS_KINDS, type LossKind } from "../core/train/loss.ts";
import {
  choiceList,
  isChoice,
  WASM_WEIGHT_CHOICES,
  type WeightFormatChoice,
} from "../core/weight_formats.ts";
import {
  flagError,
  type FlagSpec,
  MAX_THREADS,
  parseFlags,
  threadsFlag,
  weightFormatFlag,
} from "../io/flags.ts";

/**
 * Where fit runs. auto: prompts prefilled on the fast CPU executor (wasm) where the runtime has it,
 * else on the CPU reference; gradients in core/train (float64). wasm: the same, wasm required.
 * native: prompts prefilled on the native executor (ggml, f32), gradients as auto.
 * cpu (alias reference): everything on the CPU reference. gpu: gradients on WebGPU, prompts as auto.
 */
export const TRAIN_EXECUTORS = ["auto", "native", "wasm", "cpu", "gpu"] as const;
export type TrainExecutor = typeof TRAIN_EXECUTORS[number];

export const COMMANDS = ["all", "data", "fit", "report"] as const;
export type Command = typeof COMMANDS[number];

export interface Range {
  min: number;
  max: number;
}

export interface TrainArgs {
  command: Command;
  /** Model directory; null: the embedded stories260K. */
  model: string | null;
  /** The shipped adapter; the report JSON and loss SVG are written next to it. */
  out: string;
  /** Set when --out was given (fit then also writes its adapter there). */
  outGiven: boolean;
  work: string;
  n: number;
  /** Objectives to train and compare; --loss restricts to one. */
  losses: LossKind[];
  steps: number;
  batch: number;
  lr: number;
  warmup: number;
  clip: number;
  /** Init noise std, in units of the embedding table's RMS. */
  noise: number;
  samples: number;
  heldout: number;
  seed: number;
  promptLen: Range;
  heldoutLen: Range;
  responseLen: Range;
  evalEvery: number;
  checkpointEvery: number;
  budgets: number[];
  resume: boolean;
  /** Where fit prefills prompts and computes gradients (see TRAIN_EXECUTORS). */
  executor: TrainExecutor;
  /** Threads of the wasm prefill; null: the cores available. */
  threads: number | null;
  /** Weight storage of the wasm prefill (auto: f32). */
  weights: WeightFormatChoice;
}

export const DEFAULT_OUT = "fixtures/models/stories260K/judgeq.safetensors";

export const DEFAULTS: Omit<TrainArgs, "command"> = {
  model: null,
  out: DEFAULT_OUT,
  outGiven: false,
  work: ".cache/judgeq-train",
  n: 32,
  losses: ["mse", "kl"],
  steps: 300,
  batch: 8,
  lr: 0.05,
  warmup: 0,
  clip: 1,
  noise: 1,
  samples: 48,
  heldout: 16,
  seed: 1,
  promptLen: { min: 200, max: 400 },
  heldoutLen: { min: 256, max: 400 },
  responseLen: { min: 64, max: 128 },
  evalEvery: 10,
  checkpointEvery: 50,
  budgets: [32, 64, 128],
  resume: false,
  executor: "auto",
  threads: null,
  weights: "auto",
};

export const USAGE = `Train a Judge Q adapter (soft tokens) on self-generated data, and evaluate it.

  deno task train [all|data|fit|report] [flags]

  all (default)  data, then fit every --loss, then report; reproduces the shipped adapter
  data           sample prompts and greedy responses from the model; store attention targets
  fit            optimise the soft embeddings (checkpoints every --checkpoint-every steps)
  report         held-out hit rate / KL / top-1 vs SnapKV and random soft tokens; ships the best

Flags:
  --model DIR            model directory (default: the embedded stories260K)
  --out FILE             shipped adapter (default ${DEFAULT_OUT});
                         FILE_report.json and FILE_loss.svg go next to it
  --work DIR             data, checkpoints and per-loss adapters (default ${DEFAULTS.work})
  --n N                  soft tokens (default ${DEFAULTS.n})
  --loss mse|kl          train/compare only this objective (default: both)
  --executor auto|native|wasm|cpu|gpu
                         auto (default): prompts prefilled on wasm (the fast CPU executor) where the
                         runtime has it, else on the CPU reference; gradients on the CPU (float64).
                         wasm: the same, wasm required. cpu (alias reference): all on the CPU reference,
                         which reproduces the shipped adapter byte for byte. gpu: gradients on WebGPU
  --threads N            threads of the wasm prefill, 1..${MAX_THREADS} (default: the cores available)
  --weights auto|f32|f16|int8 weight storage of the wasm prefill (default auto: f32)
  --steps N --batch N --lr X --warmup N --clip X   optimiser (defaults ${DEFAULTS.steps}, ${DEFAULTS.batch}, ${DEFAULTS.lr}, ${DEFAULTS.warmup}, ${DEFAULTS.clip})
  --noise X              init noise std in units of the embedding RMS (default ${DEFAULTS.noise})
  --samples N            training samples (default ${DEFAULTS.samples}); --heldout N held-out (default ${DEFAULTS.heldout})
  --seed N               seed of everything (default ${DEFAULTS.seed})
  --prompt-len A-B       training prompt lengths (default 200-400); --heldout-len A-B (default 256-400)
  --response-len A-B     greedy response lengths (default 64-128)
  --eval-every N         held-out loss every N steps (default ${DEFAULTS.evalEvery})
  --checkpoint-every N   (default ${DEFAULTS.checkpointEvery})
  --budgets A,B,..       report budgets (default 32,64,128)
  --resume               continue fits from their checkpoints
`;

const value = (help: string) => ({ kind: "string", help }) as const;

/** The flags (values as strings: each is range-checked below, with the bound in its message). */
const FLAGS = {
  model: value("model directory"),
  out: value("shipped adapter (.safetensors)"),
  work: value("data, checkpoints and per-loss adapters"),
  n: value("soft tokens"),
  loss: value("train/compare only this objective"),
  executor: value("auto | native | wasm | cpu | gpu"),
  threads: value("threads of the wasm prefill"),
  weights: value("weight storage of the wasm prefill"),
  steps: value("optimiser steps"),
  batch: value("batch size"),
  lr: value("learning rate"),
  warmup: value("warmup steps"),
  clip: value("gradient clip"),
  noise: value("init noise std"),
  samples: value("training samples"),
  heldout: value("held-out samples"),
  seed: value("seed of everything"),
  "prompt-len": value("training prompt lengths A-B"),
  "heldout-len": value("held-out prompt lengths A-B"),
  "response-len": value("greedy response lengths A-B"),
  "eval-every": value("held-out loss every N steps"),
  "checkpoint-every": value("checkpoint every N steps"),
  budgets: value("report budgets A,B,.."),
  resume: { kind: "boolean", help: "continue fits from their checkpoints" },
} as const satisfies FlagSpec;

function int(flag: string, v: string, min: number): number {
  const x = Number(v);
  if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(x) || x < min) {
    throw flagError(flag, `must be an integer >= ${min} (got ${JSON.stringify(v)})`);
  }
  return x;
}

function num(flag: string, v: string, min: number, exclusive: boolean): number {
  const x = Number(v);
  if (v.trim() === "" || !Number.isFinite(x) || x < min || (exclusive && x === min)) {
    throw flagError(flag, `must be a number ${exclusive ? ">" : ">="} ${min} (got ${JSON.stringify(v)})`);
  }
  return x;
}

function range(flag: string, v: string): Range {
  const m = /^(\d+)-(\d+)$/.exec(v.trim());
  if (!m || Number(m[1]) < 1 || Number(m[1]) > Number(m[2])) {
    throw flagError(flag, `must be MIN-MAX with 1 <= MIN <= MAX (got ${JSON.stringify(v)})`);
  }
  return { min: Number(m[1]), max: Number(m[2]) };
}

/** fit's wasm prefill takes the wasm executor's formats only. */
function wasmWeights(v: WeightFormatChoice): WeightFormatChoice {
  if (!isChoice(WASM_WEIGHT_CHOICES, v)) {
    throw flagError(
      "--weights",
      `${v} is a native format; fit's wasm prefill takes ${choiceList(WASM_WEIGHT_CHOICES)}`,
    );
  }
  return v;
}

function executor(v: string): TrainExecutor {
  const e = v === "reference" ? "cpu" : v;
  if (!(TRAIN_EXECUTORS as readonly string[]).includes(e)) {
    throw flagError("--executor", `must be auto, native, wasm, cpu or gpu (got ${JSON.stringify(v)})`);
  }
  return e as TrainExecutor;
}

function out(v: string): string {
  if (!v.endsWith(".safetensors")) {
    throw flagError("--out", `must end with .safetensors (got ${JSON.stringify(v)})`);
  }
  return v;
}

function loss(v: string): LossKind[] {
  if (!(LOSS_KINDS as readonly string[]).includes(v)) {
    throw flagError("--loss", `must be one of ${LOSS_KINDS.join(", ")} (got ${JSON.stringify(v)})`);
  }
  return [v as LossKind];
}

/** Parses argv (an optional command, then flags: io/flags.ts); throws UsageError naming the flag at fault. */
export function parseArgs(argv: string[]): TrainArgs {
  const hasCommand = argv.length > 0 && !argv[0].startsWith("-");
  if (hasCommand && !(COMMANDS as readonly string[]).includes(argv[0])) {
    throw flagError("command", `unknown command ${JSON.stringify(argv[0])} (use ${COMMANDS.join(", ")})`);
  }
  const command: Command = hasCommand ? argv[0] as Command : "all";
  const f = parseFlags(hasCommand ? argv.slice(1) : argv, FLAGS) as
    & { [K in keyof typeof FLAGS]?: string }
    & { resume?: boolean; _: string[] };
  if (f._.length > 0) throw flagError(f._[0], "unexpected argument (flags start with --)");
  const d = DEFAULTS;
  const opt = <T>(v: string | undefined, parse: (v: string) => T, fallback: T): T =>
    v === undefined ? fallback : parse(v);
  const a: TrainArgs = {
    command,
    model: f.model ?? d.model,
    out: opt(f.out, out, d.out),
    outGiven: f.out !== undefined,
    work: f.work ?? d.work,
    n: opt(f.n, (v) => int("--n", v, 1), d.n),
    losses: opt(f.loss, loss, [...d.losses]),
    steps: opt(f.steps, (v) => int("--steps", v, 1), d.steps),
    batch: opt(f.batch, (v) => int("--batch", v, 1), d.batch),
    lr: opt(f.lr, (v) => num("--lr", v, 0, true), d.lr),
    warmup: opt(f.warmup, (v) => int("--warmup", v, 0), d.warmup),
    clip: opt(f.clip, (v) => num("--clip", v, 0, false), d.clip),
    noise: opt(f.noise, (v) => num("--noise", v, 0, false), d.noise),
    samples: opt(f.samples, (v) => int("--samples", v, 1), d.samples),
    heldout: opt(f.heldout, (v) => int("--heldout", v, 1), d.heldout),
    seed: opt(f.seed, (v) => int("--seed", v, 0), d.seed),
    promptLen: opt(f["prompt-len"], (v) => range("--prompt-len", v), d.promptLen),
    heldoutLen: opt(f["heldout-len"], (v) => range("--heldout-len", v), d.heldoutLen),
    responseLen: opt(f["response-len"], (v) => range("--response-len", v), d.responseLen),
    evalEvery: opt(f["eval-every"], (v) => int("--eval-every", v, 1), d.evalEvery),
    checkpointEvery: opt(f["checkpoint-every"], (v) => int("--checkpoint-every", v, 1), d.checkpointEvery),
    budgets: opt(f.budgets, (v) => v.split(",").map((b) => int("--budgets", b, 1)), [...d.budgets]),
    resume: f.resume ?? d.resume,
    executor: opt(f.executor, executor, d.executor),
    threads: threadsFlag(f.threads) ?? null,
    weights: f.weights === undefined ? d.weights : wasmWeights(weightFormatFlag(f.weights, "--weights")),
  };
  if (a.warmup >= a.steps) throw flagError("--warmup", `must be below --steps (${a.steps})`);
  if (command === "fit" && a.outGiven && a.losses.length > 1) {
    throw flagError("--out", "fit writes one adapter there: pass a single --loss");
  }
  return a;
}
