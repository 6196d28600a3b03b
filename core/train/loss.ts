/**
 * Objectives between the soft rows' attention maps (prediction) and the response tokens' maps
 * (target), both [layer][head][promptLength] means over rows.
 * - "mse": the paper's loss, mean squared difference scaled by the prompt length.
 * - "kl": KL(target || prediction) after renormalising each (layer, head) map over the prompt,
 *   averaged over layers and heads (shared/FINDINGS.md: better hit rate and fidelity).
 */
export type LossKind = "mse" | "kl";
export const LOSS_KINDS: readonly LossKind[] = ["mse", "kl"];

export interface LossResult {
  loss: number;
  /** dLoss/dPrediction, same layout as the prediction. */
  grad: Float64Array;
}

export function attentionLoss(
  kind: LossKind,
  pred: Float64Array,
  target: ArrayLike<number>,
  promptLength: number,
): LossResult {
  if (pred.length !== target.length || pred.length % promptLength !== 0) {
    throw new RangeError(`attentionLoss: prediction ${pred.length} and target ${target.length} differ`);
  }
  return kind === "mse" ? mse(pred, target, promptLength) : kl(pred, target, promptLength);
}

function mse(pred: Float64Array, target: ArrayLike<number>, L: number): LossResult {
  const n = pred.length, grad = new Float64Array(n);
  let loss = 0;
  for (let i = 0; i < n; i++) {
    const d = pred[i] - target[i];
    loss += d * d;
    grad[i] = 2 * d * L / n;
  }
  return { loss: loss * L / n, grad };
}

function kl(pred: Float64Array, target: ArrayLike<number>, L: number): LossResult {
  const maps = pred.length / L, grad = new Float64Array(pred.length);
  let loss = 0;
  for (let m = 0; m < maps; m++) {
    const o = m * L;
    let sp = 0, st = 0;
    for (let t = 0; t < L; t++) {
      sp += pred[o + t];
      st += target[o + t];
    }
    // With P = target/st, Q = pred/sp: dKL/dpred_t = (1 - P_t/Q_t) / sp.
    for (let t = 0; t < L; t++) {
      const p = target[o + t] / st, q = pred[o + t] / sp;
      if (p > 0) loss += p * Math.log(p / q);
      grad[o + t] = (1 - p / q) / sp / maps;
    }
  }
  return { loss: loss / maps, grad };
}
