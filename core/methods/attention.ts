/** Attention-based methods other than SnapKV's family: H2O, TOVA, Lookahead Q-Cache, Judge Q. */
import { type Method, scoreFromMass } from "./types.ts";

/** H2O: column sums over all causal prompt rows (optionally per seeing row), plus a recent window. */
export const h2o: Method = {
  name: "h2o",
  description: "heavy hitters: attention column sums over all prompt rows, plus recent",
  defaults: { pooling: "none", normalize: false },
  windowFor: (budget) => Math.floor(budget / 2),
  source: () => ({ kind: "rows", from: 0 }),
  decoding: "running",
  score: (inputs, o) => {
    if (!o.normalize) return scoreFromMass(inputs, o);
    // Key t is seen by rows max(t, firstRow)..L-1: divide its sum by that count.
    const L = inputs.length, mass = inputs.mass!.slice();
    for (let k = 0; k < mass.length; k++) {
      const t = k % L;
      mass[k] /= L - Math.max(t, inputs.firstRow);
    }
    return scoreFromMass(inputs, o, mass);
  },
  allocatable: true,
};

/** TOVA: the last prompt token's attention. */
export const tova: Method = {
  name: "tova",
  description: "the last prompt token's attention",
  defaults: { window: 0, pooling: "none" },
  source: (_o, L) => ({ kind: "rows", from: L - 1 }),
  decoding: "last_row",
  score: scoreFromMass,
  allocatable: true,
};

/**
 * Lookahead Q-Cache: draft-compress with SnapKV, greedily decode pseudo tokens, then score the full
 * prompt with their queries plus the last window's.
 */
export const lookahead: Method = {
  name: "lookahead",
  description: "pseudo lookahead queries decoded from a SnapKV-compressed draft",
  defaults: { window: 8, pooling: "none", lookaheadTokens: 8 },
  source: (o, L) => ({ kind: "lookahead", from: L - Math.min(o.window, L) }),
  score: scoreFromMass,
  allocatable: true,
};

/** Judge Q: the trained soft tokens' attention over the prompt. */
export const judgeq: Method = {
  name: "judgeq",
  description: "trained soft-token queries (Judge Q)",
  defaults: { window: 0, pooling: "none" },
  source: () => ({ kind: "soft" }),
  decoding: "soft",
  score: scoreFromMass,
  allocatable: true,
};
