/** The soft-token maps, the loss on them and the RMSNorm backward. */
import type { LossKind } from "../../core/train/loss.ts";
import { consts, type Shape } from "./shape.ts";
import { type KernelDef, lit, r, u, v4, w, WG } from "./program.ts";

/** The soft-token map of one layer: maps[layer, h, t] = mean over rows of P[h, t, rows], t < L. */
export function mapDef(s: Shape): KernelDef {
  return {
    name: "map",
    bindings: [u(), r("P", v4), w("MAPS")],
    body: `${consts(s)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x;
  let h = gid.y;
  if (t >= u.L) { return; }
  let R4 = (u.R + 3u) / 4u;
  let at = (h * (u.L + u.R) + t) * R4;
  var acc = vec4<f32>(0.0);
  for (var i = 0u; i < R4; i++) { acc += P[at + i]; }
  MAPS[(u.layer * H + h) * u.L + t] = (acc.x + acc.y + acc.z + acc.w) / f32(u.R);
}`,
  };
}

/**
 * Invocation per (layer, head) map: the loss share of this map (PARTS, read back and summed in
 * float64) and dLoss/dmaps, with the definitions of core/train/loss.ts.
 */
export function lossDef(s: Shape, kind: LossKind): KernelDef {
  const maps = s.NL * s.H;
  const body = kind === "mse"
    ? `let total = f32(${maps}u * L);
  var loss = 0.0;
  for (var t = 0u; t < L; t++) {
    let d = MAPS[o + t] - TGT[o + t];
    loss += d * d;
    DMAPS[o + t] = 2.0 * d * f32(L) / total;
  }
  PARTS[m] = loss * f32(L) / total;`
    : `var sp = 0.0;
  var st = 0.0;
  for (var t = 0u; t < L; t++) {
    sp += MAPS[o + t];
    st += TGT[o + t];
  }
  var loss = 0.0;
  for (var t = 0u; t < L; t++) {
    let p = TGT[o + t] / st;
    let q = MAPS[o + t] / sp;
    if (p > 0.0) { loss += p * log(p / q); }
    DMAPS[o + t] = (1.0 - p / q) / sp / ${lit(maps)};
  }
  PARTS[m] = loss / ${lit(maps)};`;
  return {
    name: `loss_${kind}`,
    bindings: [u(), r("MAPS"), r("TGT"), w("DMAPS"), w("PARTS")],
    body: `
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let m = gid.x;
  if (m >= ${maps}u) { return; }
  let L = u.L;
  let o = m * L;
  ${body}
}`,
  };
}

/**
 * RMSNorm backward per row, the norm weight already applied to the incoming gradient (folded into the
 * weights): dx = s gw - s^3 x <gw, x> / D (+ the residual's gradient). `accumulate`: OUT += scale dx
 * (layer 0 adds its dE straight into the batch's gradient sum).
 */
export function rmsBackDef(s: Shape, residual: boolean, accumulate: boolean): KernelDef {
  const bindings = [u(), r("GW", v4), r("X", v4)];
  if (residual) bindings.push(r("RES", v4));
  bindings.push(w("OUT", v4));
  const dx = `s * GW[o + i] - c * X[o + i]${residual ? " + RES[o + i]" : ""}`;
  return {
    name: `rms_back${residual ? "_res" : ""}${accumulate ? "_acc" : ""}`,
    bindings,
    body: `${consts(s)}
const D4 = ${s.D / 4}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row = gid.x;
  if (row >= u.R) { return; }
  let o = row * D4;
  var ss = 0.0;
  var dt = 0.0;
  for (var i = 0u; i < D4; i++) {
    let x = X[o + i];
    ss += dot(x, x);
    dt += dot(GW[o + i], x);
  }
  let s = inverseSqrt(ss / ${lit(s.D)} + ${lit(s.eps)});
  let c = s * s * s * dt / ${lit(s.D)};
  for (var i = 0u; i < D4; i++) {
    ${accumulate ? `OUT[o + i] = OUT[o + i] + u.scale * (${dx});` : `OUT[o + i] = ${dx};`}
  }
}`,
  };
}
