/**
 * A GGUF file written by llama.cpp itself: a small random Llama (rows of 256, so that k-quants apply) is
 * written F32 by core/gguf, then quantized to Q4_K_M by llama.cpp's own llama_model_quantize (libllama
 * of node-llama-cpp 3.21.1, through Deno FFI), and read back here: its Q4_K and Q6_K matrices are kept as
 * stored and dequantized for the CPU reference, whose logits and greedy tokens are compared with
 * llama.cpp's on the same file.
 *
 * Runs when node-llama-cpp is installed in .cache/llamacpp-peer/ on linux-x64; otherwise ignored.
 */
import * as E from "fp-ts/Either";
import { parseModelConfig } from "../core/config.ts";
import { CpuExecutor } from "../core/cpu/executor.ts";
import { GGML_TYPE } from "../core/gguf/ggml_types.ts";
import { syntheticVocab } from "../core/gguf/hf_vocab.ts";
import { writeGguf } from "../core/gguf/model_writer.ts";
import { parseGguf } from "../core/gguf/reader.ts";
import { assembleWeights } from "../core/weights.ts";
import { logSoftmax } from "../eval/metrics.ts";
import { randomTensors } from "../fixtures/test_models.ts";
import { LLAMACPP_PEER_DIR, llamaCppOnGguf, llamaCppPeerInstalled } from "../bench/llamacpp.ts";
import { parseGgufBytes } from "../io/from_bytes.ts";
import { assert, assertEquals } from "./helpers.ts";

const BIN = `${LLAMACPP_PEER_DIR}node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/`;
const LLAMA_FTYPE_MOSTLY_Q4_K_M = 15;

let skipReason: string | null = null;
if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") {
  skipReason = "llama.cpp's prebuilt linux-x64 library only";
} else if (!llamaCppPeerInstalled()) {
  skipReason = "node-llama-cpp is not installed in .cache/llamacpp-peer/ (JUDGEQ_PEER_TESTS=1 installs it)";
}

/** llama.cpp's quantizer on a file: llama_model_quantize(in, out, params with ftype). */
function llamaQuantize(input: string, output: string, ftype: number) {
  const lib = Deno.dlopen(`${BIN}libllama.v0.4.0.so`, {
    llama_backend_init: { parameters: [], result: "void" },
    llama_model_quantize_default_params: {
      // llama_model_quantize_params of llama.cpp v0.4.0's llama.h: 4 int32, 6 bools, 4 pointers, a size_t.
      parameters: [],
      result: {
        struct: [
          "i32",
          "i32",
          "i32",
          "i32",
          "u8",
          "u8",
          "u8",
          "u8",
          "u8",
          "u8",
          "pointer",
          "pointer",
          "pointer",
          "pointer",
          "usize",
        ],
      },
    },
    llama_model_quantize: { parameters: ["buffer", "buffer", "buffer"], result: "u32" },
  });
  try {
    lib.symbols.llama_backend_init();
    const params = lib.symbols.llama_model_quantize_default_params();
    const v = new DataView(params.buffer, params.byteOffset, params.byteLength);
    v.setInt32(0, 2, true); // nthread
    v.setInt32(4, ftype, true);
    const cstr = (s: string) => new TextEncoder().encode(s + "\0");
    const rc = lib.symbols.llama_model_quantize(cstr(input), cstr(output), params);
    if (rc !== 0) throw new Error(`llama_model_quantize returned ${rc}`);
  } finally {
    lib.close();
  }
}

Deno.test({
  name: "gguf: a Q4_K_M file quantized by llama.cpp loads (Q4_K and Q6_K kept) and runs as llama.cpp runs it",
  ignore: skipReason !== null,
  fn: async () => {
    const raw = parseModelConfig({
      architectures: ["LlamaForCausalLM"],
      hidden_size: 256,
      intermediate_size: 512,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: 512,
      max_position_embeddings: 256,
      rms_norm_eps: 1e-5,
      tie_word_embeddings: false,
      bos_token_id: 1,
      eos_token_id: 2,
    });
    if (E.isLeft(raw)) throw raw.left;
    const tensors = randomTensors(raw.right, 99);
    const w = assembleWeights(raw.right, (n) => tensors.get(n));
    if (E.isLeft(w)) throw w.left;
    const dir = await Deno.makeTempDir({ prefix: "judgeq-kquant-" });
    try {
      await Deno.writeFile(`${dir}/f32.gguf`, writeGguf(w.right, syntheticVocab(512), { tensorType: "f32" }));
      llamaQuantize(`${dir}/f32.gguf`, `${dir}/q4_k_m.gguf`, LLAMA_FTYPE_MOSTLY_Q4_K_M);
      const bytes = await Deno.readFile(`${dir}/q4_k_m.gguf`);
      const header = parseGguf(bytes);
      if (E.isLeft(header)) throw header.left;
      const types = new Set([...header.right.tensors.values()].map((t) => t.typeName));
      assert(types.has("Q4_K") && types.has("Q6_K"), `llama.cpp wrote ${[...types]}`);
      const g = await parseGgufBytes(bytes, "q4_k_m.gguf");
      assertEquals(g.config, w.right.config);
      const kept = [...g.weights.quantized!.values()].map((t) => t.typeName);
      assert(kept.includes("Q4_K") && kept.includes("Q6_K"), `kept ${kept}`);
      const q = g.weights.quantized!.get("model.layers.0.self_attn.q_proj.weight")!;
      assertEquals([q.ggmlType, q.shape], [GGML_TYPE.Q4_K, [256, 256]]);

      const prompt = [1, 17, 300, 42, 99, 7, 256, 400];
      const steps = 16;
      const peer = await llamaCppOnGguf(bytes, { vocabSize: 512, prompt, steps });
      if (!peer.ok) throw new Error(peer.reason);
      const s = new CpuExecutor(g.weights).createSession(prompt.length + steps + 1);
      const f = await s.forward({ kind: "tokens", tokens: prompt }, { logits: "last" });
      const ours = logSoftmax(f.logits!);
      let maxDiff = 0;
      for (let i = 0; i < ours.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(ours[i] - peer.logProbs![i]));
      }
      // What quantizing did to the log-probabilities: the scale the disagreement is judged against.
      const orig = logSoftmax(
        (await new CpuExecutor(w.right).createSession(prompt.length + 1).forward({
          kind: "tokens",
          tokens: prompt,
        }, {
          logits: "last",
        })).logits!,
      );
      let quantEffect = 0;
      for (let i = 0; i < ours.length; i++) quantEffect = Math.max(quantEffect, Math.abs(ours[i] - orig[i]));
      const d = await s.decode({
        maxTokens: steps,
        sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
        stopTokenIds: [],
      });
      let same = 0;
      while (same < steps && d.tokens[same] === peer.greedy[same]) same++;
      console.log(
        `  Q4_K_M: max |log p diff| vs llama.cpp ${
          maxDiff.toExponential(2)
        } (quantization itself moved them ${quantEffect.toExponential(2)}), greedy equal ${same} of ${steps}`,
      );
      // llama.cpp multiplies k-quant weights by activations rounded to 8 bits: close, not equal; far closer
      // than the weights' own quantization moved the model (a misread block would be beyond that).
      assert(
        maxDiff < 0.25 * quantEffect,
        `log-probabilities differ by ${maxDiff} (quantization: ${quantEffect})`,
      );
      assert(same >= 4, `only ${same} greedy tokens equal`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
