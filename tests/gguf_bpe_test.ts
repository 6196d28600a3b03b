/**
 * Byte-level BPE through GGUF: the Llama-3-style and Qwen2-style fixture tokenizers (tiny, real merges:
 * fixtures/bpe_tokenizers.ts) written into GGUF files with the llama3 / qwen2 fixtures' weights, read
 * back: the same ids as the Hugging Face tokenizer on a text set (Unicode, digits, whitespace runs,
 * special-token-looking text), the same chat template rendering. With node-llama-cpp installed, llama.cpp's
 * ids on the same file and its greedy tokens on the weights equal ours too.
 */
import * as E from "fp-ts/Either";
import { CpuExecutor } from "../core/cpu/executor.ts";
import { ggufTokenizerFromHf } from "../core/gguf/hf_vocab.ts";
import { writeGguf } from "../core/gguf/model_writer.ts";
import { createTokenizer, type TextTokenizer } from "../core/tokenizer.ts";
import { encodeChat } from "../server/openai.ts";
import { ensureLlamaCppPeer, llamaCppOnGguf, llamaCppPeerInstalled } from "../bench/llamacpp.ts";
import { fixtureWeights } from "../fixtures/testing.ts";
import { parseGgufBytes } from "../io/from_bytes.ts";
import { assert, assertEquals } from "./helpers.ts";

const FIXTURES = new URL("../fixtures/models/bpe/", import.meta.url).pathname;

export const BPE_TEXTS = [
  "Judge Q prunes the KV cache with trained soft-token queries.",
  "  leading spaces,   runs   of spaces,\t\ttabs and\n\n\nnewlines \r\n",
  "digits: 7 42 123 4567 89012 3.14159 1,000,000 2026-12-06",
  "Unicode: héllo wörld, naïve café, 日本語のテキスト, emoji 😀🎉👩‍👩‍👧, Ελληνικά, русский",
  "<|begin_of_text|> <|eot_id|> <|im_start|>user <|im_end|> <|endoftext|> look special",
  "I'm sure they'll say it's 'quoted' — DON'T shout",
  "x",
  "   ",
];

const wanted = Deno.env.get("JUDGEQ_PEER_TESTS") === "1";
let skipReason: string | null = null;
if (!wanted && !llamaCppPeerInstalled()) {
  skipReason =
    "node-llama-cpp is not installed in .cache/llamacpp-peer/ (set JUDGEQ_PEER_TESTS=1 to install it)";
} else {
  const ready = await ensureLlamaCppPeer({ install: wanted, log: (m) => console.log(m) });
  if (!ready.ok) skipReason = ready.reason;
}

const must = (t: E.Either<Error, TextTokenizer>) => {
  if (E.isLeft(t)) throw t.left;
  return t.right;
};

async function fixture(shape: "llama3" | "qwen2") {
  const tokenizerJson = JSON.parse(await Deno.readTextFile(`${FIXTURES}${shape}/tokenizer.json`));
  const tokenizerConfig = JSON.parse(await Deno.readTextFile(`${FIXTURES}${shape}/tokenizer_config.json`));
  const w = fixtureWeights(shape);
  const { vocab, options } = ggufTokenizerFromHf(tokenizerJson, tokenizerConfig, w.config.vocabSize);
  const bytes = writeGguf(w, vocab, { ...options, tensorType: "f32" });
  const g = await parseGgufBytes(bytes, `${shape}.gguf`);
  const hf = must(createTokenizer(tokenizerJson, tokenizerConfig, w.config.vocabSize));
  const ours = must(createTokenizer(g.tokenizerJson, g.tokenizerConfig, w.config.vocabSize));
  return { w, bytes, g, hf, ours, pre: vocab.model === "gpt2" ? vocab.pre : null };
}

for (const shape of ["llama3", "qwen2"] as const) {
  Deno.test(`gguf ${shape}-style BPE: ids, specials and chat template equal the HF tokenizer's`, async () => {
    const { hf, ours, pre, g } = await fixture(shape);
    assertEquals(pre, shape === "llama3" ? "llama-bpe" : "qwen2");
    for (const t of BPE_TEXTS) {
      assertEquals(ours.encode(t), hf.encode(t), JSON.stringify(t));
      assertEquals(
        ours.encode(t, { allowSpecial: true }),
        hf.encode(t, { allowSpecial: true }),
        `special ${JSON.stringify(t)}`,
      );
      assertEquals(ours.decode(ours.encode(t, { addBos: false })), t);
    }
    assert(hf.encode(BPE_TEXTS[0]).length < new TextEncoder().encode(BPE_TEXTS[0]).length, "merges apply");
    assertEquals([ours.bosId, ours.eosIds, ours.addBosDefault], [hf.bosId, hf.eosIds, hf.addBosDefault]);
    assertEquals(ours.chatTemplate, hf.chatTemplate);
    const messages = [{ role: "user" as const, content: "What is 12+30?" }];
    const chat = encodeChat(ours, messages, false);
    assertEquals(chat, encodeChat(hf, messages, false));
    assert(
      chat.includes(ours.specialTokens.find((t) => t.content.includes("start"))!.id),
      "template control tokens",
    );
    assertEquals(g.config.architecture, shape === "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM");
  });

  Deno.test({
    name: `gguf ${shape}-style BPE: llama.cpp's ids and greedy tokens on the same file equal ours`,
    ignore: skipReason !== null,
    fn: async () => {
      const { bytes, ours, g } = await fixture(shape);
      const prompt = ours.encode("Judge Q prunes the cache, 123 times.");
      const steps = 32;
      for (const special of [false, true]) {
        const peer = await llamaCppOnGguf(bytes, {
          vocabSize: g.config.vocabSize,
          texts: BPE_TEXTS,
          special,
        });
        if (!peer.ok) throw new Error(peer.reason);
        BPE_TEXTS.forEach((t, i) => {
          assertEquals(
            ours.encode(t, { addBos: false, allowSpecial: special }),
            peer.tokenized[i],
            `${special ? "special " : ""}${JSON.stringify(t)}`,
          );
        });
      }
      // The same vocabulary under llama.cpp's other pre-tokenizers: its ids still ours.
      const other = shape === "llama3" ? "default" : "gpt-2";
      const w = fixtureWeights(shape);
      const tj = JSON.parse(await Deno.readTextFile(`${FIXTURES}${shape}/tokenizer.json`));
      const tc = JSON.parse(await Deno.readTextFile(`${FIXTURES}${shape}/tokenizer_config.json`));
      const { vocab, options } = ggufTokenizerFromHf(tj, tc, w.config.vocabSize);
      const renamed = writeGguf(w, { ...vocab, pre: other } as typeof vocab, {
        ...options,
        tensorType: "f32",
      });
      const r = await parseGgufBytes(renamed);
      const rt = must(createTokenizer(r.tokenizerJson, r.tokenizerConfig, w.config.vocabSize));
      const rp = await llamaCppOnGguf(renamed, { vocabSize: w.config.vocabSize, texts: BPE_TEXTS });
      if (!rp.ok) throw new Error(rp.reason);
      BPE_TEXTS.forEach((t, i) => {
        assertEquals(rt.encode(t, { addBos: false }), rp.tokenized[i], `pre ${other}: ${JSON.stringify(t)}`);
      });
      const peer = await llamaCppOnGguf(bytes, { vocabSize: g.config.vocabSize, prompt, steps });
      if (!peer.ok) throw new Error(peer.reason);
      const s = new CpuExecutor(g.weights).createSession(prompt.length + steps + 1);
      await s.forward({ kind: "tokens", tokens: prompt }, { logits: "last" });
      const d = await s.decode({
        maxTokens: steps,
        sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
        stopTokenIds: [],
      });
      assertEquals(d.tokens, peer.greedy, "greedy tokens");
    },
  });
}
