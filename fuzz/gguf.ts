/**
 * Seeded fuzzing of the GGUF reader: mutations of a valid file aimed at its structure (counts, lengths,
 * value and tensor type ids, dims, offsets, the alignment), plus byte flips, truncations and spliced
 * ranges, each loaded from bytes (loadModelFromBytes on the CPU executor: header, config, tokenizer,
 * weights) and every fourth also from disk (io/model_dir.ts reads the header in growing prefixes): the
 * file loads or is refused with a JudgeQError naming its field, never a crash, never a hang, and disk
 * and bytes agree.
 */
import { JudgeQError } from "../core/errors.ts";
import { mulberry32, pick, randInt, type Rng, streamSeed } from "../core/random.ts";
import { loadModelFromBytes } from "../io/from_bytes.ts";
import { loadModelDir } from "../io/model_dir.ts";

/** A field of a valid file: where it is, how wide (4 or 8 bytes), what it holds. */
interface Field {
  at: number;
  width: 4 | 8;
  what: "count" | "length" | "value-type" | "item-type" | "n-dims" | "dim" | "ggml-type" | "offset" | "u32";
}

/** Walks a valid GGUF file's header, listing its fields (the structure the mutations aim at). */
export function ggufFields(bytes: Uint8Array): Field[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fields: Field[] = [{ at: 4, width: 4, what: "u32" }, { at: 8, width: 8, what: "count" }, {
    at: 16,
    width: 8,
    what: "count",
  }];
  let at = 24;
  const nTensors = Number(v.getBigUint64(8, true)), nKv = Number(v.getBigUint64(16, true));
  const str = () => {
    fields.push({ at, width: 8, what: "length" });
    at += 8 + Number(v.getBigUint64(at, true));
  };
  const sizes = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];
  const value = (type: number) => {
    if (type === 8) return str();
    if (type !== 9) {
      if (type === 4) fields.push({ at, width: 4, what: "u32" });
      at += sizes[type];
      return;
    }
    const item = v.getUint32(at, true);
    fields.push({ at, width: 4, what: "item-type" });
    at += 4;
    const n = Number(v.getBigUint64(at, true));
    fields.push({ at, width: 8, what: "count" });
    at += 8;
    if (item === 8 || item === 9) { for (let i = 0; i < n; i++) value(item); }
    else at += n * sizes[item];
  };
  for (let i = 0; i < nKv; i++) {
    str();
    const type = v.getUint32(at, true);
    fields.push({ at, width: 4, what: "value-type" });
    at += 4;
    value(type);
  }
  for (let i = 0; i < nTensors; i++) {
    str();
    const nd = v.getUint32(at, true);
    fields.push({ at, width: 4, what: "n-dims" });
    at += 4;
    for (let d = 0; d < nd; d++) fields.push({ at: at + 8 * d, width: 8, what: "dim" });
    at += 8 * nd;
    fields.push({ at, width: 4, what: "ggml-type" }, { at: at + 4, width: 8, what: "offset" });
    at += 12;
  }
  return fields;
}

/** Values that break things: zero, one off, huge, past the file, powers of two. */
function oddValue(r: Rng, old: bigint, width: 4 | 8, fileSize: number): bigint {
  const max = width === 4 ? 0xffffffffn : 0xffffffffffffffffn;
  const v = pick(r, [
    0n,
    1n,
    old + 1n,
    old - 1n,
    old * 2n,
    old + 32n,
    BigInt(fileSize),
    BigInt(fileSize) + 1n,
    2n ** 31n,
    2n ** 32n - 1n,
    2n ** 40n,
    2n ** 53n + 1n,
    2n ** 63n,
    max,
    BigInt(randInt(r, 0, 40)),
    BigInt(randInt(r, 0, 1 << 20)),
  ]);
  return ((v % (max + 1n)) + max + 1n) % (max + 1n);
}

/** The `index`th mutation of a GGUF file for `seed`: 1 to 3 operations. */
export function mutateGguf(
  seed: number,
  index: number,
  file: Uint8Array,
): { bytes: Uint8Array; ops: string[] } {
  const r = mulberry32(streamSeed(seed, "gguf", index));
  const fields = ggufFields(file);
  const headerEnd = Math.max(...fields.map((f) => f.at + f.width));
  let bytes = file.slice();
  const ops: string[] = [];
  for (let step = randInt(r, 1, 3); step > 0; step--) {
    const op = randInt(r, 0, 9);
    if (op <= 4) {
      const f = pick(r, fields);
      if (f.at + f.width > bytes.length) continue;
      const v = new DataView(bytes.buffer);
      const old = f.width === 4 ? BigInt(v.getUint32(f.at, true)) : v.getBigUint64(f.at, true);
      const now = f.what === "ggml-type" || f.what === "value-type" || f.what === "item-type"
        ? BigInt(r() < 0.7 ? randInt(r, 0, 42) : Number(oddValue(r, old, 4, bytes.length)))
        : oddValue(r, old, f.width, bytes.length);
      if (f.width === 4) v.setUint32(f.at, Number(now & 0xffffffffn), true);
      else v.setBigUint64(f.at, now, true);
      ops.push(`${f.what}@${f.at}=${now}`);
    } else if (op <= 6) {
      const n = randInt(r, 1, 8);
      for (let i = 0; i < n; i++) {
        bytes[randInt(r, 0, Math.min(bytes.length, headerEnd + 64) - 1)] = randInt(r, 0, 255);
      }
      ops.push(`flip-${n}`);
    } else if (op === 7) {
      const cut = r() < 0.7 ? randInt(r, 0, headerEnd) : randInt(r, headerEnd, bytes.length);
      bytes = bytes.slice(0, cut);
      ops.push(`truncate@${cut}`);
    } else if (op === 8) {
      // A range of the header copied over another (strings where counts were, and so on).
      const len = randInt(r, 1, 64), from = randInt(r, 0, headerEnd), to = randInt(r, 0, headerEnd);
      bytes.copyWithin(to, from, from + len);
      ops.push(`splice ${from}->${to}+${len}`);
    } else {
      const at = randInt(r, 4, headerEnd), n = randInt(r, 1, 16);
      bytes = new Uint8Array([...bytes.subarray(0, at), ...new Uint8Array(n), ...bytes.subarray(at)]);
      ops.push(`insert-${n}@${at}`);
    }
  }
  return { bytes, ops };
}

export interface GgufFuzzReport {
  seed: number;
  mutations: number;
  outcomes: Record<string, number>;
  /** Errors by the field they name (tensor names folded to <tensor>). */
  error_params: Record<string, number>;
  crashes: number;
  hangs: number;
  unnamed: number;
  from_disk: number;
  disk_mismatches: number;
  slowest_ms: number;
}

export interface GgufFinding {
  kind: "crash" | "hang" | "unnamed" | "mismatch";
  seed: number;
  index: number;
  ops: string[];
  detail: string;
}

const bump = (m: Record<string, number>, k: string) => (m[k] = (m[k] ?? 0) + 1);
const paramClass = (p: string) => (/^(blk\.\d+\.|token_embd|output)/.test(p) ? "<tensor>" : p);

async function attempt(run: () => Promise<unknown>) {
  const t = performance.now();
  try {
    await run();
    return { outcome: "ok", param: null as string | null, problem: "", ms: performance.now() - t };
  } catch (e) {
    const ms = performance.now() - t;
    if (e instanceof JudgeQError) return { outcome: e.kind, param: e.param, problem: e.message, ms };
    return {
      outcome: "crash",
      param: null,
      problem: e instanceof Error ? (e.stack ?? e.message) : String(e),
      ms,
    };
  }
}

/** Runs `mutations` mutations of `file`; `tempDir` enables the from-disk comparison. */
export async function fuzzGguf(o: {
  seed: number;
  mutations: number;
  file: Uint8Array;
  timeoutMs: number;
  tempDir?: string;
  /** The loader under test (default: loadModelFromBytes on the CPU executor). */
  load?: (bytes: Uint8Array) => Promise<unknown>;
  onFinding?: (f: GgufFinding) => void;
}): Promise<{ report: GgufFuzzReport; findings: GgufFinding[] }> {
  const load = o.load ??
    ((bytes: Uint8Array) =>
      loadModelFromBytes({ gguf: bytes, name: "fuzz.gguf", executor: "cpu", warn: () => {} }));
  const report: GgufFuzzReport = {
    seed: o.seed,
    mutations: 0,
    outcomes: {},
    error_params: {},
    crashes: 0,
    hangs: 0,
    unnamed: 0,
    from_disk: 0,
    disk_mismatches: 0,
    slowest_ms: 0,
  };
  const findings: GgufFinding[] = [];
  for (let index = 0; index < o.mutations; index++) {
    const { bytes, ops } = mutateGguf(o.seed, index, o.file);
    const found = (kind: GgufFinding["kind"], detail: string) => {
      const f = { kind, seed: o.seed, index, ops, detail };
      findings.push(f);
      o.onFinding?.(f);
    };
    const r = await attempt(() => load(bytes));
    report.mutations++;
    report.slowest_ms = Math.max(report.slowest_ms, Math.round(r.ms));
    bump(report.outcomes, r.outcome);
    if (r.outcome === "crash") report.crashes++, found("crash", r.problem);
    else if (r.ms > o.timeoutMs) report.hangs++, found("hang", `took ${Math.round(r.ms)} ms`);
    else if (r.outcome !== "ok") {
      if (!r.param) report.unnamed++, found("unnamed", r.problem);
      else bump(report.error_params, paramClass(r.param));
    }
    if (o.tempDir && index % 4 === 0) {
      const path = `${o.tempDir}/fuzz.gguf`;
      await Deno.writeFile(path, bytes);
      const d = await attempt(() => loadModelDir(path));
      report.from_disk++;
      // The disk loader stops before the tokenizer is built (loadModel builds it), so a tokenizer error
      // from bytes is "ok" from disk.
      const bytesVerdict = r.param === "tokenizer.json" ? "ok" : `${r.outcome} ${r.param}`;
      if (`${d.outcome} ${d.param}` !== bytesVerdict && !(d.outcome === "ok" && bytesVerdict === "ok")) {
        report.disk_mismatches++;
        found(
          "mismatch",
          `from bytes ${r.outcome} (${r.param}), from disk ${d.outcome} (${d.param}) ${d.problem}`,
        );
      }
    }
  }
  return { report, findings };
}
