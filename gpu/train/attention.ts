/**
 * Attention of the soft rows over [prompt K/V ; soft rows' own K/V], forward and backward. A
 * workgroup serves one KV head and a block of 32 rows; each invocation serves up to 4 consecutive
 * rows x every query head of the group, so one load of a K/V entry feeds all their queries. K/V are
 * staged in chunks of TT positions in workgroup memory. On llvmpipe every memory access (workgroup or
 * storage) costs about as much as an exp while registers spill cheaply, so the tiling trades
 * registers for loads.
 *
 * The forward computes each probability once (a max/sum pass with one exp per entry, then the
 * probabilities) and keeps them, P [H, L + R, R4] (rows fastest; R4 = R rounded up to 4), for the
 * maps and the backward, which then needs no exp. The backward writes only at its end (dq and each
 * query's sum p dp): a storage write inside its main loop makes llvmpipe several times slower
 * whenever the bindings change between dispatches, so the soft part's score gradients, which the
 * soft keys' and values' gradients need, come from a small kernel of their own (softScoresBackDef).
 */
import { consts, qkvWidth, type Shape } from "./shape.ts";
import { comp, type Elem, type KernelDef, r, rep, u, v4, w, WG } from "./program.ts";

const groupOf = (s: Shape) => s.H / s.G;
/** Rows per block (workgroup), and rows per invocation: up to 4, keeping <= 32 query vec4s a lane. */
const RB = 32;
const rowsPerInvocation = (s: Shape) => [4, 2, 1].find((k) => k * groupOf(s) * (s.HD / 4) <= 32) ?? 1;

/** Positions staged per step: the K and V chunks stay under 8 KiB of workgroup memory. */
export const chunkOf = (s: Shape) => Math.max(1, Math.min(64, Math.floor(1024 / s.HD)));
export const attentionGroups = (s: Shape, R: number): [number, number] => [s.G, Math.ceil(R / RB)];

/** Repeats over the invocation's rows (a), the group's query heads (h) and the vec4s of a head (j). */
const rows = (s: Shape, fn: (a: number) => string, sep = "\n  ") => rep(rowsPerInvocation(s), fn, sep);
/** The invocation's rows are consecutive, so their probabilities at one entry form one vector. */
const pElem = (s: Shape): Elem =>
  ({ 1: "f32", 2: "vec2<f32>", 4: "vec4<f32>" } as const)[rowsPerInvocation(s) as 1 | 2 | 4];
const lane = (s: Shape, a: number) => (rowsPerInvocation(s) === 1 ? "" : `.${"xyzw"[a]}`);
const heads = (s: Shape, fn: (h: number) => string, sep = "\n  ") => rep(groupOf(s), fn, sep);
const queries = (s: Shape, fn: (a: number, h: number) => string, sep = "\n  ") =>
  rows(s, (a) => heads(s, (h) => fn(a, h), sep), sep);
const vecs = (s: Shape, fn: (j: number) => string, sep = " ") => rep(s.HD / 4, fn, sep);
/** Query head h of the group, as a head index. */
const head = (h: number) => `(g * GROUP + ${h}u)`;

function header(s: Shape, withV: boolean): string {
  const HD4 = s.HD / 4, TT = chunkOf(s);
  return `${consts(s)}
const NQ4 = ${qkvWidth(s) / 4}u; const QW4 = ${(s.H * s.HD) / 4}u; const KW4 = ${(s.G * s.HD) / 4}u;
const RPI = ${rowsPerInvocation(s)}u; const WGA = ${
    RB / rowsPerInvocation(s)
  }u; const RB = ${RB}u; const TT = ${TT}u;
var<workgroup> KS: array<vec4<f32>, ${TT * HD4}>;
${withV ? `var<workgroup> VS: array<vec4<f32>, ${TT * HD4}>;` : ""}`;
}

/** Per-invocation setup: the rows, and their (scaled) queries for the group's heads in registers. */
function setup(s: Shape): string {
  return `let g = wid.x;
  let blk = wid.y;
  let L = u.L;
  ${
    rows(s, (a) =>
      `let r${a} = blk * RB + li * RPI + ${a}u;
  let live${a} = r${a} < u.R;
  let rq${a} = min(r${a}, u.R - 1u);
  let seen${a} = select(0u, L + r${a} + 1u, live${a});`)
  }
  ${
    queries(s, (a, h) =>
      vecs(s, (j) => `let q${a}_${h}_${j} = QKV[rq${a} * NQ4 + ${head(h)} * HD4 + ${j}u] * SCALE;`))
  }
  // Entries any row of the block sees; P[h, t, r] is head h, row r at entry t, indexed here in
  // vectors of RPI rows.
  let total = L + min(u.R, (blk + 1u) * RB);
  let R4 = ((u.R + 3u) & ~3u) / RPI;
  let pHead = (L + u.R) * R4;`;
}

/** Each row's count of entries in this chunk (n0, n1, ...) and their maximum (n). */
const counts = (s: Shape, limit: (a: number) => string) =>
  `${rows(s, (a) => `let n${a} = min(TT, ${limit(a)} - min(${limit(a)}, t0));`, "\n    ")}
    let n = ${
    Array.from({ length: rowsPerInvocation(s) }, (_, a) => `n${a}`).reduce((x, y) => `max(${x}, ${y})`)
  };
    let pAt = g * GROUP * pHead + t0 * R4 + blk * (RB / RPI) + li;`;

/** Stages positions t0..t0+TT-1 of K (and V) for KV head g: prompt entries, then soft rows. */
function stage(withV: boolean): string {
  return `for (var e = li; e < TT * HD4; e += WGA) {
      let t = t0 + e / HD4;
      let d = e % HD4;
      var kv = vec4<f32>(0.0);${withV ? "\n      var vv = vec4<f32>(0.0);" : ""}
      if (t < L) {
        kv = PK[(g * L + t) * HD4 + d];${withV ? "\n        vv = PV[(g * L + t) * HD4 + d];" : ""}
      } else if (t < total) {
        kv = QKV[(t - L) * NQ4 + QW4 + g * HD4 + d];${
    withV ? "\n        vv = QKV[(t - L) * NQ4 + QW4 + KW4 + g * HD4 + d];" : ""
  }
      }
      KS[e] = kv;${withV ? "\n      VS[e] = vv;" : ""}
    }`;
}

/** Loads entry tt's key (and value) into registers k0.., v0..: one load serves every query. */
const loadKv = (s: Shape, withV: boolean) =>
  vecs(s, (j) => `let k${j} = KS[tt * HD4 + ${j}u];${withV ? ` let v${j} = VS[tt * HD4 + ${j}u];` : ""}`);
const score = (s: Shape, a: number, h: number) => vecs(s, (j) => `dot(q${a}_${h}_${j}, k${j})`, " + ");
const pAt = (h: number) => `pAt + ${h}u * pHead + tt * R4`;

/** Forward. `withOut`: also the attention output (every layer but the last, whose output is unused). */
export function attentionDef(s: Shape, withOut: boolean): KernelDef {
  const bindings = [u(), r("QKV", v4), r("PK", v4)];
  if (withOut) bindings.push(r("PV", v4));
  bindings.push(w("P", pElem(s)));
  if (withOut) bindings.push(w("ATT", v4));
  return {
    name: `attention${withOut ? "" : "_last"}`,
    bindings,
    body: `${header(s, withOut)}
@compute @workgroup_size(${RB / rowsPerInvocation(s)})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  ${setup(s)}
  // Pass 1: each query's softmax max and sum (online).
  ${queries(s, (a, h) => `var m${a}_${h} = -3.0e38; var l${a}_${h} = 0.0;`)}
  for (var t0 = 0u; t0 < total; t0 += TT) {
    ${stage(false)}
    workgroupBarrier();
    ${counts(s, (a) => `seen${a}`)}
    for (var tt = 0u; tt < n; tt++) {
      ${loadKv(s, false)}
      ${
      rows(s, (a) =>
        `if (tt < n${a}) {
        ${
          heads(
            s,
            (h) =>
              `{
          let sc = ${score(s, a, h)};
          // One exp per entry: exp(-|sc - m|) rescales the sum or is the new term.
          let x = exp(-abs(sc - m${a}_${h}));
          l${a}_${h} = select(l${a}_${h} + x, l${a}_${h} * x + 1.0, sc > m${a}_${h});
          m${a}_${h} = max(m${a}_${h}, sc);
        }`,
            "\n        ",
          )
        }
      }`, "\n      ")
    }
    }
    workgroupBarrier();
  }
  // Pass 2: probabilities and the output.
  ${withOut ? queries(s, (a, h) => vecs(s, (j) => `var o${a}_${h}_${j} = vec4<f32>(0.0);`)) : ""}
  for (var t0 = 0u; t0 < total; t0 += TT) {
    ${stage(withOut)}
    workgroupBarrier();
    ${counts(s, (a) => `seen${a}`)}
    for (var tt = 0u; tt < n; tt++) {
      ${loadKv(s, withOut)}
      ${
      heads(s, (h) =>
        `{
        var pv = ${pElem(s)}(0.0);
        ${
          rows(
            s,
            (a) =>
              `if (tt < n${a}) {
          let p = exp(${score(s, a, h)} - m${a}_${h}) / l${a}_${h};
          ${withOut ? vecs(s, (j) => `o${a}_${h}_${j} += p * v${j};`) : ""}
          pv${lane(s, a)} = p;
        }`,
            "\n        ",
          )
        }
        P[${pAt(h)}] = pv;
      }`, "\n      ")
    }
    }
    workgroupBarrier();
  }
  ${
      withOut
        ? rows(s, (a) =>
          `if (live${a}) {
    ${heads(s, (h) => vecs(s, (j) => `ATT[r${a} * QW4 + ${head(h)} * HD4 + ${j}u] = o${a}_${h}_${j};`))}
  }`)
        : ""
    }
}`,
  };
}

/** The inverse RoPE rotation of the register vector `v` (v0, v1, ... vec4s) at soft row `row`. */
function unrope(s: Shape, v: string, row: string): string {
  const half = s.HD / 2;
  return rep(
    half,
    (i) =>
      `{ let cs = ROPE[${row} * HALF + ${i}u]; let a = ${comp(v, i)}; let b = ${comp(v, i + half)};
    ${comp(v, i)} = a * cs.x + b * cs.y; ${comp(v, i + half)} = b * cs.x - a * cs.y; }`,
  );
}

/**
 * attentionBackDef's pass B: per staged chunk of entries, each row's score gradients
 * ds = p (dmaps / R + dO . v - pdp) scale, accumulated into dq.
 */
function scoreGradPass(s: Shape, withOut: boolean, stageDm: string, dp: (a: number, h: number) => string) {
  return `// Pass B: score gradients and dq.
  ${queries(s, (a, h) => vecs(s, (j) => `var dq${a}_${h}_${j} = vec4<f32>(0.0);`))}
  for (var t0 = 0u; t0 < total; t0 += TT) {
    ${stage(withOut)}
    ${stageDm}
    workgroupBarrier();
    ${counts(s, (a) => `seen${a}`)}
    for (var tt = 0u; tt < n; tt++) {
      ${loadKv(s, withOut)}
      ${
    heads(s, (h) =>
      `{
        let pv = P[${pAt(h)}];
        let dm = DM[${h}u * TT + tt];
        ${
        rows(
          s,
          (a) =>
            `if (tt < n${a}) {
          let ds = pv${lane(s, a)} * (${dp(a, h)} - pdp${a}_${h}) * SCALE;
          ${vecs(s, (j) => `dq${a}_${h}_${j} += ds * k${j};`)}
        }`,
          "\n        ",
        )
      }
      }`, "\n      ")
  }
    }
    workgroupBarrier();
  }`;
}

/**
 * Backward, per query: dp = dmaps / R on prompt positions (+ dOut . V), the softmax backward
 * ds = p (dp - sum p dp) scale, dq = sum ds K rotated back by RoPE. sum p dp = sum_prompt p dmaps / R
 * + dOut . out (the forward's output), so the first pass reads only the kept probabilities and dmaps.
 */
export function attentionBackDef(s: Shape, withOut: boolean): KernelDef {
  const TT = chunkOf(s);
  const bindings = [u(), r("QKV", v4), r("PK", v4), r("P", pElem(s)), r("DMAPS"), r("ROPE", "vec2<f32>")];
  if (withOut) bindings.push(r("PV", v4), r("DOUT", v4), r("ATT", v4));
  bindings.push(w("DQKV", v4), w("PDP"));
  const stageDm = `for (var e = li; e < GROUP * TT; e += WGA) {
      let t = t0 + e % TT;
      var x = 0.0;
      if (t < L) { x = DMAPS[(u.layer * H + g * GROUP + e / TT) * L + t] * invR; }
      DM[e] = x;
    }`;
  const dOut = (a: number, h: number) =>
    withOut
      ? `${vecs(s, (j) => `let dO${a}_${h}_${j} = DOUT[rq${a} * QW4 + ${head(h)} * HD4 + ${j}u];`)}
  var pdp${a}_${h} = ${
        vecs(s, (j) => `dot(dO${a}_${h}_${j}, ATT[rq${a} * QW4 + ${head(h)} * HD4 + ${j}u])`, " + ")
      };`
      : `var pdp${a}_${h} = 0.0;`;
  const dp = (a: number, h: number) =>
    `dm${withOut ? ` + ${vecs(s, (j) => `dot(dO${a}_${h}_${j}, v${j})`, " + ")}` : ""}`;
  return {
    name: `attention_back${withOut ? "" : "_last"}`,
    bindings,
    body: `${header(s, withOut)}
var<workgroup> DM: array<f32, ${groupOf(s) * TT}>;
@compute @workgroup_size(${RB / rowsPerInvocation(s)})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  ${setup(s)}
  let invR = 1.0 / f32(u.R);
  ${queries(s, dOut)}
  // Pass A: sum over prompt positions of p dmaps / R.
  ${rows(s, (a) => `let prompt${a} = select(0u, L, live${a});`)}
  for (var t0 = 0u; t0 < L; t0 += TT) {
    ${stageDm}
    workgroupBarrier();
    ${counts(s, (a) => `prompt${a}`)}
    for (var tt = 0u; tt < n; tt++) {
      ${
      heads(s, (h) =>
        `{
        let pv = P[${pAt(h)}];
        let dm = DM[${h}u * TT + tt];
        ${rows(s, (a) => `pdp${a}_${h} += pv${lane(s, a)} * dm;`, " ")}
      }`, "\n      ")
    }
    }
    workgroupBarrier();
  }
  ${scoreGradPass(s, withOut, stageDm, dp)}
  ${
      rows(s, (a) =>
        `if (live${a}) {
    ${
          heads(s, (h) =>
            `${unrope(s, `dq${a}_${h}_`, `r${a}`)}
    ${vecs(s, (j) => `DQKV[r${a} * NQ4 + ${head(h)} * HD4 + ${j}u] = dq${a}_${h}_${j};`)}
    PDP[${head(h)} * u.R + r${a}] = pdp${a}_${h};`, "\n    ")
        }
  }`)
    }
}`,
  };
}

/**
 * Score gradients of the soft part, invocation (row i, head h): for entries L + j, j <= i,
 * ds = p (dOut_i . v_j - sum p dp) scale (dmaps is zero there) into DSP [H, R, R].
 */
export function softScoresBackDef(s: Shape, withOut: boolean): KernelDef {
  const bindings = [u(), r("P"), r("PDP")];
  if (withOut) bindings.push(r("QKV", v4), r("DOUT", v4));
  bindings.push(w("DSP"));
  return {
    name: `soft_scores_back${withOut ? "" : "_last"}`,
    bindings,
    body: `${consts(s)}
const NQ4 = ${qkvWidth(s) / 4}u; const QW4 = ${(s.H * s.HD) / 4}u; const KW4 = ${(s.G * s.HD) / 4}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  let h = gid.y;
  if (i >= u.R) { return; }
  let R4 = (u.R + 3u) & ~3u;
  let pdp = PDP[h * u.R + i];
  ${withOut ? vecs(s, (j) => `let dO${j} = DOUT[i * QW4 + h * HD4 + ${j}u];`) : ""}
  for (var j = 0u; j <= i; j++) {
    let p = P[(h * (u.L + u.R) + u.L + j) * R4 + i];
    ${
      withOut
        ? `let vo = j * NQ4 + QW4 + KW4 + (h / GROUP) * HD4;
    let dp = ${vecs(s, (j) => `dot(dO${j}, QKV[vo + ${j}u])`, " + ")};`
        : "let dp = 0.0;"
    }
    DSP[(h * u.R + i) * u.R + j] = p * (dp - pdp) * SCALE;
  }
}`,
  };
}

/**
 * Gradients of the soft rows' own keys and values, invocation (rotate-half pair of a KV head, soft
 * row j): every later row i >= j of every query head in the group saw entry L + j.
 */
export function keyValueBackDef(s: Shape, withOut: boolean): KernelDef {
  const bindings = [u(), r("QKV"), r("DSP"), r("ROPE", "vec2<f32>")];
  if (withOut) bindings.push(r("P"), r("DOUT"));
  bindings.push(w("DQKV"));
  return {
    name: `kv_back${withOut ? "" : "_last"}`,
    bindings,
    body: `${consts(s)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  let j = gid.y;
  if (c >= G * HALF || j >= u.R) { return; }
  let g = c / HALF;
  let i = c % HALF;
  let R4 = (u.R + 3u) & ~3u;
  var ka = 0.0;
  var kb = 0.0;
  var va = 0.0;
  var vb = 0.0;
  for (var hh = 0u; hh < GROUP; hh++) {
    let h = g * GROUP + hh;
    for (var row = j; row < u.R; row++) {
      let ds = DSP[(h * u.R + row) * u.R + j];
      let qo = row * NQ + h * HD + i;
      ka += ds * QKV[qo];
      kb += ds * QKV[qo + HALF];${
      withOut
        ? `
      let p = P[(h * (u.L + u.R) + u.L + j) * R4 + row];
      let oo = row * QW + h * HD + i;
      va += p * DOUT[oo];
      vb += p * DOUT[oo + HALF];`
        : ""
    }
    }
  }
  let cs = ROPE[j * HALF + i];
  let ko = j * NQ + QW + g * HD + i;
  DQKV[ko] = ka * cs.x + kb * cs.y;
  DQKV[ko + HALF] = kb * cs.x - ka * cs.y;
  DQKV[ko + KW] = va;
  DQKV[ko + KW + HALF] = vb;
}`,
  };
}
