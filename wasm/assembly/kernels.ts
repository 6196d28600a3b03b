// AssemblyScript source of the fast CPU executor's kernels (compiled by wasm/build.ts to
// wasm/kernels.wasm: 128-bit SIMD, relaxed SIMD (FMA, i8 dot products), shared memory; and to
// wasm/kernels_simd.wasm, the fallback for engines without relaxed SIMD, where ASC_FEATURE_RELAXED_SIMD
// is false). Every kernel takes the calling
// thread's index `t` and the thread count `nt` last and does only its share, so the same call runs
// on one thread or on a pool. Each output element is computed the same way whatever the split
// (same accumulation order), so results do not depend on the thread count.

// ---- partitioning --------------------------------------------------------------------------

/**
 * Where the GEMMs' and siluMul's shares of the output columns start: a multiple of 8 (f32 prefill's packed
 * panels, so no share ends in a part panel), of 4 (siluMul's vectors) and of 3 (int8's and q8_0's groups of
 * three rows), so that chunk t's siluMul reads exactly the gate and up columns chunk t's GEMMs wrote in the
 * same dispatch.
 */
const COLUMNS: i32 = 24;

/** Start of thread t's share of n items, in whole groups of `align`. */

@inline function share(n: i32, t: i32, nt: i32, align: i32): i32 {
  const groups = (n + align - 1) / align;
  const g = <i32>((<i64>groups * t) / nt);
  return min(g * align, n);
}

// ---- vector helpers ------------------------------------------------------------------------

/**
 * a x b + c: fused (relaxed SIMD) in the main module; a multiply then an add in the plain-SIMD fallback
 * module built from this same source for engines without relaxed SIMD (wasm/build.ts).
 */
@inline function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  else return f32x4.add(f32x4.mul(a, b), c);
}

/** c - a x b, as madd. */
@inline function nmadd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_nmadd(a, b, c);
  else return f32x4.sub(c, f32x4.mul(a, b));
}

/** Horizontal sum in a fixed order: (l0 + l2) + (l1 + l3). */
@inline function hsum(a: v128): f32 {
  const s = f32x4.add(a, v128.shuffle<i32>(a, a, 2, 3, 0, 1));
  return f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1);
}

/** [hsum(a), hsum(b), hsum(c), hsum(d)] with the same association as hsum. */
@inline function hsum4(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = f32x4.add(v128.shuffle<i32>(a, b, 0, 4, 1, 5), v128.shuffle<i32>(a, b, 2, 6, 3, 7));
  const cd = f32x4.add(v128.shuffle<i32>(c, d, 0, 4, 1, 5), v128.shuffle<i32>(c, d, 2, 6, 3, 7));
  // ab = [a0+a2, b0+b2, a1+a3, b1+b3]
  return f32x4.add(v128.shuffle<i32>(ab, cd, 0, 1, 4, 5), v128.shuffle<i32>(ab, cd, 2, 3, 6, 7));
}

/**
 * Four f16 values (finite), sign-extended to i32 lanes, to f32: shifted left 13, the sign's copies in bits
 * 30..28 cleared, leaving sign | exponent | mantissa in f32 places with the exponent 112 short; a multiply
 * by 2^112 rebiases it (subnormal halves come out right as well).
 */
@inline function halfToFloat(s: v128): v128 {
  const bits = v128.and(i32x4.shl(s, 13), i32x4.splat(0x8fffe000));
  return f32x4.mul(bits, f32x4.splat(5.192296858534828e33));
}

@inline function halfToFloatScalar(h: u32): f32 {
  const mag = reinterpret<f32>((h & 0x7fff) << 13) * <f32>5.192296858534828e33;
  return reinterpret<f32>(reinterpret<u32>(mag) | ((h & 0x8000) << 16));
}

/** e^x for four lanes: 2^n x p(r), r = x - n ln2, |r| <= ln2/2, degree-6 polynomial (~2 ulp). */
@inline function exp4(x: v128): v128 {
  x = f32x4.max(f32x4.min(x, f32x4.splat(88.0)), f32x4.splat(-87.0));
  const n = f32x4.nearest(f32x4.mul(x, f32x4.splat(1.4426950408889634)));
  let r = nmadd(n, f32x4.splat(0.693145751953125), x);
  r = nmadd(n, f32x4.splat(1.428606765330187e-6), r);
  let p = f32x4.splat(1.3888889e-3);
  p = madd(p, r, f32x4.splat(8.3333333e-3));
  p = madd(p, r, f32x4.splat(4.1666667e-2));
  p = madd(p, r, f32x4.splat(1.6666667e-1));
  p = madd(p, r, f32x4.splat(0.5));
  p = madd(p, r, f32x4.splat(1.0));
  p = madd(p, r, f32x4.splat(1.0));
  const scale = i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(n), i32x4.splat(127)), 23);
  return f32x4.mul(p, scale);
}

@inline function expScalar(x: f32): f32 {
  return f32x4.extract_lane(exp4(f32x4.splat(x)), 0);
}

// ---- GEMM: y[m, n] (+)= sum_k x[m, k] w[n, k] + bias[n] ----------------------------------------

/** Dot products of 4 weight rows with 2 input rows, stored at y (row stride ldy). */
@inline function tile4x2(
  x0: usize, x1: usize, w0: usize, kStride: usize, K: i32, y0: usize, y1: usize, scale: usize, bias: usize,
  acc: i32,
): void {
  const w1 = w0 + kStride, w2 = w1 + kStride, w3 = w2 + kStride;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0), b3 = f32x4.splat(0);
  const K4 = K & ~3, K16 = K & ~15;
  // 16 floats per step: one address computation per row, immediate offsets for the four vectors.
  for (let k = 0; k < K16; k += 16) {
    const o = <usize>k << 2;
    const pa = x0 + o, pb = x1 + o, p0 = w0 + o, p1 = w1 + o, p2 = w2 + o, p3 = w3 + o;
    {
      const xa = v128.load(pa, 0), xb = v128.load(pb, 0);
      const v0 = v128.load(p0, 0), v1 = v128.load(p1, 0), v2 = v128.load(p2, 0), v3 = v128.load(p3, 0);
      a0 = madd(v0, xa, a0);
      b0 = madd(v0, xb, b0);
      a1 = madd(v1, xa, a1);
      b1 = madd(v1, xb, b1);
      a2 = madd(v2, xa, a2);
      b2 = madd(v2, xb, b2);
      a3 = madd(v3, xa, a3);
      b3 = madd(v3, xb, b3);
    }
    {
      const xa = v128.load(pa, 16), xb = v128.load(pb, 16);
      const v0 = v128.load(p0, 16), v1 = v128.load(p1, 16), v2 = v128.load(p2, 16), v3 = v128.load(p3, 16);
      a0 = madd(v0, xa, a0);
      b0 = madd(v0, xb, b0);
      a1 = madd(v1, xa, a1);
      b1 = madd(v1, xb, b1);
      a2 = madd(v2, xa, a2);
      b2 = madd(v2, xb, b2);
      a3 = madd(v3, xa, a3);
      b3 = madd(v3, xb, b3);
    }
    {
      const xa = v128.load(pa, 32), xb = v128.load(pb, 32);
      const v0 = v128.load(p0, 32), v1 = v128.load(p1, 32), v2 = v128.load(p2, 32), v3 = v128.load(p3, 32);
      a0 = madd(v0, xa, a0);
      b0 = madd(v0, xb, b0);
      a1 = madd(v1, xa, a1);
      b1 = madd(v1, xb, b1);
      a2 = madd(v2, xa, a2);
      b2 = madd(v2, xb, b2);
      a3 = madd(v3, xa, a3);
      b3 = madd(v3, xb, b3);
    }
    {
      const xa = v128.load(pa, 48), xb = v128.load(pb, 48);
      const v0 = v128.load(p0, 48), v1 = v128.load(p1, 48), v2 = v128.load(p2, 48), v3 = v128.load(p3, 48);
      a0 = madd(v0, xa, a0);
      b0 = madd(v0, xb, b0);
      a1 = madd(v1, xa, a1);
      b1 = madd(v1, xb, b1);
      a2 = madd(v2, xa, a2);
      b2 = madd(v2, xb, b2);
      a3 = madd(v3, xa, a3);
      b3 = madd(v3, xb, b3);
    }
  }
  for (let k = K16; k < K4; k += 4) {
    const o = <usize>k << 2;
    const xa = v128.load(x0 + o), xb = v128.load(x1 + o);
    const v0 = v128.load(w0 + o), v1 = v128.load(w1 + o), v2 = v128.load(w2 + o), v3 = v128.load(w3 + o);
    a0 = madd(v0, xa, a0);
    b0 = madd(v0, xb, b0);
    a1 = madd(v1, xa, a1);
    b1 = madd(v1, xb, b1);
    a2 = madd(v2, xa, a2);
    b2 = madd(v2, xb, b2);
    a3 = madd(v3, xa, a3);
    b3 = madd(v3, xb, b3);
  }
  let ra = hsum4(a0, a1, a2, a3), rb = hsum4(b0, b1, b2, b3);
  if (K4 < K) {
    let ta = f32x4.splat(0), tb = f32x4.splat(0);
    for (let k = K4; k < K; k++) {
      const o = <usize>k << 2;
      const wv = f32x4(load<f32>(w0 + o), load<f32>(w1 + o), load<f32>(w2 + o), load<f32>(w3 + o));
      ta = madd(wv, f32x4.splat(load<f32>(x0 + o)), ta);
      tb = madd(wv, f32x4.splat(load<f32>(x1 + o)), tb);
    }
    ra = f32x4.add(ra, ta);
    rb = f32x4.add(rb, tb);
  }
  if (scale) {
    const sv = v128.load(scale);
    ra = f32x4.mul(ra, sv);
    rb = f32x4.mul(rb, sv);
  }
  if (bias) {
    const bv = v128.load(bias);
    ra = f32x4.add(ra, bv);
    rb = f32x4.add(rb, bv);
  }
  if (acc) {
    ra = f32x4.add(ra, v128.load(y0));
    rb = f32x4.add(rb, v128.load(y1));
  }
  v128.store(y0, ra);
  v128.store(y1, rb);
}

/** One weight row with one input row, the same arithmetic as one lane of tile4x2. */
@inline function dot1(x0: usize, w0: usize, K: i32, y0: usize, scale: usize, bias: usize, acc: i32): void {
  let a = f32x4.splat(0);
  const K4 = K & ~3;
  for (let k = 0; k < K4; k += 4) {
    const o = <usize>k << 2;
    a = madd(v128.load(w0 + o), v128.load(x0 + o), a);
  }
  let r = hsum(a);
  if (K4 < K) {
    let ta = f32x4.splat(0);
    for (let k = K4; k < K; k++) {
      const o = <usize>k << 2;
      ta = madd(f32x4.splat(load<f32>(w0 + o)), f32x4.splat(load<f32>(x0 + o)), ta);
    }
    r += f32x4.extract_lane(ta, 0);
  }
  if (scale) r *= load<f32>(scale);
  if (bias) r += load<f32>(bias);
  if (acc) r += load<f32>(y0);
  store<f32>(y0, r);
}

/**
 * One input row against weight rows [n0, n1), each row read start to end before the next (decoding's
 * matrix-vector product): the rows then form one sequential run of memory, which a zen4 core streamed at
 * ~38 GB/s where four rows read side by side (tile4x1) streamed 16-20. Each dot keeps four chains (k mod
 * 16 in blocks of four), summed (c0 + c1) + (c2 + c3) and then as hsum; the K tail as dot1.
 */
function matvecF32(x: usize, w: usize, bias: usize, y: usize, n0: i32, n1: i32, K: i32, acc: i32): void {
  const ks = <usize>K << 2, K16 = K & ~15, K4 = K & ~3;
  for (let n = n0; n < n1; n++) {
    const wr = w + <usize>n * ks;
    let c0 = f32x4.splat(0), c1 = f32x4.splat(0), c2 = f32x4.splat(0), c3 = f32x4.splat(0);
    for (let k = 0; k < K16; k += 16) {
      const o = <usize>k << 2, p = wr + o, q = x + o;
      c0 = madd(v128.load(p), v128.load(q), c0);
      c1 = madd(v128.load(p, 16), v128.load(q, 16), c1);
      c2 = madd(v128.load(p, 32), v128.load(q, 32), c2);
      c3 = madd(v128.load(p, 48), v128.load(q, 48), c3);
    }
    for (let k = K16; k < K4; k += 4) {
      const o = <usize>k << 2;
      c0 = madd(v128.load(wr + o), v128.load(x + o), c0);
    }
    let r = hsum(f32x4.add(f32x4.add(c0, c1), f32x4.add(c2, c3)));
    if (K4 < K) {
      let ta = f32x4.splat(0);
      for (let k = K4; k < K; k++) {
        const o = <usize>k << 2;
        ta = madd(f32x4.splat(load<f32>(wr + o)), f32x4.splat(load<f32>(x + o)), ta);
      }
      r += f32x4.extract_lane(ta, 0);
    }
    const o = <usize>n << 2;
    if (bias) r += load<f32>(bias + o);
    if (acc) r += load<f32>(y + o);
    store<f32>(y + o, r);
  }
}

/**
 * Rows [n0, n1) of an f32 weight panel against input rows [m0, m1); each dot product is multiplied by
 * the row's scale (int8 weights; none when scales is 0) before the bias is added.
 */
function panelF32(
  x: usize, w: usize, scales: usize, bias: usize, y: usize, m0: i32, m1: i32, n0: i32, n1: i32, K: i32, ldy: i32,
  acc: i32,
): void {
  const ks = <usize>K << 2, ys = <usize>ldy << 2;
  let m = m0;
  for (; m + 2 <= m1; m += 2) {
    const x0 = x + <usize>m * ks, x1 = x0 + ks;
    const y0 = y + <usize>m * ys, y1 = y0 + ys;
    let n = n0;
    for (; n + 4 <= n1; n += 4) {
      const o = <usize>n << 2;
      tile4x2(x0, x1, w + <usize>n * ks, ks, K, y0 + o, y1 + o, scales ? scales + o : 0, bias ? bias + o : 0, acc);
    }
    for (; n < n1; n++) {
      const o = <usize>n << 2, sc = scales ? scales + o : 0, b = bias ? bias + o : 0;
      dot1(x0, w + <usize>n * ks, K, y0 + o, sc, b, acc);
      dot1(x1, w + <usize>n * ks, K, y1 + o, sc, b, acc);
    }
  }
  if (m < m1) {
    const x0 = x + <usize>m * ks, y0 = y + <usize>m * ys;
    let n = n0;
    for (; n + 4 <= n1; n += 4) {
      const o = <usize>n << 2;
      tile4x1(x0, w + <usize>n * ks, ks, K, y0 + o, scales ? scales + o : 0, bias ? bias + o : 0, acc);
    }
    for (; n < n1; n++) {
      const o = <usize>n << 2;
      dot1(x0, w + <usize>n * ks, K, y0 + o, scales ? scales + o : 0, bias ? bias + o : 0, acc);
    }
  }
}

/** Four weight rows with one input row (decode's matvec), the arithmetic of tile4x2. */
@inline function tile4x1(
  x0: usize, w0: usize, kStride: usize, K: i32, y0: usize, scale: usize, bias: usize, acc: i32,
): void {
  const w1 = w0 + kStride, w2 = w1 + kStride, w3 = w2 + kStride;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  const K4 = K & ~3, K16 = K & ~15;
  for (let k = 0; k < K16; k += 16) {
    const o = <usize>k << 2;
    const pa = x0 + o, p0 = w0 + o, p1 = w1 + o, p2 = w2 + o, p3 = w3 + o;
    {
      const xa = v128.load(pa, 0);
      a0 = madd(v128.load(p0, 0), xa, a0);
      a1 = madd(v128.load(p1, 0), xa, a1);
      a2 = madd(v128.load(p2, 0), xa, a2);
      a3 = madd(v128.load(p3, 0), xa, a3);
    }
    {
      const xa = v128.load(pa, 16);
      a0 = madd(v128.load(p0, 16), xa, a0);
      a1 = madd(v128.load(p1, 16), xa, a1);
      a2 = madd(v128.load(p2, 16), xa, a2);
      a3 = madd(v128.load(p3, 16), xa, a3);
    }
    {
      const xa = v128.load(pa, 32);
      a0 = madd(v128.load(p0, 32), xa, a0);
      a1 = madd(v128.load(p1, 32), xa, a1);
      a2 = madd(v128.load(p2, 32), xa, a2);
      a3 = madd(v128.load(p3, 32), xa, a3);
    }
    {
      const xa = v128.load(pa, 48);
      a0 = madd(v128.load(p0, 48), xa, a0);
      a1 = madd(v128.load(p1, 48), xa, a1);
      a2 = madd(v128.load(p2, 48), xa, a2);
      a3 = madd(v128.load(p3, 48), xa, a3);
    }
  }
  for (let k = K16; k < K4; k += 4) {
    const o = <usize>k << 2;
    const xa = v128.load(x0 + o);
    a0 = madd(v128.load(w0 + o), xa, a0);
    a1 = madd(v128.load(w1 + o), xa, a1);
    a2 = madd(v128.load(w2 + o), xa, a2);
    a3 = madd(v128.load(w3 + o), xa, a3);
  }
  let ra = hsum4(a0, a1, a2, a3);
  if (K4 < K) {
    let ta = f32x4.splat(0);
    for (let k = K4; k < K; k++) {
      const o = <usize>k << 2;
      const wv = f32x4(load<f32>(w0 + o), load<f32>(w1 + o), load<f32>(w2 + o), load<f32>(w3 + o));
      ta = madd(wv, f32x4.splat(load<f32>(x0 + o)), ta);
    }
    ra = f32x4.add(ra, ta);
  }
  if (scale) ra = f32x4.mul(ra, v128.load(scale));
  if (bias) ra = f32x4.add(ra, v128.load(bias));
  if (acc) ra = f32x4.add(ra, v128.load(y0));
  v128.store(y0, ra);
}

/**
 * One output of tile3x3: the lane sums hsum'd as hsum does, the K tail's scalar products added after (as
 * dot1 and tile4x2 do), then bias and y. The same bits as dot1 for the same row pair.
 */
@inline function finish3(
  a: v128, x0: usize, w0: usize, K4: i32, K: i32, y0: usize, bias: usize, acc: i32,
): void {
  let r = hsum(a);
  if (K4 < K) {
    let ta = f32x4.splat(0);
    for (let k = K4; k < K; k++) {
      const o = <usize>k << 2;
      ta = madd(f32x4.splat(load<f32>(w0 + o)), f32x4.splat(load<f32>(x0 + o)), ta);
    }
    r += f32x4.extract_lane(ta, 0);
  }
  if (bias) r += load<f32>(bias);
  if (acc) r += load<f32>(y0);
  store<f32>(y0, r);
}

/**
 * Dot products of 3 weight rows with 3 input rows (prefill's register tile): nine accumulators, three
 * input vectors and one weight vector fit the 15 vector registers V8 gives wasm on x64, for 6 loads per
 * 9 multiply-adds (tile4x2: 6 per 8; a 4 x 3 tile spills and ran 0.8x). Each output is the arithmetic of
 * dot1 (lane sums over k in steps of 4, then hsum), so the bits do not depend on which tile computed it.
 */
function tile3x3(
  x0: usize, w0: usize, ks: usize, K: i32, y0: usize, ys: usize, bias: usize, acc: i32,
): void {
  const x1 = x0 + ks, x2 = x1 + ks, w1 = w0 + ks, w2 = w1 + ks;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0);
  let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0);
  let c0 = f32x4.splat(0), c1 = f32x4.splat(0), c2 = f32x4.splat(0);
  const K4 = K & ~3, e = <usize>K4 << 2;
  // One 4-float step per iteration: unrolling needs more address registers and ran slower.
  for (let o: usize = 0; o < e; o += 16) {
    const xa = v128.load(x0 + o), xb = v128.load(x1 + o), xc = v128.load(x2 + o);
    let v = v128.load(w0 + o);
    a0 = madd(v, xa, a0);
    b0 = madd(v, xb, b0);
    c0 = madd(v, xc, c0);
    v = v128.load(w1 + o);
    a1 = madd(v, xa, a1);
    b1 = madd(v, xb, b1);
    c1 = madd(v, xc, c1);
    v = v128.load(w2 + o);
    a2 = madd(v, xa, a2);
    b2 = madd(v, xb, b2);
    c2 = madd(v, xc, c2);
  }
  const y1 = y0 + ys, y2 = y1 + ys, b = bias;
  finish3(a0, x0, w0, K4, K, y0, b, acc);
  finish3(a1, x0, w1, K4, K, y0 + 4, b ? b + 4 : 0, acc);
  finish3(a2, x0, w2, K4, K, y0 + 8, b ? b + 8 : 0, acc);
  finish3(b0, x1, w0, K4, K, y1, b, acc);
  finish3(b1, x1, w1, K4, K, y1 + 4, b ? b + 4 : 0, acc);
  finish3(b2, x1, w2, K4, K, y1 + 8, b ? b + 8 : 0, acc);
  finish3(c0, x2, w0, K4, K, y2, b, acc);
  finish3(c1, x2, w1, K4, K, y2 + 4, b ? b + 4 : 0, acc);
  finish3(c2, x2, w2, K4, K, y2 + 8, b ? b + 8 : 0, acc);
}

/**
 * Rows of X kept hot in L2 while weight panels stream through L1: 66 = 22 row triples, so a chunk of
 * 128 rows is 66 + 62 (20 triples and 2 rows for tile4x2).
 */
const ROW_BLOCK: i32 = 66;

/** Rows from which gemmF32 packs weight panels and runs the outer-product tile (opTile6x8). */
const OP_ROWS: i32 = 8;

/** Packs weight rows [n, ne) of w (row stride ks bytes) into panel [K][8] floats; rows past ne are 0. */
function packPanel8(w: usize, ks: usize, n: i32, ne: i32, K: i32, panel: usize): void {
  const w0 = w + <usize>n * ks;
  let k = 0;
  if (ne - n == 8) {
    // 4 x 4 transposes: 4 floats of each of 8 rows become 4 k-steps of 8 floats.
    for (; k + 4 <= K; k += 4) {
      const o = <usize>k << 2, d = panel + (<usize>k << 5);
      const r0 = v128.load(w0 + o), r1 = v128.load(w0 + ks + o), r2 = v128.load(w0 + 2 * ks + o);
      const r3 = v128.load(w0 + 3 * ks + o), r4 = v128.load(w0 + 4 * ks + o), r5 = v128.load(w0 + 5 * ks + o);
      const r6 = v128.load(w0 + 6 * ks + o), r7 = v128.load(w0 + 7 * ks + o);
      let t0 = v128.shuffle<i32>(r0, r1, 0, 4, 1, 5), t1 = v128.shuffle<i32>(r0, r1, 2, 6, 3, 7);
      let t2 = v128.shuffle<i32>(r2, r3, 0, 4, 1, 5), t3 = v128.shuffle<i32>(r2, r3, 2, 6, 3, 7);
      v128.store(d, v128.shuffle<i32>(t0, t2, 0, 1, 4, 5));
      v128.store(d, v128.shuffle<i32>(t0, t2, 2, 3, 6, 7), 32);
      v128.store(d, v128.shuffle<i32>(t1, t3, 0, 1, 4, 5), 64);
      v128.store(d, v128.shuffle<i32>(t1, t3, 2, 3, 6, 7), 96);
      t0 = v128.shuffle<i32>(r4, r5, 0, 4, 1, 5);
      t1 = v128.shuffle<i32>(r4, r5, 2, 6, 3, 7);
      t2 = v128.shuffle<i32>(r6, r7, 0, 4, 1, 5);
      t3 = v128.shuffle<i32>(r6, r7, 2, 6, 3, 7);
      v128.store(d, v128.shuffle<i32>(t0, t2, 0, 1, 4, 5), 16);
      v128.store(d, v128.shuffle<i32>(t0, t2, 2, 3, 6, 7), 48);
      v128.store(d, v128.shuffle<i32>(t1, t3, 0, 1, 4, 5), 80);
      v128.store(d, v128.shuffle<i32>(t1, t3, 2, 3, 6, 7), 112);
    }
  }
  for (; k < K; k++) {
    const d = panel + (<usize>k << 5);
    for (let j = 0; j < 8; j++) {
      store<f32>(d + (<usize>j << 2), n + j < ne ? load<f32>(w0 + <usize>j * ks + (<usize>k << 2)) : 0);
    }
  }
}

/**
 * One output row of opTile6x8: lo, hi (its 8 columns) + bias, + y; `cols` of them stored (a partial panel
 * goes through `tmp`, 32 bytes, lane by lane with the same two additions).
 */
@inline function storeRow8(
  lo: v128, hi: v128, y: usize, cols: i32, bias: usize, acc: i32, tmp: usize,
): void {
  if (cols == 8) {
    if (bias) {
      lo = f32x4.add(lo, v128.load(bias));
      hi = f32x4.add(hi, v128.load(bias, 16));
    }
    if (acc) {
      lo = f32x4.add(lo, v128.load(y));
      hi = f32x4.add(hi, v128.load(y, 16));
    }
    v128.store(y, lo);
    v128.store(y, hi, 16);
    return;
  }
  v128.store(tmp, lo);
  v128.store(tmp, hi, 16);
  for (let j = 0; j < cols; j++) {
    const o = <usize>j << 2;
    let r = load<f32>(tmp + o);
    if (bias) r += load<f32>(bias + o);
    if (acc) r += load<f32>(y + o);
    store<f32>(y + o, r);
  }
}

/**
 * Outer-product tile: 6 input rows x 8 outputs from a packed panel ([K][8]). Per k, two panel vectors and
 * six broadcast inputs feed twelve multiply-adds into twelve accumulators (15 of V8's x64 vector
 * registers); the dot-product tiles need a load per 1.5 multiply-adds. Each output is a plain chain
 * y = w_k x_k + y over k = 0..K-1 (then bias, then y), whatever the rows beside it: rows past `rows`
 * repeat the last row's input and are not stored.
 */
function opTile6x8(
  x0: usize, ks: usize, rows: i32, panel: usize, K: i32, y0: usize, ys: usize, cols: i32, bias: usize,
  acc: i32, tmp: usize,
): void {
  const last = <usize>(rows - 1);
  const p1 = x0 + min<usize>(1, last) * ks, p2 = x0 + min<usize>(2, last) * ks;
  const p3 = x0 + min<usize>(3, last) * ks, p4 = x0 + min<usize>(4, last) * ks;
  const p5 = x0 + min<usize>(5, last) * ks;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), b0 = f32x4.splat(0), b1 = f32x4.splat(0);
  let c0 = f32x4.splat(0), c1 = f32x4.splat(0), d0 = f32x4.splat(0), d1 = f32x4.splat(0);
  let e0 = f32x4.splat(0), e1 = f32x4.splat(0), f0 = f32x4.splat(0), f1 = f32x4.splat(0);
  let q = panel;
  const end = <usize>K << 2;
  for (let o: usize = 0; o < end; o += 4) {
    const v0 = v128.load(q), v1 = v128.load(q, 16);
    q += 32;
    let s = v128.load32_splat(x0 + o);
    a0 = madd(v0, s, a0);
    a1 = madd(v1, s, a1);
    s = v128.load32_splat(p1 + o);
    b0 = madd(v0, s, b0);
    b1 = madd(v1, s, b1);
    s = v128.load32_splat(p2 + o);
    c0 = madd(v0, s, c0);
    c1 = madd(v1, s, c1);
    s = v128.load32_splat(p3 + o);
    d0 = madd(v0, s, d0);
    d1 = madd(v1, s, d1);
    s = v128.load32_splat(p4 + o);
    e0 = madd(v0, s, e0);
    e1 = madd(v1, s, e1);
    s = v128.load32_splat(p5 + o);
    f0 = madd(v0, s, f0);
    f1 = madd(v1, s, f1);
  }
  storeRow8(a0, a1, y0, cols, bias, acc, tmp);
  if (rows > 1) storeRow8(b0, b1, y0 + ys, cols, bias, acc, tmp);
  if (rows > 2) storeRow8(c0, c1, y0 + 2 * ys, cols, bias, acc, tmp);
  if (rows > 3) storeRow8(d0, d1, y0 + 3 * ys, cols, bias, acc, tmp);
  if (rows > 4) storeRow8(e0, e1, y0 + 4 * ys, cols, bias, acc, tmp);
  if (rows > 5) storeRow8(f0, f1, y0 + 5 * ys, cols, bias, acc, tmp);
}

/** Bytes of one chunk's f32 panel scratch: [K][8] floats and a 32-byte row for partial stores. */
@inline function panelBytes(K: i32): usize {
  return (<usize>K << 5) + 32;
}

/**
 * y[m, n] (+)= x[m, :] . w[n, :] (+ bias[n]) for m < M and thread t's share of n < N. w is f32
 * [N, K] row-major; x [M, K]; y has row stride ldy. acc: add to y instead of overwriting it. xs: chunk t
 * reads its x at x + t x xs (rows a fused rmsNorm wrote for that chunk; 0: one x for all).
 * M >= OP_ROWS (prefill): every 8 weight rows are packed into the chunk's scratch (at scratch + t x
 * (32 K + 32) bytes) once per row block, then run against 6 input rows at a time (opTile6x8): the same
 * bits for every row whatever M (>= OP_ROWS), the row blocks and the split. One row (decoding):
 * matvecF32, rows one after another. 2 to 7 rows: the dot-product tiles of panelF32 (dot1's bits).
 */
export function gemmF32(
  x: usize, w: usize, bias: usize, y: usize, M: i32, N: i32, K: i32, ldy: i32, acc: i32, scratch: usize,
  xs: i32, t: i32, nt: i32,
): void {
  const n0 = share(N, t, nt, COLUMNS), n1 = share(N, t + 1, nt, COLUMNS);
  if (n0 >= n1) return;
  x += <usize>t * <usize>xs;
  const ks = <usize>K << 2, ys = <usize>ldy << 2;
  if (M == 1) {
    matvecF32(x, w, bias, y, n0, n1, K, acc);
    return;
  }
  if (M < OP_ROWS) {
    for (let n = n0; n < n1; n += 4) panelF32(x, w, 0, bias, y, 0, M, n, min(n + 4, n1), K, ldy, acc);
    return;
  }
  const panel = scratch + <usize>t * panelBytes(K), tmp = panel + (<usize>K << 5);
  // Input blocks of at most 512 KB stay in L2 while every panel of the share passes over them.
  const rb = max(6, (131072 / K) / 6 * 6);
  for (let mb = 0; mb < M; mb += rb) {
    const me = min(mb + rb, M);
    for (let n = n0; n < n1; n += 8) {
      const ne = min(n + 8, n1), o = <usize>n << 2, b = bias ? bias + o : 0;
      packPanel8(w, ks, n, ne, K, panel);
      for (let m = mb; m < me; m += 6) {
        opTile6x8(x + <usize>m * ks, ks, min(6, me - m), panel, K, y + <usize>m * ys + o, ys, ne - n, b, acc, tmp);
      }
    }
  }
}

/** Converts `count` f16 values at src to f32 at dst. */
function halvesToFloats(src: usize, dst: usize, count: i32): void {
  const c8 = count & ~7;
  for (let i = 0; i < c8; i += 8) {
    const h = v128.load(src + (<usize>i << 1));
    v128.store(dst + (<usize>i << 2), halfToFloat(i32x4.extend_low_i16x8_s(h)));
    v128.store(dst + (<usize>i << 2) + 16, halfToFloat(i32x4.extend_high_i16x8_s(h)));
  }
  for (let i = c8; i < count; i++) store<f32>(dst + (<usize>i << 2), halfToFloatScalar(load<u16>(src + (<usize>i << 1))));
}

/**
 * gemmF32 with f16 weights [N, K]. Several rows: each 3-row weight panel is widened once into the
 * thread's scratch (4 x K floats at scratch + t x 16 K bytes) and reused by every row triple.
 * One row (decode): the panel is widened the same way, then one pass; the weight traffic is halved.
 */
export function gemmF16(
  x: usize, w: usize, bias: usize, y: usize, M: i32, N: i32, K: i32, ldy: i32, acc: i32, scratch: usize,
  xs: i32, t: i32, nt: i32,
): void {
  const n0 = share(N, t, nt, COLUMNS), n1 = share(N, t + 1, nt, COLUMNS);
  if (n0 >= n1) return;
  x += <usize>t * <usize>xs;
  const panel = scratch + <usize>t * (<usize>K << 4);
  const hs = <usize>K << 1;
  const ks = <usize>K << 2, ys = <usize>ldy << 2;
  for (let mb = 0; mb < M; mb += ROW_BLOCK) {
    const me = min(mb + ROW_BLOCK, M), m3 = mb + (me - mb) / 3 * 3;
    // Row triples: 3-row panels through tile3x3, as gemmF32 (a partial panel through panelF32).
    for (let n = n0; m3 > mb && n < n1; n += 3) {
      const ne = min(n + 3, n1);
      halvesToFloats(w + <usize>n * hs, panel, (ne - n) * K);
      if (ne - n == 3) {
        const o = <usize>n << 2, b = bias ? bias + o : 0;
        for (let m = mb; m < m3; m += 3) tile3x3(x + <usize>m * ks, panel, ks, K, y + <usize>m * ys + o, ys, b, acc);
      } else {
        panelF32(x, panel - <usize>n * ks, 0, bias, y, mb, m3, n, ne, K, ldy, acc);
      }
    }
    // The rows left (decode's one row): 4-row panels.
    for (let n = n0; m3 < me && n < n1; n += 4) {
      const ne = min(n + 4, n1);
      halvesToFloats(w + <usize>n * hs, panel, (ne - n) * K);
      // The panel holds rows n..ne-1; address it as if it began at row n of a full matrix.
      panelF32(x, panel - <usize>n * ks, 0, bias, y, m3, me, n, ne, K, ldy, acc);
    }
  }
}

/** Converts `count` int8 values at src to f32 at dst (unscaled). */
function bytesToFloats(src: usize, dst: usize, count: i32): void {
  const c16 = count & ~15;
  for (let i = 0; i < c16; i += 16) {
    const b = v128.load(src + <usize>i);
    const lo = i16x8.extend_low_i8x16_s(b), hi = i16x8.extend_high_i8x16_s(b);
    const d = dst + (<usize>i << 2);
    v128.store(d, f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(lo)));
    v128.store(d + 16, f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(lo)));
    v128.store(d + 32, f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(hi)));
    v128.store(d + 48, f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(hi)));
  }
  for (let i = c16; i < count; i++) store<f32>(dst + (<usize>i << 2), <f32>load<i8>(src + <usize>i));
}

// ---- int8 GEMM on integer dot products ----------------------------------------------------

/**
 * Activation rows for the int8 GEMM: x_q = round(x / s), s = max |x| / Q_MAX (one scale per row), offset
 * to x' = x_q + Q_OFFSET in [1, 2^21) and stored as three unsigned 7-bit digits (x' = 2^14 d2 + 2^7 d1 + d0),
 * in groups of 16 d2 bytes, 16 d1 bytes, 16 d0 bytes. Unsigned 7-bit operands are what relaxed SIMD's
 * i8 x i7 dot product computes exactly on every engine; three digits keep 21 bits of each activation
 * (its rounding is 2.4e-7 of the row's largest value, below float32's own in the sums), so int8 weights
 * are the only approximation. The offset comes back out through the weight row's sum (sums[n]).
 */
const Q_MAX: f32 = 1048575;
const Q_OFFSET: i64 = 1048576;
/** Rows quantized at a time into a chunk's scratch (wasm/workspace.ts sizes the scratch by it). */
const Q_ROWS: i32 = 16;
/** Inputs per i32 block: a digit's lane sums K / 4 products of at most 127 x 127, < 2^31 for K <= 2^19. */
const INT_BLOCK: i32 = 1 << 16;

/** x' of four floats: round(x x inv), clamped to +-Q_MAX, plus Q_OFFSET. */
@inline function offsetInts(v: v128, iv: v128): v128 {
  const r = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v, iv)));
  return i32x4.add(i32x4.max_s(i32x4.min_s(r, i32x4.splat(<i32>Q_MAX)), i32x4.splat(-<i32>Q_MAX)), i32x4.splat(<i32>Q_OFFSET));
}

/** The 16 bytes (a >> shift) & 127 of four i32x4 vectors. */
@inline function digit(a0: v128, a1: v128, a2: v128, a3: v128, shift: i32): v128 {
  const m = i32x4.splat(127);
  return i8x16.narrow_i16x8_u(
    i16x8.narrow_i32x4_u(v128.and(i32x4.shr_u(a0, shift), m), v128.and(i32x4.shr_u(a1, shift), m)),
    i16x8.narrow_i32x4_u(v128.and(i32x4.shr_u(a2, shift), m), v128.and(i32x4.shr_u(a3, shift), m)),
  );
}

/** Quantizes K floats at x into q (3 x K rounded up to 16 bytes, zero digits past K); returns the scale. */
function quantizeRow(x: usize, K: i32, q: usize): f32 {
  let mv = f32x4.splat(0);
  const K4 = K & ~3;
  for (let k = 0; k < K4; k += 4) mv = f32x4.max(mv, f32x4.abs(v128.load(x + (<usize>k << 2))));
  let mx = max(max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)), max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)));
  for (let k = K4; k < K; k++) mx = max(mx, abs<f32>(load<f32>(x + (<usize>k << 2))));
  const scale: f32 = mx > 0 ? mx / Q_MAX : 1;
  const inv: f32 = <f32>1 / scale;
  const iv = f32x4.splat(inv);
  const K16 = K & ~15;
  for (let k = 0; k < K16; k += 16) {
    const p = x + (<usize>k << 2), d = q + <usize>k * 3;
    const a0 = offsetInts(v128.load(p, 0), iv), a1 = offsetInts(v128.load(p, 16), iv);
    const a2 = offsetInts(v128.load(p, 32), iv), a3 = offsetInts(v128.load(p, 48), iv);
    v128.store(d, digit(a0, a1, a2, a3, 14));
    v128.store(d, digit(a0, a1, a2, a3, 7), 16);
    v128.store(d, digit(a0, a1, a2, a3, 0), 32);
  }
  if (K16 < K) {
    const d = q + <usize>K16 * 3;
    v128.store(d, i32x4.splat(0));
    v128.store(d, i32x4.splat(0), 16);
    v128.store(d, i32x4.splat(0), 32);
    for (let k = K16; k < K; k++) {
      const v = <i32>nearest<f32>(load<f32>(x + (<usize>k << 2)) * inv);
      const u = min(max(v, -<i32>Q_MAX), <i32>Q_MAX) + <i32>Q_OFFSET, at = d + <usize>(k - K16);
      store<u8>(at, <u8>(u >> 14));
      store<u8>(at + 16, <u8>((u >> 7) & 127));
      store<u8>(at + 32, <u8>(u & 127));
    }
  }
  return scale;
}

/**
 * acc + the dot products of 16 int8 weights with 16 unsigned 7-bit digits, four per i32 lane. Relaxed SIMD:
 * one instruction (exact: the digits' top bits are clear). Plain SIMD (the fallback module): widened to
 * 16 bits and multiplied in pairs; the lanes group the products differently, their total is the same.
 */
@inline function dotDigits(w: v128, d: v128, acc: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    return i32x4.relaxed_dot_i8x16_i7x16_add_s(w, d, acc);
  } else {
    acc = i32x4.add(acc, i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(w), i16x8.extend_low_i8x16_u(d)));
    return i32x4.add(acc, i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(w), i16x8.extend_high_i8x16_u(d)));
  }
}

/** Sum of the four i32 lanes of a, as i64. */
@inline function lanes64(a: v128): i64 {
  const s = i64x2.add(i64x2.extend_low_i32x4_s(a), i64x2.extend_high_i32x4_s(a));
  return i64x2.extract_lane(s, 0) + i64x2.extract_lane(s, 1);
}

/** The exact dot product with x' of a row's three digit accumulators. */
@inline function digitsTotal(a2: v128, a1: v128, a0: v128): i64 {
  return (lanes64(a2) << 14) + (lanes64(a1) << 7) + lanes64(a0);
}

/** y = (exact integer dot - offset x row sum) x s_x x s_w (+ bias) (+ y): the one rounding is the last. */
@inline function finishI8(
  total: i64, n: i32, sx: f32, scales: usize, sums: usize, bias: usize, y: usize, acc: i32,
): void {
  const o = <usize>n << 2;
  const dot = total - Q_OFFSET * <i64>load<i32>(sums + o);
  let r = <f32>(<f64>dot * <f64>sx * <f64>load<f32>(scales + o));
  if (bias) r += load<f32>(bias + o);
  if (acc) r += load<f32>(y);
  store<f32>(y, r);
}

/**
 * One group of three weight rows against one quantized row q; outputs at y (rows n..n + 2). The group is
 * stored interleaved (16 bytes of row n, of n + 1, of n + 2, then the next 16 of each: int8Group), so the
 * tile reads one sequential run of bytes: three row-major rows read side by side streamed ~9.5 GB/s from
 * memory on a zen4 core, the interleaved group 22-24 (decoding is bound by it).
 * Three rows: nine accumulators, three digit vectors and a weight vector fit x64's 16 vector registers
 * (four rows spill, and ran 1.4x slower).
 */
function tileI8x3(
  g: usize, K: i32, q: usize, sx: f32, n: i32, scales: usize, sums: usize, bias: usize, y: usize, acc: i32,
): void {
  const K16 = (K + 15) & ~15;
  let t0: i64 = 0, t1: i64 = 0, t2: i64 = 0;
  let wp = g;
  for (let kb = 0; kb < K16; kb += INT_BLOCK) {
    const ke = min(kb + INT_BLOCK, K16);
    let a0 = i32x4.splat(0), b0 = i32x4.splat(0), c0 = i32x4.splat(0);
    let a1 = i32x4.splat(0), b1 = i32x4.splat(0), c1 = i32x4.splat(0);
    let a2 = i32x4.splat(0), b2 = i32x4.splat(0), c2 = i32x4.splat(0);
    for (let k = kb; k < ke; k += 16) {
      const qk = q + <usize>k * 3;
      const d2 = v128.load(qk), d1 = v128.load(qk, 16), d0 = v128.load(qk, 32);
      const v0 = v128.load(wp);
      a0 = dotDigits(v0, d2, a0);
      b0 = dotDigits(v0, d1, b0);
      c0 = dotDigits(v0, d0, c0);
      const v1 = v128.load(wp, 16);
      a1 = dotDigits(v1, d2, a1);
      b1 = dotDigits(v1, d1, b1);
      c1 = dotDigits(v1, d0, c1);
      const v2 = v128.load(wp, 32);
      a2 = dotDigits(v2, d2, a2);
      b2 = dotDigits(v2, d1, b2);
      c2 = dotDigits(v2, d0, c2);
      wp += 48;
    }
    t0 += digitsTotal(a0, b0, c0);
    t1 += digitsTotal(a1, b1, c1);
    t2 += digitsTotal(a2, b2, c2);
  }
  finishI8(t0, n, sx, scales, sums, bias, y, acc);
  finishI8(t1, n + 1, sx, scales, sums, bias, y + 4, acc);
  finishI8(t2, n + 2, sx, scales, sums, bias, y + 8, acc);
}

/**
 * Where int8 row n's storage starts: rows in groups of three interleaved by 16 bytes (a group takes 3 K16
 * bytes, K16 = K rounded up to 16, zero past K), then the last N mod 3 rows one after another, K16 bytes
 * each; so a group (n a multiple of 3) or a last row starts at n x K16 (wasm/weights.ts lays it out).
 */
@inline function int8Group(w: usize, n: i32, K16: i32): usize {
  return w + <usize>n * <usize>K16;
}

/** Row n of an int8 matrix [N, K] (int8Group's layout) as K floats at dst. */
function int8RowToFloats(w: usize, n: i32, N: i32, K: i32, dst: usize): void {
  const K16 = (K + 15) & ~15, first = n - n % 3;
  if (first + 3 > N) {
    bytesToFloats(int8Group(w, n, K16), dst, K);
    return;
  }
  // A row of a group: its 16 bytes of each 48.
  const src = int8Group(w, first, K16) + <usize>((n - first) << 4);
  const K16full = K & ~15;
  for (let k = 0; k < K16full; k += 16) bytesToFloats(src + <usize>k * 3, dst + (<usize>k << 2), 16);
  if (K16full < K) bytesToFloats(src + <usize>K16full * 3, dst + (<usize>K16full << 2), K - K16full);
}

/** One weight row (K16 bytes, one of the last N mod 3) against one quantized row: the integers of tileI8x3. */
function rowI8(
  w0: usize, K: i32, q: usize, sx: f32, n: i32, scales: usize, sums: usize, bias: usize, y: usize, acc: i32,
): void {
  const K16 = (K + 15) & ~15;
  let t: i64 = 0;
  for (let kb = 0; kb < K16; kb += INT_BLOCK) {
    const ke = min(kb + INT_BLOCK, K16);
    let a = i32x4.splat(0), b = i32x4.splat(0), c = i32x4.splat(0);
    for (let k = kb; k < ke; k += 16) {
      const o = <usize>k, qk = q + o * 3, v = v128.load(w0 + o);
      a = dotDigits(v, v128.load(qk), a);
      b = dotDigits(v, v128.load(qk, 16), b);
      c = dotDigits(v, v128.load(qk, 32), c);
    }
    t += digitsTotal(a, b, c);
  }
  finishI8(t, n, sx, scales, sums, bias, y, acc);
}

/**
 * y[m, n] (+)= s_w[n] s_x[m] (w[n, :] . x_q[m, :]) (+ bias[n]) for thread t's share of n: int8 weights
 * [N, K] in groups of three rows interleaved by 16 bytes (int8Group; one scale per row, and the row's sum in
 * sums[n]), each input row quantized (quantizeRow) into the chunk's scratch (at scratch + t x scratchStride:
 * Q_ROWS scales, then Q_ROWS rows of 3 x K16 bytes), Q_ROWS rows at a time. Shares start on a group (COLUMNS). Every
 * output is an exact integer dot product scaled once, so it is the same whatever the thread split and on
 * either kernel module.
 */
export function gemmI8(
  x: usize, w: usize, scales: usize, sums: usize, bias: usize, y: usize, M: i32, N: i32, K: i32, ldy: i32,
  acc: i32, scratch: usize, scratchStride: i32, xs: i32, t: i32, nt: i32,
): void {
  const n0 = share(N, t, nt, COLUMNS), n1 = share(N, t + 1, nt, COLUMNS);
  if (n0 >= n1) return;
  x += <usize>t * <usize>xs;
  const base = scratch + <usize>t * <usize>scratchStride, qs = base + (<usize>Q_ROWS << 2);
  const K16 = (K + 15) & ~15;
  const rb = <usize>K16 * 3, ks = <usize>K << 2, ys = <usize>ldy << 2;
  for (let mb = 0; mb < M; mb += Q_ROWS) {
    const me = min(mb + Q_ROWS, M);
    for (let m = mb; m < me; m++) {
      store<f32>(base + (<usize>(m - mb) << 2), quantizeRow(x + <usize>m * ks, K, qs + <usize>(m - mb) * rb));
    }
    let n = n0;
    for (; n + 3 <= n1; n += 3) {
      const g = int8Group(w, n, K16);
      for (let m = mb; m < me; m++) {
        const sx = load<f32>(base + (<usize>(m - mb) << 2));
        tileI8x3(g, K, qs + <usize>(m - mb) * rb, sx, n, scales, sums, bias, y + <usize>m * ys + (<usize>n << 2), acc);
      }
    }
    for (; n < n1; n++) {
      for (let m = mb; m < me; m++) {
        const sx = load<f32>(base + (<usize>(m - mb) << 2));
        rowI8(int8Group(w, n, K16), K, qs + <usize>(m - mb) * rb, sx, n, scales, sums, bias, y + <usize>m * ys + (<usize>n << 2), acc);
      }
    }
  }
}

// ---- elementwise ---------------------------------------------------------------------------

/** out[m] = x[m] / rms(x[m]) * weight, thread t's share of the M rows. */
export function rmsNorm(
  x: usize, weight: usize, out: usize, M: i32, D: i32, eps: f32, os: i32, t: i32, nt: i32,
): void {
  // os > 0: every chunk normalizes all M rows into its own copy at out + t x os, for the GEMMs that
  // follow in the same dispatch (they read it with xs = os): no barrier between the norm and them.
  const priv = os > 0;
  const m0 = priv ? 0 : share(M, t, nt, 1), m1 = priv ? M : share(M, t + 1, nt, 1);
  if (priv) out += <usize>t * <usize>os;
  const D4 = D & ~3;
  for (let m = m0; m < m1; m++) {
    const xr = x + <usize>m * (<usize>D << 2), orow = out + <usize>m * (<usize>D << 2);
    let a = f32x4.splat(0);
    for (let i = 0; i < D4; i += 4) {
      const v = v128.load(xr + (<usize>i << 2));
      a = madd(v, v, a);
    }
    let ss = hsum(a);
    for (let i = D4; i < D; i++) ss += load<f32>(xr + (<usize>i << 2)) * load<f32>(xr + (<usize>i << 2));
    const scale = <f32>(1.0 / Math.sqrt(<f64>ss / <f64>D + <f64>eps));
    const sv = f32x4.splat(scale);
    for (let i = 0; i < D4; i += 4) {
      const o = <usize>i << 2;
      v128.store(orow + o, f32x4.mul(v128.load(weight + o), f32x4.mul(v128.load(xr + o), sv)));
    }
    for (let i = D4; i < D; i++) {
      const o = <usize>i << 2;
      store<f32>(orow + o, load<f32>(weight + o) * (load<f32>(xr + o) * scale));
    }
  }
}

/** gate[m, n] = silu(gate[m, n]) x up[m, n] for thread t's share of n (the same split as gemm's). */
export function siluMul(gate: usize, up: usize, M: i32, N: i32, t: i32, nt: i32): void {
  const n0 = share(N, t, nt, COLUMNS), n1 = share(N, t + 1, nt, COLUMNS);
  for (let m = 0; m < M; m++) {
    const row = <usize>m * (<usize>N << 2);
    let n = n0;
    for (; n + 4 <= n1; n += 4) {
      const o = row + (<usize>n << 2);
      const g = v128.load(gate + o);
      const e = exp4(f32x4.neg(g));
      v128.store(gate + o, f32x4.mul(f32x4.div(g, f32x4.add(f32x4.splat(1), e)), v128.load(up + o)));
    }
    for (; n < n1; n++) {
      const o = row + (<usize>n << 2);
      const g = load<f32>(gate + o);
      store<f32>(gate + o, g / (1 + expScalar(-g)) * load<f32>(up + o));
    }
  }
}

/**
 * Gathers token embeddings into x rows, the share of M rows; the table [vocab, D] is f32 (format 0),
 * f16 (1) or int8 with a scale per row (2), its rows in interleaved groups of three (see int8Group).
 */
export function embed(
  table: usize, format: i32, scales: usize, tokens: usize, x: usize, M: i32, D: i32, vocab: i32, t: i32, nt: i32,
): void {
  const m0 = share(M, t, nt, 1), m1 = share(M, t + 1, nt, 1);
  for (let m = m0; m < m1; m++) {
    const tok = <usize>load<i32>(tokens + (<usize>m << 2));
    const dst = x + <usize>m * (<usize>D << 2);
    if (format == 1) halvesToFloats(table + tok * (<usize>D << 1), dst, D);
    else if (format == 2) {
      int8RowToFloats(table, <i32>tok, vocab, D, dst);
      const s = load<f32>(scales + (tok << 2));
      for (let i = 0; i < D; i++) store<f32>(dst + (<usize>i << 2), load<f32>(dst + (<usize>i << 2)) * s);
    } else memory.copy(dst, table + tok * (<usize>D << 2), <usize>D << 2);
  }
}

// ---- RoPE and the KV cache -----------------------------------------------------------------

/** Rotate-half RoPE on `heads` heads of each row (row stride `stride` floats); cos/sin [M, hd/2]. */
@inline function ropeRow(v: usize, heads: i32, hd: i32, cs: usize, sn: usize): void {
  const half = hd >> 1;
  for (let h = 0; h < heads; h++) {
    const a = v + (<usize>(h * hd) << 2), b = a + (<usize>half << 2);
    for (let i = 0; i < half; i++) {
      const o = <usize>i << 2;
      const c = load<f32>(cs + o), s = load<f32>(sn + o);
      const x0 = load<f32>(a + o), x1 = load<f32>(b + o);
      store<f32>(a + o, x0 * c - x1 * s);
      store<f32>(b + o, x0 * s + x1 * c);
    }
  }
}

/**
 * For thread t's share of the M rows: rotates q and k, then appends k and v to each KV head's
 * entries of this layer at index counts[slot] + m, with position pos0 + m. Cache layout per slot
 * (layer x nKv + head): keys [cap, hd], values [cap, hd], positions [cap].
 */
export function ropeAppend(
  q: usize, k: usize, v: usize, M: i32, nHeads: i32, nKv: i32, hd: i32, cosT: usize, sinT: usize,
  keys: usize, values: usize, positions: usize, counts: usize, slot0: i32, cap: i32, pos0: i32,
  t: i32, nt: i32,
): void {
  const m0 = share(M, t, nt, 1), m1 = share(M, t + 1, nt, 1);
  const half = <usize>(hd >> 1) << 2, kvw = nKv * hd, qw = nHeads * hd;
  const hb = <usize>hd << 2;
  for (let m = m0; m < m1; m++) {
    const cs = cosT + <usize>m * half, sn = sinT + <usize>m * half;
    ropeRow(q + <usize>(m * qw) * 4, nHeads, hd, cs, sn);
    const kr = k + <usize>(m * kvw) * 4;
    ropeRow(kr, nKv, hd, cs, sn);
    for (let g = 0; g < nKv; g++) {
      const slot = slot0 + g;
      const idx = load<i32>(counts + (<usize>slot << 2)) + m;
      const at = (<usize>slot * <usize>cap + <usize>idx);
      memory.copy(keys + at * hb, kr + <usize>g * hb, hb);
      memory.copy(values + at * hb, v + <usize>(m * kvw) * 4 + <usize>g * hb, hb);
      store<i32>(positions + (at << 2), pos0 + m);
    }
  }
}

// ---- attention -----------------------------------------------------------------------------

/** scores[j] = scale x q . key_j for j < n (keys contiguous [n, hd]); returns the maximum. */
function scoreKeys(qv: usize, keys: usize, n: i32, hd: i32, scale: f32, scores: usize): f32 {
  const hb = <usize>hd << 2;
  const sv = f32x4.splat(scale);
  let mx = f32x4.splat(-Infinity);
  let j = 0;
  if ((hd & 3) == 0) {
    for (; j + 4 <= n; j += 4) {
      const k0 = keys + <usize>j * hb, k1 = k0 + hb, k2 = k1 + hb, k3 = k2 + hb;
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
      for (let i = 0; i < hd; i += 4) {
        const o = <usize>i << 2;
        const qq = v128.load(qv + o);
        a0 = madd(v128.load(k0 + o), qq, a0);
        a1 = madd(v128.load(k1 + o), qq, a1);
        a2 = madd(v128.load(k2 + o), qq, a2);
        a3 = madd(v128.load(k3 + o), qq, a3);
      }
      const s = f32x4.mul(hsum4(a0, a1, a2, a3), sv);
      v128.store(scores + (<usize>j << 2), s);
      mx = f32x4.max(mx, s);
    }
  }
  let m = max(max(f32x4.extract_lane(mx, 0), f32x4.extract_lane(mx, 1)), max(f32x4.extract_lane(mx, 2), f32x4.extract_lane(mx, 3)));
  for (; j < n; j++) {
    const kj = keys + <usize>j * hb;
    let d: f32 = 0;
    for (let i = 0; i < hd; i++) d += load<f32>(qv + (<usize>i << 2)) * load<f32>(kj + (<usize>i << 2));
    const s = d * scale;
    store<f32>(scores + (<usize>j << 2), s);
    m = max(m, s);
  }
  return m;
}

/** scores[j] = exp(scores[j] - mx) for j < n; returns their sum. */
function expScores(scores: usize, n: i32, mx: f32): f32 {
  const mv = f32x4.splat(mx);
  let a = f32x4.splat(0);
  let j = 0;
  for (; j + 4 <= n; j += 4) {
    const p = scores + (<usize>j << 2);
    const e = exp4(f32x4.sub(v128.load(p), mv));
    v128.store(p, e);
    a = f32x4.add(a, e);
  }
  let s = hsum(a);
  for (; j < n; j++) {
    const p = scores + (<usize>j << 2);
    const e = expScalar(load<f32>(p) - mx);
    store<f32>(p, e);
    s += e;
  }
  return s;
}

/**
 * out = softmax(scale x q . keys[0..n)) . values[0..n): one query (any head size). Returns 1 / (sum of
 * exps): the scores scratch is left holding the unnormalised exps, so p_j = scores[j] x the result
 * (what addMass adds).
 */
function attend1(
  qv: usize, ov: usize, n: i32, hd: i32, scale: f32, kb: usize, vb: usize, scores: usize,
): f32 {
  const hb = <usize>hd << 2;
  const mx = scoreKeys(qv, kb, n, hd, scale, scores);
  const inv = <f32>1 / expScores(scores, n, mx);
  memory.fill(ov, 0, hb);
  if ((hd & 3) == 0) {
    for (let j = 0; j < n; j++) {
      const p = f32x4.splat(load<f32>(scores + (<usize>j << 2)) * inv);
      const vj = vb + <usize>j * hb;
      for (let i = 0; i < hd; i += 4) {
        const o = <usize>i << 2;
        v128.store(ov + o, madd(p, v128.load(vj + o), v128.load(ov + o)));
      }
    }
  } else {
    for (let j = 0; j < n; j++) {
      const p = load<f32>(scores + (<usize>j << 2)) * inv;
      const vj = vb + <usize>j * hb;
      for (let i = 0; i < hd; i++) {
        const o = <usize>i << 2;
        store<f32>(ov + o, load<f32>(ov + o) + p * load<f32>(vj + o));
      }
    }
  }
  return inv;
}

/** Byte offset of row `row`, head `h` in a [rows][heads x hd] matrix. */
@inline function qat(row: i32, h: i32, qw: i32, hd: i32): usize {
  return <usize>(row * qw + h * hd) << 2;
}

/** Largest of s[0..n). */
function maxOf(s: usize, n: i32): f32 {
  let mv = f32x4.splat(-Infinity);
  let j = 0;
  for (; j + 4 <= n; j += 4) mv = f32x4.max(mv, v128.load(s + (<usize>j << 2)));
  let m = max(max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)), max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)));
  for (; j < n; j++) m = max(m, load<f32>(s + (<usize>j << 2)));
  return m;
}

/**
 * Two queries over the same keys (head size a multiple of 4): query a sees keys [0, na), b sees
 * [0, nb), na <= nb. Each key and value row is loaded once for both. The arithmetic of each query
 * matches attend1's up to the order of the max and of the output accumulation. Returns
 * [1 / (sum of a's exps), 1 / (sum of b's exps), 0, 0]: sa and sb are left holding the unnormalised exps,
 * as attend1 leaves its scores.
 */
function attend2(
  qa: usize, qb: usize, oa: usize, ob: usize, na: i32, nb: i32, hd: i32, scale: f32, kb: usize, vb: usize,
  sa: usize, sb: usize,
): v128 {
  const hb = <usize>hd << 2;
  const sv = f32x4.splat(scale);
  let j = 0;
  for (; j + 4 <= nb; j += 4) {
    const k0 = kb + <usize>j * hb, k1 = k0 + hb, k2 = k1 + hb, k3 = k2 + hb;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0), b3 = f32x4.splat(0);
    for (let i = 0; i < hd; i += 4) {
      const o = <usize>i << 2;
      const x = v128.load(qa + o), y = v128.load(qb + o);
      const v0 = v128.load(k0 + o), v1 = v128.load(k1 + o), v2 = v128.load(k2 + o), v3 = v128.load(k3 + o);
      a0 = madd(v0, x, a0);
      b0 = madd(v0, y, b0);
      a1 = madd(v1, x, a1);
      b1 = madd(v1, y, b1);
      a2 = madd(v2, x, a2);
      b2 = madd(v2, y, b2);
      a3 = madd(v3, x, a3);
      b3 = madd(v3, y, b3);
    }
    v128.store(sa + (<usize>j << 2), f32x4.mul(hsum4(a0, a1, a2, a3), sv));
    v128.store(sb + (<usize>j << 2), f32x4.mul(hsum4(b0, b1, b2, b3), sv));
  }
  for (; j < nb; j++) {
    const kj = kb + <usize>j * hb;
    let a = f32x4.splat(0), b = f32x4.splat(0);
    for (let i = 0; i < hd; i += 4) {
      const o = <usize>i << 2;
      const k = v128.load(kj + o);
      a = madd(k, v128.load(qa + o), a);
      b = madd(k, v128.load(qb + o), b);
    }
    store<f32>(sa + (<usize>j << 2), hsum(a) * scale);
    store<f32>(sb + (<usize>j << 2), hsum(b) * scale);
  }
  const invA = <f32>1 / expScores(sa, na, maxOf(sa, na));
  const invB = <f32>1 / expScores(sb, nb, maxOf(sb, nb));
  for (let k = na; k < nb; k++) store<f32>(sa + (<usize>k << 2), 0);
  // P.V in column blocks of 16 floats held in registers, then of 4.
  let i = 0;
  for (; i + 16 <= hd; i += 16) {
    const o = <usize>i << 2;
    let x0 = f32x4.splat(0), x1 = f32x4.splat(0), x2 = f32x4.splat(0), x3 = f32x4.splat(0);
    let y0 = f32x4.splat(0), y1 = f32x4.splat(0), y2 = f32x4.splat(0), y3 = f32x4.splat(0);
    for (let k = 0; k < nb; k++) {
      const vk = vb + <usize>k * hb + o;
      const pa = f32x4.splat(load<f32>(sa + (<usize>k << 2))), pb = f32x4.splat(load<f32>(sb + (<usize>k << 2)));
      const v0 = v128.load(vk), v1 = v128.load(vk + 16), v2 = v128.load(vk + 32), v3 = v128.load(vk + 48);
      x0 = madd(pa, v0, x0);
      y0 = madd(pb, v0, y0);
      x1 = madd(pa, v1, x1);
      y1 = madd(pb, v1, y1);
      x2 = madd(pa, v2, x2);
      y2 = madd(pb, v2, y2);
      x3 = madd(pa, v3, x3);
      y3 = madd(pb, v3, y3);
    }
    const ia = f32x4.splat(invA), ib = f32x4.splat(invB);
    v128.store(oa + o, f32x4.mul(x0, ia));
    v128.store(oa + o + 16, f32x4.mul(x1, ia));
    v128.store(oa + o + 32, f32x4.mul(x2, ia));
    v128.store(oa + o + 48, f32x4.mul(x3, ia));
    v128.store(ob + o, f32x4.mul(y0, ib));
    v128.store(ob + o + 16, f32x4.mul(y1, ib));
    v128.store(ob + o + 32, f32x4.mul(y2, ib));
    v128.store(ob + o + 48, f32x4.mul(y3, ib));
  }
  for (; i < hd; i += 4) {
    const o = <usize>i << 2;
    let x0 = f32x4.splat(0), y0 = f32x4.splat(0);
    for (let k = 0; k < nb; k++) {
      const v0 = v128.load(vb + <usize>k * hb + o);
      x0 = madd(f32x4.splat(load<f32>(sa + (<usize>k << 2))), v0, x0);
      y0 = madd(f32x4.splat(load<f32>(sb + (<usize>k << 2))), v0, y0);
    }
    v128.store(oa + o, f32x4.mul(x0, f32x4.splat(invA)));
    v128.store(ob + o, f32x4.mul(y0, f32x4.splat(invB)));
  }
  return f32x4(invA, invB, 0, 0);
}

// ---- decoding: every query head of a KV group in one pass over its entries ----------------------------

/** Keys scored per sweep over a group's head tiles: 16 KiB of a 64-float head, read again from L1. */
const KEY_CHUNK = 64;

/**
 * Values weighed per sweep over a group's head tiles and column blocks: the 4 rows' 16 cache lines are
 * read close together, so the values stream in order (64, one column block of every row before the
 * next, ran 1.28x slower with the entries in memory; 2 and 8 no faster than 4: bench/attn_micro.ts).
 */
const VALUE_CHUNK = 4;

/**
 * Query heads in the register tile that starts at head h of a group of g: 3, but 2 + 2 for four left.
 * (Tiles of at most 2 heads, which fit the registers without spilling, measured slower for groups of 3.)
 */
@inline function headTile(g: i32, h: i32): i32 {
  const r = g - h;
  return r == 4 || r == 2 ? 2 : r == 1 ? 1 : 3;
}

/**
 * Scores of H (1..3, a constant once inlined) query heads, hd floats apart from qv, over keys [j0, j1):
 * p[h][j] = scale x q_h . key_j, rows of p pstride bytes apart. Four keys x H heads = up to 12 accumulators
 * and a key vector; the optimizer keeps the H query vectors too (16 values where V8 allocates 15 vector
 * registers on x64, so one or two spill). Each head's arithmetic is attend2's.
 */
@inline function scoreHeads(
  H: i32, qv: usize, keys: usize, j0: i32, j1: i32, hd: i32, sv: v128, p: usize, pstride: usize,
): void {
  const hb = <usize>hd << 2, q1 = qv + hb, q2 = q1 + hb, p1 = p + pstride, p2 = p1 + pstride;
  const scale = f32x4.extract_lane(sv, 0);
  let j = j0;
  for (; j + 4 <= j1; j += 4) {
    const k0 = keys + <usize>j * hb, k1 = k0 + hb, k2 = k1 + hb, k3 = k2 + hb;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0), b3 = f32x4.splat(0);
    let c0 = f32x4.splat(0), c1 = f32x4.splat(0), c2 = f32x4.splat(0), c3 = f32x4.splat(0);
    for (let i = 0; i < hd; i += 4) {
      const o = <usize>i << 2;
      let x = v128.load(k0 + o);
      a0 = madd(x, v128.load(qv + o), a0);
      if (H > 1) b0 = madd(x, v128.load(q1 + o), b0);
      if (H > 2) c0 = madd(x, v128.load(q2 + o), c0);
      x = v128.load(k1 + o);
      a1 = madd(x, v128.load(qv + o), a1);
      if (H > 1) b1 = madd(x, v128.load(q1 + o), b1);
      if (H > 2) c1 = madd(x, v128.load(q2 + o), c1);
      x = v128.load(k2 + o);
      a2 = madd(x, v128.load(qv + o), a2);
      if (H > 1) b2 = madd(x, v128.load(q1 + o), b2);
      if (H > 2) c2 = madd(x, v128.load(q2 + o), c2);
      x = v128.load(k3 + o);
      a3 = madd(x, v128.load(qv + o), a3);
      if (H > 1) b3 = madd(x, v128.load(q1 + o), b3);
      if (H > 2) c3 = madd(x, v128.load(q2 + o), c3);
    }
    const at = <usize>j << 2;
    v128.store(p + at, f32x4.mul(hsum4(a0, a1, a2, a3), sv));
    if (H > 1) v128.store(p1 + at, f32x4.mul(hsum4(b0, b1, b2, b3), sv));
    if (H > 2) v128.store(p2 + at, f32x4.mul(hsum4(c0, c1, c2, c3), sv));
  }
  for (; j < j1; j++) {
    const kj = keys + <usize>j * hb;
    let a = f32x4.splat(0), b = f32x4.splat(0), c = f32x4.splat(0);
    for (let i = 0; i < hd; i += 4) {
      const o = <usize>i << 2;
      const x = v128.load(kj + o);
      a = madd(x, v128.load(qv + o), a);
      if (H > 1) b = madd(x, v128.load(q1 + o), b);
      if (H > 2) c = madd(x, v128.load(q2 + o), c);
    }
    const at = <usize>j << 2;
    store<f32>(p + at, hsum(a) * scale);
    if (H > 1) store<f32>(p1 + at, hsum(b) * scale);
    if (H > 2) store<f32>(p2 + at, hsum(c) * scale);
  }
}

/**
 * out_h[o .. o + 4V floats) += sum over j in [j0, j1) of p[h][j] x value_j[same columns], for H (1..3) heads
 * (out rows hd floats apart) and V (1..4) vectors, both constants once inlined: up to 12 accumulators, a
 * value vector and the H broadcast weights (the optimizer keeps them; V8 spills a few accumulators for 3 x
 * 4, which still ran faster than 3 heads x 8 columns). The outputs are loaded and stored once per call,
 * not per key, so cutting the keys into calls does not change a bit.
 */
@inline function weighValues(
  H: i32, V: i32, p: usize, pstride: usize, vb: usize, j0: i32, j1: i32, hd: i32, out: usize, o: usize,
): void {
  const hb = <usize>hd << 2, p1 = p + pstride, p2 = p1 + pstride;
  const o0 = out + o, o1 = o0 + hb, o2 = o1 + hb;
  let x0 = v128.load(o0), x1 = f32x4.splat(0), x2 = f32x4.splat(0), x3 = f32x4.splat(0);
  let y0 = f32x4.splat(0), y1 = f32x4.splat(0), y2 = f32x4.splat(0), y3 = f32x4.splat(0);
  let z0 = f32x4.splat(0), z1 = f32x4.splat(0), z2 = f32x4.splat(0), z3 = f32x4.splat(0);
  if (V > 1) x1 = v128.load(o0 + 16);
  if (V > 2) x2 = v128.load(o0 + 32);
  if (V > 3) x3 = v128.load(o0 + 48);
  if (H > 1) {
    y0 = v128.load(o1);
    if (V > 1) y1 = v128.load(o1 + 16);
    if (V > 2) y2 = v128.load(o1 + 32);
    if (V > 3) y3 = v128.load(o1 + 48);
  }
  if (H > 2) {
    z0 = v128.load(o2);
    if (V > 1) z1 = v128.load(o2 + 16);
    if (V > 2) z2 = v128.load(o2 + 32);
    if (V > 3) z3 = v128.load(o2 + 48);
  }
  for (let j = j0; j < j1; j++) {
    const vj = vb + <usize>j * hb + o, at = <usize>j << 2;
    let v = v128.load(vj);
    x0 = madd(v128.load32_splat(p + at), v, x0);
    if (H > 1) y0 = madd(v128.load32_splat(p1 + at), v, y0);
    if (H > 2) z0 = madd(v128.load32_splat(p2 + at), v, z0);
    if (V > 1) {
      v = v128.load(vj + 16);
      x1 = madd(v128.load32_splat(p + at), v, x1);
      if (H > 1) y1 = madd(v128.load32_splat(p1 + at), v, y1);
      if (H > 2) z1 = madd(v128.load32_splat(p2 + at), v, z1);
    }
    if (V > 2) {
      v = v128.load(vj + 32);
      x2 = madd(v128.load32_splat(p + at), v, x2);
      if (H > 1) y2 = madd(v128.load32_splat(p1 + at), v, y2);
      if (H > 2) z2 = madd(v128.load32_splat(p2 + at), v, z2);
    }
    if (V > 3) {
      v = v128.load(vj + 48);
      x3 = madd(v128.load32_splat(p + at), v, x3);
      if (H > 1) y3 = madd(v128.load32_splat(p1 + at), v, y3);
      if (H > 2) z3 = madd(v128.load32_splat(p2 + at), v, z3);
    }
  }
  v128.store(o0, x0);
  if (V > 1) v128.store(o0 + 16, x1);
  if (V > 2) v128.store(o0 + 32, x2);
  if (V > 3) v128.store(o0 + 48, x3);
  if (H > 1) {
    v128.store(o1, y0);
    if (V > 1) v128.store(o1 + 16, y1);
    if (V > 2) v128.store(o1 + 32, y2);
    if (V > 3) v128.store(o1 + 48, y3);
  }
  if (H > 2) {
    v128.store(o2, z0);
    if (V > 1) v128.store(o2 + 16, z1);
    if (V > 2) v128.store(o2 + 32, z2);
    if (V > 3) v128.store(o2 + 48, z3);
  }
}

/** scoreHeads for the H heads of a tile (a runtime 1..3). */
function scoreTile(
  H: i32, qv: usize, keys: usize, j0: i32, j1: i32, hd: i32, sv: v128, p: usize, pstride: usize,
): void {
  if (H == 3) scoreHeads(3, qv, keys, j0, j1, hd, sv, p, pstride);
  else if (H == 2) scoreHeads(2, qv, keys, j0, j1, hd, sv, p, pstride);
  else scoreHeads(1, qv, keys, j0, j1, hd, sv, p, pstride);
}

/** weighValues for a tile of H heads (a runtime 1..3) over every column: blocks of 16 floats, then of 4. */
function weighTile(H: i32, p: usize, pstride: usize, vb: usize, j0: i32, j1: i32, hd: i32, out: usize): void {
  let i = 0;
  for (; i + 16 <= hd; i += 16) {
    const o = <usize>i << 2;
    if (H == 3) weighValues(3, 4, p, pstride, vb, j0, j1, hd, out, o);
    else if (H == 2) weighValues(2, 4, p, pstride, vb, j0, j1, hd, out, o);
    else weighValues(1, 4, p, pstride, vb, j0, j1, hd, out, o);
  }
  for (; i < hd; i += 4) {
    const o = <usize>i << 2;
    if (H == 3) weighValues(3, 1, p, pstride, vb, j0, j1, hd, out, o);
    else if (H == 2) weighValues(2, 1, p, pstride, vb, j0, j1, hd, out, o);
    else weighValues(1, 1, p, pstride, vb, j0, j1, hd, out, o);
  }
}

/**
 * One decoded row's attention for the `group` query heads of one KV head (queries and outputs hd floats
 * apart, hd a multiple of 4), over its n entries: the keys are scored, then the values weighed, KEY_CHUNK
 * entries at a time for every head tile, so each key and value row comes from memory once for the whole
 * group, whatever its size. Softmax in two passes as attend1's (maximum subtracted, then normalized):
 * p holds the group's rows of probabilities (group x cap floats).
 */
function attendGroup(
  q: usize, out: usize, group: i32, n: i32, hd: i32, scale: f32, kb: usize, vb: usize, p: usize, cap: i32,
): void {
  const hb = <usize>hd << 2, pstride = <usize>cap << 2, sv = f32x4.splat(scale);
  for (let j0 = 0; j0 < n; j0 += KEY_CHUNK) {
    const j1 = min(n, j0 + KEY_CHUNK);
    for (let h = 0; h < group;) {
      const H = headTile(group, h);
      scoreTile(H, q + <usize>h * hb, kb, j0, j1, hd, sv, p + <usize>h * pstride, pstride);
      h += H;
    }
  }
  for (let h = 0; h < group; h++) {
    const row = p + <usize>h * pstride;
    scaleRow(row, n, <f32>1 / expScores(row, n, maxOf(row, n)));
  }
  memory.fill(out, 0, <usize>group * hb);
  for (let j0 = 0; j0 < n; j0 += VALUE_CHUNK) {
    const j1 = min(n, j0 + VALUE_CHUNK);
    for (let h = 0; h < group;) {
      const H = headTile(group, h);
      weighTile(H, p + <usize>h * pstride, pstride, vb, j0, j1, hd, out + <usize>h * hb);
      h += H;
    }
  }
}

/** s[0..n) x= f. */
function scaleRow(s: usize, n: i32, f: f32): void {
  const fv = f32x4.splat(f);
  let j = 0;
  for (; j + 4 <= n; j += 4) v128.store(s + (<usize>j << 2), f32x4.mul(v128.load(s + (<usize>j << 2)), fv));
  for (; j < n; j++) store<f32>(s + (<usize>j << 2), load<f32>(s + (<usize>j << 2)) * f);
}

/** Adds p_j = scores[j] x inv to row[position_j] for j < n (positions ascending, all cached). */
function addMass(row: usize, scores: usize, positions: usize, n: i32, inv: f32): void {
  if (n > 0 && load<i32>(positions + (<usize>(n - 1) << 2)) == n - 1) {
    // Positions 0..n-1 in order (nothing pruned): entry j is position j.
    const iv = f32x4.splat(inv);
    let j = 0;
    for (; j + 4 <= n; j += 4) {
      const o = <usize>j << 2;
      v128.store(row + o, madd(v128.load(scores + o), iv, v128.load(row + o)));
    }
    for (; j < n; j++) {
      const o = <usize>j << 2;
      store<f32>(row + o, load<f32>(row + o) + load<f32>(scores + o) * inv);
    }
    return;
  }
  for (let j = 0; j < n; j++) {
    const at = row + (<usize>load<i32>(positions + (<usize>j << 2)) << 2);
    store<f32>(at, load<f32>(at) + load<f32>(scores + (<usize>j << 2)) * inv);
  }
}

/**
 * Causal attention of M new rows over each KV head's entries: row m sees the first
 * counts[slot] + m + 1 entries (everything cached before this call, then the new rows up to itself).
 * Units of work are (KV head, pair of rows), split over threads; the two rows of a pair share every
 * key and value load. A single row (decoding) runs the whole group of query heads at once (attendGroup).
 * Scores go to the chunk's scratch (max(2, group) x cap floats at scratch + t x max(2, group) x cap x 4).
 *
 * With `mass` (not 0), the rows' attention is also summed per query head and cached position into
 * mass[head][position] (row stride massStride floats): the scoring of captured rows comes out of the
 * forward pass itself. Units are then query heads, so no two threads add to the same row of mass.
 */
export function attention(
  q: usize, out: usize, M: i32, nHeads: i32, nKv: i32, hd: i32, scale: f32,
  keys: usize, values: usize, counts: usize, slot0: i32, cap: i32, scratch: usize,
  mass: usize, positions: usize, massStride: i32, t: i32, nt: i32,
): void {
  const pairs = (M + 1) >> 1, group = nHeads / nKv, hb = <usize>hd << 2, qw = nHeads * hd;
  const sa = scratch + <usize>t * <usize>max(2, group) * (<usize>cap << 2), sb = sa + (<usize>cap << 2);
  const paired = (hd & 3) == 0;
  if (mass) {
    const h0 = share(nHeads, t, nt, 1), h1 = share(nHeads, t + 1, nt, 1);
    for (let h = h0; h < h1; h++) {
      const slot = slot0 + h / group;
      const kb = keys + <usize>slot * <usize>cap * hb, vb = values + <usize>slot * <usize>cap * hb;
      const pb = positions + <usize>slot * <usize>cap * 4, row = mass + <usize>h * (<usize>massStride << 2);
      const base = load<i32>(counts + (<usize>slot << 2));
      let m = 0;
      for (; paired && m + 1 < M; m += 2) {
        const n = base + m + 1;
        const inv = attend2(q + qat(m, h, qw, hd), q + qat(m + 1, h, qw, hd), out + qat(m, h, qw, hd), out + qat(m + 1, h, qw, hd), n, n + 1, hd, scale, kb, vb, sa, sb);
        addMass(row, sa, pb, n, f32x4.extract_lane(inv, 0));
        addMass(row, sb, pb, n + 1, f32x4.extract_lane(inv, 1));
      }
      for (; m < M; m++) {
        const n = base + m + 1;
        const inv = attend1(q + qat(m, h, qw, hd), out + qat(m, h, qw, hd), n, hd, scale, kb, vb, sa);
        addMass(row, sa, pb, n, inv);
      }
    }
    return;
  }
  const units = nKv * pairs;
  const u0 = share(units, t, nt, 1), u1 = share(units, t + 1, nt, 1);
  for (let u = u0; u < u1; u++) {
    const g = u / pairs, m = (u % pairs) << 1;
    const slot = slot0 + g;
    const n = load<i32>(counts + (<usize>slot << 2)) + m + 1;
    const kb = keys + <usize>slot * <usize>cap * hb, vb = values + <usize>slot * <usize>cap * hb;
    if (m + 1 < M && paired) {
      for (let h = g * group; h < (g + 1) * group; h++) {
        attend2(q + qat(m, h, qw, hd), q + qat(m + 1, h, qw, hd), out + qat(m, h, qw, hd), out + qat(m + 1, h, qw, hd), n, n + 1, hd, scale, kb, vb, sa, sb);
      }
    } else if (m + 1 < M) {
      for (let h = g * group; h < (g + 1) * group; h++) {
        attend1(q + qat(m, h, qw, hd), out + qat(m, h, qw, hd), n, hd, scale, kb, vb, sa);
        attend1(q + qat(m + 1, h, qw, hd), out + qat(m + 1, h, qw, hd), n + 1, hd, scale, kb, vb, sa);
      }
    } else if (paired) {
      attendGroup(q + qat(m, g * group, qw, hd), out + qat(m, g * group, qw, hd), group, n, hd, scale, kb, vb, sa, cap);
    } else {
      for (let h = g * group; h < (g + 1) * group; h++) attend1(q + qat(m, h, qw, hd), out + qat(m, h, qw, hd), n, hd, scale, kb, vb, sa);
    }
  }
}

/**
 * Scoring: for R captured query rows ([R][nLayers][nHeads x hd], post-RoPE, absolute positions in
 * rowPos ascending), adds each row's causal softmax attention over the cached entries at positions
 * <= its own to mass[layer][head][position] for positions < promptLength. Units are (layer, head)
 * pairs, so no two threads write the same output.
 */
export function attentionMass(
  q: usize, rowPos: usize, R: i32, nLayers: i32, nHeads: i32, nKv: i32, hd: i32, scale: f32,
  keys: usize, values: usize, positions: usize, counts: usize, cap: i32, promptLength: i32,
  mass: usize, scratch: usize, t: i32, nt: i32,
): void {
  const units = nLayers * nHeads;
  const u0 = share(units, t, nt, 1), u1 = share(units, t + 1, nt, 1);
  const group = nHeads / nKv, hb = <usize>hd << 2;
  const scores = scratch + <usize>t * (<usize>cap << 2);
  for (let u = u0; u < u1; u++) {
    const l = u / nHeads, h = u % nHeads;
    const slot = l * nKv + h / group;
    const count = load<i32>(counts + (<usize>slot << 2));
    const kb = keys + <usize>slot * <usize>cap * hb;
    const pb = positions + <usize>slot * <usize>cap * 4;
    const outRow = mass + <usize>u * (<usize>promptLength << 2);
    let seen = 0;
    for (let r = 0; r < R; r++) {
      const pos = load<i32>(rowPos + (<usize>r << 2));
      while (seen < count && load<i32>(pb + (<usize>seen << 2)) <= pos) seen++;
      const qv = q + <usize>((r * nLayers + l) * nHeads + h) * hb;
      const mx = scoreKeys(qv, kb, seen, hd, scale, scores);
      const inv = <f32>1 / expScores(scores, seen, mx);
      for (let j = 0; j < seen; j++) {
        const p = load<i32>(pb + (<usize>j << 2));
        if (p < promptLength) {
          const at = outRow + (<usize>p << 2);
          store<f32>(at, load<f32>(at) + load<f32>(scores + (<usize>j << 2)) * inv);
        }
      }
    }
  }
}

/** L2 norms of cached keys at positions < promptLength: out[slot][position]; units are slots. */
export function keyNorms(
  keys: usize, positions: usize, counts: usize, slots: i32, hd: i32, cap: i32, promptLength: i32, out: usize,
  t: i32, nt: i32,
): void {
  const s0 = share(slots, t, nt, 1), s1 = share(slots, t + 1, nt, 1);
  const hb = <usize>hd << 2;
  for (let s = s0; s < s1; s++) {
    const n = load<i32>(counts + (<usize>s << 2));
    for (let j = 0; j < n; j++) {
      const at = <usize>s * <usize>cap + <usize>j;
      const p = load<i32>(positions + (at << 2));
      if (p >= promptLength) continue;
      let ss: f64 = 0;
      const k = keys + at * hb;
      for (let i = 0; i < hd; i++) {
        const v = <f64>load<f32>(k + (<usize>i << 2));
        ss += v * v;
      }
      store<f32>(out + ((<usize>s * <usize>promptLength + <usize>p) << 2), <f32>Math.sqrt(ss));
    }
  }
}

// ---- q8_0 GEMM: ggml's blocks of 32 int8 weights, a scale each ------------------------------
//
// Weights [N, K], K a multiple of 32, in 3-row groups: rows 3g..3g+2 interleaved 16 bytes at a time (row
// 0's bytes 0..15, row 1's, row 2's, then bytes 16..31 of each, ...), so a 3-row tile streams one run of
// bytes; a group is 3K bytes, and the last N mod 3 rows follow row-major. The block scales (f32 holding
// ggml's f16 values) are in their own array in the same order: group g's block b of row r at
// 3g KB + 3b + r (KB = K / 32), a last row n's block b at n KB + b. Each row also has an f64 offset term,
// 2^20 sum_b d_b (sum of block b's weights), which takes the activations' offset back out.
//
// Activations are quantized as for gemmI8 (quantizeRow: x' = x_q + 2^20 in three 7-bit digits). Per row
// and block, each i32 lane sums 4 bytes of each of the block's two 16-byte halves (8 products per digit,
// |sum| <= 8 x 128 x 127 = 130,048) and the digits are combined in the lane, a2 2^14 + (a1 2^7 + a0), at
// most 130,048 x 16,513 = 2,147,482,624 < 2^31 (each part less): exact in i32. Lanes 0 + 2 and 1 + 3 are summed in f64
// (exact, < 2^32) and multiplied by the block scale (exact: 32-bit integer x 11-bit f16 significand), then
// added to the row's f64 accumulator, blocks in order: the one rounding per block is an f64 add in a fixed
// order, so the output is the same bits whatever the thread split and on either kernel module (whose
// lanes hold the same bytes: dotQ8).

/** acc + the dot products of 16 int8 weights and 16 digits; lane j sums bytes 4j..4j+3 on both modules. */
@inline function dotQ8(w: v128, d: v128, acc: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return i32x4.relaxed_dot_i8x16_i7x16_add_s(w, d, acc);
  const lo = i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(w), i16x8.extend_low_i8x16_u(d));
  const hi = i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(w), i16x8.extend_high_i8x16_u(d));
  // lo = byte pairs (0,1) (2,3) (4,5) (6,7), hi = (8,9) ... (14,15): pairs of pairs are relaxed SIMD's lanes.
  return i32x4.add(acc, i32x4.add(v128.shuffle<i32>(lo, hi, 0, 2, 4, 6), v128.shuffle<i32>(lo, hi, 1, 3, 5, 7)));
}

/**
 * One row's block of 32 (halves wa, wb) against the block's six digit vectors: x'-products per lane. The
 * digits accumulate apart and combine in a tree (a Horner chain through the dot products' accumulator
 * saved two adds but ran 0.67x of this: the chain's latency).
 */
@inline function blockQ8(
  wa: v128, wb: v128, d2a: v128, d1a: v128, d0a: v128, d2b: v128, d1b: v128, d0b: v128,
): v128 {
  const z = i32x4.splat(0);
  const a2 = dotQ8(wb, d2b, dotQ8(wa, d2a, z)), a1 = dotQ8(wb, d1b, dotQ8(wa, d1a, z));
  const a0 = dotQ8(wb, d0b, dotQ8(wa, d0a, z));
  return i32x4.add(i32x4.shl(a2, 14), i32x4.add(i32x4.shl(a1, 7), a0));
}

/**
 * acc + (lanes 0 + 2, lanes 1 + 3) x d (d splat in both f64 lanes): every step exact but the add to acc,
 * so fused (relaxed SIMD) or not, the same bits.
 */
@inline function scaleQ8(lanes: v128, d: v128, acc: v128): v128 {
  const s = f64x2.add(
    f64x2.convert_low_i32x4_s(lanes),
    f64x2.convert_low_i32x4_s(v128.shuffle<i32>(lanes, lanes, 2, 3, 2, 3)),
  );
  if (ASC_FEATURE_RELAXED_SIMD) return f64x2.relaxed_madd(s, d, acc);
  else return f64x2.add(acc, f64x2.mul(s, d));
}

/** y = ((acc lane 0 + lane 1) - offset of row n) x s_x (+ bias) (+ y). */
@inline function finishQ8(
  a: v128, n: i32, sx: f32, offs: usize, bias: usize, y: usize, acc: i32,
): void {
  const total = (f64x2.extract_lane(a, 0) + f64x2.extract_lane(a, 1)) - load<f64>(offs + (<usize>n << 3));
  let r = <f32>(total * <f64>sx);
  if (bias) r += load<f32>(bias + (<usize>n << 2));
  if (acc) r += load<f32>(y);
  store<f32>(y, r);
}

/** A 3-row group (at g, its scales at s) against one quantized row q; outputs rows n..n + 2 at y. */
function tileQ8x3(
  g: usize, s: usize, KB: i32, q: usize, sx: f32, n: i32, offs: usize, bias: usize, y: usize, acc: i32,
): void {
  let a0 = f64x2.splat(0), a1 = f64x2.splat(0), a2 = f64x2.splat(0);
  for (let b = 0; b < KB; b++) {
    const o = <usize>b * 96, qb = q + o, wb = g + o, sb = s + <usize>b * 12;
    const d2a = v128.load(qb), d1a = v128.load(qb, 16), d0a = v128.load(qb, 32);
    const d2b = v128.load(qb, 48), d1b = v128.load(qb, 64), d0b = v128.load(qb, 80);
    // The three rows' scales: one 8-byte load widened to f64 for rows 0 and 1, row 2's alone.
    const d01 = f64x2.promote_low_f32x4(v128.load64_zero(sb)), d2 = f64x2.splat(<f64>load<f32>(sb, 8));
    const s0 = v128.shuffle<i64>(d01, d01, 0, 0), s1 = v128.shuffle<i64>(d01, d01, 1, 1);
    a0 = scaleQ8(blockQ8(v128.load(wb), v128.load(wb, 48), d2a, d1a, d0a, d2b, d1b, d0b), s0, a0);
    a1 = scaleQ8(blockQ8(v128.load(wb, 16), v128.load(wb, 64), d2a, d1a, d0a, d2b, d1b, d0b), s1, a1);
    a2 = scaleQ8(blockQ8(v128.load(wb, 32), v128.load(wb, 80), d2a, d1a, d0a, d2b, d1b, d0b), d2, a2);
  }
  finishQ8(a0, n, sx, offs, bias, y, acc);
  finishQ8(a1, n + 1, sx, offs, bias, y + 4, acc);
  finishQ8(a2, n + 2, sx, offs, bias, y + 8, acc);
}

/** One of the last N mod 3 rows (row-major at r, its scales at s) against one quantized row: a tile row's arithmetic. */
function rowQ8(
  r: usize, s: usize, KB: i32, q: usize, sx: f32, n: i32, offs: usize, bias: usize, y: usize, acc: i32,
): void {
  let a = f64x2.splat(0);
  for (let b = 0; b < KB; b++) {
    const qb = q + <usize>b * 96, wb = r + <usize>b * 32;
    const lanes = blockQ8(
      v128.load(wb),
      v128.load(wb, 16),
      v128.load(qb),
      v128.load(qb, 16),
      v128.load(qb, 32),
      v128.load(qb, 48),
      v128.load(qb, 64),
      v128.load(qb, 80),
    );
    a = scaleQ8(lanes, f64x2.splat(<f64>load<f32>(s + (<usize>b << 2))), a);
  }
  finishQ8(a, n, sx, offs, bias, y, acc);
}

/**
 * y[m, n] (+)= s_x[m] sum_b d[n, b] (w[n, b] . x_q[m, b]) (+ bias[n]) for thread t's share of n: q8_0 weights
 * (layout above), the input rows quantized as in gemmI8 into the chunk's scratch (scratch + t x
 * scratchStride: Q_ROWS scales, then Q_ROWS rows of 3K bytes). The share is gemmI8's and siluMul's: it
 * starts on a multiple of COLUMNS, a multiple of 3, so it holds whole groups.
 */
export function gemmQ8(
  x: usize, w: usize, scales: usize, offs: usize, bias: usize, y: usize, M: i32, N: i32, K: i32, ldy: i32,
  acc: i32, scratch: usize, scratchStride: i32, xs: i32, t: i32, nt: i32,
): void {
  const n0 = share(N, t, nt, COLUMNS), n1 = share(N, t + 1, nt, COLUMNS);
  if (n0 >= n1) return;
  x += <usize>t * <usize>xs;
  const base = scratch + <usize>t * <usize>scratchStride, qs = base + (<usize>Q_ROWS << 2);
  const rb = <usize>K * 3, ks = <usize>K << 2, ys = <usize>ldy << 2, KB = K >> 5;
  const grouped = min(n1, N - N % 3);
  for (let mb = 0; mb < M; mb += Q_ROWS) {
    const me = min(mb + Q_ROWS, M);
    for (let m = mb; m < me; m++) {
      store<f32>(base + (<usize>(m - mb) << 2), quantizeRow(x + <usize>m * ks, K, qs + <usize>(m - mb) * rb));
    }
    // Each group (3K bytes) stays in L1 while the block's input rows pass over it.
    for (let n = n0; n < n1;) {
      const three = n < grouped;
      const g = w + <usize>n * <usize>K, s = scales + ((<usize>n * <usize>KB) << 2);
      for (let m = mb; m < me; m++) {
        const sx = load<f32>(base + (<usize>(m - mb) << 2)), qm = qs + <usize>(m - mb) * rb;
        const yn = y + <usize>m * ys + (<usize>n << 2);
        if (three) tileQ8x3(g, s, KB, qm, sx, n, offs, bias, yn, acc);
        else rowQ8(g, s, KB, qm, sx, n, offs, bias, yn, acc);
      }
      n += three ? 3 : 1;
    }
  }
}

/** Gathers token embeddings from a q8_0 table [N, D] (layout above): each value q x d, exact in f32. */
export function embedQ8(
  table: usize, scales: usize, tokens: usize, x: usize, M: i32, D: i32, N: i32, t: i32, nt: i32,
): void {
  const m0 = share(M, t, nt, 1), m1 = share(M, t + 1, nt, 1);
  const N3 = N - N % 3, KB = D >> 5;
  for (let m = m0; m < m1; m++) {
    const tok = load<i32>(tokens + (<usize>m << 2)), dst = x + <usize>m * (<usize>D << 2);
    int8RowToFloats(table, tok, N, D, dst); // the values, out of int8's row groups
    // Its block scales: a group's three side by side per block, a last row's one after another.
    const r = tok % 3, grouped = tok < N3, ss: usize = grouped ? 12 : 4;
    const s = scales + ((grouped ? <usize>(tok - r) * <usize>KB + <usize>r : <usize>tok * <usize>KB) << 2);
    for (let b = 0; b < KB; b++) {
      const d = f32x4.splat(load<f32>(s + <usize>b * ss)), o = dst + (<usize>b << 7);
      for (let i: usize = 0; i < 128; i += 16) v128.store(o + i, f32x4.mul(v128.load(o + i), d));
    }
  }
}
