/**
 * Name recall for story models: a character's name is introduced at depth d of a model-sampled story,
 * and the full-cache continuation reuses it. The pruned continuation is scored on reusing it too.
 * This module holds the pure part (what to sample); stories.ts samples it with the model.
 */
import { mulberry32, pick, randInt, streamSeed } from "../../core/random.ts";
import { STORY_CHARACTERS, STORY_NAMES } from "./words.ts";

export interface NameRecallOptions {
  /** Prompt lengths in tokens, inclusive range. */
  minTokens: number;
  maxTokens: number;
  /** Depths (fractions of the prompt) cycled over the samples. */
  depths: number[];
  /** Sampling temperature of the story text. */
  temperature: number;
  /** Attempts (new sampling seeds) to get a prompt whose full-cache continuation reuses the name. */
  attempts: number;
}

export const NAME_RECALL_DEFAULTS: NameRecallOptions = {
  minTokens: 256,
  maxTokens: 400,
  depths: [0.1, 0.3, 0.5, 0.7],
  temperature: 1,
  attempts: 16,
};

export interface NameRecallSpec {
  index: number;
  /** Total prompt tokens (BOS included). */
  length: number;
  depth: number;
  /** Tokens sampled before the introduction (BOS included). */
  before: number;
  character: string;
  /** Name candidates in preference order; the first not already in the sampled text is used. */
  names: string[];
  /** Base seed for the sampling attempts. */
  seed: number;
}

export function nameRecallSpec(seed: number, index: number, o: NameRecallOptions): NameRecallSpec {
  const r = mulberry32(streamSeed(seed, "name_recall", index));
  const length = randInt(r, o.minTokens, o.maxTokens);
  const depth = o.depths[index % o.depths.length];
  const first = randInt(r, 0, STORY_NAMES.length - 1);
  return {
    index,
    length,
    depth,
    before: Math.max(1, Math.round(length * depth)),
    character: pick(r, STORY_CHARACTERS),
    names: STORY_NAMES.map((_, i) => STORY_NAMES[(first + i) % STORY_NAMES.length]),
    seed: streamSeed(seed, "name_recall/sampling", index),
  };
}

/** The sentence that introduces the character (a continuation: starts with a space). */
export const introSentence = (character: string, name: string) =>
  ` One day, a ${character} named ${name} came to play.`;

/** Whole-word occurrences of `name` in `text`. */
export function countName(text: string, name: string): number {
  return (text.match(new RegExp(`\\b${name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\b`, "g")) ?? []).length;
}
