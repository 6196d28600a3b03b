/** Every kernel of the soft-row pass and its reverse mode for one model, compiled once per trainer. */
import type { LossKind } from "../../core/train/loss.ts";
import { attentionBackDef, attentionDef, keyValueBackDef, softScoresBackDef } from "./attention.ts";
import { matmulDef, type MatmulSpec } from "./matmul.ts";
import { lossDef, mapDef, rmsBackDef } from "./misc.ts";
import { PipelineCache } from "../pipelines.ts";
import { compile, type Kernel } from "./program.ts";
import { qkvWidth, type Shape } from "./shape.ts";

export interface Product {
  kernel: Kernel;
  spec: MatmulSpec;
}

export interface TrainKernels {
  // forward
  qkv: Product;
  attention: Kernel;
  attentionLast: Kernel;
  map: Kernel;
  o: Product;
  gu: Product;
  down: Product;
  loss: Record<LossKind, Kernel>;
  // backward
  swigluBack: Product;
  guBack: Product;
  oBack: Product;
  attentionBack: Kernel;
  attentionBackLast: Kernel;
  softBack: Kernel;
  softBackLast: Kernel;
  kvBack: Kernel;
  kvBackLast: Kernel;
  qkvBack: Product;
  /** RMSNorm backward with/without the residual gradient, written or accumulated. */
  rmsBack: Record<"plain" | "res" | "acc" | "resAcc", Kernel>;
}

export function compileKernels(device: GPUDevice, s: Shape, bias: boolean): TrainKernels {
  const cache = new PipelineCache(device);
  const c = (d: Parameters<typeof compile>[1]) => compile(cache, d);
  const mm = (spec: MatmulSpec): Product => ({ kernel: c(matmulDef(s, spec)), spec });
  const nq = qkvWidth(s), qw = s.H * s.HD;
  return {
    qkv: mm({ mode: "qkv", K: s.D, N: nq, bias }),
    attention: c(attentionDef(s, true)),
    attentionLast: c(attentionDef(s, false)),
    map: c(mapDef(s)),
    o: mm({ mode: "plain", K: qw, N: s.D, residual: true }),
    gu: mm({ mode: "swiglu", K: s.D, N: 2 * s.F }),
    down: mm({ mode: "plain", K: s.F, N: s.D, residual: true }),
    loss: { mse: c(lossDef(s, "mse")), kl: c(lossDef(s, "kl")) },
    swigluBack: mm({ mode: "swigluBack", K: s.D, N: s.F }),
    guBack: mm({ mode: "plain", K: 2 * s.F, N: s.D }),
    oBack: mm({ mode: "plain", K: s.D, N: qw }),
    attentionBack: c(attentionBackDef(s, true)),
    attentionBackLast: c(attentionBackDef(s, false)),
    softBack: c(softScoresBackDef(s, true)),
    softBackLast: c(softScoresBackDef(s, false)),
    kvBack: c(keyValueBackDef(s, true)),
    kvBackLast: c(keyValueBackDef(s, false)),
    qkvBack: mm({ mode: "plain", K: nq, N: s.D }),
    rmsBack: {
      plain: c(rmsBackDef(s, false, false)),
      res: c(rmsBackDef(s, true, false)),
      acc: c(rmsBackDef(s, false, true)),
      resAcc: c(rmsBackDef(s, true, true)),
    },
  };
}
