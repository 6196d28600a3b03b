// Memory-streaming patterns of one-row GEMMs (bench/stream_micro.ts compiles this with AssemblyScript):
// a plain read, f32 weight rows read four side by side or one after another, int8 3-row tiles over
// row-major or 16-byte-interleaved rows, and 4-bit weights in the interleaved tile. Not the kernels
// themselves (wasm/assembly/kernels.ts): their access patterns, to time against each other.
@inline function madd(a: v128, b: v128, c: v128): v128 { return f32x4.relaxed_madd(a, b, c); }

export function seq(p: usize, n: i32): f32 {
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  for (let i = 0; i < n; i += 64) {
    const q = p + <usize>i;
    a0 = f32x4.add(a0, v128.load(q, 0)); a1 = f32x4.add(a1, v128.load(q, 16));
    a2 = f32x4.add(a2, v128.load(q, 32)); a3 = f32x4.add(a3, v128.load(q, 48));
  }
  return f32x4.extract_lane(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)), 0);
}

// GEMV on row-major w [N][K] with 4-row tiles, 8 accumulators (two k halves)
export function gemv4(x: usize, w: usize, y: usize, N: i32, K: i32): void {
  const ks = <usize>K << 2;
  for (let n = 0; n < N; n += 4) {
    const w0 = w + <usize>n * ks, w1 = w0 + ks, w2 = w1 + ks, w3 = w2 + ks;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0), b3 = f32x4.splat(0);
    for (let k = 0; k < K; k += 8) {
      const o = <usize>k << 2;
      const xa = v128.load(x + o), xb = v128.load(x + o, 16);
      a0 = madd(v128.load(w0 + o), xa, a0); b0 = madd(v128.load(w0 + o, 16), xb, b0);
      a1 = madd(v128.load(w1 + o), xa, a1); b1 = madd(v128.load(w1 + o, 16), xb, b1);
      a2 = madd(v128.load(w2 + o), xa, a2); b2 = madd(v128.load(w2 + o, 16), xb, b2);
      a3 = madd(v128.load(w3 + o), xa, a3); b3 = madd(v128.load(w3 + o, 16), xb, b3);
    }
    store<f32>(y + (<usize>n << 2), f32x4.extract_lane(f32x4.add(a0, b0), 0) + f32x4.extract_lane(f32x4.add(a1, b1), 1) + f32x4.extract_lane(f32x4.add(a2, b2), 2)+ f32x4.extract_lane(f32x4.add(a3, b3), 3));
  }
}

export function gemv1(x: usize, w: usize, y: usize, N: i32, K: i32): void {
  let p = w;
  for (let n = 0; n < N; n++) {
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    for (let k = 0; k < K; k += 16) {
      const o = <usize>k << 2;
      a0 = madd(v128.load(p, 0), v128.load(x + o, 0), a0);
      a1 = madd(v128.load(p, 16), v128.load(x + o, 16), a1);
      a2 = madd(v128.load(p, 32), v128.load(x + o, 32), a2);
      a3 = madd(v128.load(p, 48), v128.load(x + o, 48), a3);
      p += 64;
    }
    store<f32>(y + (<usize>n << 2), f32x4.extract_lane(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)), 0));
  }
}

@inline function dd(w: v128, d: v128, acc: v128): v128 { return i32x4.relaxed_dot_i8x16_i7x16_add_s(w, d, acc); }

function tile3(w0: usize, w1: usize, w2: usize, step: usize, q: usize, y: usize, K: i32): void {
    let a0 = i32x4.splat(0), b0 = i32x4.splat(0), c0 = i32x4.splat(0);
    let a1 = i32x4.splat(0), b1 = i32x4.splat(0), c1 = i32x4.splat(0);
    let a2 = i32x4.splat(0), b2 = i32x4.splat(0), c2 = i32x4.splat(0);
    for (let k = 0; k < K; k += 16) {
      const qk = q + <usize>k * 3;
      const d2 = v128.load(qk), d1 = v128.load(qk, 16), d0 = v128.load(qk, 32);
      const v0 = v128.load(w0); a0 = dd(v0, d2, a0); b0 = dd(v0, d1, b0); c0 = dd(v0, d0, c0);
      const v1 = v128.load(w1); a1 = dd(v1, d2, a1); b1 = dd(v1, d1, b1); c1 = dd(v1, d0, c1);
      const v2 = v128.load(w2); a2 = dd(v2, d2, a2); b2 = dd(v2, d1, b2); c2 = dd(v2, d0, c2);
      w0 += step; w1 += step; w2 += step;
    }
    store<i32>(y, i32x4.extract_lane(i32x4.add(i32x4.add(a0, b0), c0), 0));
    store<i32>(y, i32x4.extract_lane(i32x4.add(i32x4.add(a1, b1), c1), 0), 4);
    store<i32>(y, i32x4.extract_lane(i32x4.add(i32x4.add(a2, b2), c2), 0), 8);
}

export function i8tile3(q: usize, w: usize, y: usize, N: i32, K: i32): void {
  for (let n = 0; n + 3 <= N; n += 3) { const w0 = w + <usize>n * K; tile3(w0, w0 + K, w0 + 2 * K, 16, q, y + (<usize>n << 2), K); }
}

export function i8tile3i(q: usize, w: usize, y: usize, N: i32, K: i32): void {
  for (let n = 0; n + 3 <= N; n += 3) { const w0 = w + <usize>n * K; tile3(w0, w0 + 16, w0 + 32, 48, q, y + (<usize>n << 2), K); }
}

// Q4: 3-row tile, weights packed 2 per byte (low nibbles = k..k+15, high = k+16..k+31) interleaved per row group by 16 bytes
function tile3q4(wp: usize, q: usize, y: usize, K: i32): void {
    let a0 = i32x4.splat(0), b0 = i32x4.splat(0), c0 = i32x4.splat(0);
    let a1 = i32x4.splat(0), b1 = i32x4.splat(0), c1 = i32x4.splat(0);
    let a2 = i32x4.splat(0), b2 = i32x4.splat(0), c2 = i32x4.splat(0);
    const m = i8x16.splat(15), e = i8x16.splat(8);
    for (let k = 0; k < K; k += 32) {
      const qk = q + <usize>k * 3;
      let d2 = v128.load(qk), d1 = v128.load(qk, 16), d0 = v128.load(qk, 32);
      const p0 = v128.load(wp), p1 = v128.load(wp, 16), p2 = v128.load(wp, 32);
      let v0 = i8x16.sub(v128.and(p0, m), e);
      a0 = dd(v0, d2, a0); b0 = dd(v0, d1, b0); c0 = dd(v0, d0, c0);
      let v1 = i8x16.sub(v128.and(p1, m), e);
      a1 = dd(v1, d2, a1); b1 = dd(v1, d1, b1); c1 = dd(v1, d0, c1);
      let v2 = i8x16.sub(v128.and(p2, m), e);
      a2 = dd(v2, d2, a2); b2 = dd(v2, d1, b2); c2 = dd(v2, d0, c2);
      d2 = v128.load(qk, 48); d1 = v128.load(qk, 64); d0 = v128.load(qk, 80);
      v0 = i8x16.sub(i8x16.shr_u(p0, 4), e);
      a0 = dd(v0, d2, a0); b0 = dd(v0, d1, b0); c0 = dd(v0, d0, c0);
      v1 = i8x16.sub(i8x16.shr_u(p1, 4), e);
      a1 = dd(v1, d2, a1); b1 = dd(v1, d1, b1); c1 = dd(v1, d0, c1);
      v2 = i8x16.sub(i8x16.shr_u(p2, 4), e);
      a2 = dd(v2, d2, a2); b2 = dd(v2, d1, b2); c2 = dd(v2, d0, c2);
      wp += 48;
    }
    store<i32>(y, i32x4.extract_lane(i32x4.add(i32x4.add(a0, b0), c0), 0));
    store<i32>(y, i32x4.extract_lane(i32x4.add(i32x4.add(a1, b1), c1), 0), 4);
    store<i32>(y, i32x4.extract_lane(i32x4.add(i32x4.add(a2, b2), c2), 0), 8);
}

export function i4tile3i(q: usize, w: usize, y: usize, N: i32, K: i32): void {
  for (let n = 0; n + 3 <= N; n += 3) tile3q4(w + <usize>n * (K >> 1), q, y + (<usize>n << 2), K);
}
