/**
 * Task scores (pure): RULER's string_match_all / string_match_part, LongBench's count and retrieval
 * scores, and name recall against the full-cache output. Each returns a value in [0, 1] per sample
 * (reports multiply by 100), or null when the sample cannot be scored.
 */
import type { Metric } from "./tasks/types.ts";
import { countName } from "./tasks/name_recall.ts";

/** RULER string_match_all: share of the references found in the prediction (case-insensitive). */
export function stringMatchAll(pred: string, refs: readonly string[]): number {
  if (refs.length === 0) return 0;
  const p = pred.toLowerCase();
  return refs.filter((r) => p.includes(r.toLowerCase())).length / refs.length;
}

/** RULER string_match_part: 1 when any reference is found. */
export function stringMatchPart(pred: string, refs: readonly string[]): number {
  const p = pred.toLowerCase();
  return refs.some((r) => p.includes(r.toLowerCase())) ? 1 : 0;
}

/** LongBench count_score: share of the numbers in the prediction that equal the answer. */
export function countScore(pred: string, answer: string): number {
  const numbers = pred.match(/\d+/g) ?? [];
  return numbers.length === 0 ? 0 : numbers.filter((n) => n === answer).length / numbers.length;
}

/** LongBench retrieval_score: the same, against the paragraph number. */
export const retrievalScore = countScore;

/**
 * Name recall scored against the full cache: of the names the full-cache continuation used, the
 * share the pruned one uses too (whole words). Null when the full continuation used none.
 */
export function nameRecallScore(pred: string, full: string, names: readonly string[]): number | null {
  const used = names.filter((n) => countName(full, n) > 0);
  if (used.length === 0) return null;
  return used.filter((n) => countName(pred, n) > 0).length / used.length;
}

/** The task score of one output. `full` is the full-cache output (name recall's reference). */
export function scoreOutput(
  metric: Metric,
  pred: string,
  answers: readonly string[],
  full: string,
): number | null {
  switch (metric) {
    case "string_match_all":
      return stringMatchAll(pred, answers);
    case "string_match_part":
      return stringMatchPart(pred, answers);
    case "count":
      return countScore(pred, answers[0]);
    case "retrieval":
      return retrievalScore(pred, answers[0]);
    case "name_recall":
      return nameRecallScore(pred, full, answers);
  }
}
