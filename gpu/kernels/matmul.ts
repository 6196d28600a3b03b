/**
 * The projection kernel, for prefill (TR rows per invocation) and decode (TR = 1) alike.
 * Weights are stored transposed and blocked: per block of 32 output columns, [K][8 vec4] contiguous
 * (N split into chunks when a tensor exceeds the binding limit), so adjacent invocations read adjacent
 * vec4s and each SIMD group streams one contiguous region: on llvmpipe (SIMD across invocations) this
 * is the access pattern that streams memory; workgroup reductions are slow there.
 * Each invocation owns 4 output columns and TR rows. Optional fusions:
 *  - norm: RMSNorm of the input rows (each invocation sums the squares itself: no extra dispatch);
 *  - store: out row outRow + r (the LM head writes logits rows); the others write row r;
 *  - residual: out += result (o and down projections);
 *  - swiglu: two weights, out = silu(gate) * up;
 *  - qkv: bias, RoPE (columns are pre-permuted so a vec4 holds two rotated pairs) and the K/V cache write.
 */
import { type Binding, chunkInfo, type KernelDef, params, read, write } from "../pipelines.ts";
import { f, rep } from "./common.ts";

export type MatmulMode = "store" | "residual" | "swiglu" | "qkv";

export interface MatmulSpec {
  mode: MatmulMode;
  /** Input width (multiple of 4). */
  K: number;
  /** Output row stride in floats (all chunks together). */
  N: number;
  /** Rows per invocation. */
  TR: number;
  norm: boolean;
  eps: number;
  bias: boolean;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  workgroup: number;
  /** Weights as f16 pairs packed in u32 (see weights.ts `packedIndex`) instead of f32. */
  f16: boolean;
}

/**
 * Params, the chunk's static record, weights W, input rows X, output OUT; then, as the spec asks, the
 * norm's gain G, the bias, the up weights W2 (swiglu), and the KV cache, its metadata and the RoPE table
 * (qkv).
 */
function matmulBindings(s: MatmulSpec): Binding[] {
  const wElem = s.f16 ? "vec4<u32>" : "vec4<f32>";
  const b = [
    params(),
    chunkInfo(),
    read("W", wElem),
    read("X", "vec4<f32>"),
    write("OUT", s.mode === "qkv" ? "f32" : "vec4<f32>"),
  ];
  if (s.norm) b.push(read("G", "vec4<f32>"));
  if (s.bias) b.push(read("BIAS", "vec4<f32>"));
  if (s.mode === "swiglu") b.push(read("W2", wElem));
  if (s.mode === "qkv") b.push(write("KC"), write("VC"), read("META", "u32"), read("ROPE", "vec2<f32>"));
  return b;
}

export function matmul(name: string, s: MatmulSpec): KernelDef {
  const K4 = s.K / 4, TR = s.TR;
  const two = s.mode === "swiglu";
  // Input rows clamp to the last valid row so loads stay in bounds; stores are skipped for them.
  const rowsDecl = rep(TR, (i) => `let x${i} = (P.rowStart + min(r0 + ${i}u, P.rows - 1u)) * ${K4}u;`);
  const normLoop = s.norm
    ? `${rep(TR, (i) => `var ss${i} = 0.0;`)}
  for (var k = 0u; k < ${K4}u; k++) {
    ${rep(TR, (i) => `let v${i} = X[x${i} + k]; ss${i} += dot(v${i}, v${i});`, "\n    ")}
  }
  ${rep(TR, (i) => `let sc${i} = inverseSqrt(ss${i} / ${f(s.K)} + ${f(s.eps)});`, "\n  ")}`
    : rep(TR, (i) => `let sc${i} = 1.0;`);
  const mainLoop = `
  ${rep(TR, (i) => `var a${i} = vec4<f32>(0.0);${two ? ` var u${i} = vec4<f32>(0.0);` : ""}`, "\n  ")}
  // Blocked weights: 8 columns-vec4 x K rows contiguous, so each SIMD group streams one region.
  ${s.f16 ? loadF16(s.K, two) : loadF32(s.K, two)}
    ${s.norm ? "let g = G[k];" : ""}
    ${
    rep(TR, (i) =>
      `{ let v = X[x${i} + k]${s.norm ? " * g" : ""};
      a${i} += w0 * v.x + w1 * v.y + w2 * v.z + w3 * v.w;${
        two ? `\n      u${i} += q0 * v.x + q1 * v.y + q2 * v.z + q3 * v.w;` : ""
      } }`, "\n    ")
  }
    wb += ${s.f16 ? 16 : 32}u;
  }`;
  const epilogue = epilogueWgsl(s);
  const body = `${s.f16 ? UNPACK_WGSL : ""}
${s.mode === "qkv" ? qkvStoreWgsl(s) : ""}
@compute @workgroup_size(${s.workgroup})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  // Workgroups go over row groups first: consecutive ones reuse the same weight columns from cache.
  let c4 = wid.y * ${s.workgroup}u + li;
  let r0 = wid.x * ${TR}u;
  if (c4 >= S.n4 || r0 >= P.rows) { return; }
  ${rowsDecl}
  ${normLoop}
  ${mainLoop}
  ${epilogue}
}
`;
  return { name, bindings: matmulBindings(s), body, workgroupSize: s.workgroup };
}

/** Per row: the result (scaled by the row's norm, plus the bias) stored as the mode asks. */
function epilogueWgsl(s: MatmulSpec): string {
  const N4 = s.N / 4;
  const n = "S.nOff + 4u * c4";
  return rep(s.TR, (i) => {
    const r = `(r0 + ${i}u)`;
    const y = `a${i} * sc${i}${s.bias ? " + BIAS[(S.nOff / 4u) + c4]" : ""}`;
    let body: string;
    switch (s.mode) {
      case "store":
        body = `OUT[(P.outRow + ${r}) * ${N4}u + S.nOff / 4u + c4] = ${y};`;
        break;
      case "residual":
        body = `let o = ${r} * ${N4}u + S.nOff / 4u + c4; OUT[o] = OUT[o] + ${y};`;
        break;
      case "swiglu":
        body = `let gt = ${y}; let up = u${i} * sc${i};
      OUT[${r} * ${N4}u + S.nOff / 4u + c4] = gt / (vec4<f32>(1.0) + exp(-gt)) * up;`;
        break;
      case "qkv":
        body = `qkvStore(${r}, ${n}, ${y});`;
        break;
    }
    return `if (${r} < P.rows) { ${body} }`;
  }, "\n  ");
}

/**
 * The QKV epilogue: output column n of row r is a query (RoPE, to OUT), a key (RoPE, appended to its
 * head's cache segment) or a value (appended).
 */
function qkvStoreWgsl(s: MatmulSpec): string {
  const hd = s.headDim, half = hd / 2, qd = s.nHeads * hd, kd = s.nKvHeads * hd;
  return `fn qkvStore(r: u32, n: u32, y: vec4<f32>) {
  let pos = P.pos0 + r;
  if (n < ${qd + kd}u) {
    let isK = n >= ${qd}u;
    let local = select(n, n - ${qd}u, isK);
    let head = local / ${hd}u;
    let i0 = 2u * ((local % ${hd}u) / 4u);
    // y = (x[i0], x[i0+1], x[i0+half], x[i0+1+half]): rotate both pairs ("rotate half").
    let c0 = ROPE[pos * ${half}u + i0];
    let c1 = ROPE[pos * ${half}u + i0 + 1u];
    let o0 = y.x * c0.x - y.z * c0.y;
    let o2 = y.x * c0.y + y.z * c0.x;
    let o1 = y.y * c1.x - y.w * c1.y;
    let o3 = y.y * c1.y + y.w * c1.x;
    if (!isK) {
      let base = r * ${qd}u + head * ${hd}u + i0;
      OUT[base] = o0; OUT[base + 1u] = o1; OUT[base + ${half}u] = o2; OUT[base + ${half + 1}u] = o3;
    } else {
      let slot = S.layer * ${s.nKvHeads}u + head;
      let base = (META[2u * slot] + META[2u * slot + 1u] + P.step + r) * ${hd}u + i0;
      KC[base] = o0; KC[base + 1u] = o1; KC[base + ${half}u] = o2; KC[base + ${half + 1}u] = o3;
    }
  } else {
    let local = n - ${qd + kd}u;
    let head = local / ${hd}u;
    let slot = S.layer * ${s.nKvHeads}u + head;
    let base = (META[2u * slot] + META[2u * slot + 1u] + P.step + r) * ${hd}u + local % ${hd}u;
    VC[base] = y.x; VC[base + 1u] = y.y; VC[base + 2u] = y.z; VC[base + 3u] = y.w;
  }
}`;
}

/** Four columns of one input row from two packed words. */
export const UNPACK_WGSL = `
fn unpack4(u: vec2<u32>) -> vec4<f32> { return vec4<f32>(unpack2x16float(u.x), unpack2x16float(u.y)); }`;

/** Loop head for f32 blocks: per block of 32 columns, [K][8 vec4]; 4 loads give 4 rows of 4 columns. */
function loadF32(K: number, two: boolean): string {
  return `var wb = (c4 >> 3u) * ${K * 8}u + (c4 & 7u);
  for (var k = 0u; k < ${K / 4}u; k++) {
    let w0 = W[wb]; let w1 = W[wb + 8u]; let w2 = W[wb + 16u]; let w3 = W[wb + 24u];
    ${two ? "let q0 = W2[wb]; let q1 = W2[wb + 8u]; let q2 = W2[wb + 16u]; let q3 = W2[wb + 24u];" : ""}`;
}

/** Loop head for packed f16 blocks: per block, [K/2][8 vec4<u32>]; 2 loads give 4 rows of 4 columns. */
function loadF16(K: number, two: boolean): string {
  const pair = (a: string, v: string, i: number) =>
    `let ${v}${i} = ${a}[wb + ${
      8 * i
    }u]; let ${v}0${i} = unpack4(${v}${i}.xy); let ${v}1${i} = unpack4(${v}${i}.zw);`;
  return `var wb = (c4 >> 3u) * ${K * 4}u + (c4 & 7u);
  for (var k = 0u; k < ${K / 4}u; k++) {
    ${pair("W", "p", 0)} ${pair("W", "p", 1)}
    let w0 = p00; let w1 = p10; let w2 = p01; let w3 = p11;
    ${
    two
      ? `${pair("W2", "t", 0)} ${pair("W2", "t", 1)}
    let q0 = t00; let q1 = t10; let q2 = t01; let q3 = t11;`
      : ""
  }`;
}
