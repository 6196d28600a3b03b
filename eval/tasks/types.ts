/**
 * What a task generator produces, and how a question is placed around the context. Generators are
 * pure: (seed, sample index, options, a token counter, an optional essay corpus) -> instance.
 */
import type { Corpus } from "./haystack.ts";

/** How the scoring compares an output with the answers (scores.ts). */
export type Metric = "string_match_all" | "string_match_part" | "count" | "retrieval" | "name_recall";

/**
 * Where the question goes: "end" (context, then question: query-aware compression, the usual
 * layout), "start" (question, then context, then a neutral answer cue: the compression scorer's
 * last rows do not see the question), "after" (the context alone is compressed, then the question
 * is appended: query-agnostic, as in kvpress's compress-once pipeline), "none" (no question).
 */
export type Placement = "end" | "start" | "after" | "none";
export const PLACEMENTS: readonly Placement[] = ["end", "start", "after", "none"];

export interface TaskInstance {
  task: string;
  index: number;
  /** Text before everything else (ends with a newline), or "". */
  instruction: string;
  context: string;
  /** "" when the task has no question. */
  question: string;
  /** Starts the answer, restating the question (used when the question is at the end). */
  answerPrefix: string;
  /** Starts the answer without restating the question (used when the question is at the start). */
  genericPrefix: string;
  answers: string[];
  /** Substrings of the context the answer depends on (needles, the target paragraph); [] if spread out. */
  evidence: string[];
  metric: Metric;
  /** Small facts for reports (depth, target length, needle count); never essay text. */
  meta: Record<string, number | string>;
}

/** The prompt as text: `compress` is compressed as a whole; `append` follows compression (placement "after"). */
export interface PromptText {
  compress: string;
  append: string | null;
}

export function assemble(t: TaskInstance, placement: Placement): PromptText {
  if (placement === "none" || t.question === "") {
    return { compress: t.instruction + t.context + t.answerPrefix, append: null };
  }
  switch (placement) {
    case "end":
      return { compress: `${t.instruction}${t.context}\n${t.question}${t.answerPrefix}`, append: null };
    case "start":
      return { compress: `${t.instruction}${t.question}\n${t.context}\n${t.genericPrefix}`, append: null };
    case "after":
      return { compress: t.instruction + t.context, append: `\n${t.question}${t.answerPrefix}` };
  }
}

/** Tokens of a text, as the model will see it (BOS included). */
export type TokenCounter = (text: string) => number;

export interface GenContext {
  seed: number;
  count: TokenCounter;
  /** Essay sentences; null when no haystack directory is available. */
  corpus: Corpus | null;
}

/** Prompt tokens in the longest placement, for fitting contexts to a target length. */
export const longestPrompt = (t: TaskInstance, count: TokenCounter): number =>
  t.question === "" ? count(assemble(t, "none").compress) : Math.max(
    count(assemble(t, "end").compress),
    count(assemble(t, "start").compress),
    // "after" adds the appended question's tokens to the compressed context's.
    count(assemble(t, "after").compress) + count(assemble(t, "after").append!),
  );

/** A generator: instance `index` of a task, its context fitted to `targetTokens`. */
export type Generator = (ctx: GenContext, index: number, targetTokens: number) => TaskInstance;

export function needCorpus(ctx: GenContext, task: string): Corpus {
  if (!ctx.corpus) throw new Error(`task ${task} needs an essay haystack (--haystack DIR)`);
  return ctx.corpus;
}
