/**
 * The compiled kernels of one model on one device: every kernel the forward pass, the samplers, the
 * cache compaction and the scorers dispatch, compiled once when the executor is created.
 */
import type { ModelConfig } from "../../core/config.ts";
import type { Kernel, PipelineCache } from "../pipelines.ts";
import type { GpuWeightFormat } from "../../core/weight_formats.ts";
import { attentionCombine, attentionPartial, attentionRows } from "./attention.ts";
import { matmulWorkgroup, PREFILL_TR } from "./common.ts";
import { matmul, type MatmulMode } from "./matmul.ts";
import { argmax, embed, keyNorm, kvGather, mass, massStats, rmsNorm } from "./misc.ts";
import { sample } from "./sample.ts";

/** A projection kernel per rows-per-invocation: 1 (decode) and PREFILL_TR (prefill). */
export type ByRows = Record<number, Kernel>;

export interface Kernels {
  /** qkv (norm, bias, RoPE, cache write), o and down (residual), gate/up (swiglu), LM head (store). */
  mm: Record<"qkv" | "o" | "swiglu" | "down" | "lm", ByRows>;
  attnRows: Kernel;
  attnPartial: Kernel;
  attnCombine: Kernel;
  rmsNorm: Kernel;
  embed: Kernel;
  argmax: Kernel;
  sample: Kernel;
  gather: Kernel;
  keyNorm: Kernel;
  massStats: Kernel;
  mass: Kernel;
}

export interface KernelOptions {
  format: GpuWeightFormat;
  /** The QKV projection adds a bias (Qwen-style models). */
  bias: boolean;
  /** RMSNorm as its own dispatch (else fused into the projections). */
  separateNorm: boolean;
}

export function compileKernels(p: PipelineCache, c: ModelConfig, o: KernelOptions): Kernels {
  const f16 = o.format === "f16", fused = !o.separateNorm;
  const projection = (name: string, mode: MatmulMode, K: number, N: number, norm: boolean, bias = false) => {
    const at = (TR: number) =>
      p.get(matmul(`mm_${name}_${TR}_${o.format}`, {
        mode,
        K,
        N,
        TR,
        norm,
        eps: c.rmsNormEps,
        bias,
        nHeads: c.nHeads,
        nKvHeads: c.nKvHeads,
        headDim: c.headDim,
        workgroup: matmulWorkgroup(N),
        f16,
      }));
    return { 1: at(1), [PREFILL_TR]: at(PREFILL_TR) };
  };
  const qd = c.nHeads * c.headDim, nqkv = qd + 2 * c.nKvHeads * c.headDim;
  const att = { nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim };
  return {
    mm: {
      qkv: projection("qkv", "qkv", c.dim, nqkv, fused, o.bias),
      o: projection("o", "residual", qd, c.dim, false),
      swiglu: projection("swiglu", "swiglu", c.dim, c.hiddenDim, fused),
      down: projection("down", "residual", c.hiddenDim, c.dim, false),
      lm: projection("lm", "store", c.dim, c.vocabSize, fused),
    },
    attnRows: p.get(attentionRows({ ...att, workgroup: 64 })),
    attnPartial: p.get(attentionPartial({ ...att, workgroup: 32 })),
    attnCombine: p.get(attentionCombine({ ...att, workgroup: 64 })),
    rmsNorm: p.get(rmsNorm(c.dim, c.rmsNormEps, 8)),
    embed: p.get(embed(c.dim, 64, f16)),
    // Eight lanes: one SIMD group on llvmpipe, where wider workgroups make barriers expensive.
    argmax: p.get(argmax(c.vocabSize, 8)),
    sample: p.get(sample(c.vocabSize, 8)),
    gather: p.get(kvGather(c.headDim, 64)),
    keyNorm: p.get(keyNorm(c.headDim, 64)),
    massStats: p.get(massStats({ ...att, workgroup: 64 })),
    mass: p.get(mass({ ...att, workgroup: 64 })),
  };
}
