/**
 * Products with the frozen weights, Y[R, N] = X[R, K] B[K, N] with B the weight or its transpose
 * (whichever is row-major [K, N]). llvmpipe pays per memory access (a vec4 load costs about as much
 * from workgroup memory as from storage) while registers spill cheaply, so each invocation keeps a
 * register tile of 8 rows x 2 vec4 columns: per 4 k, 8 loads of B and 8 of X feed 64 vec4 FMAs.
 * Modes (epilogues, per vec4 of columns):
 *  - plain: Y = X B (+ residual);
 *  - qkv: RMSNorm'd input (norm weight folded into B, the row's 1/rms from the loaded X), bias and
 *    RoPE. B's columns are permuted so a vec4 holds two rotate-half pairs (i, i+1, i+hd/2, i+1+hd/2);
 *    the store puts them back in natural order;
 *  - swiglu: norm'd input, B's columns interleaved (g_c, g_c+1, u_c, u_c+1); keeps g | u (GU) for the
 *    backward and writes silu(g) u;
 *  - swigluBack: da = dx W_down, then straight into (dg | du) from the kept g and u.
 */
import { consts, type Shape } from "./shape.ts";
import { type KernelDef, lit, r, rep, u, v4, w } from "./program.ts";

export type MatmulMode = "plain" | "qkv" | "swiglu" | "swigluBack";

export interface MatmulSpec {
  mode: MatmulMode;
  K: number;
  N: number;
  bias?: boolean;
  residual?: boolean;
}

const TR = 8; // rows per invocation
const CV = 2; // vec4 columns per invocation
const WGM = 8; // invocations per workgroup

/** Workgroups of a product over R rows: invocations (column block, row block), flattened. */
export const matmulGroups = (m: MatmulSpec, R: number): [number, number] => [
  Math.ceil((Math.ceil(m.N / 4 / CV) * Math.ceil(R / TR)) / WGM),
  1,
];

/** Natural q | k | v column of physical column j (two RoPE pairs per vec4). */
export function qkvColumn(hd: number, j: number): number {
  const head = Math.floor(j / hd), within = j % hd, e = within % 4, i0 = 2 * Math.floor(within / 4);
  return head * hd + [i0, i0 + 1, i0 + hd / 2, i0 + 1 + hd / 2][e];
}

/** Natural gate | up column of physical column j (g_c, g_c+1, u_c, u_c+1 per vec4). */
export function swigluColumn(F: number, j: number): number {
  const c = 2 * Math.floor(j / 4), e = j % 4;
  return [c, c + 1, F + c, F + c + 1][e];
}

function epilogue(s: Shape, m: MatmulSpec): string {
  const N4 = m.N / 4;
  switch (m.mode) {
    case "plain":
      return `Y[row * ${N4}u + c4] = a${m.residual ? ` + RES[row * ${N4}u + c4]` : ""};`;
    case "qkv":
      return `var y = a * inverseSqrt(ss / ${lit(m.K)} + ${lit(s.eps)})${m.bias ? " + BIAS[c4]" : ""};
      if (head < H + G) {
        let c0 = ROPE[row * HALF + i0];
        let c1 = ROPE[row * HALF + i0 + 1u];
        y = vec4<f32>(y.x * c0.x - y.z * c0.y, y.y * c1.x - y.w * c1.y, y.x * c0.y + y.z * c0.x, y.y * c1.y + y.w * c1.x);
      }
      let o = row * NQ + n0;
      Y[o] = y.x; Y[o + 1u] = y.y; Y[o + HALF] = y.z; Y[o + HALF + 1u] = y.w;`;
    case "swiglu":
      return `let y = a * inverseSqrt(ss / ${lit(m.K)} + ${lit(s.eps)});
      let o = row * 2u * F + 2u * c4;
      Y[o] = y.x; Y[o + 1u] = y.y; Y[o + F] = y.z; Y[o + F + 1u] = y.w;
      let ga = y.x / (1.0 + exp(-y.x)) * y.z;
      let gb = y.y / (1.0 + exp(-y.y)) * y.w;
      A[row * F + 2u * c4] = ga; A[row * F + 2u * c4 + 1u] = gb;`;
    case "swigluBack":
      return `let o = row * ${(2 * s.F) / 4}u + c4;
      let g = GU[o];
      let up = GU[o + ${s.F / 4}u];
      let sg = 1.0 / (1.0 + exp(-g));
      Y[o] = a * up * sg * (1.0 + g * (1.0 - sg));
      Y[o + ${s.F / 4}u] = a * g * sg;`;
  }
}

export function matmulDef(s: Shape, m: MatmulSpec): KernelDef {
  const norm = m.mode === "qkv" || m.mode === "swiglu";
  const K4 = m.K / 4, N4 = m.N / 4, CB = Math.ceil(N4 / CV);
  const bindings = [u(), r("X", v4), r("B", v4)];
  if (m.bias) bindings.push(r("BIAS", v4));
  if (m.residual) bindings.push(r("RES", v4));
  if (m.mode === "qkv") bindings.push(r("ROPE", "vec2<f32>"));
  if (m.mode === "swigluBack") bindings.push(r("GU", v4));
  bindings.push(w("Y", m.mode === "plain" || m.mode === "swigluBack" ? v4 : "f32"));
  if (m.mode === "swiglu") bindings.push(w("A"));
  // Physical column block c4 of the qkv product: its head and first rotate-half pair.
  const qkvCols = m.mode === "qkv"
    ? `let head = (4u * c4) / HD;
      let i0 = 2u * (((4u * c4) % HD) / 4u);
      let n0 = head * HD + i0;`
    : "";
  const tile = (fn: (t: number, c: number) => string, sep = "\n  ") =>
    rep(TR, (t) => rep(CV, (c) => fn(t, c), sep), sep);
  return {
    name: `mm_${m.mode}_${m.K}x${m.N}${m.bias ? "_bias" : ""}${m.residual ? "_res" : ""}`,
    bindings,
    body: `${consts(s)}
const K4 = ${K4}u; const N4 = ${N4}u;
@compute @workgroup_size(${WGM})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let cb = gid.x % ${CB}u;
  let r0 = (gid.x / ${CB}u) * ${TR}u;
  if (r0 >= u.R) { return; }
  // Rows past R read the last row (in bounds) and are not stored; so are columns past N.
  ${rep(TR, (t) => `let x${t} = min(r0 + ${t}u, u.R - 1u) * K4;${norm ? ` var ss${t} = 0.0;` : ""}`)}
  ${rep(CV, (c) => `let c${c} = min(cb * ${CV}u + ${c}u, N4 - 1u);`)}
  ${tile((t, c) => `var a${t}_${c} = vec4<f32>(0.0);`, " ")}
  for (var k4 = 0u; k4 < K4; k4++) {
    ${rep(CV, (c) => rep(4, (e) => `let b${c}_${e} = B[(4u * k4 + ${e}u) * N4 + c${c}];`, " "), "\n    ")}
    ${
      rep(TR, (t) =>
        `{ let x = X[x${t} + k4];${norm ? ` ss${t} += dot(x, x);` : ""} ${
          rep(CV, (c) =>
            `a${t}_${c} += b${c}_0 * x.x + b${c}_1 * x.y + b${c}_2 * x.z + b${c}_3 * x.w;`, " ")
        } }`, "\n    ")
    }
  }
  ${
      tile((t, c) =>
        `if (r0 + ${t}u < u.R && cb * ${CV}u + ${c}u < N4) {
    let row = r0 + ${t}u;
    let c4 = c${c};
    let a = a${t}_${c};${
          norm
            ? `
    let ss = ss${t};`
            : ""
        }
    {
      ${qkvCols}
      ${epilogue(s, m)}
    }
  }`
      )
    }
}`,
  };
}
