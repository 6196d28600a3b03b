/**
 * Scoring the cached prompt entries on the GPU, for the compression methods: attention mass (the
 * softmax weight captured queries give each prompt entry, summed over the query rows that see it) and
 * key norms. Both build a task list of the entries at prompt positions from the cache's CPU mirror and
 * read one result array back.
 */
import { JudgeQError } from "../core/errors.ts";
import type { QueryRows } from "../core/executor.ts";
import { emptyBuffer, STORAGE } from "./buffers.ts";
import type { GpuKvCache } from "./kv_cache.ts";
import type { GpuModel } from "./model.ts";
import type { Readback } from "./readback.ts";
import type { ParamRecords } from "./recorder.ts";

/** Captured post-RoPE queries on the GPU: [layer][rowStride][nHeads * headDim]. */
export class GpuQueryRows implements QueryRows {
  private disposed = false;
  constructor(
    readonly positions: number[],
    readonly buffer: GPUBuffer | null,
    readonly rowStride: number,
    readonly owner: GpuModel,
  ) {}
  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.buffer?.destroy();
  }
}

/** What scoring reads: a session's model, cache, parameter records and readback. */
export interface ScoringHost {
  readonly model: GpuModel;
  readonly cache: GpuKvCache;
  readonly records: ParamRecords;
  readonly readback: Readback;
}

/** A storage buffer holding `data` (a per-call temporary). */
function upload(device: GPUDevice, data: Uint32Array, label: string): GPUBuffer {
  const buf = emptyBuffer(device, data.byteLength, STORAGE, label);
  device.queue.writeBuffer(buf, 0, data);
  return buf;
}

/** Attention mass per (layer, head, prompt position) of the captured queries, [nLayers][nHeads][P]. */
export async function attentionMass(h: ScoringHost, queries: QueryRows, promptLength: number) {
  if (!(queries instanceof GpuQueryRows) || queries.owner !== h.model) {
    throw new JudgeQError("invalid_request", "attentionMass: queries were not captured by this GPU executor");
  }
  const c = h.model.config, cache = h.cache, k = h.model.kernels, d = h.model.device;
  const P = promptLength, R = queries.positions.length;
  const outLen = c.nLayers * c.nHeads * P;
  if (R === 0 || P === 0 || !queries.buffer) return new Float32Array(outLen);
  cache.writeMeta();
  // Visible entries of every (slot, row): causal by position, entries being in position order.
  const vis = new Uint32Array(cache.slots * R);
  for (let s = 0; s < cache.slots; s++) {
    for (let r = 0; r < R; r++) vis[s * R + r] = cache.upperBound(s, queries.positions[r]);
  }
  const VIS = upload(d, vis, "vis");
  const STATS = emptyBuffer(d, c.nLayers * c.nHeads * R * 8, STORAGE, "stats");
  const OUT = emptyBuffer(d, outLen * 4, STORAGE, "mass");
  const temps = [VIS, STATS, OUT];
  const rec = h.records.recorder();
  rec.clear(OUT);
  const Q = queries.buffer;
  for (let l = 0; l < c.nLayers; l++) {
    const KC = cache.keys(l);
    // Pass 1: per (query row, head) the softmax maximum and normaliser.
    const so = rec.param({ rows: R, pos0: 0, step: 0, a: l, b: queries.rowStride });
    const stats = h.records.bind(k.massStats, { Q, KC, META: cache.meta, VIS, STATS });
    rec.dispatch(k.massStats, stats, so, Math.ceil(R / 64), c.nHeads);
    // Pass 2: per (prompt entry, head) the summed softmax weight.
    const tasks: number[] = [];
    cache.forEachPromptEntry(l, P, (entry, g, t, pos) => tasks.push(entry, g, t, pos));
    if (tasks.length === 0) continue;
    const TASK = upload(d, new Uint32Array(tasks), "tasks");
    temps.push(TASK);
    const n = tasks.length / 4;
    const mo = rec.param({ rows: n, pos0: P, step: R, a: l, b: queries.rowStride });
    const group = h.records.bind(k.mass, { Q, KC, TASK, VIS, STATS, OUT });
    rec.dispatch(k.mass, group, mo, Math.ceil(n / 64), c.nHeads / c.nKvHeads);
  }
  try {
    return new Float32Array(await h.readback.copy(rec, OUT, 0, outLen * 4));
  } finally {
    for (const b of temps) b.destroy();
  }
}

/** |K| per (layer, KV head, prompt position), [nLayers][nKvHeads][P] (0 where no entry is kept). */
export async function keyNorms(h: ScoringHost, promptLength: number): Promise<Float32Array> {
  const c = h.model.config, cache = h.cache, k = h.model.kernels.keyNorm, d = h.model.device;
  const P = promptLength, outLen = c.nLayers * c.nKvHeads * P;
  if (outLen === 0) return new Float32Array(0);
  const OUT = emptyBuffer(d, outLen * 4, STORAGE, "norms");
  const temps = [OUT];
  const rec = h.records.recorder();
  rec.clear(OUT);
  for (let l = 0; l < c.nLayers; l++) {
    const tasks: number[] = [];
    cache.forEachPromptEntry(l, P, (entry, _g, _t, pos, s) => tasks.push(entry, s * P + pos));
    if (tasks.length === 0) continue;
    const TASK = upload(d, new Uint32Array(tasks), "tasks");
    temps.push(TASK);
    const off = rec.param({ rows: tasks.length / 2, pos0: 0, step: 0 });
    const group = h.records.bind(k, { TASK, KC: cache.keys(l), OUT });
    rec.dispatch(k, group, off, Math.ceil(tasks.length / 2 / 64));
  }
  try {
    return new Float32Array(await h.readback.copy(rec, OUT, 0, outLen * 4));
  } finally {
    for (const b of temps) b.destroy();
  }
}
