/** Test helpers: assertions (jsr std is not reachable) and shared model loading. */
import * as E from "fp-ts/Either";
import { EMBEDDED_MODEL_DIR, loadModelDir, type ModelFiles } from "../io/model_dir.ts";
import { parseModelConfig } from "../core/config.ts";
import { assembleWeights, type ModelWeights } from "../core/weights.ts";
import { randomTensors, testModelConfig, type TestShape } from "../fixtures/test_models.ts";
import { randomSoftTokens } from "../core/soft_tokens.ts";

export function assert(cond: unknown, message = "assertion failed"): asserts cond {
  if (!cond) throw new Error(message);
}

export function assertEquals<T>(actual: T, expected: T, message = "") {
  const a = JSON.stringify(actual), b = JSON.stringify(expected);
  if (a !== b) {
    throw new Error(
      `${message ? message + ": " : ""}expected ${b.slice(0, 2000)}\n     got ${a.slice(0, 2000)}`,
    );
  }
}

/** A seeded generator of floats in [-1, 1) (an LCG: the kernel tests' inputs, the same on every run). */
export function seededFloats(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  };
}

/** Rounds to the nearest integer, halfway cases to even (as f32x4.nearest and float32 conversions do). */
export const roundHalfEven = (v: number): number => {
  const f = Math.floor(v), d = v - f;
  return d < 0.5 ? f : d > 0.5 ? f + 1 : f % 2 === 0 ? f : f + 1;
};

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function assertClose(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, message = "") {
  const d = maxAbsDiff(a, b);
  if (!(d <= tol)) throw new Error(`${message ? message + ": " : ""}max abs diff ${d} > ${tol}`);
}

/** Expects a thrown error whose message contains every fragment. */
export async function assertRejects(fn: () => unknown, ...fragments: string[]): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    const m = (e as Error).message;
    for (const f of fragments) if (!m.includes(f)) throw new Error(`error "${m}" lacks "${f}"`);
    return e as Error;
  }
  throw new Error(`expected an error containing ${fragments.join(", ")}`);
}

/** Expects a Left whose message contains every fragment; returns the error. */
export function assertLeft<L extends Error, R>(e: E.Either<L, R>, ...fragments: string[]): L {
  if (E.isRight(e)) throw new Error(`expected Left containing ${fragments.join(", ")}, got Right`);
  for (const f of fragments) {
    if (!e.left.message.includes(f)) throw new Error(`error "${e.left.message}" lacks "${f}"`);
  }
  return e.left;
}

export function right<L, R>(e: E.Either<L, R>): R {
  if (E.isLeft(e)) throw e.left;
  return e.right;
}

let embedded: Promise<ModelFiles> | null = null;
/** The embedded stories260K model, loaded once per test file. */
export function embeddedModel(): Promise<ModelFiles> {
  return (embedded ??= loadModelDir(EMBEDDED_MODEL_DIR));
}

/** A random-weight model of a test shape, in memory (float32 values before any dtype rounding). */
export function randomModel(shape: TestShape, seed = 1234): ModelWeights {
  const config = right(parseModelConfig(testModelConfig(shape)));
  const tensors = randomTensors(config, seed);
  return right(assembleWeights(config, (n) => tensors.get(n)));
}

export const GOLDEN = new URL("./golden/", import.meta.url).pathname;

/** Parses a golden .tsv: prompt ids and, per position, the token fed next (forced or greedy). */
export async function readGoldenTsv(name: string): Promise<{ prompt: number[]; next: number[] }> {
  const lines = (await Deno.readTextFile(GOLDEN + name)).split("\n");
  const prompt = lines[0].split(":")[1].trim().split(" ").map(Number);
  const next: number[] = [];
  for (const line of lines.slice(3)) {
    const cols = line.split("\t");
    if (cols.length < 7 || !/^\d+$/.test(cols[0])) break;
    next.push(Number(cols[5]));
  }
  return { prompt, next };
}

export async function readF32(path: string): Promise<Float32Array> {
  return new Float32Array((await Deno.readFile(path)).buffer);
}

/** Runs a project script as `deno run -A` and collects its exit code and output. */
export async function runScript(
  script: string,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(`../${script}`, import.meta.url).pathname, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

const ROOT = new URL("../", import.meta.url).pathname;

/** `deno run -A server/main.ts ARGS` from the project root, as a live process (for the tests that talk to it). */
export function spawnServerMain(args: string[], env: Record<string, string> = {}): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "server/main.ts", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).spawn();
}

/** All of a stream's text. */
export async function readAll(s: ReadableStream<Uint8Array>): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  for await (const chunk of s) text += decoder.decode(chunk, { stream: true });
  return text;
}

/** Runs server/main.ts to its exit (flag errors, --help): its exit code and output. */
export async function runServerMain(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = spawnServerMain(args, env);
  const [status, stdout, stderr] = await Promise.all([
    child.status,
    readAll(child.stdout),
    readAll(child.stderr),
  ]);
  return { code: status.code, stdout, stderr };
}

// ---- training tests -------------------------------------------------------------------------------

/** ||a - b|| / ||b||: the error of a against a reference b. */
export const relErr = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i] - b[i]) ** 2;
    n += b[i] ** 2;
  }
  return Math.sqrt(d / n);
};

/** n deterministic token ids in [1, vocab), varied by seed. */
export const seededTokens = (n: number, vocab: number, seed: number) =>
  Array.from({ length: n }, (_, i) => 1 + ((i * 7919 + seed * 104729) % (vocab - 1)));

/** n random soft-token rows of the model's embedding scale, in float64 (training's precision). */
export const softRows = (w: ModelWeights, n: number, seed: number) =>
  Float64Array.from(randomSoftTokens(w.embed, w.config.dim, n, seed));
