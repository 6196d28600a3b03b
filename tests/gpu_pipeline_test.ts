/** The plan interpreter on the WebGPU executor: same kept positions and tokens as on the CPU reference. */
import { CpuExecutor } from "../core/cpu/executor.ts";
import type { Executor } from "../core/executor.ts";
import { runPlan } from "../core/interpret.ts";
import { compilePlan, type CompressionRequest } from "../core/plan.ts";
import { GREEDY } from "../core/sampling.ts";
import { randomSoftTokens } from "../core/soft_tokens.ts";
import { gpuAvailable } from "../gpu/device.ts";
import { GpuExecutor } from "../gpu/executor.ts";
import { assertEquals, embeddedModel, right } from "./helpers.ts";

const hasGpu = gpuAvailable() && (await navigator.gpu.requestAdapter()) !== null;
if (!hasGpu) console.warn("gpu_pipeline_test: no WebGPU adapter, tests skipped");

const L = 150;
const PROMPT = Array.from({ length: L }, (_, i) => (i === 0 ? 1 : 3 + ((i * 53 + (i * i) % 17) % 500)));

const METHODS: CompressionRequest[] = [
  { method: "full" },
  { method: "random", budget: 40, seed: 2 },
  { method: "streaming_llm", budget: 40 },
  { method: "h2o", budget: 40 },
  { method: "h2o", budget: 40, normalize: true },
  { method: "snapkv", budget: 40 },
  { method: "snapkv", budget: 40, pooling: "max", kernel: 7, window: 8 },
  { method: "pyramidkv", budget: 40 },
  { method: "adakv", budget: 40 },
  { method: "tova", budget: 40 },
  { method: "knorm", budget: 40 },
  { method: "lookahead", budget: 40 },
  { method: "judgeq", budget: 40 },
];

Deno.test({
  name: "every method keeps the same positions and decodes the same tokens on CPU and GPU",
  ignore: !hasGpu,
  fn: async () => {
    const { weights } = await embeddedModel();
    const soft = randomSoftTokens(weights.embed, weights.config.dim, 32, 11);
    const gpu = await GpuExecutor.create(weights, { weightFormat: "f32" });
    const cpu = new CpuExecutor(weights);
    try {
      for (const compression of METHODS) {
        const plan = right(compilePlan(
          {
            input: { kind: "prompt", tokens: PROMPT },
            compression,
            decode: { maxTokens: 16, sampling: GREEDY, stopTokenIds: [] },
          },
          { config: weights.config, adapterTokens: 32 },
        ));
        const run = (executor: Executor) =>
          runPlan(plan, { executor, softEmbeddings: soft, tokenEmbeddings: weights.embed });
        const [c, g] = [await run(cpu), await run(gpu)];
        const label = JSON.stringify(compression);
        assertEquals(g.compression.kept, c.compression.kept, label);
        assertEquals(g.compression.kvBytesAfter, c.compression.kvBytesAfter, label);
        assertEquals(g.outputs[0].tokens, c.outputs[0].tokens, label);
      }
    } finally {
      gpu.dispose();
    }
  },
});

async function generate(executor: string, prompt: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../cli/generate.ts", import.meta.url).pathname,
      "--prompt",
      prompt,
      "--max-tokens",
      "64",
      "--executor",
      executor,
      "--gpu-weights",
      "f32", // the reference holds f32 weights ("auto" may pick f16)
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout);
}

Deno.test({
  name: "generate --executor gpu prints the same text as --executor cpu for the golden prompts",
  ignore: !hasGpu,
  fn: async () => {
    for (const prompt of ["Once upon a time", ""]) {
      const [c, g] = [await generate("cpu", prompt), await generate("gpu", prompt)];
      assertEquals(g, c, JSON.stringify(prompt));
      assertEquals(c.length > 100, true);
    }
  },
});
