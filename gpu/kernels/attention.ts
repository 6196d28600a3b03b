/**
 * Causal attention over each KV head's own entry list. Entries are kept in position order and every new
 * row is newer than all cached entries, so "positions <= the row's" is "the first count + step + r + 1
 * entries". Both kernels use the online (flash) softmax: no score matrix is ever stored.
 *  - rows: one invocation per (row, head), for prefill; adjacent invocations are adjacent rows of one
 *    head, so they read the same K/V entries (broadcast loads).
 *  - partial + combine: for decode (few rows, long caches) the entries of each (row, head) are split
 *    over invocations that each keep a partial softmax state, merged by a second small dispatch.
 */
import { chunkInfo, type KernelDef, params, read, write } from "../pipelines.ts";
import { rep } from "./common.ts";

export interface AttentionSpec {
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  workgroup: number;
}

/** Params, the layer's static record, Q, the KV cache and its metadata; then the kernel's outputs. */
const inputs = () => [
  params(),
  chunkInfo(),
  read("Q", "vec4<f32>"),
  read("KC", "vec4<f32>"),
  read("VC", "vec4<f32>"),
  read("META", "u32"),
];

const constants = (s: AttentionSpec) =>
  `const SCALE = ${1 / Math.sqrt(s.headDim)};
const NEG = -3.0e38;`;

export function attentionRows(s: AttentionSpec): KernelDef {
  const h4 = s.headDim / 4, group = s.nHeads / s.nKvHeads, q4 = (s.nHeads * s.headDim) / 4;
  const bindings = [...inputs(), write("OUT", "vec4<f32>")];
  return {
    name: "attn_rows",
    bindings,
    workgroupSize: s.workgroup,
    body: `${constants(s)}
@compute @workgroup_size(${s.workgroup})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x;
  let h = gid.y;
  if (r >= P.rows) { return; }
  let slot = S.layer * ${s.nKvHeads}u + h / ${group}u;
  let base = META[2u * slot];
  let n = META[2u * slot + 1u] + P.step + r + 1u;
  let qo = r * ${q4}u + h * ${h4}u;
  ${rep(h4, (j) => `let q${j} = Q[qo + ${j}u] * SCALE;`, "\n  ")}
  var m = NEG;
  var l = 0.0;
  ${rep(h4, (j) => `var o${j} = vec4<f32>(0.0);`, "\n  ")}
  for (var t = 0u; t < n; t++) {
    let e = (base + t) * ${h4}u;
    let sc = ${rep(h4, (j) => `dot(q${j}, KC[e + ${j}u])`, " + ")};
    if (sc > m) {
      let c = exp(m - sc);
      l *= c;
      ${rep(h4, (j) => `o${j} *= c;`, " ")}
      m = sc;
    }
    let p = exp(sc - m);
    l += p;
    ${rep(h4, (j) => `o${j} += p * VC[e + ${j}u];`, "\n    ")}
  }
  let inv = 1.0 / l;
  ${rep(h4, (j) => `OUT[qo + ${j}u] = o${j} * inv;`, "\n  ")}
}`,
  };
}

/** Most entry splits of the decode attention (P.a holds the count used). */
export const MAX_SPLITS = 64;

/**
 * Decode attention, pass 1: invocation (head h, split j; row r) runs the online softmax over its
 * contiguous share of the row's entries and stores the partial state (max, sum, weighted values).
 * llvmpipe pays dearly for workgroup barriers, so the merge is a second, tiny dispatch.
 */
export function attentionPartial(s: AttentionSpec): KernelDef {
  const h4 = s.headDim / 4, G = s.nHeads / s.nKvHeads, q4 = (s.nHeads * s.headDim) / 4;
  // One invocation serves the G query heads of a KV head: each K/V entry is loaded once for all of
  // them (loads are what llvmpipe pays for; the accumulators spill to contiguous stack instead).
  const heads = (fn: (a: number) => string, sep = "\n  ") => rep(G, fn, sep);
  const bindings = [...inputs(), write("PML", "vec2<f32>"), write("PO", "vec4<f32>")];
  return {
    name: "attn_partial",
    bindings,
    workgroupSize: s.workgroup,
    body: `${constants(s)}
@compute @workgroup_size(${s.workgroup})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  // Flattened (KV head, split): few, full workgroups (llvmpipe pays per workgroup).
  let splits = P.a;
  let g = gid.x / splits;
  let j = gid.x % splits;
  let r = gid.y;
  if (g >= ${s.nKvHeads}u || r >= P.rows) { return; }
  let slot = S.layer * ${s.nKvHeads}u + g;
  let base = META[2u * slot];
  let n = META[2u * slot + 1u] + P.step + r + 1u;
  let len = (n + splits - 1u) / splits;
  let t0 = min(n, j * len);
  let t1 = min(n, t0 + len);
  let qo = r * ${q4}u + g * ${G * h4}u;
  ${rep(G * h4, (i) => `let q${i} = Q[qo + ${i}u] * SCALE; var o${i} = vec4<f32>(0.0);`, "\n  ")}
  ${heads((a) => `var m${a} = -3.0e38; var l${a} = 0.0;`)}
  for (var t = t0; t < t1; t++) {
    let e = (base + t) * ${h4}u;
    ${rep(h4, (i) => `let k${i} = KC[e + ${i}u];`, "\n    ")}
    ${
      heads((a) =>
        `let s${a} = ${rep(h4, (i) => `dot(q${a * h4 + i}, k${i})`, " + ")};
    let n${a} = max(m${a}, s${a});
    let c${a} = exp(m${a} - n${a});
    let p${a} = exp(s${a} - n${a});
    l${a} = l${a} * c${a} + p${a};
    m${a} = n${a};`, "\n    ")
    }
    ${
      rep(
        h4,
        (i) =>
          `{ let v = VC[e + ${i}u]; ${
            heads((a) => `o${a * h4 + i} = o${a * h4 + i} * c${a} + p${a} * v;`, " ")
          } }`,
        "\n    ",
      )
    }
  }
  ${
      heads((a) =>
        `{
    let at = (r * ${s.nHeads}u + g * ${G}u + ${a}u) * splits + j;
    PML[at] = vec2<f32>(m${a}, l${a});
    ${rep(h4, (i) => `PO[at * ${h4}u + ${i}u] = o${a * h4 + i};`, " ")}
  }`
      )
    }
}`,
  };
}

/** Decode attention, pass 2: invocation (vec4 d of head h, row r) merges the splits' states. */
export function attentionCombine(s: AttentionSpec): KernelDef {
  const h4 = s.headDim / 4, q4 = (s.nHeads * s.headDim) / 4;
  const bindings = [params(), read("PML", "vec2<f32>"), read("PO", "vec4<f32>"), write("OUT", "vec4<f32>")];
  return {
    name: "attn_combine",
    bindings,
    workgroupSize: s.workgroup,
    body: `@compute @workgroup_size(${s.workgroup})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  let r = gid.y;
  if (i >= ${s.nHeads * h4}u || r >= P.rows) { return; }
  let h = i / ${h4}u;
  let d = i % ${h4}u;
  let splits = P.a;
  let first = (r * ${s.nHeads}u + h) * splits;
  var mx = -3.0e38;
  for (var j = 0u; j < splits; j++) { mx = max(mx, PML[first + j].x); }
  var lt = 0.0;
  var acc = vec4<f32>(0.0);
  for (var j = 0u; j < splits; j++) {
    let ml = PML[first + j];
    let c = exp(ml.x - mx);
    lt += ml.y * c;
    acc += PO[(first + j) * ${h4}u + d] * c;
  }
  OUT[r * ${q4}u + i] = acc / lt;
}`,
  };
}
