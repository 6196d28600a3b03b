/**
 * The max_tokens decision, in one place: how many tokens each output of a request may generate. The core
 * clamps with it (a CLI's max_tokens stops at the context's end) and the server decides with it once the
 * request is tokenized (its per-request limit, and an explicit max_tokens that must fit the context).
 */
import * as E from "fp-ts/Either";
import { fail, type JudgeQError } from "./errors.ts";

/** Questions one request may ask at most: the schemas' bound, and the ceiling of --max-questions. */
export const MAX_QUESTIONS = 64;

export interface MaxTokensAsk {
  /** The request's value; null: the endpoint's default (`fallback`). */
  asked: number | null;
  /** The endpoint's default; null: up to the context's end (OpenAI's chat sets no limit). */
  fallback: number | null;
  /** Outputs the request generates (its questions); the per-request limit counts them all. */
  outputs: number;
  /** Tokens all outputs together may generate (--max-tokens-per-request); null: no limit. */
  perRequest: number | null;
  /**
   * The field that asked, when an explicit value must fit the context (400 naming it if not); null: an
   * explicit value is cut at the context's end too (`truncate_max_tokens`, the CLI).
   */
  strict: string | null;
}

/** Where the outputs start in the model's context. */
export interface Room {
  /** The model's context, in positions. */
  size: number;
  /** Positions the prompt takes (a context's: context and longest question). */
  used: number;
  /** What `used` counts, for the error ("prompt tokens"). */
  what: string;
}

/**
 * Tokens per output. An explicit value over the per-request limit is a 400 naming it; a default is lowered
 * to fit instead (a 400 on `questions` when not even one token each is left). An explicit value past the
 * context's end is a 400 when `strict`; otherwise, and for defaults, it stops there.
 */
export function decideMaxTokens(a: MaxTokensAsk, at: Room): E.Either<JudgeQError, number> {
  const { asked, outputs, perRequest: limit } = a;
  const room = at.size - at.used;
  const per = `this server's limit of ${limit} generated tokens per request`;
  let n: number;
  if (asked !== null) {
    if (limit !== null && asked * outputs > limit) {
      const total = outputs > 1
        ? `max_tokens ${asked} x ${outputs} questions = ${asked * outputs} tokens`
        : null;
      const message = `${total ?? `max_tokens ${asked}`} exceed${total ? "" : "s"} ${per}`;
      return E.left(fail("invalid_request", message, "max_tokens"));
    }
    n = asked;
  } else {
    n = a.fallback ?? Math.max(0, room);
    if (limit !== null) {
      const each = Math.floor(limit / outputs);
      if (each < 1) {
        return E.left(
          fail("invalid_request", `${outputs} questions leave no token each under ${per}`, "questions"),
        );
      }
      n = Math.min(n, each);
    }
  }
  if (room <= 0) return E.right(n); // no room at all: the plan compiler's 422 says why
  if (asked !== null && a.strict !== null && n > room) {
    return E.left(fail(
      "invalid_request",
      `${a.strict} ${n} does not fit the model's context of ${at.size} tokens: ${at.used} ${at.what} + ` +
        `${n} = ${at.used + n}; at most ${room} can be generated (or send ` +
        `"truncate_max_tokens": true to stop at the context's end)`,
      a.strict,
    ));
  }
  return E.right(Math.min(n, room));
}
