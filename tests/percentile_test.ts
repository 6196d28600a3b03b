/** core/percentile.ts against values worked out by hand (nearest-rank percentiles, the usual median). */
import { median, percentile } from "../core/percentile.ts";
import { assert, assertEquals } from "./helpers.ts";

Deno.test("percentile: nearest rank of an ascending list; NaN when empty", () => {
  const s = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
  assertEquals([0, 10, 50, 90, 99, 100].map((p) => percentile(s, p)), [10, 10, 50, 90, 100, 100]);
  assertEquals(percentile([7], 50), 7);
  assert(Number.isNaN(percentile([], 50)), "empty");
});

Deno.test("median: the middle value, or the mean of the two middle ones, in any order; NaN when empty", () => {
  assertEquals(median([3, 1, 2]), 2);
  assertEquals(median([4, 1, 3, 2]), 2.5);
  assertEquals(median([0.86, 0.72, 0.98, 1.16, 0.99, 1.09]), (0.98 + 0.99) / 2);
  const xs = [5, 1, 4];
  median(xs);
  assertEquals(xs, [5, 1, 4], "the input is not sorted in place");
  assert(Number.isNaN(median([])), "empty");
});
