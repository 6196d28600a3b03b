/** Adam with a warmup + cosine learning-rate schedule and global-norm gradient clipping, all pure. */

export interface AdamState {
  /** Updates done so far. */
  t: number;
  m: Float64Array;
  v: Float64Array;
}

export interface AdamOptions {
  beta1: number;
  beta2: number;
  eps: number;
}

export const ADAM_DEFAULTS: AdamOptions = { beta1: 0.9, beta2: 0.999, eps: 1e-8 };

export const adamInit = (size: number): AdamState => ({
  t: 0,
  m: new Float64Array(size),
  v: new Float64Array(size),
});

export interface Schedule {
  lr: number;
  steps: number;
  /** Linear warmup steps (0: none). */
  warmup: number;
  /** The cosine decays to lr * minFactor. */
  minFactor: number;
}

/** Learning rate of update `step` (0-based). */
export function scheduledLr(s: Schedule, step: number): number {
  if (step < s.warmup) return s.lr * (step + 1) / s.warmup;
  const span = Math.max(1, s.steps - s.warmup);
  const progress = Math.min(1, (step - s.warmup) / span);
  return s.lr * (s.minFactor + (1 - s.minFactor) * 0.5 * (1 + Math.cos(Math.PI * progress)));
}

/** Scales the gradient down to `maxNorm` when above it (maxNorm <= 0: no clipping). */
export function clipByNorm(grad: Float64Array, maxNorm: number): { grad: Float64Array; norm: number } {
  let ss = 0;
  for (let i = 0; i < grad.length; i++) ss += grad[i] * grad[i];
  const norm = Math.sqrt(ss);
  if (maxNorm <= 0 || norm <= maxNorm) return { grad, norm };
  const f = maxNorm / norm;
  return { grad: grad.map((g) => g * f), norm };
}

/** One Adam update; returns new parameters and state (inputs untouched). */
export function adamStep(
  params: Float64Array,
  grad: Float64Array,
  state: AdamState,
  lr: number,
  o: AdamOptions = ADAM_DEFAULTS,
): { params: Float64Array; state: AdamState } {
  const t = state.t + 1;
  const m = new Float64Array(params.length),
    v = new Float64Array(params.length),
    next = new Float64Array(params.length);
  const c1 = 1 - Math.pow(o.beta1, t), c2 = 1 - Math.pow(o.beta2, t);
  for (let i = 0; i < params.length; i++) {
    m[i] = o.beta1 * state.m[i] + (1 - o.beta1) * grad[i];
    v[i] = o.beta2 * state.v[i] + (1 - o.beta2) * grad[i] * grad[i];
    next[i] = params[i] - lr * (m[i] / c1) / (Math.sqrt(v[i] / c2) + o.eps);
  }
  return { params: next, state: { t, m, v } };
}
