/**
 * Float64 building blocks of the soft-row pass, each with its hand-written backward. Activations are
 * row-major [rows, width]; weights are Hugging Face [out, in]. Only input gradients are computed:
 * the model is frozen, so weight gradients are never needed.
 */

/** y[r] = W x[r] (+ b). */
export function linear(
  x: Float64Array,
  w: Float64Array,
  bias: Float64Array | null,
  rows: number,
  inDim: number,
  outDim: number,
): Float64Array {
  const y = new Float64Array(rows * outDim);
  for (let r = 0; r < rows; r++) {
    const xo = r * inDim, yo = r * outDim;
    for (let o = 0; o < outDim; o++) {
      const wo = o * inDim;
      let s = bias ? bias[o] : 0;
      for (let i = 0; i < inDim; i++) s += w[wo + i] * x[xo + i];
      y[yo + o] = s;
    }
  }
  return y;
}

/** dx[r] = W^T dy[r]. */
export function linearBackward(
  dy: Float64Array,
  w: Float64Array,
  rows: number,
  inDim: number,
  outDim: number,
): Float64Array {
  const dx = new Float64Array(rows * inDim);
  for (let r = 0; r < rows; r++) {
    const xo = r * inDim, yo = r * outDim;
    for (let o = 0; o < outDim; o++) {
      const g = dy[yo + o];
      if (g === 0) continue;
      const wo = o * inDim;
      for (let i = 0; i < inDim; i++) dx[xo + i] += g * w[wo + i];
    }
  }
  return dx;
}

/** y = w * x / rms(x) per row; returns the per-row 1/rms for the backward. */
export function rmsNorm(
  x: Float64Array,
  w: Float64Array,
  rows: number,
  dim: number,
  eps: number,
): { y: Float64Array; inv: Float64Array } {
  const y = new Float64Array(rows * dim), inv = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[o + i] * x[o + i];
    const s = inv[r] = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) y[o + i] = w[i] * x[o + i] * s;
  }
  return { y, inv };
}

/** dx = s (w dy) - s^3 x <w dy, x> / dim, with s = 1/rms(x). */
export function rmsNormBackward(
  dy: Float64Array,
  x: Float64Array,
  w: Float64Array,
  inv: Float64Array,
  rows: number,
  dim: number,
): Float64Array {
  const dx = new Float64Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    const o = r * dim, s = inv[r];
    let dot = 0;
    for (let i = 0; i < dim; i++) dot += w[i] * dy[o + i] * x[o + i];
    const c = s * s * s * dot / dim;
    for (let i = 0; i < dim; i++) dx[o + i] = s * w[i] * dy[o + i] - c * x[o + i];
  }
  return dx;
}

/**
 * Rotate-half RoPE (element i pairs with i + headDim/2), row r at position start + r. `sign` = -1
 * rotates backwards: the backward of a rotation is its transpose.
 */
export function rope(
  x: Float64Array,
  rows: number,
  nHeads: number,
  headDim: number,
  start: number,
  invFreq: Float64Array,
  sign: 1 | -1 = 1,
): Float64Array {
  const y = new Float64Array(x.length), half = headDim / 2, width = nHeads * headDim;
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < half; i++) {
      const angle = (start + r) * invFreq[i];
      const c = Math.cos(angle), s = sign * Math.sin(angle);
      for (let h = 0; h < nHeads; h++) {
        const a = r * width + h * headDim + i, b = a + half;
        y[a] = x[a] * c - x[b] * s;
        y[b] = x[a] * s + x[b] * c;
      }
    }
  }
  return y;
}

export const ropeBackward = (
  dy: Float64Array,
  rows: number,
  nHeads: number,
  headDim: number,
  start: number,
  invFreq: Float64Array,
): Float64Array => rope(dy, rows, nHeads, headDim, start, invFreq, -1);

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/** a = silu(g) * u. */
export function swiglu(g: Float64Array, u: Float64Array): Float64Array {
  const a = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) a[i] = g[i] * sigmoid(g[i]) * u[i];
  return a;
}

export function swigluBackward(
  da: Float64Array,
  g: Float64Array,
  u: Float64Array,
): { dg: Float64Array; du: Float64Array } {
  const dg = new Float64Array(g.length), du = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) {
    const s = sigmoid(g[i]);
    du[i] = da[i] * g[i] * s;
    dg[i] = da[i] * u[i] * s * (1 + g[i] * (1 - s));
  }
  return { dg, du };
}

export function add(a: Float64Array, b: Float64Array): Float64Array {
  const y = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) y[i] = a[i] + b[i];
  return y;
}

/** Fixed keys and values of one layer's prompt: [kvHead] -> [length, headDim], post-RoPE keys. */
export interface LayerKv {
  keys: Float64Array[];
  values: Float64Array[];
}

export interface AttentionShape {
  rows: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** Prompt positions before the rows. */
  promptLength: number;
}

export interface AttentionResult {
  out: Float64Array; // [rows, nHeads * headDim]
  /** Softmax probabilities: [head][row][promptLength + rows]; row i fills promptLength + i + 1 entries. */
  probs: Float64Array;
}

/**
 * Causal GQA attention of the rows over [fixed prompt K/V ; the rows' own K/V]: row i sees the whole
 * prompt and rows 0..i. q and k are post-RoPE: q [rows, nHeads*hd], k and v [rows, nKvHeads*hd].
 */
export function attention(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  prompt: LayerKv,
  s: AttentionShape,
): AttentionResult {
  const { rows, nHeads, nKvHeads, headDim: hd, promptLength: L } = s;
  const stride = L + rows, group = nHeads / nKvHeads, scale = 1 / Math.sqrt(hd);
  const qw = nHeads * hd, kw = nKvHeads * hd;
  const out = new Float64Array(rows * qw), probs = new Float64Array(nHeads * rows * stride);
  for (let h = 0; h < nHeads; h++) {
    const g = Math.floor(h / group), pk = prompt.keys[g], pv = prompt.values[g];
    for (let i = 0; i < rows; i++) {
      const p = (h * rows + i) * stride, qo = i * qw + h * hd, seen = L + i + 1;
      let max = -Infinity;
      for (let t = 0; t < seen; t++) {
        const ko = t < L ? t * hd : (t - L) * kw + g * hd, keys = t < L ? pk : k;
        let dot = 0;
        for (let d = 0; d < hd; d++) dot += q[qo + d] * keys[ko + d];
        probs[p + t] = dot * scale;
        if (probs[p + t] > max) max = probs[p + t];
      }
      let sum = 0;
      for (let t = 0; t < seen; t++) sum += probs[p + t] = Math.exp(probs[p + t] - max);
      for (let t = 0; t < seen; t++) {
        const a = probs[p + t] /= sum;
        const vo = t < L ? t * hd : (t - L) * kw + g * hd, vals = t < L ? pv : v;
        for (let d = 0; d < hd; d++) out[qo + d] += a * vals[vo + d];
      }
    }
  }
  return { out, probs };
}

/**
 * Backward of `attention`. `dOut` is the gradient of the output (null when unused); `dPromptProbs`
 * [nHeads, promptLength] is a gradient on every row's prompt probabilities (the loss sees their mean).
 */
export function attentionBackward(
  dOut: Float64Array | null,
  dPromptProbs: Float64Array | null,
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  prompt: LayerKv,
  fwd: AttentionResult,
  s: AttentionShape,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const { rows, nHeads, nKvHeads, headDim: hd, promptLength: L } = s;
  const stride = L + rows, group = nHeads / nKvHeads, scale = 1 / Math.sqrt(hd);
  const qw = nHeads * hd, kw = nKvHeads * hd;
  const dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length);
  const dp = new Float64Array(stride);
  for (let h = 0; h < nHeads; h++) {
    const g = Math.floor(h / group), pk = prompt.keys[g], pv = prompt.values[g];
    for (let i = 0; i < rows; i++) {
      const p = (h * rows + i) * stride, qo = i * qw + h * hd, seen = L + i + 1;
      // dp = dOut . V (+ the direct gradient on prompt probabilities); V of soft rows gets p dOut.
      let pdp = 0;
      for (let t = 0; t < seen; t++) {
        const a = fwd.probs[p + t];
        let x = t < L && dPromptProbs ? dPromptProbs[h * L + t] : 0;
        if (dOut) {
          const vo = t < L ? t * hd : (t - L) * kw + g * hd, vals = t < L ? pv : v;
          for (let d = 0; d < hd; d++) x += dOut[qo + d] * vals[vo + d];
          if (t >= L) { for (let d = 0; d < hd; d++) dv[vo + d] += a * dOut[qo + d]; }
        }
        dp[t] = x;
        pdp += a * x;
      }
      // Softmax backward, then the scores' gradient into q and the rows' own keys.
      for (let t = 0; t < seen; t++) {
        const ds = fwd.probs[p + t] * (dp[t] - pdp) * scale;
        if (ds === 0) continue;
        const ko = t < L ? t * hd : (t - L) * kw + g * hd, keys = t < L ? pk : k;
        for (let d = 0; d < hd; d++) dq[qo + d] += ds * keys[ko + d];
        if (t >= L) { for (let d = 0; d < hd; d++) dk[ko + d] += ds * q[qo + d]; }
      }
    }
  }
  return { dq, dk, dv };
}
