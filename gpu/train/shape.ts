/** Model sizes the training kernels bake in, and the shapes they support. */
import type { ModelConfig } from "../../core/config.ts";
import { lit } from "./program.ts";

export interface Shape {
  D: number;
  H: number;
  G: number;
  HD: number;
  F: number;
  NL: number;
  eps: number;
}

export const shapeOf = (c: ModelConfig): Shape => ({
  D: c.dim,
  H: c.nHeads,
  G: c.nKvHeads,
  HD: c.headDim,
  F: c.hiddenDim,
  NL: c.nLayers,
  eps: c.rmsNormEps,
});

/** Width of the fused q | k | v rows. */
export const qkvWidth = (s: Shape) => (s.H + 2 * s.G) * s.HD;

/** Why the kernels cannot run this model (vec4 rows and two RoPE pairs per vec4), or null. */
export function unsupported(c: ModelConfig): string | null {
  for (
    const [name, v] of [["hidden_size", c.dim], ["intermediate_size", c.hiddenDim], ["head_dim", c.headDim]]
  ) {
    if ((v as number) % 4 !== 0) return `${name} ${v} is not a multiple of 4`;
  }
  if (c.nHeads % c.nKvHeads !== 0) return `${c.nHeads} heads do not group over ${c.nKvHeads} KV heads`;
  return null;
}

/** WGSL constants shared by the kernels. */
export function consts(s: Shape): string {
  const group = s.H / s.G;
  return `const D = ${s.D}u; const H = ${s.H}u; const G = ${s.G}u; const HD = ${s.HD}u; const HALF = ${
    s.HD / 2
  }u;
const HD4 = ${s.HD / 4}u; const F = ${s.F}u; const NQ = ${qkvWidth(s)}u; const QW = ${s.H * s.HD}u;
const KW = ${s.G * s.HD}u; const GROUP = ${group}u; const NL = ${s.NL}u; const SCALE = ${
    lit(1 / Math.sqrt(s.HD))
  };`;
}
