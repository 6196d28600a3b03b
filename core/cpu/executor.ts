/**
 * The CPU reference executor: the whole forward pass, one row at a time, top to bottom (as llama2.c's
 * run.c). It is the oracle the WebGPU executor and every scorer are checked against.
 */
import { type ModelConfig, ropeInverseFrequencies } from "../config.ts";
import { checkSnapshot } from "../cache_snapshot.ts";
import type {
  CacheMark,
  CacheSnapshot,
  DecodeOptions,
  DecodeResult,
  Executor,
  ForwardInput,
  ForwardOptions,
  ForwardResult,
  KvSession,
  QueryRows,
} from "../executor.ts";
import { FORWARD_CHUNK_ROWS } from "../executor.ts";
import { decodeTokens } from "../decode_loop.ts";
import type { ModelWeights } from "../weights.ts";
import { CpuKvCache } from "./kv_cache.ts";
import { applyRope, matvec, rmsNorm, silu, softmax } from "./ops.ts";

/** Queries of captured rows: [row][layer][nHeads * headDim]. */
class CpuQueryRows implements QueryRows {
  constructor(readonly positions: number[], readonly data: Float32Array[]) {}
  dispose() {}
}

/**
 * Scratch buffers for one row. One set per model, shared by its sessions: a forward pass runs to its end
 * without yielding, so no two passes use them at once, and a kept session holds no scratch.
 */
class Scratch {
  x: Float32Array;
  xb: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  att: Float64Array;
  attOut: Float32Array;
  gate: Float32Array;
  up: Float32Array;
  constructor(c: ModelConfig) {
    this.x = new Float32Array(c.dim);
    this.xb = new Float32Array(c.dim);
    this.q = new Float32Array(c.nHeads * c.headDim);
    this.k = new Float32Array(c.nKvHeads * c.headDim);
    this.v = new Float32Array(c.nKvHeads * c.headDim);
    this.att = new Float64Array(0);
    this.attOut = new Float32Array(c.nHeads * c.headDim);
    this.gate = new Float32Array(c.hiddenDim);
    this.up = new Float32Array(c.hiddenDim);
  }

  /** Room for attention over `entries` cached entries. */
  fit(entries: number) {
    if (this.att.length < entries) this.att = new Float64Array(Math.max(entries, this.att.length * 2));
  }
}

const scratchOfModel = new WeakMap<ModelWeights, Scratch>();
const scratchFor = (w: ModelWeights): Scratch => {
  let s = scratchOfModel.get(w);
  if (!s) scratchOfModel.set(w, s = new Scratch(w.config));
  return s;
};

export class CpuSession implements KvSession {
  readonly config: ModelConfig;
  nextPosition = 0;
  private logits: Float32Array | null = null;
  private readonly invFreq: Float64Array;
  private readonly s: Scratch;

  constructor(readonly weights: ModelWeights, readonly cache: CpuKvCache) {
    this.config = weights.config;
    this.invFreq = ropeInverseFrequencies(this.config);
    this.s = scratchFor(weights);
  }

  async forward(input: ForwardInput, options: ForwardOptions = {}): Promise<ForwardResult> {
    const c = this.config;
    const rows = input.kind === "tokens" ? input.tokens.length : input.count;
    const want = options.logits ?? "last";
    const all = want === "all" ? new Float32Array(rows * c.vocabSize) : null;
    const positions: number[] = [];
    const queries: Float32Array[] = [];
    this.cache.reserve(rows);
    this.s.fit(Math.max(...this.cache.counts) + rows);
    for (let r = 0; r < rows; r++) {
      if (input.kind === "tokens") {
        const t = input.tokens[r];
        if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) {
          throw new RangeError(`token id ${t} out of range`);
        }
        this.s.x.set(this.weights.embed.subarray(t * c.dim, (t + 1) * c.dim));
      } else {
        this.s.x.set(input.rows.subarray(r * c.dim, (r + 1) * c.dim));
      }
      const q = options.captureQueries ? new Float32Array(c.nLayers * c.nHeads * c.headDim) : null;
      const needLogits = want === "all" || (want === "last" && r === rows - 1);
      const logits = this.row(this.nextPosition, q, needLogits);
      if (all && logits) all.set(logits, r * c.vocabSize);
      if (logits && r === rows - 1) this.logits = logits;
      if (q) {
        positions.push(this.nextPosition);
        queries.push(q);
      }
      this.nextPosition++;
      if (options.between && (r + 1) % FORWARD_CHUNK_ROWS === 0 && r + 1 < rows) await options.between();
    }
    return Promise.resolve({
      logits: want === "all" ? all : want === "last" ? this.logits : null,
      queries: options.captureQueries ? new CpuQueryRows(positions, queries) : null,
    });
  }

  /** One transformer pass for the row in `s.x` at `pos`; appends its K/V; returns logits if asked. */
  private row(pos: number, capturedQ: Float32Array | null, wantLogits: boolean): Float32Array | null {
    const c = this.config, w = this.weights, s = this.s, hd = c.headDim;
    const group = c.nHeads / c.nKvHeads;
    const scale = 1 / Math.sqrt(hd);
    for (let l = 0; l < c.nLayers; l++) {
      const lw = w.layers[l];
      // Attention: normalise, project, rotate, cache K/V, attend over each KV head's own entries.
      rmsNorm(s.xb, s.x, lw.attnNorm, c.rmsNormEps);
      matvec(s.q, lw.wq, s.xb, c.nHeads * hd, c.dim, lw.bq);
      matvec(s.k, lw.wk, s.xb, c.nKvHeads * hd, c.dim, lw.bk);
      matvec(s.v, lw.wv, s.xb, c.nKvHeads * hd, c.dim, lw.bv);
      applyRope(s.q, c.nHeads, hd, pos, this.invFreq);
      applyRope(s.k, c.nKvHeads, hd, pos, this.invFreq);
      if (capturedQ) capturedQ.set(s.q, l * c.nHeads * hd);
      for (let g = 0; g < c.nKvHeads; g++) {
        this.cache.append(l, g, pos, s.k.subarray(g * hd, (g + 1) * hd), s.v.subarray(g * hd, (g + 1) * hd));
      }
      for (let h = 0; h < c.nHeads; h++) {
        const slot = this.cache.slot(l, Math.floor(h / group));
        const keys = this.cache.keys[slot], values = this.cache.values[slot];
        const n = this.cache.counts[slot];
        const qo = h * hd;
        for (let t = 0; t < n; t++) {
          let dot = 0;
          for (let i = 0; i < hd; i++) dot += s.q[qo + i] * keys[t * hd + i];
          s.att[t] = dot * scale;
        }
        softmax(s.att, n);
        for (let i = 0; i < hd; i++) {
          let acc = 0;
          for (let t = 0; t < n; t++) acc += s.att[t] * values[t * hd + i];
          s.attOut[qo + i] = acc;
        }
      }
      matvec(s.xb, lw.wo, s.attOut, c.dim, c.nHeads * hd);
      for (let i = 0; i < c.dim; i++) s.x[i] += s.xb[i];
      // SwiGLU MLP.
      rmsNorm(s.xb, s.x, lw.mlpNorm, c.rmsNormEps);
      matvec(s.gate, lw.wGate, s.xb, c.hiddenDim, c.dim);
      matvec(s.up, lw.wUp, s.xb, c.hiddenDim, c.dim);
      for (let i = 0; i < c.hiddenDim; i++) s.gate[i] = silu(s.gate[i]) * s.up[i];
      matvec(s.xb, lw.wDown, s.gate, c.dim, c.hiddenDim);
      for (let i = 0; i < c.dim; i++) s.x[i] += s.xb[i];
    }
    if (!wantLogits) return null;
    rmsNorm(s.xb, s.x, w.finalNorm, c.rmsNormEps);
    const logits = new Float32Array(c.vocabSize);
    matvec(logits, w.lmHead, s.xb, c.vocabSize, c.dim);
    return logits;
  }

  attentionMass(queries: QueryRows, promptLength: number): Promise<Float32Array> {
    const c = this.config, hd = c.headDim, group = c.nHeads / c.nKvHeads;
    const rows = queries as CpuQueryRows;
    const out = new Float32Array(c.nLayers * c.nHeads * promptLength);
    const acc = new Float64Array(out.length);
    const scale = 1 / Math.sqrt(hd);
    const att = new Float64Array(Math.max(0, ...this.cache.counts));
    for (let r = 0; r < rows.positions.length; r++) {
      const pos = rows.positions[r], q = rows.data[r];
      for (let l = 0; l < c.nLayers; l++) {
        for (let h = 0; h < c.nHeads; h++) {
          const slot = this.cache.slot(l, Math.floor(h / group));
          const keys = this.cache.keys[slot], kpos = this.cache.positions[slot];
          const n = this.cache.counts[slot];
          const qo = (l * c.nHeads + h) * hd;
          // Causal: the row sees every entry at a position up to its own.
          let seen = 0;
          for (let t = 0; t < n; t++) {
            if (kpos[t] > pos) break;
            let dot = 0;
            for (let i = 0; i < hd; i++) dot += q[qo + i] * keys[t * hd + i];
            att[t] = dot * scale;
            seen++;
          }
          softmax(att, seen);
          const base = (l * c.nHeads + h) * promptLength;
          for (let t = 0; t < seen; t++) if (kpos[t] < promptLength) acc[base + kpos[t]] += att[t];
        }
      }
    }
    out.set(acc);
    return Promise.resolve(out);
  }

  keyNorms(promptLength: number): Promise<Float32Array> {
    const c = this.config, hd = c.headDim;
    const out = new Float32Array(c.nLayers * c.nKvHeads * promptLength);
    for (let l = 0; l < c.nLayers; l++) {
      for (let g = 0; g < c.nKvHeads; g++) {
        const slot = this.cache.slot(l, g);
        const keys = this.cache.keys[slot], kpos = this.cache.positions[slot];
        for (let t = 0; t < this.cache.counts[slot]; t++) {
          if (kpos[t] >= promptLength) continue;
          let ss = 0;
          for (let i = 0; i < hd; i++) ss += keys[t * hd + i] ** 2;
          out[slot * promptLength + kpos[t]] = Math.sqrt(ss);
        }
      }
    }
    return Promise.resolve(out);
  }

  keepPositions(kept: Int32Array[][], promptLength: number): Promise<void> {
    for (let l = 0; l < this.config.nLayers; l++) {
      for (let g = 0; g < this.config.nKvHeads; g++) {
        const keep = new Set(kept[l][g]);
        this.cache.filter(l, g, (p) => p >= promptLength || keep.has(p));
      }
    }
    this.cache.trim();
    return Promise.resolve();
  }

  truncateFrom(position: number): Promise<void> {
    for (let l = 0; l < this.config.nLayers; l++) {
      for (let g = 0; g < this.config.nKvHeads; g++) this.cache.filter(l, g, (p) => p < position);
    }
    this.cache.trim();
    this.nextPosition = position;
    return Promise.resolve();
  }

  mark(): CacheMark {
    return { counts: this.cache.counts.slice(), nextPosition: this.nextPosition };
  }

  rewind(mark: CacheMark): Promise<void> {
    // Entries are only ever appended after a mark, so restoring the counts restores the cache.
    for (let s = 0; s < mark.counts.length; s++) {
      if (mark.counts[s] > this.cache.counts[s]) throw new Error("rewind: cache was pruned after the mark");
    }
    this.cache.counts.set(mark.counts);
    this.cache.trim();
    this.nextPosition = mark.nextPosition;
    return Promise.resolve();
  }

  decode(o: DecodeOptions): Promise<DecodeResult> {
    if (!this.logits) throw new Error("decode: no current logits (run a forward pass first)");
    return decodeTokens(o, {
      logits: () => this.logits!,
      feed: async (token, captureQueries) =>
        (await this.forward({ kind: "tokens", tokens: [token] }, { logits: "last", captureQueries })).queries,
    }, (rows) =>
      new CpuQueryRows(
        rows.flatMap((r) => r.positions),
        rows.flatMap((r) => (r as CpuQueryRows).data),
      ));
  }

  currentLogits(): Promise<Float32Array> {
    if (!this.logits) return Promise.reject(new Error("no current logits"));
    return Promise.resolve(this.logits);
  }

  positions(): Promise<Int32Array[][]> {
    const c = this.config;
    return Promise.resolve(
      Array.from({ length: c.nLayers }, (_, l) =>
        Array.from({ length: c.nKvHeads }, (_, g) => {
          const s = this.cache.slot(l, g);
          return this.cache.positions[s].slice(0, this.cache.counts[s]);
        })),
    );
  }

  kvBytes(): number {
    return this.cache.entries() * this.config.headDim * 2 * 4;
  }

  allocatedBytes(): number {
    return this.cache.allocatedBytes() + (this.logits?.byteLength ?? 0);
  }

  reserveRoom(rows: number): Promise<void> {
    this.cache.reserveExact(rows);
    return Promise.resolve();
  }

  clone(): Promise<KvSession> {
    const copy = new CpuSession(this.weights, this.cache.clone());
    copy.nextPosition = this.nextPosition;
    copy.logits = this.logits;
    return Promise.resolve(copy);
  }

  exportCache(): Promise<CacheSnapshot> {
    const c = this.config, hd = c.headDim, cache = this.cache, n = cache.counts;
    return Promise.resolve({
      nLayers: c.nLayers,
      nKvHeads: c.nKvHeads,
      headDim: hd,
      nextPosition: this.nextPosition,
      positions: cache.positions.map((p, s) => p.slice(0, n[s])),
      keys: cache.keys.map((k, s) => k.slice(0, n[s] * hd)),
      values: cache.values.map((v, s) => v.slice(0, n[s] * hd)),
      logits: this.logits ? this.logits.slice() : null,
    });
  }

  /** A session holding `snap` (checked by the executor). */
  static restore(weights: ModelWeights, snap: CacheSnapshot, capacity: number): CpuSession {
    const cache = CpuKvCache.fromSnapshot(snap, capacity);
    const session = new CpuSession(weights, cache);
    session.nextPosition = snap.nextPosition;
    session.logits = snap.logits ? snap.logits.slice() : null;
    return session;
  }

  dispose() {}
}

export class CpuExecutor implements Executor {
  readonly kind = "cpu" as const;
  readonly config: ModelConfig;
  readonly description = "CPU reference (TypeScript, float32 weights, float64 accumulation)";
  constructor(readonly weights: ModelWeights) {
    this.config = weights.config;
  }
  createSession(capacity: number): CpuSession {
    const c = this.config;
    return new CpuSession(this.weights, new CpuKvCache(c.nLayers, c.nKvHeads, c.headDim, capacity));
  }
  restoreSession(snapshot: CacheSnapshot, capacity: number): Promise<KvSession> {
    checkSnapshot(snapshot, this.config, capacity);
    return Promise.resolve(CpuSession.restore(this.weights, snapshot, capacity));
  }
  dispose() {}
}
