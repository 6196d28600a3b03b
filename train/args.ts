/** Command-line flags of `deno task train`: parsed, range-checked, and every error names its flag. */
import { LOSS_KINDS, type LossKind } from "../core/train/loss.ts";

/**
 * Where fit runs. auto: prompts prefilled on the fast CPU executor (wasm) where the runtime has it,
 * else on the CPU reference; gradients in core/train (float64). wasm: the same, wasm required.
 * cpu (alias reference): everything on the CPU reference. gpu: gradients on WebGPU, prompts as auto.
 */
export const TRAIN_EXECUTORS = ["auto", "wasm", "cpu", "gpu"] as const;
export type TrainExecutor = typeof TRAIN_EXECUTORS[number];
export const WEIGHT_CHOICES = ["auto", "f32", "f16", "int8"] as const;
export const MAX_THREADS = 256;

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
  weights: typeof WEIGHT_CHOICES[number];
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
  --executor auto|wasm|cpu|gpu
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

export class UsageError extends Error {
  constructor(readonly flag: string, message: string) {
    super(`${flag}: ${message}`);
    this.name = "UsageError";
  }
}

const VALUE_FLAGS = new Set([
  "executor",
  "threads",
  "weights",
  "model",
  "out",
  "work",
  "n",
  "loss",
  "steps",
  "batch",
  "lr",
  "warmup",
  "clip",
  "noise",
  "samples",
  "heldout",
  "seed",
  "prompt-len",
  "heldout-len",
  "response-len",
  "eval-every",
  "checkpoint-every",
  "budgets",
]);

function int(flag: string, v: string, min: number): number {
  const x = Number(v);
  if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(x) || x < min) {
    throw new UsageError(flag, `must be an integer >= ${min} (got ${JSON.stringify(v)})`);
  }
  return x;
}

function num(flag: string, v: string, min: number, exclusive: boolean): number {
  const x = Number(v);
  if (v.trim() === "" || !Number.isFinite(x) || x < min || (exclusive && x === min)) {
    throw new UsageError(
      flag,
      `must be a number ${exclusive ? ">" : ">="} ${min} (got ${JSON.stringify(v)})`,
    );
  }
  return x;
}

function range(flag: string, v: string): Range {
  const m = /^(\d+)-(\d+)$/.exec(v.trim());
  if (!m || Number(m[1]) < 1 || Number(m[1]) > Number(m[2])) {
    throw new UsageError(flag, `must be MIN-MAX with 1 <= MIN <= MAX (got ${JSON.stringify(v)})`);
  }
  return { min: Number(m[1]), max: Number(m[2]) };
}

/** Parses argv; throws UsageError naming the flag at fault. */
export function parseArgs(argv: string[]): TrainArgs {
  let command: Command = "all";
  const a: TrainArgs = { ...DEFAULTS, command, losses: [...DEFAULTS.losses], budgets: [...DEFAULTS.budgets] };
  let i = 0;
  if (argv.length > 0 && !argv[0].startsWith("-")) {
    if (!(COMMANDS as readonly string[]).includes(argv[0])) {
      throw new UsageError(
        "command",
        `unknown command ${JSON.stringify(argv[0])} (use ${COMMANDS.join(", ")})`,
      );
    }
    command = argv[0] as Command;
    i = 1;
  }
  for (; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) throw new UsageError(arg, "unexpected argument (flags start with --)");
    const [name, inline] = arg.slice(2).split(/=(.*)/s, 2);
    const flag = `--${name}`;
    if (name === "resume") {
      if (inline !== undefined) throw new UsageError(flag, "takes no value");
      a.resume = true;
      continue;
    }
    if (!VALUE_FLAGS.has(name)) throw new UsageError(flag, "unknown flag (see --help)");
    const v = inline ?? argv[++i];
    if (v === undefined || (inline === undefined && v.startsWith("--"))) {
      throw new UsageError(flag, "needs a value");
    }
    switch (name) {
      case "model":
        a.model = v;
        break;
      case "out":
        if (!v.endsWith(".safetensors")) {
          throw new UsageError(flag, `must end with .safetensors (got ${JSON.stringify(v)})`);
        }
        a.out = v;
        a.outGiven = true;
        break;
      case "work":
        a.work = v;
        break;
      case "executor": {
        const e = v === "reference" ? "cpu" : v;
        if (!(TRAIN_EXECUTORS as readonly string[]).includes(e)) {
          throw new UsageError(flag, `must be auto, wasm, cpu or gpu (got ${JSON.stringify(v)})`);
        }
        a.executor = e as TrainExecutor;
        break;
      }
      case "threads":
        if (!/^\d+$/.test(v.trim()) || Number(v) < 1 || Number(v) > MAX_THREADS) {
          throw new UsageError(
            flag,
            `must be a whole number from 1 to ${MAX_THREADS} (got ${JSON.stringify(v)})`,
          );
        }
        a.threads = Number(v);
        break;
      case "weights":
        if (!(WEIGHT_CHOICES as readonly string[]).includes(v)) {
          throw new UsageError(flag, `must be auto, f32, f16 or int8 (got ${JSON.stringify(v)})`);
        }
        a.weights = v as TrainArgs["weights"];
        break;
      case "loss":
        if (!(LOSS_KINDS as readonly string[]).includes(v)) {
          throw new UsageError(flag, `must be one of ${LOSS_KINDS.join(", ")} (got ${JSON.stringify(v)})`);
        }
        a.losses = [v as LossKind];
        break;
      case "n":
        a.n = int(flag, v, 1);
        break;
      case "steps":
        a.steps = int(flag, v, 1);
        break;
      case "batch":
        a.batch = int(flag, v, 1);
        break;
      case "lr":
        a.lr = num(flag, v, 0, true);
        break;
      case "warmup":
        a.warmup = int(flag, v, 0);
        break;
      case "clip":
        a.clip = num(flag, v, 0, false);
        break;
      case "noise":
        a.noise = num(flag, v, 0, false);
        break;
      case "samples":
        a.samples = int(flag, v, 1);
        break;
      case "heldout":
        a.heldout = int(flag, v, 1);
        break;
      case "seed":
        a.seed = int(flag, v, 0);
        break;
      case "prompt-len":
        a.promptLen = range(flag, v);
        break;
      case "heldout-len":
        a.heldoutLen = range(flag, v);
        break;
      case "response-len":
        a.responseLen = range(flag, v);
        break;
      case "eval-every":
        a.evalEvery = int(flag, v, 1);
        break;
      case "checkpoint-every":
        a.checkpointEvery = int(flag, v, 1);
        break;
      case "budgets":
        a.budgets = v.split(",").map((b) => int(flag, b, 1));
        break;
    }
  }
  if (a.warmup >= a.steps) throw new UsageError("--warmup", `must be below --steps (${a.steps})`);
  if (command === "fit" && a.outGiven && a.losses.length > 1) {
    throw new UsageError("--out", "fit writes one adapter there: pass a single --loss");
  }
  return { ...a, command };
}
