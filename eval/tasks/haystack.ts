/**
 * Haystacks: RULER's repeated noise sentences, and essay sentences from a directory of .txt files.
 * Reading the directory is the only effect here; everything else is pure text processing, and no
 * essay text is ever written to results.
 */

/** RULER's noise haystack, one repetition. */
export const NOISE =
  "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

/** The noise haystack as sentences, repeated `n` times. */
export const noiseSentences = (n: number): string[] =>
  Array.from({ length: n }, () => NOISE.split(/(?<=\.)\s+/)).flat();

/** A loaded essay corpus: sentences in file-name order. */
export interface Corpus {
  /** Every sentence of every essay, whitespace collapsed. */
  sentences: string[];
  files: string[];
}

/** Splits text into sentences (after . ! ? followed by space); collapses whitespace first. */
export function splitSentences(text: string): string[] {
  // The essays lost their paragraph breaks ("personality.What"): a lower-case letter, a stop and a
  // capital mark a boundary too.
  return text.replace(/\s+/g, " ").replace(/([a-z][.!?])([A-Z])/g, "$1 $2").trim().split(
    /(?<=[.!?])\s+(?=[A-Z0-9"'(])/,
  ).map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/** Builds a corpus from (name, text) pairs, sorted by name for determinism. */
export function corpusFrom(files: { name: string; text: string }[]): Corpus {
  const sorted = [...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { sentences: sorted.flatMap((f) => splitSentences(f.text)), files: sorted.map((f) => f.name) };
}

/** Reads every .txt file of `dir`, names sorted. */
export async function loadCorpus(dir: string): Promise<Corpus> {
  const files: { name: string; text: string }[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(".txt")) {
      files.push({ name: e.name, text: await Deno.readTextFile(`${dir}/${e.name}`) });
    }
  }
  if (files.length === 0) throw new Error(`haystack: no .txt files in ${dir}`);
  return corpusFrom(files);
}

/** `count` consecutive sentences from `start`, wrapping around the corpus. */
export function takeSentences(sentences: readonly string[], start: number, count: number): string[] {
  return Array.from({ length: count }, (_, i) => sentences[(start + i) % sentences.length]);
}

/** `count` words of the sentences from sentence `start` on, wrapping (fits contexts word by word). */
export function takeWords(sentences: readonly string[], start: number, count: number): string[] {
  const out: string[] = [];
  for (let i = start; out.length < count; i++) {
    for (const w of sentences[i % sentences.length].split(" ")) {
      if (out.length === count) break;
      out.push(w);
    }
  }
  return out;
}

/**
 * Joins `words`, inserting each needle at the sentence boundary nearest its depth (0 = before the first
 * word, 1 = after the last whole sentence). Boundaries: the start, and every word that ends a sentence.
 */
export function insertAtBoundaries(
  words: readonly string[],
  needles: { text: string; depth: number }[],
): string {
  // A trailing partial sentence (the stream is cut by length) is not a boundary: needles go before it.
  const bounds = [0];
  words.forEach((w, i) => {
    if (/[.!?]["')]?$/.test(w)) bounds.push(i + 1);
  });
  const at = needles.map((n, i) => {
    const target = Math.min(1, Math.max(0, n.depth)) * words.length;
    const b = bounds.reduce(
      (best, x) => (Math.abs(x - target) < Math.abs(best - target) ? x : best),
      bounds[0],
    );
    return { text: n.text, at: b, i };
  }).sort((a, b) => a.at - b.at || a.i - b.i);
  const out: string[] = [];
  let k = 0;
  for (let w = 0; w <= words.length; w++) {
    while (k < at.length && at[k].at === w) out.push(at[k++].text);
    if (w < words.length) out.push(words[w]);
  }
  return out.join(" ");
}

/**
 * The largest n in [lo, hi] with fits(n), assuming fits is monotone (true up to some n). Returns lo
 * when nothing fits, so callers always get a prompt (possibly over the target; they check).
 */
export function largestFitting(lo: number, hi: number, fits: (n: number) => boolean): number {
  let best = lo;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (fits(mid)) {
      best = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return best;
}

/** Truncates text to at most `maxChars` at a word boundary. */
export function clip(text: string, maxChars: number): string {
  if (text.length <= maxChars) return text;
  const cut = text.slice(0, maxChars);
  const space = cut.lastIndexOf(" ");
  return (space > maxChars / 2 ? cut.slice(0, space) : cut).replace(/[,;:]$/, "");
}
