/** SnapKV: the observation window's attention to earlier positions, pooled, GQA-averaged. */
import { type Method, scoreFromMass } from "./types.ts";

export const snapkv: Method = {
  name: "snapkv",
  description: "last-window queries' attention, max-pooled (SnapKV)",
  defaults: { window: 16, pooling: "none", kernel: 7 },
  source: (o, L) => ({ kind: "rows", from: L - Math.min(o.window, L) }),
  score: scoreFromMass,
  allocation: "uniform",
};

/** PyramidKV: SnapKV scores with per-layer budgets shrinking from the first layer to the last. */
export const pyramidkv: Method = {
  ...snapkv,
  name: "pyramidkv",
  description: "SnapKV scores, pyramid layer budgets",
  allocation: "pyramid",
};

/** AdaKV: SnapKV scores with head-adaptive budgets inside each layer. */
export const adakv: Method = {
  ...snapkv,
  name: "adakv",
  description: "SnapKV scores, head-adaptive budgets",
  allocation: "adaptive",
};
