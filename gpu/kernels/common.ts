/** WGSL shared by every kernel: the per-dispatch parameter record and the per-binding static record. */

/**
 * One record per dispatch group, selected with a dynamic uniform offset:
 * rows: rows in this dispatch; pos0: position of row 0; step: rows already appended in this
 * submission (the K/V write index is count + step + r); rowStart: first input row read;
 * outRow: first output row written (logits); inRow: logits row a sampler reads.
 */
export const PARAMS_WGSL = `
struct Params { rows: u32, pos0: u32, step: u32, rowStart: u32, outRow: u32, inRow: u32, a: u32, b: u32 }
struct Static { nOff: u32, n4: u32, layer: u32, extra: u32 }
`;

export interface StepParams {
  rows: number;
  pos0: number;
  step: number;
  rowStart?: number;
  outRow?: number;
  inRow?: number;
  a?: number;
  b?: number;
}

export const PARAMS_WORDS = 8;

/** Invocations per workgroup of the projection kernels, and rows per invocation in prefill. */
export const MATMUL_WG = 64;

/**
 * Workgroup size of a projection with N output columns (N/4 invocations per row group). llvmpipe hands
 * whole workgroups to its threads, so a narrow output (the o and down projections' 768 columns: 3
 * groups of 64 for 2 threads) leaves a thread idle part of the time; 32-wide groups split it evenly,
 * and the tiny projections of a model like stories260K (16 to 43 invocations) get groups of 8 (one
 * SIMD group) so that they still spread over the threads.
 */
export function matmulWorkgroup(N: number): number {
  const invocations = N / 4;
  if (invocations / MATMUL_WG >= 8) return MATMUL_WG;
  return invocations >= 4 * 32 ? 32 : 8;
}
export const PREFILL_TR = 4;

export function encodeParams(into: Uint32Array, at: number, p: StepParams) {
  into.set(
    [p.rows, p.pos0, p.step, p.rowStart ?? 0, p.outRow ?? 0, p.inRow ?? 0, p.a ?? 0, p.b ?? 0],
    at,
  );
}

/** A float literal WGSL accepts. */
export const f = (x: number) => {
  const s = String(x);
  return /[.eE]/.test(s) ? s : s + ".0";
};

/** Repeats a template for i = 0..n-1 (manual unrolling: llvmpipe keeps the values in registers). */
export const rep = (n: number, fn: (i: number) => string, sep = "\n") =>
  Array.from({ length: n }, (_, i) => fn(i)).join(sep);
