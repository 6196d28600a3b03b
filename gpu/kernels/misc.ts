/**
 * Small kernels: embedding gather, greedy argmax, KV compaction gather, key norms and attention mass.
 */
import { chunkInfo, type KernelDef, params, read, write } from "../pipelines.ts";
import { f, rep } from "./common.ts";

/** x[r][d] = embed[token_r][d], reading one chunk of the transposed, blocked table (see weights.ts). */
export function embed(dim: number, workgroup: number, f16 = false): KernelDef {
  // f16: the half at weights.ts `packedIndex(c, d, dim)`, two halves per u32 word.
  const load = f16
    ? `let cc = c & 31u;
    let word = (((c >> 5u) * ${
      dim / 2
    }u + (d >> 1u)) * 8u + (cc >> 2u)) * 4u + (d & 1u) * 2u + ((cc & 3u) >> 1u);
    let v = unpack2x16float(E[word]);
    X[r * ${dim}u + d] = select(v.x, v.y, (cc & 1u) == 1u);`
    : `X[r * ${dim}u + d] = E[((c >> 5u) * ${dim}u + d) * 32u + (c & 31u)];`;
  const bindings = [params(), chunkInfo(), read("E", f16 ? "u32" : "f32"), read("TOK", "u32"), write("X")];
  return {
    name: "embed",
    bindings,
    workgroupSize: workgroup,
    body: `@compute @workgroup_size(${workgroup})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let d = gid.x;
  let r = gid.y;
  if (d >= ${dim}u || r >= P.rows) { return; }
  let t = TOK[P.step + r];
  let nc = 4u * S.n4;
  if (t >= S.nOff && t < S.nOff + nc) {
    let c = t - S.nOff;
    ${load}
  }
}`,
  };
}

/**
 * XN[r] = RMSNorm(X[r]) * G for rows rowStart .. rowStart + rows - 1, one workgroup per row. Each
 * invocation sums the squares itself (no workgroup barrier: slow on llvmpipe) and writes its share;
 * the executor uses 8 invocations, one llvmpipe SIMD group, which loads a row as cheaply as one lane.
 * Used before the projections of wide models, so that their thousands of invocations stop recomputing
 * the norm (see executor.ts `separateNorm`).
 */
export function rmsNorm(dim: number, eps: number, workgroup: number): KernelDef {
  const d4 = dim / 4;
  const bindings = [params(), read("X", "vec4<f32>"), read("G", "vec4<f32>"), write("XN", "vec4<f32>")];
  return {
    name: "rms_norm",
    bindings,
    workgroupSize: workgroup,
    body: `@compute @workgroup_size(${workgroup})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  if (wid.x >= P.rows) { return; }
  let base = (P.rowStart + wid.x) * ${d4}u;
  var ss = 0.0;
  for (var k = 0u; k < ${d4}u; k++) { let v = X[base + k]; ss += dot(v, v); }
  let sc = inverseSqrt(ss / ${f(dim)} + ${f(eps)});
  for (var k = li; k < ${d4}u; k += ${workgroup}u) { XN[base + k] = X[base + k] * sc * G[k]; }
}`,
  };
}

/** Greedy sampling: the first index of the largest logit of row inRow, written to TOK[step]. */
export function argmax(vocab: number, wg = 256): KernelDef {
  const bindings = [params(), read("L"), write("TOK", "u32")];
  return {
    name: "argmax",
    bindings,
    workgroupSize: wg,
    body: `var<workgroup> BV: array<f32, ${wg}>;
var<workgroup> BI: array<u32, ${wg}>;
@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) li: u32) {
  let base = P.inRow * ${vocab}u;
  var bv = -3.4e38;
  var bi = 0xffffffffu;
  for (var i = li; i < ${vocab}u; i += ${wg}u) {
    let v = L[base + i];
    if (v > bv) { bv = v; bi = i; }
  }
  BV[li] = bv;
  BI[li] = bi;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (li < s) {
      let v = BV[li + s];
      let i = BI[li + s];
      if (v > BV[li] || (v == BV[li] && i < BI[li])) { BV[li] = v; BI[li] = i; }
    }
    workgroupBarrier();
  }
  if (li == 0u) { TOK[P.step] = select(BI[0], 0u, BI[0] == 0xffffffffu); }
}`,
  };
}

/** New cache layout from old: entry e of the new buffer copies old entry MAP[e] (none when ~0). */
export function kvGather(headDim: number, workgroup: number): KernelDef {
  const h4 = headDim / 4;
  const v4 = "vec4<f32>";
  const bindings = [
    params(),
    read("MAP", "u32"),
    read("KO", v4),
    read("VO", v4),
    write("KN", v4),
    write("VN", v4),
  ];
  return {
    name: "kv_gather",
    bindings,
    workgroupSize: workgroup,
    body: `@compute @workgroup_size(${workgroup})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let i = gid.y * nw.x * ${workgroup}u + gid.x;
  let e = i / ${h4}u;
  let j = i % ${h4}u;
  if (e >= P.rows) { return; }
  let src = MAP[e];
  if (src == 0xffffffffu) { return; }
  KN[e * ${h4}u + j] = KO[src * ${h4}u + j];
  VN[e * ${h4}u + j] = VO[src * ${h4}u + j];
}`,
  };
}

/** OUT[task.out] = |K[task.entry]|, for the entries at prompt positions. */
export function keyNorm(headDim: number, workgroup: number): KernelDef {
  const h4 = headDim / 4;
  const bindings = [params(), read("TASK", "vec2<u32>"), read("KC", "vec4<f32>"), write("OUT")];
  return {
    name: "key_norm",
    bindings,
    workgroupSize: workgroup,
    body: `@compute @workgroup_size(${workgroup})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x >= P.rows) { return; }
  let t = TASK[gid.x];
  var ss = 0.0;
  ${rep(h4, (j) => `{ let k = KC[t.x * ${h4}u + ${j}u]; ss += dot(k, k); }`, "\n  ")}
  OUT[t.y] = sqrt(ss);
}`,
  };
}

export interface MassSpec {
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  workgroup: number;
}

/**
 * Attention mass, pass 1: per (query row, head) the softmax maximum and normaliser over the row's
 * visible entries (VIS[slot][row] of them). P.rows = query rows, P.a = layer, P.b = captured row stride.
 */
export function massStats(s: MassSpec): KernelDef {
  const h4 = s.headDim / 4, group = s.nHeads / s.nKvHeads, q4 = (s.nHeads * s.headDim) / 4;
  const v4 = "vec4<f32>";
  const bindings = [
    params(),
    read("Q", v4),
    read("KC", v4),
    read("META", "u32"),
    read("VIS", "u32"),
    write("STATS", "vec2<f32>"),
  ];
  return {
    name: "mass_stats",
    bindings,
    workgroupSize: s.workgroup,
    body: `@compute @workgroup_size(${s.workgroup})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x;
  let h = gid.y;
  if (r >= P.rows) { return; }
  let slot = P.a * ${s.nKvHeads}u + h / ${group}u;
  let base = META[2u * slot];
  let n = VIS[slot * P.rows + r];
  let qo = (P.a * P.b + r) * ${q4}u + h * ${h4}u;
  ${rep(h4, (j) => `let q${j} = Q[qo + ${j}u] * ${1 / Math.sqrt(s.headDim)};`, "\n  ")}
  var m = -3.0e38;
  var l = 0.0;
  for (var t = 0u; t < n; t++) {
    let e = (base + t) * ${h4}u;
    let sc = ${rep(h4, (j) => `dot(q${j}, KC[e + ${j}u])`, " + ")};
    if (sc > m) { l *= exp(m - sc); m = sc; }
    l += exp(sc - m);
  }
  STATS[(P.a * ${s.nHeads}u + h) * P.rows + r] = vec2<f32>(m, l);
}`,
  };
}

/**
 * Attention mass, pass 2: per (prompt entry, head of its group) the sum over query rows that see the
 * entry of its softmax weight. TASK = (entry in layer buffer, kv head, index in head, position).
 * P.rows = tasks, P.step = query rows, P.a = layer, P.b = captured row stride, P.pos0 = prompt length.
 */
export function mass(s: MassSpec): KernelDef {
  const h4 = s.headDim / 4, group = s.nHeads / s.nKvHeads, q4 = (s.nHeads * s.headDim) / 4;
  const v4 = "vec4<f32>";
  const bindings = [
    params(),
    read("Q", v4),
    read("KC", v4),
    read("TASK", "vec4<u32>"),
    read("VIS", "u32"),
    read("STATS", "vec2<f32>"),
    write("OUT"),
  ];
  return {
    name: "mass",
    bindings,
    workgroupSize: s.workgroup,
    body: `@compute @workgroup_size(${s.workgroup})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x >= P.rows) { return; }
  let task = TASK[gid.x];
  let h = task.y * ${group}u + gid.y;
  let slot = P.a * ${s.nKvHeads}u + task.y;
  let e = task.x * ${h4}u;
  ${rep(h4, (j) => `let k${j} = KC[e + ${j}u];`, "\n  ")}
  let rows = P.step;
  var acc = 0.0;
  for (var r = 0u; r < rows; r++) {
    if (task.z >= VIS[slot * rows + r]) { continue; }
    let qo = (P.a * P.b + r) * ${q4}u + h * ${h4}u;
    let sc = ${rep(h4, (j) => `dot(Q[qo + ${j}u] * ${1 / Math.sqrt(s.headDim)}, k${j})`, " + ")};
    let st = STATS[(P.a * ${s.nHeads}u + h) * rows + r];
    acc += exp(sc - st.x) / st.y;
  }
  OUT[(P.a * ${s.nHeads}u + h) * P.pos0 + task.w] = acc;
}`,
  };
}
