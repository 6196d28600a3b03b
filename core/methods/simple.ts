/** Methods that need no attention: the full cache, random, StreamingLLM, K-norm. */
import { nextUniform, seedState } from "../sampling.ts";
import type { Method } from "./types.ts";

const perKvHead = (c: { nLayers: number; nKvHeads: number }, L: number) =>
  new Float32Array(c.nLayers * c.nKvHeads * L);

export const full: Method = {
  name: "full",
  description: "no compression",
  defaults: { window: 0 },
  source: () => ({ kind: "none" }),
  score: (i) => perKvHead(i.config, i.length),
};

export const random: Method = {
  name: "random",
  description: "uniformly random positions (seeded)",
  defaults: { window: 0 },
  source: () => ({ kind: "none" }),
  decoding: "none",
  score: (i, o) => {
    const s = perKvHead(i.config, i.length);
    let state = seedState(o.seed);
    for (let k = 0; k < s.length; k++) [s[k], state] = nextUniform(state);
    return s;
  },
};

/**
 * StreamingLLM: the first `sinks` positions score highest, then the more recent the higher. At prefill the
 * window (budget - sinks) keeps the recent ones; during decoding, where the window is the buffer, the
 * scores do.
 */
export const streamingLlm: Method = {
  name: "streaming_llm",
  description: "attention sinks plus the most recent positions",
  defaults: { sinks: 4 },
  windowFor: (budget, o) => Math.max(0, budget - o.sinks),
  fixedWindow: "streaming_llm keeps budget - sinks recent positions; set sinks instead",
  source: () => ({ kind: "none" }),
  decoding: "none",
  score: (i, o) => {
    const s = perKvHead(i.config, i.length);
    for (let k = 0; k < s.length; k++) {
      const t = k % i.length;
      s[k] = t < o.sinks ? i.length : t;
    }
    return s;
  },
};

/** K-norm: keys with a low L2 norm draw attention; keep the lowest norms. */
export const knorm: Method = {
  name: "knorm",
  description: "lowest key norms",
  defaults: { window: 0 },
  source: () => ({ kind: "keys" }),
  decoding: "keys",
  score: (i) => i.keyNorms!.map((n) => -n),
};
