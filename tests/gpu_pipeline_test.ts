/**
 * The CLI on the WebGPU executor: the same text as on the CPU reference. (Every method's kept positions
 * and tokens on every executor are checked by tests/executor_contract_test.ts.)
 */
import { gpuAvailable } from "../gpu/device.ts";
import { assertEquals, runScript } from "./helpers.ts";

const hasGpu = gpuAvailable() && (await navigator.gpu.requestAdapter()) !== null;
if (!hasGpu) console.warn("gpu_pipeline_test: no WebGPU adapter, tests skipped");

async function generate(executor: string, prompt: string) {
  // f32 weights: the reference holds f32 weights ("auto" may pick f16).
  const out = await runScript(
    "cli/generate.ts",
    "--prompt",
    prompt,
    "--max-tokens",
    "64",
    "--executor",
    executor,
    "--gpu-weights",
    "f32",
  );
  assertEquals(out.code, 0, out.stderr);
  return out.stdout;
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
