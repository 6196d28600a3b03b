/**
 * Long outputs with a bounded cache (issue 12): a short story opening that introduces two named
 * characters, continued to the model's context end. Pure: (seed, index) -> opening and its names.
 */
import { mulberry32, pick, randInt, streamSeed } from "../../core/random.ts";
import { countName } from "./name_recall.ts";
import { STORY_CHARACTERS, STORY_NAMES } from "./words.ts";

export interface LongOutputSpec {
  index: number;
  opening: string;
  /** Names introduced in the opening. */
  names: string[];
}

const PLACES = ["the park", "a big forest", "a small town", "the sea", "a farm", "the garden"];

export function longOutputSpec(seed: number, index: number): LongOutputSpec {
  const r = mulberry32(streamSeed(seed, "long_output", index));
  const first = randInt(r, 0, STORY_NAMES.length - 1);
  const a = STORY_NAMES[first],
    b = STORY_NAMES[(first + 1 + randInt(r, 0, STORY_NAMES.length - 2)) % STORY_NAMES.length];
  const ca = pick(r, STORY_CHARACTERS), cb = pick(r, STORY_CHARACTERS), place = pick(r, PLACES);
  return {
    index,
    opening: `Once upon a time, there was a ${ca} named ${a}. ${a} lived near ${place}. ` +
      `One day, ${a} met a ${cb} named ${b}.`,
    names: [a, b],
  };
}

/**
 * Name recall: of the opening's names the full-cache output uses, the share the bounded output uses too
 * (null when the full-cache output uses none).
 */
export function nameRecall(names: string[], reference: string, output: string): number | null {
  const used = names.filter((n) => countName(reference, n) > 0);
  if (used.length === 0) return null;
  return used.filter((n) => countName(output, n) > 0).length / used.length;
}
