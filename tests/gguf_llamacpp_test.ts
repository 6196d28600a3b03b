/**
 * GGUF files against llama.cpp (node-llama-cpp 3.21.1) on the same file: stories260K written as F32,
 * F16, Q8_0 and Q4_0 by the converter (core/gguf/convert.ts), loaded back here; our tokenizer's ids equal llama.cpp's on a text set,
 * and the CPU reference running the loaded (dequantized) weights gives llama.cpp's greedy continuation.
 *
 * Runs when node-llama-cpp is installed in .cache/llamacpp-peer/ (JUDGEQ_PEER_TESTS=1 installs it), as
 * tests/llamacpp_peer_test.ts; otherwise the cases are ignored, saying why.
 */
import * as E from "fp-ts/Either";
import { CpuExecutor } from "../core/cpu/executor.ts";
import { hfToGguf } from "../core/gguf/convert.ts";
import type { GgufTensorType } from "../core/gguf/model_writer.ts";
import { createTokenizer, type TextTokenizer } from "../core/tokenizer.ts";
import { ensureLlamaCppPeer, llamaCppOnGguf, llamaCppPeerInstalled } from "../bench/llamacpp.ts";
import { parseGgufBytes } from "../io/from_bytes.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "../io/model_dir.ts";
import { assert, assertEquals } from "./helpers.ts";

const wanted = Deno.env.get("JUDGEQ_PEER_TESTS") === "1";
let skipReason: string | null = null;
if (!wanted && !llamaCppPeerInstalled()) {
  skipReason =
    "node-llama-cpp is not installed in .cache/llamacpp-peer/ (set JUDGEQ_PEER_TESTS=1 to install it)";
} else {
  const ready = await ensureLlamaCppPeer({ install: wanted, log: (m) => console.log(m) });
  if (!ready.ok) skipReason = ready.reason;
}
if (skipReason) console.log(`gguf_llamacpp_test: skipping: ${skipReason}`);

/** Texts for the tokenizer comparison: Unicode, digits, whitespace runs, special-token-looking text. */
export const TOKENIZER_TEXTS = [
  "Once upon a time, there was a little girl named Lily.",
  "  two leading spaces, and   three inside",
  "tabs\tand\nnew\n\nlines\r\n",
  "digits 0 12 345 6789 3.14159 1,000,000",
  "Unicode: héllo wörld, naïve café, 日本語, emoji 😀🎉, Ελληνικά",
  "<s> looks special </s> <unk> <|eot_id|> [INST]",
  "a",
  " ",
  "trailing space ",
];

const hf = await loadModelDir(EMBEDDED_MODEL_DIR);
const tokenizerOf = (f: { tokenizerJson: unknown; tokenizerConfig: unknown }): TextTokenizer => {
  const t = createTokenizer(f.tokenizerJson, f.tokenizerConfig, hf.config.vocabSize);
  if (E.isLeft(t)) throw t.left;
  return t.right;
};

async function compare(type: GgufTensorType, mustMatch: number, steps: number) {
  const bytes = hfToGguf(hf, type, "stories260K"); // what `deno task convert --from DIR --gguf` writes
  const g = await parseGgufBytes(bytes, `stories260K.${type}.gguf`);
  const tok = tokenizerOf(g);
  const prompt = tok.encode("Once upon a time, there was a little girl named Lily. She loved to play");
  const peer = await llamaCppOnGguf(bytes, {
    vocabSize: hf.config.vocabSize,
    prompt,
    steps,
    texts: TOKENIZER_TEXTS,
  });
  if (!peer.ok) throw new Error(peer.reason);
  TOKENIZER_TEXTS.forEach((t, i) => {
    assertEquals(tok.encode(t, { addBos: false }), peer.tokenized[i], `ids of ${JSON.stringify(t)}`);
  });
  const session = new CpuExecutor(g.weights).createSession(prompt.length + steps + 1);
  await session.forward({ kind: "tokens", tokens: prompt }, { logits: "last" });
  const ours = await session.decode({
    maxTokens: steps,
    sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
    stopTokenIds: [],
  });
  let same = 0;
  while (same < steps && ours.tokens[same] === peer.greedy[same]) same++;
  console.log(`  ${type}: ${bytes.length} bytes, greedy tokens equal to llama.cpp's: ${same} of ${steps}`);
  assert(
    same >= mustMatch,
    `${type}: only the first ${same} greedy tokens equal llama.cpp's (need ${mustMatch})`,
  );
}

for (const [type, mustMatch] of [["f32", 64], ["q8_0", 32], ["f16", 32], ["q4_0", 8]] as const) {
  Deno.test({
    name: `gguf ${type}: stories260K ids and greedy tokens equal llama.cpp's on the same file`,
    ignore: skipReason !== null,
    fn: () => compare(type, mustMatch, 64),
  });
}
