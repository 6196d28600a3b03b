/**
 * The plan interpreter: runs a Plan's steps on any executor (CPU reference or WebGPU). The only effects
 * are the executor's; scoring and selection are the pure functions of methods/ and selection.ts.
 */
import { boundedDecode, type BoundedDecodeContext } from "./bounded_decode.ts";
import type { DecodeCompression, DecodeCompressionStats } from "./decode_compression.ts";
import type { DecodeResult, Executor, KvSession, QueryRows } from "./executor.ts";
import { METHODS } from "./methods/registry.ts";
import type { DecodeSpec, Plan, Step } from "./plan.ts";
import { adaptiveSelect, pyramidBudgets, topPerHead } from "./selection.ts";
import { softPass, softRows } from "./soft_pass.ts";
import { randomSoftTokens } from "./soft_tokens.ts";

export interface RunContext {
  executor: Executor;
  /** The adapter's soft embeddings [n, dim], when the model has one. */
  softEmbeddings: Float32Array | null;
  /** The model's token embedding table, for the random-soft-token ablation. */
  tokenEmbeddings: Float32Array;
  /** Streaming: new tokens of output `index` as soon as they are known. */
  onTokens?: (index: number, ids: number[]) => void | Promise<void>;
  signal?: AbortSignal;
  /** Awaited between chunks of a long prefill (ForwardOptions.between): a scheduler's yield point. */
  between?: () => Promise<void>;
  /** Decode-time compression: called at each segment boundary, before compressing (tests). */
  onDecodeBoundary?: BoundedDecodeContext["onBoundary"];
}

export interface GenerationOutput {
  tokens: number[];
  finishReason: DecodeResult["finishReason"];
}

export interface CompressionStats {
  method: string;
  budget: number | null;
  window: number | null;
  promptTokens: number;
  /** [layer][kvHead] -> ascending prompt positions kept (all of them when not compressed). */
  kept: number[][][];
  kvBytesBefore: number;
  kvBytesAfter: number;
  /** Compression during decoding, when the plan bounds the cache. */
  decode?: DecodeCompressionStats;
}

export interface PlanResult {
  outputs: GenerationOutput[];
  compression: CompressionStats;
  /** Milliseconds per step kind, summed. */
  timings: Record<string, number>;
  syncs: number;
}

/** Interpreter state threaded through the steps. */
interface State {
  session: KvSession;
  /** Summed attention of the scoring rows, [layer][queryHead][L]. */
  mass: Float32Array | null;
  /** Summed attention of the prompt's decode-time stand-in rows, [layer][queryHead][L]. */
  standIn: Float32Array | null;
  firstRow: number;
  keyNorms: Float32Array | null;
  scores: Float32Array | null;
  kept: Int32Array[][] | null;
  kvBytesAfter: number | null;
  outputs: GenerationOutput[];
  syncs: number;
  bounded: DecodeCompression | null;
  decodeStats: DecodeCompressionStats | null;
}

const promptOf = (plan: Plan) => (plan.input.kind === "prompt" ? plan.input.tokens : plan.input.context);

/** Full-precision KV bytes of `entries` prompt positions in every head of every layer. */
export const kvBytesFor = (c: Executor["config"], entries: number) =>
  entries * c.nLayers * c.nKvHeads * c.headDim * 2 * 4;

export async function runPlan(plan: Plan, ctx: RunContext): Promise<PlanResult> {
  const session = ctx.executor.createSession(plan.capacity);
  try {
    return await runOnSession(plan, ctx, session);
  } finally {
    session.dispose();
  }
}

/** Runs the plan on a given empty session (left open for the caller, e.g. to keep a compressed context). */
export async function runOnSession(plan: Plan, ctx: RunContext, session: KvSession): Promise<PlanResult> {
  const timings: Record<string, number> = {};
  const st: State = {
    session,
    mass: null,
    standIn: null,
    firstRow: 0,
    keyNorms: null,
    scores: null,
    kept: null,
    kvBytesAfter: null,
    outputs: [],
    syncs: 0,
    bounded: null,
    decodeStats: null,
  };
  for (const step of plan.steps) {
    if (ctx.signal?.aborted) break;
    const t0 = performance.now();
    await runStep(step, plan, ctx, st);
    timings[step.op] = (timings[step.op] ?? 0) + performance.now() - t0;
  }
  const c = ctx.executor.config;
  const positions = await session.positions();
  return {
    outputs: st.outputs,
    compression: {
      method: plan.method,
      budget: plan.options?.budget ?? null,
      window: plan.options?.window ?? null,
      promptTokens: plan.promptLength,
      kept: (st.kept ?? positions).map((heads) =>
        heads.map((p) => Array.from(p).filter((x) => x < plan.promptLength))
      ),
      kvBytesBefore: kvBytesFor(c, plan.promptLength),
      kvBytesAfter: st.kvBytesAfter ?? kvBytesFor(c, plan.promptLength),
      ...(st.decodeStats ? { decode: st.decodeStats } : {}),
    },
    timings,
    syncs: st.syncs,
  };
}

async function massOf(st: State, queries: QueryRows, promptLength: number): Promise<Float32Array> {
  try {
    return await st.session.attentionMass(queries, promptLength);
  } finally {
    queries.dispose();
  }
}

/** `into` plus `m` (a new sum when `into` is null). */
function accumulate(into: Float32Array | null, m: Float32Array): Float32Array {
  const sum = into ?? new Float32Array(m.length);
  for (let i = 0; i < m.length; i++) sum[i] += m[i];
  return sum;
}

async function runStep(step: Step, plan: Plan, ctx: RunContext, st: State): Promise<void> {
  const c = ctx.executor.config;
  const L = plan.promptLength;
  const s = st.session;
  switch (step.op) {
    case "prefill": {
      const prompt = promptOf(plan);
      const scoreFrom = step.scoreFrom ?? L, standFrom = step.standInFrom ?? L;
      st.firstRow = scoreFrom;
      // Rows from `from` are captured; a chunk never straddles `split`, so each one is in one set or both.
      const from = Math.min(scoreFrom, standFrom), split = Math.max(scoreFrom, standFrom);
      if (from > 0) {
        await s.forward({ kind: "tokens", tokens: prompt.slice(0, from) }, {
          logits: from === L ? "last" : "none",
          between: ctx.between,
        });
      }
      // Scoring rows run in chunks: each chunk's queries see the cache up to themselves (causal).
      for (let at = from; at < L;) {
        const end = Math.min(at + step.chunk, at < split ? split : L);
        const r = await s.forward({ kind: "tokens", tokens: prompt.slice(at, end) }, {
          logits: end === L ? "last" : "none",
          captureQueries: true,
          between: ctx.between,
        });
        if (end < L) await ctx.between?.();
        const m = await massOf(st, r.queries!, L);
        if (at >= scoreFrom) st.mass = accumulate(st.mass, m);
        if (at >= standFrom) st.standIn = accumulate(st.standIn, m);
        at = end;
      }
      return;
    }
    case "append_soft": {
      const rows = softRows(
        step.randomSoft,
        ctx.softEmbeddings,
        () => randomSoftTokens(ctx.tokenEmbeddings, c.dim, step.count, step.seed),
      );
      st.mass = accumulate(st.mass, await softPass(s, rows, step.count));
      return;
    }
    case "lookahead": {
      // Draft: a SnapKV-compressed copy decodes pseudo tokens; their queries score the full prompt.
      const draft = await s.clone();
      try {
        const o = plan.options!;
        const scores = METHODS.snapkv.score({
          config: c,
          length: L,
          mass: st.mass,
          firstRow: st.firstRow,
          keyNorms: null,
        }, o);
        const kept = topPerHead(scores, c.nLayers, c.nKvHeads, L, () => step.draftBudget, step.draftWindow);
        await draft.keepPositions(kept, L);
        const d = await draft.decode({
          maxTokens: step.tokens,
          sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
          stopTokenIds: [],
          captureQueries: true,
        });
        st.syncs += d.syncs;
        // The last pseudo token is sampled but never run, so it has no query; the rows that ran do.
        if (d.queries && d.queries.positions.length > 0) {
          st.mass = accumulate(st.mass, await massOf(st, d.queries, L));
        }
      } finally {
        draft.dispose();
      }
      return;
    }
    case "key_norms":
      st.keyNorms = await s.keyNorms(L);
      return;
    case "score":
      st.scores = METHODS[step.method].score(
        { config: c, length: L, mass: st.mass, firstRow: st.firstRow, keyNorms: st.keyNorms },
        step.options,
      );
      return;
    case "select": {
      const scores = st.scores!;
      if (step.allocation === "uniform") {
        st.kept = topPerHead(scores, c.nLayers, c.nKvHeads, L, () => step.budget, step.window);
      } else if (step.allocation === "pyramid") {
        const budgets = pyramidBudgets(c.nLayers, L, step.budget, step.window, step.beta);
        st.kept = topPerHead(scores, c.nLayers, c.nKvHeads, L, (l) => budgets[l], step.window);
      } else {
        st.kept = Array.from(
          { length: c.nLayers },
          (_, l) =>
            adaptiveSelect(scores, l * c.nKvHeads * L, c.nKvHeads, L, step.budget, step.window, step.floor),
        );
      }
      return;
    }
    case "prune":
      await s.keepPositions(st.kept!, L);
      st.kvBytesAfter = s.kvBytes();
      return;
    case "bound_decode": {
      const b = step.compression;
      st.bounded = b;
      st.decodeStats = {
        method: b.method,
        budget: b.budget,
        fraction: b.fraction,
        interval: b.interval,
        buffer: b.buffer,
        events: [],
        kvBytesEnd: [],
      };
      return;
    }
    case "decode": {
      if (st.bounded) {
        await decodeBounded(s, step.decode, null, ctx, st);
        return;
      }
      const d = await s.decode({
        ...step.decode,
        onTokens: ctx.onTokens ? (ids) => ctx.onTokens!(0, ids) : undefined,
        signal: ctx.signal,
      });
      st.syncs += d.syncs;
      st.outputs.push({ tokens: d.tokens, finishReason: d.finishReason });
      return;
    }
    case "answer": {
      if (st.bounded) {
        // Pruning reaches into the context, so the answer runs on a copy: the context stays as it was.
        const copy = await s.clone();
        try {
          await decodeBounded(copy, step.decode, step.question, ctx, st);
        } finally {
          copy.dispose();
        }
        return;
      }
      const index = st.outputs.length;
      const mark = s.mark();
      let d: DecodeResult;
      try {
        await s.forward({ kind: "tokens", tokens: step.question }, { logits: "last" });
        d = await s.decode({
          ...step.decode,
          onTokens: ctx.onTokens ? (ids) => ctx.onTokens!(index, ids) : undefined,
          signal: ctx.signal,
        });
      } finally {
        // Whatever happened (a hook that threw, a time limit), the context is left as it was.
        await s.rewind(mark);
      }
      st.syncs += d.syncs;
      st.outputs.push({ tokens: d.tokens, finishReason: d.finishReason });
      return;
    }
  }
}

/** A decode (after a question, if any) with the cache bounded by the plan's decode-time compression. */
async function decodeBounded(
  s: KvSession,
  decode: DecodeSpec,
  question: number[] | null,
  ctx: RunContext,
  st: State,
) {
  const index = st.outputs.length, b = st.bounded!;
  const c = ctx.executor.config;
  let rows: QueryRows | null = null;
  if (question) {
    const r = await s.forward({ kind: "tokens", tokens: question }, { logits: "last", captureQueries: true });
    rows = r.queries;
  }
  const d = await boundedDecode(s, decode, b, {
    softEmbeddings: ctx.softEmbeddings,
    promptMass: question ? null : st.standIn,
    randomSoft: () => randomSoftTokens(ctx.tokenEmbeddings, c.dim, b.softCount, b.options.seed),
    onTokens: ctx.onTokens ? (ids) => ctx.onTokens!(index, ids) : undefined,
    signal: ctx.signal,
    onBoundary: ctx.onDecodeBoundary,
  }, rows);
  st.syncs += d.syncs;
  st.outputs.push({ tokens: d.tokens, finishReason: d.finishReason });
  st.decodeStats!.events.push(...d.events.map((e) => ({ output: index, ...e })));
  st.decodeStats!.kvBytesEnd.push(d.kvBytesEnd);
}
