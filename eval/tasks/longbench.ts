/**
 * LongBench-style synthetic tasks (Bai et al. 2023) built from essay excerpts instead of Wikipedia:
 * passage counting (how many distinct paragraphs, some repeated) and passage retrieval (which
 * paragraph a sentence comes from). Excerpts are short and live only in memory.
 */
import { clip, takeSentences } from "./haystack.ts";
import { mulberry32, randInt, shuffle, streamSeed } from "../../core/random.ts";
import { type GenContext, longestPrompt, needCorpus, type TaskInstance } from "./types.ts";

/**
 * `count` short paragraphs from spread-out corpus offsets: as many whole sentences as fit in
 * `maxChars`, or the first sentence clipped.
 */
function paragraphs(
  ctx: GenContext,
  task: string,
  r: () => number,
  count: number,
  maxChars: number,
): string[] {
  const s = needCorpus(ctx, task).sentences;
  const stride = Math.max(2, Math.floor(s.length / count));
  const base = randInt(r, 0, s.length - 1);
  return Array.from({ length: count }, (_, i) => {
    let p = "";
    for (const next of takeSentences(s, base + i * stride, 4)) {
      const joined = p ? `${p} ${next}` : next;
      if (joined.length > maxChars) break;
      p = joined;
    }
    return p || clip(s[(base + i * stride) % s.length], maxChars);
  });
}

const numbered = (ps: string[]) => ps.map((p, i) => `Paragraph ${i + 1}: ${p}`).join("\n");

/** Largest m in [lo, hi] whose instance fits; m = lo if none does. */
function fitCount(
  lo: number,
  hi: number,
  build: (m: number) => TaskInstance,
  ctx: GenContext,
  target: number,
): TaskInstance {
  let best = build(lo);
  for (let m = lo + 1; m <= hi; m++) {
    const t = build(m);
    if (longestPrompt(t, ctx.count) > target) break;
    best = t;
  }
  return best;
}

/** Passage count: m paragraph slots hold k distinct paragraphs (the rest repeat them); answer k. */
export function passageCount(
  ctx: GenContext,
  index: number,
  targetTokens: number,
  maxChars = 90,
): TaskInstance {
  const task = "passage_count";
  const r = mulberry32(streamSeed(ctx.seed, task, index));
  const pool = paragraphs(ctx, task, r, 12, maxChars);
  const share = 0.5 + 0.4 * r(), order = Math.floor(r() * 2 ** 32);
  const build = (m: number): TaskInstance => {
    const k = Math.max(1, Math.min(m - 1, Math.round(m * share)));
    const rr = mulberry32(order + m);
    const slots = shuffle(rr, [
      ...pool.slice(0, k),
      ...Array.from({ length: m - k }, () => pool[randInt(rr, 0, k - 1)]),
    ]);
    return {
      task,
      index,
      instruction: "Below are some paragraphs. Some of them are repeated.\n",
      context: numbered(slots),
      question: "How many different paragraphs are there, not counting repeats?",
      answerPrefix: " The final answer is:",
      genericPrefix: "The final answer is:",
      answers: [String(k)],
      evidence: [],
      metric: "count",
      meta: { paragraphs: m, unique: k },
    };
  };
  return fitCount(2, pool.length, build, ctx, targetTokens);
}

/** Passage retrieval: m distinct paragraphs; the question quotes the start of one; answer "Paragraph j". */
export function passageRetrieval(
  ctx: GenContext,
  index: number,
  targetTokens: number,
  maxChars = 90,
): TaskInstance {
  const task = "passage_retrieval";
  const r = mulberry32(streamSeed(ctx.seed, task, index));
  const pool = paragraphs(ctx, task, r, 12, maxChars);
  const pickShare = r();
  const build = (m: number): TaskInstance => {
    const j = Math.min(m - 1, Math.floor(pickShare * m));
    return {
      task,
      index,
      instruction: "Below are some numbered paragraphs.\n",
      context: numbered(pool.slice(0, m)),
      question: `Which paragraph contains this: "${clip(pool[j], 40)}"?`,
      answerPrefix: " The answer is: Paragraph",
      genericPrefix: "The answer is: Paragraph",
      answers: [String(j + 1)],
      evidence: [`Paragraph ${j + 1}: ${pool[j]}`],
      metric: "retrieval",
      meta: { paragraphs: m, target: j + 1 },
    };
  };
  return fitCount(2, pool.length, build, ctx, targetTokens);
}
