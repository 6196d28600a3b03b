/**
 * A small flag parser for the project's commands: typed flags, repeatable ones, and an error that
 * names the flag ("--budget: expected an integer, got 'abc'").
 */
import { WEIGHT_CHOICES, type WeightFormatChoice } from "../core/weight_formats.ts";
import { EXECUTOR_CHOICES, type ExecutorChoice } from "./executor_choice.ts";
import { defaultThreads } from "../wasm/mod.ts";

export type FlagKind = "string" | "int" | "number" | "boolean" | "strings";

export type FlagSpec = Record<string, { kind: FlagKind; help: string; default?: unknown }>;

/** A bad command line; `flag` names the flag at fault ("--budget", or "command"), where one is. */
export class UsageError extends Error {
  constructor(message: string, readonly flag?: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** A UsageError that names its flag: "--steps: must be an integer >= 1 (got \"0\")". */
export function flagError(flag: string, message: string): UsageError {
  return new UsageError(`${flag}: ${message}`, flag);
}

type Parsed<S extends FlagSpec> = { [K in keyof S]?: unknown } & { _: string[] };

export function parseFlags<S extends FlagSpec>(argv: string[], spec: S): Parsed<S> {
  const out: Record<string, unknown> = { _: [] };
  for (const [name, f] of Object.entries(spec)) if (f.default !== undefined) out[name] = f.default;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) {
      (out._ as string[]).push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq >= 0 ? eq : undefined);
    const f = spec[name];
    if (!f) {
      throw new UsageError(
        `unknown flag --${name} (known: ${Object.keys(spec).map((k) => "--" + k).join(", ")})`,
        `--${name}`,
      );
    }
    if (f.kind === "boolean" && eq < 0) {
      out[name] = true;
      continue;
    }
    const raw = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    // A value that looks like the next flag is a forgotten value (--flag=--x passes one on purpose).
    if (raw === undefined || (eq < 0 && raw.startsWith("--"))) throw flagError(`--${name}`, "missing value");
    out[name] = convert(name, f.kind, raw, out[name]);
  }
  return out as Parsed<S>;
}

function convert(name: string, kind: FlagKind, raw: string, previous: unknown): unknown {
  switch (kind) {
    case "string":
      return raw;
    case "strings":
      return [...((previous as string[] | undefined) ?? []), raw];
    case "boolean":
      if (raw === "true" || raw === "false") return raw === "true";
      throw flagError(`--${name}`, `expected true or false, got '${raw}'`);
    case "int": {
      const n = Number(raw);
      if (raw.trim() === "" || !Number.isSafeInteger(n)) {
        throw flagError(`--${name}`, `expected an integer, got '${raw}'`);
      }
      return n;
    }
    case "number": {
      const n = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(n)) {
        throw flagError(`--${name}`, `expected a number, got '${raw}'`);
      }
      return n;
    }
  }
}

export function usage(command: string, spec: FlagSpec): string {
  const lines = Object.entries(spec).map(([k, f]) => `  --${k.padEnd(16)} ${f.help}`);
  return `usage: ${command} [flags]\n${lines.join("\n")}`;
}

/** A weight-format flag (--weights, or its alias --gpu-weights), checked. */
export function weightFormatFlag(v: unknown, flag = "--gpu-weights"): WeightFormatChoice {
  if (!WEIGHT_CHOICES.includes(v as WeightFormatChoice)) {
    throw flagError(flag, `expected ${WEIGHT_CHOICES.join(", ")}, got '${v}'`);
  }
  return v as WeightFormatChoice;
}

/** --weights, or --gpu-weights (its older name) where the command has it; both given must agree. */
export function weightsFlag(f: { weights?: unknown; "gpu-weights"?: unknown }): WeightFormatChoice {
  const weights = f.weights === undefined ? undefined : weightFormatFlag(f.weights, "--weights");
  const gpu = f["gpu-weights"] === undefined
    ? undefined
    : weightFormatFlag(f["gpu-weights"], "--gpu-weights");
  if (weights !== undefined && gpu !== undefined && weights !== gpu) {
    throw flagError(
      "--gpu-weights",
      `is an alias of --weights, given '${gpu}' against --weights '${weights}'`,
    );
  }
  return weights ?? gpu ?? "auto";
}

/** --kv-cache: f32 (the default) or f16, the native executor's KV storage. */
export function kvCacheFlag(v: unknown): "f32" | "f16" | undefined {
  if (v === undefined) return undefined;
  if (v !== "f32" && v !== "f16") throw flagError("--kv-cache", `expected f32 or f16, got '${v}'`);
  return v;
}

/** The --executor flag, checked. */
export function executorFlag(v: unknown): ExecutorChoice {
  if (!(EXECUTOR_CHOICES as readonly unknown[]).includes(v)) {
    throw flagError("--executor", `expected auto, gpu, native, wasm or cpu (or reference), got '${v}'`);
  }
  return v as ExecutorChoice;
}

export const MAX_THREADS = 256;

/** The --threads flag: undefined when not given (the executor then takes the cores available). */
export function threadsFlag(v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const raw = String(v), n = Number(raw);
  if (!/^\s*\d+\s*$/.test(raw) || !Number.isSafeInteger(n) || n < 1 || n > MAX_THREADS) {
    throw flagError("--threads", `expected a whole number from 1 to ${MAX_THREADS}, got '${raw}'`);
  }
  return n;
}

const EXECUTOR_HELP = "auto | gpu | native | wasm | cpu: auto = WebGPU on a hardware adapter, else native " +
  "(ggml's CPU kernels through FFI), else wasm (WebAssembly SIMD), else cpu, each fallback said with its " +
  "reason; cpu (alias reference) = the CPU reference";

/** The flags of every command that loads a model: --executor, --threads and --weights. */
export function executorFlags<D extends string>(defaultExecutor: D, why = "") {
  return {
    executor: {
      kind: "string",
      help: `${EXECUTOR_HELP} (default ${defaultExecutor}${why})`,
      default: defaultExecutor,
    },
    threads: {
      kind: "string",
      help:
        `threads of the native and wasm executors, 1..${MAX_THREADS} (default: the cores available, ${defaultThreads()} here)`,
    },
    "kv-cache": {
      kind: "string",
      help:
        "KV cache storage of the native executor: f32 (default) or f16 (half the bytes, llama.cpp's default)",
    },
    weights: {
      kind: "string",
      help:
        "weight storage: auto | f32 | f16 | int8 | q8_0 | q4_0 (default auto: f16 on a GPU with shader-f16, else " +
        "f32; int8: wasm's 8-bit rows, on native the same as q8_0; q8_0: ggml's blocks, native and wasm; q4_0: " +
        "native only)",
    },
  } as const;
}

/** --gpu-weights, kept for existing commands: an alias of --weights. */
export const GPU_WEIGHTS_ALIAS = {
  "gpu-weights": { kind: "string", help: "alias of --weights" },
} as const;
