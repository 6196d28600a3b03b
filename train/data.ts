/**
 * Self-generated training data: story beginnings sampled from the model (temperature 1) as prompts,
 * its greedy full-cache continuation as the response, and the target A_resp (mean attention of the
 * teacher-forced response tokens over the prompt, per layer and query head), stored once per sample.
 */
import type { ModelConfig } from "../core/config.ts";
import { CpuExecutor } from "../core/cpu/executor.ts";
import { GREEDY } from "../core/sampling.ts";
import { deriveSeed, randInt, seededUniform } from "../core/random.ts";
import type { ModelWeights } from "../core/weights.ts";
import type { Range } from "./args.ts";

export const DATA_FORMAT = "judgeq-train-data-v1";

export interface DataOptions {
  seed: number;
  samples: number;
  heldout: number;
  promptLen: Range;
  heldoutLen: Range;
  responseLen: Range;
}

export interface Sample {
  split: "train" | "heldout";
  prompt: number[];
  response: number[];
  /** [layer][queryHead][prompt.length]. */
  target: Float32Array;
}

export interface DataSet {
  fingerprint: string;
  options: DataOptions;
  samples: Sample[];
}

/** Stop tokens of generation: BOS (the model starts a new story with it) and every EOS. */
export const stopTokens = (
  c: ModelConfig,
): number[] => [...new Set([...(c.bosTokenId === null ? [] : [c.bosTokenId]), ...c.eosTokenIds])];

/** Checks lengths against the context: prompt + soft tokens and prompt + shortest response must fit. */
export function checkLengths(
  c: ModelConfig,
  o: DataOptions,
  n: number,
): { flag: string; message: string } | null {
  for (const [flag, r] of [["--prompt-len", o.promptLen], ["--heldout-len", o.heldoutLen]] as const) {
    if (r.max + n > c.maxSeqLen) {
      return { flag, message: `${r.max} + ${n} soft tokens exceed the context of ${c.maxSeqLen}` };
    }
    if (r.max + o.responseLen.min > c.maxSeqLen) {
      return {
        flag,
        message: `${r.max} + a ${o.responseLen.min}-token response exceed the context of ${c.maxSeqLen}`,
      };
    }
  }
  return null;
}

const MAX_TRIES = 50;

/**
 * One sample: prompt of `promptLength` tokens from BOS, greedy response of up to `responseLength`
 * tokens. Resamples the prompt (new sub-seed) while the response stops before the shortest length.
 */
export async function generateSample(
  w: ModelWeights,
  seed: number,
  promptLength: number,
  responseLength: number,
  minResponse: number,
): Promise<Omit<Sample, "split">> {
  const c = w.config, executor = new CpuExecutor(w), stops = stopTokens(c);
  const bos = c.bosTokenId ?? 1;
  for (let attempt = 0; attempt < MAX_TRIES; attempt++) {
    const s = executor.createSession(c.maxSeqLen);
    await s.forward({ kind: "tokens", tokens: [bos] }, { logits: "last" });
    const sampled = await s.decode({
      maxTokens: promptLength - 1,
      sampling: { temperature: 1, topP: 1, topK: 0, seed: deriveSeed(seed, attempt) },
      stopTokenIds: [],
    });
    const prompt = [bos, ...sampled.tokens];
    // decode does not feed its last token; feed it so the cache holds the whole prompt.
    await s.forward({ kind: "tokens", tokens: prompt.slice(-1) }, { logits: "last" });
    const mark = s.mark();
    const { tokens: response } = await s.decode({
      maxTokens: responseLength,
      sampling: GREEDY,
      stopTokenIds: stops,
    });
    if (response.length < minResponse) continue;
    await s.rewind(mark);
    const r = await s.forward({ kind: "tokens", tokens: response }, { logits: "none", captureQueries: true });
    const target = await s.attentionMass(r.queries!, prompt.length);
    for (let i = 0; i < target.length; i++) target[i] /= response.length;
    return { prompt, response, target };
  }
  throw new Error(
    `data: no greedy response of >= ${minResponse} tokens after ${MAX_TRIES} prompts (seed ${seed})`,
  );
}

/** Generates the training then held-out samples; lengths drawn from (seed, sample index). */
export async function generateData(
  w: ModelWeights,
  fingerprint: string,
  o: DataOptions,
  onSample: (done: number, total: number) => void = () => {},
): Promise<DataSet> {
  const total = o.samples + o.heldout, samples: Sample[] = [];
  for (let k = 0; k < total; k++) {
    const split = k < o.samples ? "train" : "heldout";
    const lengths = split === "train" ? o.promptLen : o.heldoutLen;
    const rand = seededUniform(deriveSeed(o.seed, 7000 + k));
    const promptLength = randInt(rand, lengths.min, lengths.max);
    const responseLength = Math.min(
      randInt(rand, o.responseLen.min, o.responseLen.max),
      w.config.maxSeqLen - promptLength,
    );
    const s = await generateSample(
      w,
      deriveSeed(o.seed, 9000 + k),
      promptLength,
      responseLength,
      o.responseLen.min,
    );
    samples.push({ split, ...s });
    onSample(k + 1, total);
  }
  return { fingerprint, options: o, samples };
}

function toBase64(a: Float32Array): string {
  const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(s: string): Float32Array {
  const bin = atob(s), bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Float32Array(bytes.buffer);
}

export function encodeData(d: DataSet): string {
  return JSON.stringify({
    format: DATA_FORMAT,
    fingerprint: d.fingerprint,
    options: d.options,
    samples: d.samples.map((s) => ({ ...s, target: toBase64(s.target) })),
  });
}

/** Parses a data file; the error says which part is wrong. */
export function decodeData(text: string, c: ModelConfig, file = "data.json"): DataSet {
  const bad = (m: string): never => {
    throw new Error(`${file}: ${m} (regenerate it with \`deno task train data\`)`);
  };
  let raw: { format?: unknown; fingerprint?: unknown; options?: unknown; samples?: unknown };
  try {
    raw = JSON.parse(text);
  } catch (e) {
    return bad(`not valid JSON: ${(e as Error).message}`);
  }
  if (raw.format !== DATA_FORMAT) bad(`format must be ${DATA_FORMAT}`);
  if (!Array.isArray(raw.samples) || raw.samples.length === 0) bad("has no samples");
  const perToken = c.nLayers * c.nHeads;
  const samples = (raw.samples as Record<string, unknown>[]).map((s, i) => {
    const prompt = s.prompt as number[], response = s.response as number[];
    if (!Array.isArray(prompt) || !Array.isArray(response) || typeof s.target !== "string") {
      bad(`sample ${i} is malformed`);
    }
    if ([...prompt, ...response].some((t) => !Number.isInteger(t) || t < 0 || t >= c.vocabSize)) {
      bad(`sample ${i} has token ids outside the model's vocabulary`);
    }
    const target = fromBase64(s.target as string);
    if (target.length !== perToken * prompt.length) bad(`sample ${i}: target does not fit this model`);
    return { split: s.split === "train" ? "train" : "heldout", prompt, response, target } as Sample;
  });
  return { fingerprint: String(raw.fingerprint), options: raw.options as DataOptions, samples };
}

/** SHA-256 (hex) of some bytes or text: names the exact data an adapter was trained on. */
export async function sha256Hex(data: string | Uint8Array): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}
