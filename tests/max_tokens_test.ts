/**
 * The one max_tokens decision (core/max_tokens.ts), against hand-worked cases: the per-request limit,
 * the context's room, defaults lowered and explicit values refused or cut.
 */
import * as E from "fp-ts/Either";
import { decideMaxTokens, type MaxTokensAsk } from "../core/max_tokens.ts";
import { assert, assertEquals } from "./helpers.ts";

const ask = (o: Partial<MaxTokensAsk>): MaxTokensAsk => ({
  asked: null,
  fallback: 64,
  outputs: 1,
  perRequest: null,
  strict: null,
  ...o,
});
const at = (used: number) => ({ size: 512, used, what: "prompt tokens" });

Deno.test("decideMaxTokens: explicit, default and chat's to-the-end, within the room", () => {
  assertEquals(decideMaxTokens(ask({ asked: 10 }), at(400)), E.right(10));
  assertEquals(decideMaxTokens(ask({ asked: 200 }), at(400)), E.right(112)); // not strict: cut at the end
  assertEquals(decideMaxTokens(ask({}), at(500)), E.right(12)); // a default stops at the end
  assertEquals(decideMaxTokens(ask({}), at(10)), E.right(64));
  assertEquals(decideMaxTokens(ask({ fallback: null }), at(100)), E.right(412)); // chat: to the end
  assertEquals(decideMaxTokens(ask({ asked: 112, strict: "max_tokens" }), at(400)), E.right(112));
  // No room at all: the value is passed on, for the plan compiler's 422.
  assertEquals(decideMaxTokens(ask({ asked: 5, strict: "max_tokens" }), at(512)), E.right(5));
});

Deno.test("decideMaxTokens: an explicit value past the room is a 400 naming the field that asked", () => {
  const r = decideMaxTokens(ask({ asked: 113, strict: "max_completion_tokens" }), at(400));
  assert(E.isLeft(r));
  assertEquals([r.left.kind, r.left.param], ["invalid_request", "max_completion_tokens"]);
  assert(
    r.left.message.includes("400 prompt tokens + 113 = 513; at most 112 can be generated"),
    r.left.message,
  );
});

Deno.test("decideMaxTokens: the per-request limit refuses explicit values and lowers defaults", () => {
  const over = decideMaxTokens(ask({ asked: 40, outputs: 3, perRequest: 100 }), at(10));
  assert(E.isLeft(over));
  assertEquals(over.left.param, "max_tokens");
  assert(over.left.message.includes("max_tokens 40 x 3 questions = 120 tokens exceed"), over.left.message);
  const one = decideMaxTokens(ask({ asked: 101, perRequest: 100 }), at(10));
  assert(E.isLeft(one) && one.left.message.includes("max_tokens 101 exceeds"), JSON.stringify(one));
  assertEquals(decideMaxTokens(ask({ asked: 33, outputs: 3, perRequest: 100 }), at(10)), E.right(33));
  assertEquals(decideMaxTokens(ask({ outputs: 3, perRequest: 100 }), at(10)), E.right(33)); // floor(100 / 3)
  assertEquals(decideMaxTokens(ask({ outputs: 3, perRequest: 100 }), at(500)), E.right(12)); // and the room
  const none = decideMaxTokens(ask({ outputs: 3, perRequest: 2 }), at(10));
  assert(E.isLeft(none));
  assertEquals(none.left.param, "questions");
});
