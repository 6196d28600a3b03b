/**
 * refuseOverlong (server/generation.ts): the early refusal of a text too long for the context reads the
 * tokenizer's longest piece in UTF-8 bytes (TextTokenizer.longestPieceBytes), the one measure minTokens
 * uses too. Checked on a vocabulary whose longest piece is 2 bytes but 1 UTF-16 unit.
 */
import * as E from "fp-ts/Either";
import type { Model } from "../core/engine.ts";
import { JudgeQError } from "../core/errors.ts";
import { createTokenizer } from "../core/tokenizer.ts";
import { refuseOverlong } from "../server/generation.ts";
import { assert, assertEquals } from "./helpers.ts";

Deno.test("refuseOverlong: looks at the first 4 x context x longest-piece-bytes characters, refuses past 2 x context tokens", () => {
  const json = {
    model: { type: "BPE", vocab: { "a": 0, "b": 1, "\u00e9": 2 }, merges: [] },
    added_tokens: [],
  };
  const made = createTokenizer(json, {});
  if (E.isLeft(made)) throw made.left;
  const tok = made.right;
  assertEquals(tok.longestPieceBytes(), 2); // "é": 2 bytes, 1 UTF-16 unit
  const model = { tokenizer: tok, config: { maxSeqLen: 4 } } as unknown as Model;
  // 4 x 4 x 2 = 32 characters or fewer: left to the core, whatever their tokens.
  refuseOverlong(model, "a".repeat(32), "prompt", false);
  let message = "";
  try {
    refuseOverlong(model, "a".repeat(40), "prompt", false);
  } catch (e) {
    assert(e instanceof JudgeQError && e.param === "prompt", String(e));
    message = e.message;
  }
  // Each "a" is a token: 32 in the first 32 characters, over 2 x 4.
  assertEquals(
    message,
    "prompt: at least 32 tokens (in its first 32 of 40 characters) leave no room in the model's context of 4",
  );
});
