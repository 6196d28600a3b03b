/**
 * Token-by-token decoding for executors whose forward pass returns each step's logits at once (the CPU
 * reference, the fast CPU executor): sample from the current logits, stop on a stop token, the token
 * limit or an abort, stream each token, feed it back, repeat. The executor supplies the step.
 */
import type { DecodeOptions, DecodeResult, QueryRows } from "./executor.ts";
import { sampleToken, seedState } from "./sampling.ts";

export interface DecodeStep {
  /** Logits to sample the next token from. */
  logits(): Float32Array;
  /** Runs one token at the next position (capturing its queries when asked). */
  feed(token: number, captureQueries: boolean): Promise<QueryRows | null>;
}

/** Decodes with `step`; the captured rows of every step, in order, go to `collect` at the end. */
export async function decodeTokens(
  o: DecodeOptions,
  step: DecodeStep,
  collect: (rows: QueryRows[]) => QueryRows,
): Promise<DecodeResult> {
  const tokens: number[] = [];
  const logits: Float32Array[] | null = o.returnLogits ? [] : null;
  const captured: QueryRows[] = [];
  let state = seedState(o.sampling.seed);
  let finishReason: DecodeResult["finishReason"] = "length";
  while (tokens.length < o.maxTokens) {
    if (o.signal?.aborted) {
      finishReason = "aborted";
      break;
    }
    const current = step.logits();
    logits?.push(current);
    const [token, next] = sampleToken(current, o.sampling, state);
    state = next;
    if (o.stopTokenIds.includes(token)) {
      finishReason = "stop";
      break;
    }
    tokens.push(token);
    await o.onTokens?.([token]);
    if (tokens.length === o.maxTokens) break;
    const rows = await step.feed(token, o.captureQueries === true);
    if (rows) captured.push(rows);
  }
  return {
    tokens,
    finishReason,
    logits,
    queries: o.captureQueries ? collect(captured) : null,
    syncs: 0,
  };
}
