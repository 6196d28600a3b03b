/**
 * The parts of a transformer layer's graph that do not depend on whose cache the rows attend over: Q/K/V
 * projections with RoPE before attention, and the output projection + SwiGLU MLP after it. One session's
 * forward (session.ts) and a batched step over several sessions (batch.ts) build the same layer around them.
 */
import type { ModelConfig } from "../core/config.ts";
import type { GraphBuilder, Tensor } from "./graph.ts";
import type { NativeLayer, NativeWeights } from "./weights.ts";

/** Q [hd, nHeads, rows] and K [hd, nKvHeads, rows] rotated at `pos`, V [nKvHeads * hd, rows]. */
export function projectQkv(
  b: GraphBuilder,
  c: ModelConfig,
  w: NativeWeights,
  lw: NativeLayer,
  x: Tensor,
  pos: Tensor,
  rows: number,
): { q: Tensor; k: Tensor; v: Tensor } {
  const hd = c.headDim, cur = b.mul(b.rmsNorm(x, c.rmsNormEps), lw.attnNorm);
  let q = b.mulMat(lw.wq, cur), k = b.mulMat(lw.wk, cur), v = b.mulMat(lw.wv, cur);
  if (lw.bq) q = b.add(q, lw.bq);
  if (lw.bk) k = b.add(k, lw.bk);
  if (lw.bv) v = b.add(v, lw.bv);
  q = b.rope(b.reshape3d(q, hd, c.nHeads, rows), pos, w.ropeFactors, hd, c.ropeTheta);
  k = b.rope(b.reshape3d(k, hd, c.nKvHeads, rows), pos, w.ropeFactors, hd, c.ropeTheta);
  return { q, k, v };
}

/** The residual stream after the layer: x + Wo attn, then + the MLP of its norm. */
export function finishLayer(
  b: GraphBuilder,
  c: ModelConfig,
  lw: NativeLayer,
  x: Tensor,
  attn: Tensor,
): Tensor {
  x = b.add(x, b.mulMat(lw.wo, attn));
  const cur = b.mul(b.rmsNorm(x, c.rmsNormEps), lw.mlpNorm);
  return b.add(x, b.mulMat(lw.wDown, b.swiglu(b.mulMat(lw.wGate, cur), b.mulMat(lw.wUp, cur))));
}
