/**
 * The Judge Q soft rows through the frozen model, and reverse mode back to their embeddings E.
 * Rows sit at positions L..L+n-1 after a fixed prompt, so only these n rows are computed: the prompt's
 * K/V is constant in E. The rows' own K/V at each layer depends on E (row i attends to rows 0..i), and
 * the backward follows that path too.
 */
import type { PromptKv, TrainModel } from "./model.ts";
import {
  add,
  attention,
  attentionBackward,
  type AttentionResult,
  type AttentionShape,
  linear,
  linearBackward,
  rmsNorm,
  rmsNormBackward,
  rope,
  ropeBackward,
  swiglu,
  swigluBackward,
} from "./ops.ts";

interface LayerTape {
  x: Float64Array;
  inv: Float64Array;
  q: Float64Array; // post-RoPE
  k: Float64Array; // post-RoPE
  v: Float64Array;
  att: AttentionResult;
  /** Absent in the last layer: its output reaches no attention map, so it is not computed. */
  mlp: { x1: Float64Array; inv: Float64Array; g: Float64Array; u: Float64Array } | null;
}

export interface SoftPass {
  rows: number;
  promptLength: number;
  /** A_soft: [layer][queryHead][promptLength], each soft row's attention to prompt positions, averaged over rows. */
  maps: Float64Array;
  tape: LayerTape[];
}

const shapeOf = (m: TrainModel, rows: number, promptLength: number): AttentionShape => ({
  rows,
  nHeads: m.config.nHeads,
  nKvHeads: m.config.nKvHeads,
  headDim: m.config.headDim,
  promptLength,
});

/** Forward of the soft rows `e` [rows, dim] after `prompt`; keeps what the backward needs. */
export function softForward(m: TrainModel, prompt: PromptKv, e: Float64Array): SoftPass {
  const c = m.config, L = prompt.length, rows = e.length / c.dim, hd = c.headDim;
  const qw = c.nHeads * hd, kw = c.nKvHeads * hd, shape = shapeOf(m, rows, L);
  const maps = new Float64Array(c.nLayers * c.nHeads * L);
  const tape: LayerTape[] = [];
  let x = e;
  for (let l = 0; l < c.nLayers; l++) {
    const w = m.layers[l];
    const { y: xn, inv } = rmsNorm(x, w.attnNorm, rows, c.dim, c.rmsNormEps);
    const q = rope(linear(xn, w.wq, w.bq, rows, c.dim, qw), rows, c.nHeads, hd, L, m.invFreq);
    const k = rope(linear(xn, w.wk, w.bk, rows, c.dim, kw), rows, c.nKvHeads, hd, L, m.invFreq);
    const v = linear(xn, w.wv, w.bv, rows, c.dim, kw);
    const att = attention(q, k, v, prompt.layers[l], shape);
    for (let h = 0; h < c.nHeads; h++) {
      const base = (l * c.nHeads + h) * L;
      for (let i = 0; i < rows; i++) {
        const p = (h * rows + i) * (L + rows);
        for (let t = 0; t < L; t++) maps[base + t] += att.probs[p + t] / rows;
      }
    }
    let mlp: LayerTape["mlp"] = null;
    if (l < c.nLayers - 1) {
      const x1 = add(x, linear(att.out, w.wo, null, rows, qw, c.dim));
      const n2 = rmsNorm(x1, w.mlpNorm, rows, c.dim, c.rmsNormEps);
      const g = linear(n2.y, w.wGate, null, rows, c.dim, c.hiddenDim);
      const u = linear(n2.y, w.wUp, null, rows, c.dim, c.hiddenDim);
      mlp = { x1, inv: n2.inv, g, u };
      tape.push({ x, inv, q, k, v, att, mlp });
      x = add(x1, linear(swiglu(g, u), w.wDown, null, rows, c.hiddenDim, c.dim));
    } else {
      tape.push({ x, inv, q, k, v, att, mlp });
    }
  }
  return { rows, promptLength: L, maps, tape };
}

/** Gradient with respect to the soft embeddings, given dLoss/dA_soft (same layout as `maps`). */
export function softBackward(
  m: TrainModel,
  prompt: PromptKv,
  pass: SoftPass,
  dMaps: Float64Array,
): Float64Array {
  const c = m.config, { rows, promptLength: L } = pass, hd = c.headDim;
  const qw = c.nHeads * hd, kw = c.nKvHeads * hd, shape = shapeOf(m, rows, L);
  // The maps average the rows, so each row's prompt probabilities get dMaps / rows.
  const dProbs = new Float64Array(c.nHeads * L);
  let dx: Float64Array | null = null; // gradient of the current layer's output
  for (let l = c.nLayers - 1; l >= 0; l--) {
    const w = m.layers[l], t = pass.tape[l];
    let dOut: Float64Array | null = null, dx1: Float64Array | null = null;
    if (t.mlp && dx) {
      const { x1, inv, g, u } = t.mlp;
      const { dg, du } = swigluBackward(linearBackward(dx, w.wDown, rows, c.hiddenDim, c.dim), g, u);
      const dxn = add(
        linearBackward(dg, w.wGate, rows, c.dim, c.hiddenDim),
        linearBackward(du, w.wUp, rows, c.dim, c.hiddenDim),
      );
      dx1 = add(dx, rmsNormBackward(dxn, x1, w.mlpNorm, inv, rows, c.dim));
      dOut = linearBackward(dx1, w.wo, rows, qw, c.dim);
    }
    const base = l * c.nHeads * L;
    for (let i = 0; i < dProbs.length; i++) dProbs[i] = dMaps[base + i] / rows;
    const { dq, dk, dv } = attentionBackward(dOut, dProbs, t.q, t.k, t.v, prompt.layers[l], t.att, shape);
    const dxn = add(
      add(
        linearBackward(ropeBackward(dq, rows, c.nHeads, hd, L, m.invFreq), w.wq, rows, c.dim, qw),
        linearBackward(ropeBackward(dk, rows, c.nKvHeads, hd, L, m.invFreq), w.wk, rows, c.dim, kw),
      ),
      linearBackward(dv, w.wv, rows, c.dim, kw),
    );
    const dNorm = rmsNormBackward(dxn, t.x, w.attnNorm, t.inv, rows, c.dim);
    dx = dx1 ? add(dx1, dNorm) : dNorm;
  }
  return dx!;
}
