/**
 * What the soft-row pass needs from a frozen model: float64 copies of the weights, RoPE frequencies,
 * and the prompt's fixed per-layer K/V (taken from the CPU reference executor's cache).
 */
import { type ModelConfig, ropeInverseFrequencies } from "../config.ts";
import type { CpuKvCache } from "../cpu/kv_cache.ts";
import type { ModelWeights } from "../weights.ts";
import type { LayerKv } from "./ops.ts";

export interface TrainLayer {
  attnNorm: Float64Array;
  wq: Float64Array;
  wk: Float64Array;
  wv: Float64Array;
  bq: Float64Array | null;
  bk: Float64Array | null;
  bv: Float64Array | null;
  wo: Float64Array;
  mlpNorm: Float64Array;
  wGate: Float64Array;
  wUp: Float64Array;
  wDown: Float64Array;
}

export interface TrainModel {
  config: ModelConfig;
  layers: TrainLayer[];
  invFreq: Float64Array;
}

const f64 = (a: Float32Array) => Float64Array.from(a);
const opt = (a: Float32Array | null) => (a ? f64(a) : null);

export function trainModel(w: ModelWeights): TrainModel {
  return {
    config: w.config,
    invFreq: ropeInverseFrequencies(w.config),
    layers: w.layers.map((l) => ({
      attnNorm: f64(l.attnNorm),
      wq: f64(l.wq),
      wk: f64(l.wk),
      wv: f64(l.wv),
      bq: opt(l.bq),
      bk: opt(l.bk),
      bv: opt(l.bv),
      wo: f64(l.wo),
      mlpNorm: f64(l.mlpNorm),
      wGate: f64(l.wGate),
      wUp: f64(l.wUp),
      wDown: f64(l.wDown),
    })),
  };
}

/** A prompt's K/V per layer: constant with respect to the soft embeddings (causality). */
export interface PromptKv {
  length: number;
  layers: LayerKv[];
}

/**
 * Copies positions 0..length-1 out of a CPU cache that holds the whole unpruned prompt. Throws when
 * the cache was pruned (its entries would not be the prompt in order).
 */
export function promptKvFromCache(cache: CpuKvCache, length: number): PromptKv {
  const hd = cache.headDim;
  const layers: LayerKv[] = [];
  for (let l = 0; l < cache.nLayers; l++) {
    const keys: Float64Array[] = [], values: Float64Array[] = [];
    for (let g = 0; g < cache.nKvHeads; g++) {
      const s = cache.slot(l, g);
      if (cache.counts[s] < length || cache.positions[s][length - 1] !== length - 1) {
        throw new Error(`promptKvFromCache: layer ${l} head ${g} does not hold positions 0..${length - 1}`);
      }
      keys.push(Float64Array.from(cache.keys[s].subarray(0, length * hd)));
      values.push(Float64Array.from(cache.values[s].subarray(0, length * hd)));
    }
    layers.push({ keys, values });
  }
  return { length, layers };
}
