/** Every KV-compression method by name. Adding one: a small module and a line here. */
import { h2o, judgeq, lookahead, tova } from "./attention.ts";
import { full, knorm, random, streamingLlm } from "./simple.ts";
import { adakv, pyramidkv, snapkv } from "./snapkv.ts";
import type { Method, MethodOptions } from "./types.ts";

export const METHODS: Record<string, Method> = Object.fromEntries(
  [full, random, streamingLlm, h2o, snapkv, pyramidkv, adakv, tova, knorm, lookahead, judgeq].map((
    m,
  ) => [m.name, m]),
);

export const METHOD_NAMES = Object.keys(METHODS);

/** Options every method starts from before its own defaults and the request's values. */
export const GLOBAL_DEFAULTS: Omit<MethodOptions, "budget"> = {
  window: 16,
  pooling: "none",
  kernel: 7,
  gqa: "mean",
  sinks: 4,
  normalize: false,
  seed: 0,
  beta: 20,
  floor: 0.2,
  lookaheadTokens: 8,
  allocation: "uniform",
};
