/**
 * Model-sampled story prompts for name recall: sample from BOS (stop tokens suppressed, so one story
 * runs the whole prompt), introduce the named character at the spec's depth, sample on, and keep the
 * first attempt whose full-cache greedy continuation reuses the name.
 */
import type { KvSession } from "../core/executor.ts";
import { GREEDY, sampleToken, seedState } from "../core/sampling.ts";
import { streamSeed } from "../core/random.ts";
import { encodeContinuation, type EvalModel, outputText } from "./model.ts";
import {
  countName,
  introSentence,
  type NameRecallOptions,
  type NameRecallSpec,
} from "./tasks/name_recall.ts";

/**
 * Samples `n` tokens after the session's current logits, never a stop token, feeding each back; then
 * up to `extra` more until `done` holds for the tokens so far.
 */
async function sampleOn(
  m: EvalModel,
  s: KvSession,
  logits: Float32Array,
  n: number,
  temperature: number,
  seed: number,
  extra = 0,
  done: (tokens: number[]) => boolean = () => true,
): Promise<{ tokens: number[]; logits: Float32Array }> {
  const tokens: number[] = [];
  let state = seedState(seed);
  for (let i = 0; i < n + extra && (i < n || !done(tokens)); i++) {
    const l = logits.slice();
    for (const t of m.model.stopTokenIds) l[t] = -Infinity;
    const [t, next] = sampleToken(l, { temperature, topP: 1, topK: 0, seed }, state);
    state = next;
    tokens.push(t);
    logits = (await s.forward({ kind: "tokens", tokens: [t] }, { logits: "last" })).logits!;
  }
  return { tokens, logits };
}

export interface StoryPrompt {
  tokens: number[];
  name: string;
  /** Token span [start, end) of the introduction sentence. */
  intro: [number, number];
  meta: Record<string, number | string>;
}

export async function buildNameRecall(
  m: EvalModel,
  spec: NameRecallSpec,
  o: NameRecallOptions,
  responseTokens: number,
): Promise<StoryPrompt> {
  const c = m.model.config, bos = m.model.tokenizer.bosId ?? 1;
  let last: StoryPrompt | null = null;
  for (let attempt = 0; attempt < Math.max(1, o.attempts); attempt++) {
    const seed = streamSeed(spec.seed, "attempt", attempt);
    const s = m.model.executor.createSession(c.maxSeqLen + 1);
    try {
      const start = (await s.forward({ kind: "tokens", tokens: [bos] }, { logits: "last" })).logits!;
      // The character is introduced at the first sentence end from the depth on.
      const endsSentence = (t: number[]) =>
        /[.!?]["']?$/.test(m.model.tokenizer.decode(t.slice(-4), { skipSpecial: true }));
      const before = await sampleOn(m, s, start, spec.before - 1, o.temperature, seed, 40, endsSentence);
      const text = m.model.tokenizer.decode(before.tokens, { skipSpecial: true });
      const name = spec.names.find((n) => countName(text, n) === 0) ?? spec.names[0];
      const intro = encodeContinuation(m.model, introSentence(spec.character, name));
      const afterIntro = (await s.forward({ kind: "tokens", tokens: intro }, { logits: "last" })).logits!;
      const rest = spec.length - 1 - before.tokens.length - intro.length;
      const after = await sampleOn(m, s, afterIntro, Math.max(0, rest), o.temperature, seed + 1);
      const response = await s.decode({ maxTokens: responseTokens, sampling: GREEDY, stopTokenIds: [] });
      const reused = countName(outputText(m.model, response.tokens), name) > 0;
      const tokens = [bos, ...before.tokens, ...intro, ...after.tokens];
      last = {
        tokens,
        name,
        intro: [1 + before.tokens.length, 1 + before.tokens.length + intro.length],
        meta: {
          depth: spec.depth,
          intro_at: 1 + before.tokens.length,
          mentions_after: countName(m.model.tokenizer.decode(after.tokens, { skipSpecial: true }), name),
          attempts: attempt + 1,
          reused: reused ? 1 : 0,
        },
      };
      if (reused) return last;
    } finally {
      s.dispose();
    }
  }
  return last!;
}
