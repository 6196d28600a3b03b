/**
 * RULER-style synthetic tasks (Hsieh et al. 2024), scaled to a 512-token context: needle variants over
 * the noise or an essay haystack, variable tracking, common-words and frequent-words extraction. The
 * templates keep RULER's structure (needle sentence, question, answer prefix) in fewer words.
 */
import { insertAtBoundaries, largestFitting, noiseSentences, takeWords } from "./haystack.ts";
import { mulberry32, randDigits, randInt, sample, shuffle, streamSeed } from "../../core/random.ts";
import { type GenContext, type Generator, longestPrompt, needCorpus, type TaskInstance } from "./types.ts";
import { KEY_WORDS, LIST_WORDS, VAR_LETTERS } from "./words.ts";

export interface NiahOptions {
  haystack: "noise" | "essay";
  /** Needles with distinct keys (the queried ones plus distractors). */
  keys: number;
  /** Values of each queried key (multi-value). */
  values: number;
  /** Keys the question asks for (multi-query). */
  queries: number;
  digits: number;
  /** Fixed depth of every needle in [0, 1]; random per needle when undefined. */
  depth?: number;
}

const needleText = (key: string, value: string) =>
  `One of the special magic numbers for ${key} is: ${value}.`;

const listWords = (ws: string[]) =>
  ws.length === 1 ? ws[0] : `${ws.slice(0, -1).join(", ")} and ${ws.at(-1)}`;

/** A needle-in-a-haystack instance: RULER's niah_single / multikey / multivalue / multiquery. */
export function niah(
  task: string,
  o: NiahOptions,
  ctx: GenContext,
  index: number,
  targetTokens: number,
): TaskInstance {
  const r = mulberry32(streamSeed(ctx.seed, task, index));
  const keys: string[] = sample(r, KEY_WORDS, o.keys);
  const queried = keys.slice(0, o.queries);
  const needles: { text: string; depth: number; key: string; value: string }[] = [];
  for (const [i, key] of keys.entries()) {
    const n = i < o.queries ? o.values : 1;
    for (let v = 0; v < n; v++) {
      needles.push({ key, value: randDigits(r, o.digits), text: "", depth: o.depth ?? r() });
    }
  }
  for (const n of needles) n.text = needleText(n.key, n.value);
  const answers = needles.filter((n) => queried.includes(n.key)).map((n) => n.value);
  const plural = answers.length > 1;
  const start = o.haystack === "essay" ? randInt(r, 0, needCorpus(ctx, task).sentences.length - 1) : 0;
  const sentences = o.haystack === "essay" ? ctx.corpus!.sentences : noiseSentences(1);
  const build = (n: number): TaskInstance => ({
    task,
    index,
    instruction: "Some special magic numbers are hidden in the text below. Remember them.\n",
    context: insertAtBoundaries(takeWords(sentences, start, n), needles),
    question: plural
      ? `What are all the special magic numbers for ${listWords(queried)} mentioned in the text?`
      : `What is the special magic number for ${queried[0]} mentioned in the text?`,
    answerPrefix: ` The special magic number${plural ? "s" : ""} for ${
      listWords(queried)
    } mentioned in the text ${plural ? "are" : "is"}`,
    genericPrefix: "Answer:",
    answers,
    evidence: needles.filter((n) => queried.includes(n.key)).map((n) => n.text),
    metric: "string_match_all",
    meta: { needles: needles.length, depth: o.depth ?? -1, haystack_words: n },
  });
  return build(largestFitting(0, targetTokens, (n) => longestPrompt(build(n), ctx.count) <= targetTokens));
}

const varName = (r: () => number) => Array.from({ length: 5 }, () => VAR_LETTERS[randInt(r, 0, 25)]).join("");

/** Variable tracking: one chain VAR A = 12345, VAR B = VAR A, ... hidden in the noise haystack. */
export function variableTracking(
  task: string,
  hops: number,
  ctx: GenContext,
  index: number,
  targetTokens: number,
): TaskInstance {
  const r = mulberry32(streamSeed(ctx.seed, task, index));
  const names = new Set<string>();
  while (names.size < hops + 1) names.add(varName(r));
  const vars = [...names];
  const value = randDigits(r, 5);
  const chain = vars.map((v, i) => `VAR ${v} = ${i === 0 ? value : `VAR ${vars[i - 1]}`}.`);
  // Depths ascend so the chain reads in order.
  const depths = chain.map(() => r()).sort((a, b) => a - b);
  const build = (n: number): TaskInstance => ({
    task,
    index,
    instruction: "Track the chain of variable assignments hidden in the text below.\n",
    context: insertAtBoundaries(
      takeWords(noiseSentences(1), 0, n),
      chain.map((text, i) => ({ text, depth: depths[i] })),
    ),
    question: `Find all variables that are assigned the value ${value} in the text.`,
    answerPrefix: ` Answer: The variables assigned the value ${value} are:`,
    genericPrefix: "Answer:",
    answers: vars,
    evidence: chain,
    metric: "string_match_all",
    meta: { hops },
  });
  return build(largestFitting(0, targetTokens, (n) => longestPrompt(build(n), ctx.count) <= targetTokens));
}

/** Common words extraction: a numbered list where `common` words repeat `freq` times, others once. */
export function commonWords(
  task: string,
  common: number,
  freq: number,
  ctx: GenContext,
  index: number,
  targetTokens: number,
): TaskInstance {
  const r = mulberry32(streamSeed(ctx.seed, task, index));
  const words = shuffle(r, LIST_WORDS);
  const frequent = words.slice(0, common), rare = words.slice(common);
  const order = r();
  const build = (nRare: number): TaskInstance => {
    const entries = shuffle(mulberry32(Math.floor(order * 2 ** 32)), [
      ...frequent.flatMap((w) => Array(freq).fill(w)),
      ...rare.slice(0, nRare),
    ]);
    return {
      task,
      index,
      instruction:
        "Below is a numbered list of words. Some appear more often than others. Remember the most common ones.\n",
      context: entries.map((w, i) => `${i + 1}. ${w}`).join(" "),
      question: `What are the ${common} most common words in the list?`,
      answerPrefix: ` Answer: The ${common} most common words in the list are:`,
      genericPrefix: "Answer:",
      answers: frequent,
      evidence: [],
      metric: "string_match_all",
      meta: { common, freq, rare: nRare },
    };
  };
  return build(largestFitting(0, rare.length, (n) => longestPrompt(build(n), ctx.count) <= targetTokens));
}

/** A coded word of 3-4 random lower-case letters. */
const codedWord = (r: () => number) =>
  Array.from({ length: randInt(r, 3, 4) }, () => "abcdefghijklmnopqrstuvwxyz"[randInt(r, 0, 25)]).join("");

/**
 * Frequent words extraction: coded words drawn with Zipf frequencies (alpha 2), dots as noise; the
 * answer is the three most frequent. Counts are set by rank, so the top three are strict.
 */
export function frequentWords(
  task: string,
  alpha: number,
  ctx: GenContext,
  index: number,
  targetTokens: number,
): TaskInstance {
  const r = mulberry32(streamSeed(ctx.seed, task, index));
  const vocab = new Set<string>();
  while (vocab.size < 20) vocab.add(codedWord(r));
  const words = [...vocab];
  const order = Math.floor(r() * 2 ** 32);
  const build = (total: number): TaskInstance => {
    // Zipf counts by rank; at least 1 each for the top 3 and strictly decreasing among them.
    const raw = words.map((_, k) => total / (k + 1) ** alpha);
    const z = raw.reduce((a, b) => a + b, 0) / total;
    const counts = raw.map((x) => Math.floor(x / z));
    for (let k = 2; k >= 0; k--) counts[k] = Math.max(counts[k], (counts[k + 1] ?? 0) + 1);
    const stream = shuffle(mulberry32(order), words.flatMap((w, k) => Array(counts[k]).fill(w)));
    return {
      task,
      index,
      instruction: "Read the coded text below and track how often each coded word appears.\n",
      context: stream.map((w, i) => (i % 4 === 3 ? `${w} ....` : w)).join(" "),
      question: "Ignore the dots. What are the three most frequent coded words in the text?",
      answerPrefix: " Answer: The three most frequent coded words are:",
      genericPrefix: "Answer:",
      answers: words.slice(0, 3),
      evidence: [],
      metric: "string_match_all",
      meta: { words: stream.length, alpha },
    };
  };
  return build(largestFitting(6, targetTokens, (n) => longestPrompt(build(n), ctx.count) <= targetTokens));
}

/** RULER's task set, by name. */
export const RULER_TASKS: Record<string, Generator> = {
  niah_single_noise: (c, i, t) =>
    niah("niah_single_noise", { haystack: "noise", keys: 1, values: 1, queries: 1, digits: 7 }, c, i, t),
  niah_single_essay: (c, i, t) =>
    niah("niah_single_essay", { haystack: "essay", keys: 1, values: 1, queries: 1, digits: 7 }, c, i, t),
  niah_multikey: (c, i, t) =>
    niah("niah_multikey", { haystack: "essay", keys: 4, values: 1, queries: 1, digits: 7 }, c, i, t),
  niah_multivalue: (c, i, t) =>
    niah("niah_multivalue", { haystack: "essay", keys: 1, values: 4, queries: 1, digits: 7 }, c, i, t),
  niah_multiquery: (c, i, t) =>
    niah("niah_multiquery", { haystack: "essay", keys: 4, values: 1, queries: 4, digits: 7 }, c, i, t),
  vt: (c, i, t) => variableTracking("vt", 4, c, i, t),
  cwe: (c, i, t) => commonWords("cwe", 5, 5, c, i, t),
  fwe: (c, i, t) => frequentWords("fwe", 2, c, i, t),
};
