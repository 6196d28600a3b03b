/**
 * The 3-row groups the int8 and q8_0 GEMMs read (gemmI8, gemmQ8 in wasm/assembly/kernels.ts): one layout for
 * both formats' values, apart from wasm/weights.ts (which stores them) and wasm/q8_0.ts (its blocks).
 */

/** K rounded up to 16: the bytes an int8 row takes in memory (zeros past K). */
export const int8RowBytes = (cols: number): number => Math.ceil(cols / 16) * 16;

/**
 * An int8 matrix [rows, cols] (row-major) as the kernels read it: rows in groups of three interleaved by 16
 * bytes (16 of row n, 16 of n + 1, 16 of n + 2, then the next 16 of each), so that the GEMM's three-row
 * tile streams one sequential run of bytes (three rows read side by side streamed less than half as fast);
 * then the last rows mod 3 one after another. Every row is padded with zeros to int8RowBytes(cols).
 */
export function int8Layout(q: Int8Array, rows: number, cols: number): Int8Array {
  const k16 = int8RowBytes(cols), out = new Int8Array(rows * k16);
  const grouped = rows - (rows % 3);
  for (let r = 0; r < rows; r++) {
    const row = q.subarray(r * cols, (r + 1) * cols);
    if (r >= grouped) {
      out.set(row, r * k16);
      continue;
    }
    const group = (r - (r % 3)) * k16, lane = (r % 3) * 16;
    for (let k = 0; k < cols; k += 16) out.set(row.subarray(k, k + 16), group + k * 3 + lane);
  }
  return out;
}
