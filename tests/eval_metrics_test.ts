/** eval/metrics.ts and eval/scores.ts against values computed by hand on tiny inputs. */
import {
  argmax,
  commonPrefix,
  fidelity,
  greedyPrefixFromLogits,
  hitRate,
  klDivergence,
  meanOf,
  oracleSets,
  spanRetention,
  topK,
} from "../eval/metrics.ts";
import { countScore, nameRecallScore, scoreOutput, stringMatchAll, stringMatchPart } from "../eval/scores.ts";
import { assert, assertEquals } from "./helpers.ts";

const close = (a: number, b: number, tol = 1e-9) => assert(Math.abs(a - b) <= tol, `${a} != ${b}`);

Deno.test("topK keeps the largest values, the earlier index among equals, ascending", () => {
  assertEquals(topK([1, 3, 3, 2], 2), [1, 2]);
  assertEquals(topK([5, 5, 5, 5], 3), [0, 1, 2]);
  assertEquals(topK([0.1, 0.4, 0.2], 0), []);
  assertEquals(topK([0.1, 0.4, 0.2], 9), [0, 1, 2]);
});

Deno.test("oracle: GQA mean of the query heads, then top-B per layer and KV head", () => {
  // 1 layer, 2 query heads sharing 1 KV head, L = 4.
  // head 0: [.1 .5 .2 .2], head 1: [.3 .1 .2 .4] -> mean [.2 .3 .2 .3].
  const mass = [0.1, 0.5, 0.2, 0.2, 0.3, 0.1, 0.2, 0.4];
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1 };
  assertEquals(oracleSets(mass, shape, 4, 2), [[[1, 3]]]);
  // B = 3: the two 0.3s, then the tie at 0.2 goes to the earlier position 0.
  assertEquals(oracleSets(mass, shape, 4, 3), [[[0, 1, 3]]]);
  assertEquals(oracleSets(mass, shape, 4, 10), [[[0, 1, 2, 3]]]);
  // 2 layers x 2 KV heads, one query head each: each head's own top-1.
  const m2 = [1, 0, 0, 1, 0.5, 0.6, 0.9, 0.1];
  assertEquals(oracleSets(m2, { nLayers: 2, nHeads: 2, nKvHeads: 2 }, 2, 1), [[[0], [1]], [[1], [0]]]);
});

Deno.test("hit rate: |kept ∩ oracle| / B averaged over layers and heads", () => {
  const oracle = [[[1, 3], [0, 2]], [[2, 3], [0, 1]]];
  // overlaps 1, 2, 0, 1 of B = 2 -> (0.5 + 1 + 0 + 0.5) / 4.
  const kept = [[[0, 1], [0, 2]], [[0, 1], [1, 3]]];
  close(hitRate(kept, oracle, 2), 0.5);
  // A head keeping more than B (adaptive budgets) can cover its oracle fully; one keeping fewer cannot.
  close(hitRate([[[1, 2, 3]], [[2]]], [[[1, 3]], [[2, 3]]], 2), (1 + 0.5) / 2);
  close(hitRate([[Int32Array.from([1, 3])]], [[[1, 3]]], 2), 1);
});

Deno.test("evidence retention: share of the span positions kept, averaged over heads", () => {
  // Spans [2, 4) and [3, 5) cover positions 2, 3, 4; heads keep {2, 3}, {4}, {} and {0, 1, 2, 3, 4}.
  const kept = [[[0, 2, 3], [4]], [[], [0, 1, 2, 3, 4]]];
  close(spanRetention(kept, [[2, 4], [3, 5]])!, (2 / 3 + 1 / 3 + 0 + 1) / 4);
  assertEquals(spanRetention(kept, []), null);
});

Deno.test("KL(p || q) of softmaxed logits, by hand", () => {
  // p = [1/2, 1/2]; q = softmax([ln 3, 0]) = [3/4, 1/4]: KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
  close(klDivergence([0, 0], [Math.log(3), 0]), 0.5 * Math.log(4 / 3), 1e-12);
  close(klDivergence([2, -1, 0.5], [2, -1, 0.5]), 0);
  // Shifting logits changes nothing.
  close(klDivergence([1, 2, 3], [11, 12, 13]), 0, 1e-12);
  // Asymmetric: KL(q || p) differs.
  close(klDivergence([Math.log(3), 0], [0, 0]), 0.75 * Math.log(1.5) + 0.25 * Math.log(0.5), 1e-12);
});

Deno.test("fidelity: mean KL and top-1 agreement over the steps", () => {
  const ref = [[0, 0], [2, 0]];
  const got = [[Math.log(3), 0], [0, 2]];
  const f = fidelity(ref, got);
  // step 0: KL = 1/2 ln(4/3), argmax 0 vs 0 (tie -> first) agree; step 1: disagree.
  const p = [Math.exp(2) / (Math.exp(2) + 1), 1 / (Math.exp(2) + 1)];
  const kl1 = p[0] * Math.log(p[0] / p[1]) + p[1] * Math.log(p[1] / p[0]);
  close(f.kl, (0.5 * Math.log(4 / 3) + kl1) / 2, 1e-12);
  close(f.top1, 0.5);
  assertEquals(fidelity(ref, ref), { kl: 0, top1: 1 });
  assertEquals(argmax([1, 3, 3]), 1);
});

Deno.test("greedy prefix: common prefix of outputs, and its teacher-forced prediction", () => {
  assertEquals(commonPrefix([5, 6, 7, 8], [5, 6, 9, 8]), 2);
  assertEquals(commonPrefix([5, 6], [5, 6, 7]), 2);
  assertEquals(commonPrefix([], [1]), 0);
  // Reference [4, 1, 2, 0]; the first token came from before compression (given 1); steps predict
  // tokens 1.. : argmaxes 1, 2, 1 -> matches 1 and 2, then diverges: prefix 3.
  const steps = [[0, 9, 0], [0, 0, 9], [0, 9, 0]];
  assertEquals(greedyPrefixFromLogits(steps, [4, 1, 2, 0], 1), 3);
  assertEquals(greedyPrefixFromLogits(steps, [1, 2, 1], 0), 3);
  assertEquals(greedyPrefixFromLogits(steps, [0, 2, 1], 0), 0);
});

Deno.test("meanOf skips nulls", () => {
  assertEquals(meanOf([1, null, 3]), 2);
  assertEquals(meanOf([null, undefined]), null);
});

Deno.test("task scores: RULER string match, LongBench count/retrieval, name recall", () => {
  close(stringMatchAll("The numbers are 123 and 456.", ["123", "789"]), 0.5);
  close(stringMatchAll("APPLE pie", ["apple"]), 1);
  close(stringMatchPart("the numbers are 123", ["789", "123"]), 1);
  close(stringMatchPart("none here", ["789", "123"]), 0);
  close(countScore("3 or 3 or 4", "3"), 2 / 3);
  close(countScore("no numbers", "3"), 0);
  close(countScore("33 paragraphs", "3"), 0);
  // Name recall against the full-cache output: whole words only.
  assertEquals(nameRecallScore("Tom ran.", "Then Tom smiled.", ["Tom"]), 1);
  assertEquals(nameRecallScore("Tommy ran.", "Then Tom smiled.", ["Tom"]), 0);
  assertEquals(nameRecallScore("Tom ran.", "Nobody came.", ["Tom"]), null);
  assertEquals(scoreOutput("retrieval", "Paragraph 2, not 3", ["2"], ""), 0.5);
});
