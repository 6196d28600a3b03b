/** The CPU reference executor against llama2.c's own logits for the converted stories260K. */
import { CpuExecutor } from "../core/cpu/executor.ts";
import { GREEDY } from "../core/sampling.ts";
import {
  assertClose,
  assertEquals,
  embeddedModel,
  GOLDEN,
  maxAbsDiff,
  readF32,
  readGoldenTsv,
} from "./helpers.ts";

const VOCAB = 512;

for (const name of ["once_upon_a_time_n64", "bos_n512"]) {
  Deno.test(`cpu reference: logits of ${name} match llama2.c within 1e-4 at every position`, async () => {
    const { weights } = await embeddedModel();
    const golden = await readF32(`${GOLDEN}${name}.logits.f32`);
    const { prompt, next } = await readGoldenTsv(`${name}.tsv`);
    const rows = golden.length / VOCAB;
    assertEquals(next.length, rows, "tsv rows");
    // Teacher-force the golden sequence: the prompt, then every token the reference chose.
    const tokens = [prompt[0], ...next.slice(0, rows - 1)];
    assertEquals(tokens.slice(0, prompt.length), prompt, "prompt ids");
    const session = new CpuExecutor(weights).createSession(rows);
    const { logits } = await session.forward({ kind: "tokens", tokens }, { logits: "all" });
    const err = maxAbsDiff(logits!, golden);
    if (!(err <= 1e-4)) throw new Error(`max abs error ${err}`);
  });
}

Deno.test("cpu reference: greedy decoding reproduces llama2.c's tokens and stops at BOS", async () => {
  const { weights } = await embeddedModel();
  const { next } = await readGoldenTsv("bos_n512.tsv");
  const session = new CpuExecutor(weights).createSession(512);
  await session.forward({ kind: "tokens", tokens: [1] });
  const d = await session.decode({
    maxTokens: 511,
    sampling: GREEDY,
    stopTokenIds: [1, 2],
    returnLogits: true,
  });
  // run.c's last row samples BOS (id 1) and stops: every earlier choice is a generated token.
  assertEquals(next[next.length - 1], 1, "golden ends with BOS");
  assertEquals(d.tokens, next.slice(0, -1));
  assertEquals(d.finishReason, "stop");
  const golden = await readF32(`${GOLDEN}bos_n512.logits.f32`);
  assertClose(d.logits![10], golden.subarray(10 * VOCAB, 11 * VOCAB), 1e-4, "decode step 10 logits");
});
