/** Dense building blocks of the CPU reference, on plain float32 arrays (accumulating in float64). */

/** out[o] = sum_i w[o, i] x[i] (+ bias[o]); w is row-major [rows, cols]. */
export function matvec(
  out: Float32Array,
  w: Float32Array,
  x: Float32Array,
  rows: number,
  cols: number,
  bias: Float32Array | null = null,
) {
  for (let o = 0; o < rows; o++) {
    let s = 0;
    const base = o * cols;
    for (let i = 0; i < cols; i++) s += w[base + i] * x[i];
    out[o] = bias ? s + bias[o] : s;
  }
}

/** out = x / rms(x) * weight. */
export function rmsNorm(out: Float32Array, x: Float32Array, weight: Float32Array, eps: number) {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const scale = 1 / Math.sqrt(ss / x.length + eps);
  for (let i = 0; i < x.length; i++) out[i] = weight[i] * (x[i] * scale);
}

/** In-place softmax over the first n entries. */
export function softmax(x: Float32Array | Float64Array, n = x.length) {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < n; i++) sum += x[i] = Math.exp(x[i] - max);
  for (let i = 0; i < n; i++) x[i] /= sum;
}

/**
 * Rotates each head's vector in place, Hugging Face style: element i pairs with i + headDim/2
 * ("rotate half"), angle = position x invFreq[i].
 */
export function applyRope(
  v: Float32Array,
  nHeads: number,
  headDim: number,
  position: number,
  invFreq: Float64Array,
) {
  const half = headDim / 2;
  for (let i = 0; i < half; i++) {
    const angle = position * invFreq[i];
    const c = Math.cos(angle), s = Math.sin(angle);
    for (let h = 0; h < nHeads; h++) {
      const a = h * headDim + i, b = a + half;
      const x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

export const silu = (x: number): number => x / (1 + Math.exp(-x));
