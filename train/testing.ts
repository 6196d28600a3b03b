/** Test support: tiny random models and prompts for gradient checks and fast CLI runs. */
import * as E from "fp-ts/Either";
import { parseModelConfig } from "../core/config.ts";
import { CpuExecutor, type CpuSession } from "../core/cpu/executor.ts";
import { assembleWeights, type ModelWeights } from "../core/weights.ts";
import { randomTensors } from "../fixtures/test_models.ts";

/** A config.json for a tiny model: GQA group 2, optional q/k/v biases (Qwen2 shape). */
export function tinyConfigJson(bias = false): Record<string, unknown> {
  return {
    architectures: [bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM"],
    hidden_size: 16,
    intermediate_size: 24,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 32,
    max_position_embeddings: 96,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    bos_token_id: 1,
    eos_token_id: 2,
  };
}

export function tinyWeights(bias = false, seed = 7): ModelWeights {
  const config = parseModelConfig(tinyConfigJson(bias));
  if (E.isLeft(config)) throw config.left;
  const tensors = randomTensors(config.right, seed);
  const w = assembleWeights(config.right, (n) => tensors.get(n));
  if (E.isLeft(w)) throw w.left;
  return w.right;
}

/** A session holding `tokens` as its prompt. */
export async function prefilled(w: ModelWeights, tokens: number[], capacity = 96): Promise<CpuSession> {
  const s = new CpuExecutor(w).createSession(capacity);
  await s.forward({ kind: "tokens", tokens }, { logits: "last" });
  return s;
}
