import assert from "node:assert";
import { attentionLoss, type LossKind } from "../core/train/loss.ts";
import { promptKvFromCache, trainModel } from "../core/train/model.ts";
import { softBackward, softForward } from "../core/train/soft_pass.ts";
import { prefilled, tinyWeights } from "../fixtures/tiny_models.ts";
import { softRows } from "./helpers.ts";

const PROMPT = [1, 5, 9, 3, 17, 22, 4, 8, 30, 11, 6, 2, 19];

for (const bias of [false, true]) {
  for (const kind of ["mse", "kl"] as LossKind[]) {
    Deno.test(`soft pass: whole backward to E matches finite differences (${kind}, ${bias ? "q/k/v bias" : "no bias"})`, async () => {
      const w = tinyWeights(bias);
      const m = trainModel(w);
      const session = await prefilled(w, PROMPT);
      const prompt = promptKvFromCache(session.cache, PROMPT.length);
      const n = 4, e = softRows(w, n, 3);
      // Target: another set of soft rows' maps, so the loss is far from its minimum.
      const target = softForward(m, prompt, softRows(w, n, 99)).maps;
      const loss = (x: Float64Array) =>
        attentionLoss(kind, softForward(m, prompt, x).maps, target, PROMPT.length).loss;
      const pass = softForward(m, prompt, e);
      const analytic = softBackward(
        m,
        prompt,
        pass,
        attentionLoss(kind, pass.maps, target, PROMPT.length).grad,
      );
      let d = 0, na = 0, nb = 0;
      for (let i = 0; i < e.length; i++) {
        const keep = e[i], h = 1e-5;
        e[i] = keep + h;
        const up = loss(e);
        e[i] = keep - h;
        const down = loss(e);
        e[i] = keep;
        const num = (up - down) / (2 * h);
        d += (num - analytic[i]) ** 2;
        na += analytic[i] ** 2;
        nb += num ** 2;
      }
      const err = Math.sqrt(d) / Math.max(Math.sqrt(na), Math.sqrt(nb));
      assert(na > 0, "gradient is zero");
      assert(err < 1e-3, `relative error ${err}`);
    });
  }
}

Deno.test("soft pass: attention maps equal the CPU executor's attentionMass of the same rows", async () => {
  for (const bias of [false, true]) {
    const w = tinyWeights(bias);
    const session = await prefilled(w, PROMPT);
    const prompt = promptKvFromCache(session.cache, PROMPT.length);
    const n = 5, e = softRows(w, n, 5);
    const ours = softForward(trainModel(w), prompt, e).maps;
    const r = await session.forward(
      { kind: "embeddings", rows: Float32Array.from(e), count: n },
      { logits: "none", captureQueries: true },
    );
    const mass = await session.attentionMass(r.queries!, PROMPT.length);
    assert.strictEqual(mass.length, ours.length);
    let maxErr = 0;
    // E is rounded to float32 for the executor, hence the float32-level tolerance.
    for (let i = 0; i < ours.length; i++) maxErr = Math.max(maxErr, Math.abs(mass[i] / n - ours[i]));
    assert(maxErr < 1e-5, `max difference ${maxErr}`);
  }
});

Deno.test("soft pass: promptKvFromCache refuses a pruned cache", async () => {
  const w = tinyWeights();
  const session = await prefilled(w, PROMPT);
  const keep = Array.from(
    { length: w.config.nLayers },
    () => Array.from({ length: 2 }, () => Int32Array.from([0, 1, 2])),
  );
  await session.keepPositions(keep, PROMPT.length);
  assert.throws(() => promptKvFromCache(session.cache, PROMPT.length), /does not hold positions/);
});
