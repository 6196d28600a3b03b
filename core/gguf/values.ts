/** GGUF metadata values: the 13 value types of the format and their in-memory form. */

/** GGUF metadata value type ids (gguf.h's `enum gguf_type`). */
export const GGUF_VALUE_TYPE = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

export type GgufScalarType = Exclude<keyof typeof GGUF_VALUE_TYPE, "array">;

/** A scalar: numbers for the 8-32 bit and float types, bigint for u64/i64. */
export type GgufScalar =
  | { type: "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64"; value: number }
  | { type: "u64" | "i64"; value: bigint }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string };

/** An array: numeric items as a plain array of numbers (bigint for 64-bit ints), strings, or nested arrays. */
export type GgufArray =
  | {
    type: "array";
    itemType: "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64";
    value: ArrayLike<number>;
  }
  | { type: "array"; itemType: "u64" | "i64"; value: bigint[] }
  | { type: "array"; itemType: "bool"; value: boolean[] }
  | { type: "array"; itemType: "string"; value: string[] }
  | { type: "array"; itemType: "array"; value: GgufArray[] };

export type GgufValue = GgufScalar | GgufArray;

/** Fixed byte sizes of scalar types (strings are variable). */
export const SCALAR_BYTES: Record<Exclude<GgufScalarType, "string">, number> = {
  u8: 1,
  i8: 1,
  u16: 2,
  i16: 2,
  u32: 4,
  i32: 4,
  f32: 4,
  bool: 1,
  u64: 8,
  i64: 8,
  f64: 8,
};

/** Type name of a value type id, or null for an id the format does not define. */
export function valueTypeName(id: number): keyof typeof GGUF_VALUE_TYPE | null {
  for (const [k, v] of Object.entries(GGUF_VALUE_TYPE)) {
    if (v === id) return k as keyof typeof GGUF_VALUE_TYPE;
  }
  return null;
}
