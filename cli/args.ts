/**
 * A small flag parser for the project's commands: typed flags, repeatable ones, and an error that
 * names the flag ("--budget: expected an integer, got 'abc'").
 */
import { WEIGHT_FORMATS, type WeightFormatChoice } from "../gpu/weights.ts";

export type FlagKind = "string" | "int" | "number" | "boolean" | "strings";

export type FlagSpec = Record<string, { kind: FlagKind; help: string; default?: unknown }>;

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
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
      );
    }
    if (f.kind === "boolean" && eq < 0) {
      out[name] = true;
      continue;
    }
    const raw = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (raw === undefined) throw new UsageError(`--${name}: missing value`);
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
      throw new UsageError(`--${name}: expected true or false, got '${raw}'`);
    case "int": {
      const n = Number(raw);
      if (raw.trim() === "" || !Number.isSafeInteger(n)) {
        throw new UsageError(`--${name}: expected an integer, got '${raw}'`);
      }
      return n;
    }
    case "number": {
      const n = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(n)) {
        throw new UsageError(`--${name}: expected a number, got '${raw}'`);
      }
      return n;
    }
  }
}

export function usage(command: string, spec: FlagSpec): string {
  const lines = Object.entries(spec).map(([k, f]) => `  --${k.padEnd(16)} ${f.help}`);
  return `usage: ${command} [flags]\n${lines.join("\n")}`;
}

/** The --gpu-weights flag, checked. */
export function weightFormatFlag(v: unknown): WeightFormatChoice {
  if (!WEIGHT_FORMATS.includes(v as WeightFormatChoice)) {
    throw new UsageError(`--gpu-weights: expected auto, f32 or f16, got '${v}'`);
  }
  return v as WeightFormatChoice;
}
