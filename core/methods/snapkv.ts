/** SnapKV: the observation window's attention to earlier positions, pooled, GQA-averaged. */
import { type Method, scoreFromMass } from "./types.ts";

export const snapkv: Method = {
  name: "snapkv",
  description: "last-window queries' attention, max-pooled (SnapKV)",
  defaults: { window: 16, pooling: "none", kernel: 7 },
  source: (o, L) => ({ kind: "rows", from: L - Math.min(o.window, L) }),
  decoding: "rows",
  score: scoreFromMass,
  allocatable: true,
};

/**
 * PyramidKV: SnapKV with the `pyramid` allocation (per-layer budgets shrinking from the first layer to
 * the last). An alias: `{ method: "pyramidkv" }` keeps exactly what `{ method: "snapkv", allocation:
 * "pyramid" }` keeps.
 */
export const pyramidkv: Method = {
  ...snapkv,
  name: "pyramidkv",
  description: "SnapKV scores, pyramid layer budgets (snapkv + allocation pyramid)",
  defaults: { ...snapkv.defaults, allocation: "pyramid" },
};

/** AdaKV: SnapKV with the `adaptive` allocation (head-adaptive budgets inside each layer). An alias. */
export const adakv: Method = {
  ...snapkv,
  name: "adakv",
  description: "SnapKV scores, head-adaptive budgets (snapkv + allocation adaptive)",
  defaults: { ...snapkv.defaults, allocation: "adaptive" },
};
