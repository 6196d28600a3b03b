/**
 * ggml tensor types as GGUF files number them (ggml.h's `enum ggml_type`): names for every id, and the
 * block layout (values per block, bytes per block) of the types this runtime reads or writes.
 */

/** Type ids this runtime reads (and, for F32/F16/Q8_0/Q4_0, writes). */
export const GGML_TYPE = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q8_0: 8,
  Q4_K: 12,
  Q6_K: 14,
  BF16: 30,
} as const;

/** Every id ggml has assigned (31-33 were retired), for errors that name a type this runtime lacks. */
const NAMES: Record<number, string> = {
  0: "F32",
  1: "F16",
  2: "Q4_0",
  3: "Q4_1",
  6: "Q5_0",
  7: "Q5_1",
  8: "Q8_0",
  9: "Q8_1",
  10: "Q2_K",
  11: "Q3_K",
  12: "Q4_K",
  13: "Q5_K",
  14: "Q6_K",
  15: "Q8_K",
  16: "IQ2_XXS",
  17: "IQ2_XS",
  18: "IQ3_XXS",
  19: "IQ1_S",
  20: "IQ4_NL",
  21: "IQ3_S",
  22: "IQ2_S",
  23: "IQ4_XS",
  24: "I8",
  25: "I16",
  26: "I32",
  27: "I64",
  28: "F64",
  29: "IQ1_M",
  30: "BF16",
  34: "TQ1_0",
  35: "TQ2_0",
  39: "MXFP4",
};

/** The name of a ggml type id, or null when ggml has no such type. */
export function ggmlTypeName(id: number): string | null {
  return NAMES[id] ?? null;
}

export interface BlockLayout {
  /** Values per block (1 for plain floats). */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
}

/** Block layouts of the supported types (ggml-common.h's block structs: f16 scales, then quants). */
const LAYOUTS: Record<number, BlockLayout> = {
  [GGML_TYPE.F32]: { blockSize: 1, typeSize: 4 },
  [GGML_TYPE.F16]: { blockSize: 1, typeSize: 2 },
  [GGML_TYPE.BF16]: { blockSize: 1, typeSize: 2 },
  [GGML_TYPE.Q8_0]: { blockSize: 32, typeSize: 2 + 32 }, // d, qs[32]
  [GGML_TYPE.Q4_0]: { blockSize: 32, typeSize: 2 + 16 }, // d, qs[16] (two 4-bit values a byte)
  [GGML_TYPE.Q4_K]: { blockSize: 256, typeSize: 2 + 2 + 12 + 128 }, // d, dmin, scales[12], qs[128]
  [GGML_TYPE.Q6_K]: { blockSize: 256, typeSize: 128 + 64 + 16 + 2 }, // ql, qh, scales (i8), d
};

/** Block layout of a supported type, or null. */
export function blockLayout(id: number): BlockLayout | null {
  return LAYOUTS[id] ?? null;
}

/** Names of the supported types, for error messages. */
export const SUPPORTED_TYPE_NAMES: string[] = Object.keys(LAYOUTS).map((id) => NAMES[Number(id)]);

/** Bytes of a row of `cols` values, or null when `cols` is not a whole number of blocks. */
export function rowBytes(id: number, cols: number): number | null {
  const l = LAYOUTS[id];
  if (!l || cols % l.blockSize !== 0) return null;
  return (cols / l.blockSize) * l.typeSize;
}
