/**
 * The wasm `attention` kernel against a float64 brute force written here: softmax(scale x q . k) . v for
 * each query head over its KV head's entries, M new rows (1: decoding, every query head of a GQA group in
 * one pass, attendGroup; 2 and 3: the row pairs of prefill) seeing the entries cached before them and
 * themselves. GQA groups of 1, 2, 3, 4, 7 and 8 query heads per KV head, head sizes 64, 20 (a multiple of 4
 * but not of 16: the 4-float column blocks) and 6 (not a multiple of 4: the scalar path), 1 to 600
 * entries. The bits must not depend on the split over threads (1, 3, 8), nor on what the scratch held
 * (NaN before every call). With `mass`, each head's attention summed per cached position is checked too.
 * Both kernel modules (relaxed SIMD and the plain-SIMD fallback).
 *
 * Tolerance from float32 rounding: a score s_j = scale x q . k_j is off by at most
 * e_s = (hd + 2) u scale sum_i |q_i k_ji| (u = 2^-24); softmax turns score errors of at most e_s into
 * relative errors of p_j of at most 2 e_s, and exp (~2 ulp), the sum of exps and the normalization add
 * (n + 8) u more; the weighted sum of values adds (n + 2) u of sum_j p_j |v_j|. So each output is within
 * (2 e_s + (2n + 10) u) x sum_j p_j |v_j| of the exact value, and each mass p_j within (2 e_s + (n + 8) u).
 */
import { Arena } from "../wasm/arena.ts";
import { hasRelaxedSimd, instantiate, type KernelFlavor, kernelModule } from "../wasm/kernels.ts";
import { wasmUnsupportedReason } from "../wasm/mod.ts";
import { CONTROL_BYTES } from "../wasm/pool_protocol.ts";
import { assert, seededFloats } from "./helpers.ts";

const why = wasmUnsupportedReason();
const U = 2 ** -24;

interface Case {
  group: number;
  hd: number;
  /** Entries the last new row sees (cached before the call, then the M new rows). */
  n: number;
  M: number;
}

const CASES: Case[] = [];
for (const group of [1, 2, 3, 4, 7, 8]) {
  for (const hd of [64, 20, 6]) {
    for (const n of [1, 3, 4, 5, 17, 600]) {
      for (const M of [1, 2, 3]) if (M <= n && (M === 1 || hd !== 20)) CASES.push({ group, hd, n, M });
    }
  }
}

/** Exact attention of one query over entries [0, seen): outputs, probabilities and the error bounds. */
function exact(q: Float32Array, keys: Float32Array, values: Float32Array, seen: number, hd: number) {
  const scale = Math.fround(1 / Math.sqrt(hd));
  const s = new Float64Array(seen);
  let es = 0, mx = -Infinity;
  for (let j = 0; j < seen; j++) {
    let d = 0, mag = 0;
    for (let i = 0; i < hd; i++) {
      d += q[i] * keys[j * hd + i];
      mag += Math.abs(q[i] * keys[j * hd + i]);
    }
    s[j] = d * scale;
    es = Math.max(es, (hd + 2) * U * scale * mag);
    mx = Math.max(mx, s[j]);
  }
  let sum = 0;
  for (let j = 0; j < seen; j++) sum += Math.exp(s[j] - mx);
  const p = Array.from(s, (v) => Math.exp(v - mx) / sum);
  const out = new Float64Array(hd), mag = new Float64Array(hd);
  for (let j = 0; j < seen; j++) {
    for (let i = 0; i < hd; i++) {
      out[i] += p[j] * values[j * hd + i];
      mag[i] += p[j] * Math.abs(values[j * hd + i]);
    }
  }
  const outTol = Array.from(mag, (m) => (2 * es + (2 * seen + 10) * U) * m);
  return { out, outTol, p, pRel: 2 * es + (seen + 8) * U };
}

async function check(flavor: KernelFlavor) {
  const arena = new Arena(CONTROL_BYTES);
  const k = instantiate(await kernelModule(flavor), arena.memory);
  const rnd = seededFloats(23);
  const f = () => arena.f32;
  for (const { group, hd, n, M } of CASES) {
    const nKv = 2, nHeads = nKv * group, qw = nHeads * hd, cap = n + 2, splits = [1, 3, 8];
    const scratchFloats = 8 * Math.max(2, group) * cap;
    const keys = arena.alloc(nKv * cap * hd * 4), values = arena.alloc(nKv * cap * hd * 4);
    const counts = arena.alloc(nKv * 4), positions = arena.alloc(nKv * cap * 4);
    const q = arena.alloc(M * qw * 4), scratch = arena.alloc(scratchFloats * 4);
    const outs = splits.map(() => arena.alloc(M * qw * 4)), mass = arena.alloc(nHeads * n * 4);
    const massOut = arena.alloc(M * qw * 4);
    const kv = (at: number) => f().subarray(at / 4, at / 4 + nKv * cap * hd);
    // Entries past n are NaN: reading one would show.
    for (const at of [keys, values]) {
      kv(at).set(Array.from({ length: nKv * cap * hd }, (_, i) => (i % (cap * hd)) < n * hd ? rnd() : NaN));
    }
    for (let i = 0; i < M * qw; i++) f()[q / 4 + i] = 3 * rnd();
    const ints = () => new Int32Array(arena.memory.buffer);
    for (let s = 0; s < nKv; s++) {
      ints()[counts / 4 + s] = n - M;
      for (let j = 0; j < cap; j++) ints()[positions / 4 + s * cap + j] = j;
    }
    const run = (out: number, nt: number, massAt: number) => {
      for (let t = 0; t < nt; t++) {
        f().fill(NaN, scratch / 4, scratch / 4 + scratchFloats);
        k.attention(
          q,
          out,
          M,
          nHeads,
          nKv,
          hd,
          Math.fround(1 / Math.sqrt(hd)),
          keys,
          values,
          counts,
          0,
          cap,
          scratch,
          massAt,
          positions,
          n,
          t,
          nt,
        );
      }
    };
    splits.forEach((nt, i) => run(outs[i], nt, 0));
    f().fill(0, mass / 4, mass / 4 + nHeads * n);
    run(massOut, 3, mass);
    const what = `${flavor}: group ${group}, hd ${hd}, ${n} entries, M ${M}`;
    const bits = (at: number) => new Uint32Array(arena.memory.buffer, at, M * qw);
    const massSum = new Float64Array(nHeads * n), massTol = new Float64Array(nHeads * n);
    for (let m = 0; m < M; m++) {
      const seen = n - M + m + 1;
      for (let h = 0; h < nHeads; h++) {
        const g = Math.floor(h / group), base = (g * cap * hd) / 1;
        const e = exact(
          f().slice(q / 4 + m * qw + h * hd, q / 4 + m * qw + (h + 1) * hd),
          f().slice(keys / 4 + base, keys / 4 + base + seen * hd),
          f().slice(values / 4 + base, values / 4 + base + seen * hd),
          seen,
          hd,
        );
        for (let i = 0; i < hd; i++) {
          const at = m * qw + h * hd + i, got = f()[outs[0] / 4 + at];
          assert(
            Math.abs(got - e.out[i]) <= e.outTol[i],
            `${what}: row ${m} head ${h} [${i}] ${got}, exact ${e.out[i]} (tolerance ${e.outTol[i]})`,
          );
          for (let v = 1; v < splits.length; v++) {
            assert(bits(outs[v])[at] === bits(outs[0])[at], `${what}: ${splits[v]} threads differ at ${at}`);
          }
          // The mass path (units are query heads) computes its outputs on its own: same bound.
          const gm = f()[massOut / 4 + at];
          assert(Math.abs(gm - e.out[i]) <= e.outTol[i], `${what}: with mass, [${at}] ${gm} vs ${e.out[i]}`);
        }
        for (let j = 0; j < seen; j++) {
          massSum[h * n + j] += e.p[j];
          massTol[h * n + j] += e.p[j] * e.pRel;
        }
      }
    }
    for (let i = 0; i < nHeads * n; i++) {
      const got = f()[mass / 4 + i];
      assert(
        Math.abs(got - massSum[i]) <= massTol[i] + M * U * massSum[i],
        `${what}: mass[${Math.floor(i / n)}][${i % n}] ${got}, exact ${massSum[i]}`,
      );
    }
    for (const p of [keys, values, counts, positions, q, scratch, mass, massOut, ...outs]) arena.release(p);
  }
}

Deno.test({
  name:
    "wasm attention: float64 brute force within float32 rounding, any GQA group, bits independent of threads",
  ignore: why !== null,
  fn: async () => {
    if (hasRelaxedSimd()) await check("relaxed");
    await check("simd");
  },
});
