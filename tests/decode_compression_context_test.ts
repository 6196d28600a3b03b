/**
 * A kept context near the model's context end, answered with Judge Q compressing during decoding: the
 * cache is already over budget + interval when the answer starts, so the soft rows are appended on top of
 * a full cache before the first token. The context's session has room for them.
 */
import { answerOnContext, compressContext } from "../core/engine.ts";
import { loadModel } from "../io/runtime.ts";
import { assert, assertEquals } from "./helpers.ts";

Deno.test("decode-time compression: a kept context near the context end takes Judge Q's soft rows on top", async () => {
  const model = await loadModel({ executor: "cpu", warn: () => {} });
  try {
    let story =
      "Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog. ";
    while (model.tokenizer.encode(story + story.slice(0, 60), { addBos: true }).length < 470) {
      story += "One day, Lily saw a big red ball under a tree, and she ran to get it. ";
    }
    const length = model.tokenizer.encode(story, { addBos: true }).length;
    assert(length >= 465 && length < 500, `context of ${length} tokens`);
    const ctx = await compressContext(model, story, {
      method: "full",
      decode: { method: "judgeq", budget: 64, interval: 16, buffer: 8 },
    });
    try {
      const out = await answerOnContext(model, ctx, {
        question: " Lily and the dog",
        maxTokens: 12,
        ignoreEos: true,
      });
      assertEquals(out.tokens.length, 12, "answer tokens");
      assert(out.decode !== null && out.decode.events.length >= 1, "compressed during the answer");
      assert(
        out.decode.events[0].step === 0,
        `first compression before the first token (step ${out.decode.events[0].step})`,
      );
      // The context is as it was: every prompt position of every head, nothing after it.
      const positions = await ctx.session.positions();
      assert(positions.every((l) => l.every((h) => h.length === length)), "context entries kept");
    } finally {
      ctx.session.dispose();
    }
  } finally {
    model.executor.dispose();
  }
});
