import assert from "node:assert";
import {
  attention,
  attentionBackward,
  type LayerKv,
  linear,
  linearBackward,
  rmsNorm,
  rmsNormBackward,
  rope,
  ropeBackward,
  swiglu,
  swigluBackward,
} from "../core/train/ops.ts";
import { attentionLoss, type LossKind } from "../core/train/loss.ts";
import { seededNormal } from "../core/random.ts";

const normal = seededNormal(42);
const randn = (n: number, s = 1) => Float64Array.from({ length: n }, () => s * normal());

/** ||a - b|| / max(||a||, ||b||): the usual relative error of a gradient check. */
function relError(a: Float64Array, b: Float64Array): number {
  let d = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i] - b[i]) ** 2;
    na += a[i] ** 2;
    nb += b[i] ** 2;
  }
  return Math.sqrt(d) / Math.max(Math.sqrt(na), Math.sqrt(nb), 1e-300);
}

/** Central differences of f at x. */
function numericGrad(f: (x: Float64Array) => number, x: Float64Array, h = 1e-5): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const keep = x[i];
    x[i] = keep + h;
    const up = f(x);
    x[i] = keep - h;
    const down = f(x);
    x[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, v, i) => s + v * b[i], 0);

/** Checks an op's backward against f(x) = <c, op(x)> for a random c. */
function checkOp(
  name: string,
  x: Float64Array,
  fwd: (x: Float64Array) => Float64Array,
  bwd: (dy: Float64Array) => Float64Array,
) {
  const c = randn(fwd(x).length);
  const err = relError(bwd(c), numericGrad((z) => dot(c, fwd(z)), x));
  assert(err < 1e-3, `${name}: relative error ${err}`);
}

Deno.test("train ops: linear backward matches finite differences", () => {
  const w = randn(5 * 7), b = randn(5);
  checkOp("linear", randn(3 * 7), (x) => linear(x, w, b, 3, 7, 5), (dy) => linearBackward(dy, w, 3, 7, 5));
});

Deno.test("train ops: rmsnorm backward matches finite differences", () => {
  const w = randn(6);
  const x = randn(4 * 6);
  checkOp(
    "rmsnorm",
    x,
    (z) => rmsNorm(z, w, 4, 6, 1e-5).y,
    (dy) => rmsNormBackward(dy, x, w, rmsNorm(x, w, 4, 6, 1e-5).inv, 4, 6),
  );
});

Deno.test("train ops: rope backward matches finite differences and inverts rope", () => {
  const inv = Float64Array.from([1, 0.1, 0.01]);
  const x = randn(3 * 2 * 6);
  checkOp("rope", x, (z) => rope(z, 3, 2, 6, 17, inv), (dy) => ropeBackward(dy, 3, 2, 6, 17, inv));
  assert(relError(ropeBackward(rope(x, 3, 2, 6, 17, inv), 3, 2, 6, 17, inv), x) < 1e-12);
});

Deno.test("train ops: swiglu backward matches finite differences", () => {
  const g = randn(9), u = randn(9);
  checkOp("swiglu/gate", g, (z) => swiglu(z, u), (da) => swigluBackward(da, g, u).dg);
  checkOp("swiglu/up", u, (z) => swiglu(g, z), (da) => swigluBackward(da, g, u).du);
});

Deno.test("train ops: attention backward matches finite differences (q, soft k, soft v, both gradient paths)", () => {
  const s = { rows: 3, nHeads: 4, nKvHeads: 2, headDim: 4, promptLength: 5 };
  const prompt: LayerKv = {
    keys: [randn(5 * 4), randn(5 * 4)],
    values: [randn(5 * 4), randn(5 * 4)],
  };
  const q = randn(3 * 16), k = randn(3 * 8), v = randn(3 * 8);
  const cOut = randn(3 * 16), cProbs = randn(4 * 5);
  // f = <cOut, out> + sum over rows of <cProbs, prompt probabilities>: exercises both backward inputs.
  const f = (qq: Float64Array, kk: Float64Array, vv: Float64Array) => {
    const r = attention(qq, kk, vv, prompt, s);
    let total = dot(cOut, r.out);
    for (let h = 0; h < 4; h++) {
      for (let i = 0; i < 3; i++) {
        for (let t = 0; t < 5; t++) total += cProbs[h * 5 + t] * r.probs[(h * 3 + i) * 8 + t];
      }
    }
    return total;
  };
  const g = attentionBackward(cOut, cProbs, q, k, v, prompt, attention(q, k, v, prompt, s), s);
  for (
    const [name, x, analytic, fx] of [
      ["q", q, g.dq, (z: Float64Array) => f(z, k, v)],
      ["k", k, g.dk, (z: Float64Array) => f(q, z, v)],
      ["v", v, g.dv, (z: Float64Array) => f(q, k, z)],
    ] as const
  ) {
    const err = relError(analytic, numericGrad(fx, x));
    assert(err < 1e-3, `attention d${name}: relative error ${err}`);
  }
  // Each row's probabilities sum to one over what it sees (prompt + rows 0..i).
  const r = attention(q, k, v, prompt, s);
  for (let i = 0; i < 3; i++) {
    const p = r.probs.subarray(i * 8, i * 8 + 5 + i + 1);
    assert(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  }
});

for (const kind of ["mse", "kl"] as LossKind[]) {
  Deno.test(`train loss: ${kind} gradient matches finite differences`, () => {
    const L = 7;
    const soft = (n: number) => Float64Array.from({ length: n }, () => Math.exp(normal()) / L);
    const target = soft(3 * L), pred = soft(3 * L);
    const err = relError(
      attentionLoss(kind, pred, target, L).grad,
      numericGrad((z) => attentionLoss(kind, z, target, L).loss, pred, 1e-7),
    );
    assert(err < 1e-3, `${kind}: relative error ${err}`);
  });
}

Deno.test("train loss: kl is zero when the maps agree up to scale", () => {
  const t = Float64Array.from([0.1, 0.2, 0.3, 0.05, 0.05, 0.1]);
  assert(Math.abs(attentionLoss("kl", t.map((x) => 2 * x), t, 3).loss) < 1e-12);
  assert(attentionLoss("mse", t, t, 3).loss === 0);
});
