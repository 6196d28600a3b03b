/**
 * Every executor of tests/executors.ts that runs the model's own f32 weights, against llama2.c's logits
 * (tests/golden/, written by run.c on stories260K.bin): the README's "max abs error" figures for the CPU
 * reference and WebGPU come from here (the error is printed). Tolerance 1e-4, as the CPU reference's own
 * test. Executors on transformed weights (f16, int8) are checked against the reference in the contract
 * suite instead; an executor unavailable here is an ignored step with its reason.
 *
 *   deno test -A tests/golden_logits_test.ts   # prints "golden logits: EXECUTOR NAME max abs error E"
 */
import type { Executor } from "../core/executor.ts";
import { EXECUTORS_UNDER_TEST } from "./executors.ts";
import { assertEquals, embeddedModel, GOLDEN, maxAbsDiff, readF32, readGoldenTsv } from "./helpers.ts";

const GOLDENS = ["once_upon_a_time_n64", "bos_n512"];

/** Teacher-forces the golden sequence on the executor and returns the max abs error over every position. */
async function goldenError(ex: Executor, name: string): Promise<number> {
  const V = ex.config.vocabSize;
  const golden = await readF32(`${GOLDEN}${name}.logits.f32`);
  const { prompt, next } = await readGoldenTsv(`${name}.tsv`);
  const rows = golden.length / V;
  assertEquals(next.length, rows, "tsv rows");
  const tokens = [prompt[0], ...next.slice(0, rows - 1)];
  const s = ex.createSession(rows + 1);
  try {
    const { logits } = await s.forward({ kind: "tokens", tokens }, { logits: "all" });
    return maxAbsDiff(logits!, golden);
  } finally {
    s.dispose();
  }
}

for (const under of EXECUTORS_UNDER_TEST.filter((e) => !e.weights)) {
  Deno.test({
    name: `golden logits: ${under.name} matches llama2.c within 1e-4 at every position`,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async (t) => {
      const { weights } = await embeddedModel();
      const ex = await under.create(weights);
      if (typeof ex === "string") {
        await t.step({ name: `${under.name} unavailable: ${ex}`, ignore: true, fn: () => {} });
        return;
      }
      try {
        for (const name of GOLDENS) {
          const err = await goldenError(ex, name);
          console.log(
            `golden logits: ${under.name} (${ex.description}) ${name} max abs error ${err.toExponential(2)}`,
          );
          if (!(err <= 1e-4)) throw new Error(`${under.name} ${name}: max abs error ${err} > 1e-4`);
        }
      } finally {
        ex.dispose();
      }
    },
  });
}
