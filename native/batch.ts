/**
 * A batched step on the native executor: several sessions' rows (decode steps, prefill chunks) in one ggml
 * graph. Every projection is one matrix product over all the rows; each session's K/V go into its own cache
 * and its rows attend over its own heads (flash attention over that session's room, its own mask), so
 * compressed caches of any per-head lengths batch together with no padding to the longest.
 */
import { type BatchItem, type ForwardResult, forwardRows } from "../core/executor.ts";
import { GraphBuilder, type Tensor } from "./graph.ts";
import { finishLayer, projectQkv } from "./layer.ts";
import { GGML_TYPE } from "./library.ts";
import type { NativeRuntime } from "./runtime.ts";
import { NativeQueryRows, NativeSession } from "./session.ts";

interface Part {
  s: NativeSession;
  tokens: number[];
  /** First row of this part in the step. */
  at: number;
  p0: number;
  want: "all" | "last" | "none";
  capture: boolean;
}

/** Runs token items as one graph; items with embeddings run on their own, before. */
export async function nativeForwardBatch(rt: NativeRuntime, items: BatchItem[]): Promise<ForwardResult[]> {
  const seen = new Set<NativeSession>();
  for (const it of items) {
    if (!(it.session instanceof NativeSession) || it.session.rt !== rt) {
      throw new Error("forwardBatch: every session must be one of this executor's");
    }
    if (seen.has(it.session)) throw new Error("forwardBatch: a session appears twice in one step");
    seen.add(it.session);
  }
  const results: (ForwardResult | null)[] = items.map(() => null);
  const parts: Part[] = [];
  let rows = 0;
  for (let i = 0; i < items.length; i++) {
    const it = items[i], s = it.session as NativeSession;
    if (it.input.kind !== "tokens" || it.input.tokens.length === 0) {
      results[i] = await s.forward(it.input, it.options);
      continue;
    }
    forwardRows(it.input, rt.config);
    parts.push({
      s,
      tokens: it.input.tokens,
      at: rows,
      p0: s.nextPosition,
      want: it.options?.logits ?? "last",
      capture: it.options?.captureQueries === true,
    });
    rows += it.input.tokens.length;
  }
  if (parts.length === 1) {
    // One session alone: its own path, whose one-row step graph is kept and run again from step to step
    // (a single stream costs what it costs unbatched: no graph built and planned per token).
    const i = results.indexOf(null);
    results[i] = await parts[0].s.forward(items[i].input, items[i].options);
  } else if (parts.length > 0) {
    const out = await rt.exclusive(() => runParts(rt, parts, rows));
    let k = 0;
    for (let i = 0; i < items.length; i++) if (!results[i]) results[i] = out[k++];
  }
  return results as ForwardResult[];
}

/**
 * The parts' attention outputs joined in row order, pairwise (a balanced tree of concats copies each row
 * log2(parts) times; a chain would copy the first rows once per part).
 */
function joinRows(b: GraphBuilder, outs: Tensor[]): Tensor {
  let level = outs;
  while (level.length > 1) {
    const next: Tensor[] = [];
    for (let i = 0; i < level.length; i += 2) {
      next.push(i + 1 < level.length ? b.concat(level[i], level[i + 1], 1) : level[i]);
    }
    level = next;
  }
  return level[0];
}

/** A batch graph and the inputs a step fills. */
interface BatchGraph {
  b: GraphBuilder;
  /** The step shape it was built for (sessions, rows, cache layouts, masks, outputs); see `shapeKey`. */
  key: string;
  ids: Tensor;
  pos: Tensor;
  /** [part][layer]: K/V destination rows and the attention mask. */
  index: Tensor[][];
  masks: Tensor[][];
  maskHeads: number[][];
  queries: Tensor[];
  logits: Tensor;
  /** The rows whose logits are read, and their input (null: none). */
  picked: number[];
  pickedIn: Tensor | null;
  /** Its own allocator when kept, else null (the runtime's shared one). */
  allocator: Deno.PointerValue | null;
}

/** The kept graph of each runtime's last all-decode step (one row per session), run again while its shape holds. */
const keptGraphs = new WeakMap<NativeRuntime, BatchGraph>();
const sessionIds = new WeakMap<NativeSession, number>();
let nextSessionId = 0;

function shapeKey(parts: Part[], maskHeads: number[][]): string {
  return parts.map((p, i) => {
    let id = sessionIds.get(p.s);
    if (id === undefined) sessionIds.set(p.s, id = nextSessionId++);
    return `${id}:${p.tokens.length}:${p.want}:${p.capture}:${p.s.cache.generation}:${
      maskHeads[i].join(",")
    }`;
  }).join("|");
}

/** Frees the runtime's kept batch graph, if any. */
export function dropBatchGraph(rt: NativeRuntime) {
  const f = keptGraphs.get(rt);
  if (!f) return;
  f.b.dispose();
  if (f.allocator) rt.g.sym.ggml_gallocr_free(f.allocator);
  keptGraphs.delete(rt);
}

async function runParts(rt: NativeRuntime, parts: Part[], rows: number): Promise<ForwardResult[]> {
  const c = rt.config, hd = c.headDim;
  for (const p of parts) p.s.cache.reserve(p.tokens.length);
  const maskHeads = parts.map((p) =>
    Array.from({ length: c.nLayers }, (_, l) => p.s.sameCounts(l) ? 1 : c.nHeads)
  );
  const key = shapeKey(parts, maskHeads);
  // Decode steps of the same streams repeat one shape: their graph is kept and only its inputs change.
  const keep = parts.every((p) => p.tokens.length === 1);
  let f = keep ? keptGraphs.get(rt) ?? null : null;
  if (f && f.key !== key) f = null;
  if (!f) {
    if (keep) dropBatchGraph(rt);
    f = buildParts(rt, parts, rows, maskHeads, key, keep);
    if (keep) keptGraphs.set(rt, f);
  }
  const b = f.b;
  try {
    b.set(f.ids, Int32Array.from(parts.flatMap((p) => p.tokens)));
    b.set(f.pos, Int32Array.from(parts.flatMap((p) => p.tokens.map((_, i) => p.p0 + i))));
    if (f.pickedIn) b.set(f.pickedIn, Int32Array.from(f.picked));
    parts.forEach((p, i) => {
      const n = p.tokens.length;
      for (let l = 0; l < c.nLayers; l++) {
        b.set(f.index[i][l], p.s.appendRows(l, n));
        b.set(f.masks[i][l], p.s.forwardMask(l, n, f.maskHeads[i][l]));
      }
    });
    await b.run(rt.threads);
    const picked = f.picked;
    const all = f.logits ? b.readF32(f.logits, picked.length * c.vocabSize) : null;
    const qAll = f.queries.map((t) => b.readF32(t, rows * c.nHeads * hd));
    const out: ForwardResult[] = [];
    let li = 0;
    for (const p of parts) {
      const n = p.tokens.length, V = c.vocabSize;
      const count = p.want === "all" ? n : p.want === "last" ? 1 : 0;
      const mine = count > 0 ? all!.slice(li * V, (li + count) * V) : null;
      li += count;
      const last = mine ? mine.subarray((count - 1) * V) : null;
      p.s.stepped(p.p0, n, last ? last.slice() : null);
      out.push({
        logits: mine,
        queries: p.capture
          ? new NativeQueryRows(
            Array.from({ length: n }, (_, i) => p.p0 + i),
            qAll.map((a) => a.slice(p.at * c.nHeads * hd, (p.at + n) * c.nHeads * hd)),
          )
          : null,
      });
    }
    return out;
  } finally {
    if (!keep) b.dispose();
  }
}

/** The step's graph: projections over all rows, each part's K/V and attention over its own cache. */
function buildParts(
  rt: NativeRuntime,
  parts: Part[],
  rows: number,
  maskHeads: number[][],
  key: string,
  keep: boolean,
): BatchGraph {
  const c = rt.config, w = rt.weights, hd = c.headDim;
  const size = rt.graphSize + parts.length * c.nLayers * 24;
  const b = new GraphBuilder(rt.g, size);
  const ids = b.input(GGML_TYPE.i32, [rows]);
  const pos = b.input(GGML_TYPE.i32, [rows]);
  const index: Tensor[][] = parts.map(() => []), masks: Tensor[][] = parts.map(() => []);
  let x = b.getRows(w.embed, ids);
  const queries: Tensor[] = [];
  const capture = parts.some((p) => p.capture);
  for (let l = 0; l < c.nLayers; l++) {
    const lw = w.layers[l];
    const { q, k, v } = projectQkv(b, c, w, lw, x, pos, rows);
    if (capture) queries.push(b.output(q));
    const outs: Tensor[] = [];
    parts.forEach((p, i) => {
      const n = p.tokens.length,
        cache = p.s.cache,
        room = cache.room[l],
        eb = cache.elementBytes,
        rb = hd * eb;
      const slice = (t: Tensor, heads: number) =>
        b.view3d(t, hd, heads, n, hd * 4, heads * hd * 4, p.at * heads * hd * 4);
      const rowsIn = b.input(GGML_TYPE.i64, [c.nKvHeads * n]);
      index[i].push(rowsIn);
      const flat = (t: Tensor) => b.reshape2d(t, hd, room * c.nKvHeads);
      b.expand(
        b.setRows(flat(cache.k[l]), b.reshape2d(b.cont(slice(k, c.nKvHeads)), hd, c.nKvHeads * n), rowsIn),
      );
      b.expand(
        b.setRows(flat(cache.v[l]), b.reshape2d(b.cont(slice(v, c.nKvHeads)), hd, c.nKvHeads * n), rowsIn),
      );
      const kAll = b.view3d(cache.k[l], hd, room, c.nKvHeads, rb, room * rb, 0);
      const vAll = b.view3d(cache.v[l], hd, room, c.nKvHeads, rb, room * rb, 0);
      const mask = b.input(GGML_TYPE.f16, [room, n, maskHeads[i][l]]);
      masks[i].push(mask);
      const o = b.flashAttn(b.permute(slice(q, c.nHeads), 0, 2, 1, 3), kAll, vAll, mask, 1 / Math.sqrt(hd));
      outs.push(b.reshape2d(o, hd * c.nHeads, n));
    });
    const attn = joinRows(b, outs);
    x = finishLayer(b, c, lw, x, attn);
  }
  // Logits only for the rows that want them.
  const picked: number[] = [];
  for (const p of parts) {
    const n = p.tokens.length;
    if (p.want === "all") { for (let i = 0; i < n; i++) picked.push(p.at + i); }
    else if (p.want === "last") picked.push(p.at + n - 1);
  }
  let logits: Tensor = null;
  let pickedIn: Tensor | null = null;
  if (picked.length > 0) {
    pickedIn = b.input(GGML_TYPE.i32, [picked.length]);
    const xs = b.getRows(x, pickedIn);
    logits = b.output(b.mulMat(w.lmHead, b.mul(b.rmsNorm(xs, c.rmsNormEps), w.finalNorm)));
  } else {
    b.output(x);
  }
  const allocator = keep ? rt.g.sym.ggml_gallocr_new(rt.g.bufferType) : rt.allocator;
  b.allocate(allocator);
  return {
    b,
    key,
    ids,
    pos,
    index,
    masks,
    maskHeads,
    queries,
    logits,
    picked,
    pickedIn,
    allocator: keep ? allocator : null,
  };
}
