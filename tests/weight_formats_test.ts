/**
 * The weight-format vocabulary (core/weight_formats.ts): each executor's subset, and the refusals built
 * from it, against the lists written out by hand.
 */
import { JudgeQError } from "../core/errors.ts";
import {
  choiceList,
  GPU_WEIGHT_CHOICES,
  isChoice,
  NATIVE_WEIGHT_FORMATS,
  WASM_WEIGHT_CHOICES,
  WEIGHT_CHOICES,
  WEIGHT_FORMATS,
} from "../core/weight_formats.ts";
import { chooseExecutor } from "../io/executor_choice.ts";
import { weightFormatFlag } from "../io/flags.ts";
import { assert, assertEquals, randomModel } from "./helpers.ts";

Deno.test("weight formats: one vocabulary, each executor's subset of it, every format someone's", () => {
  assertEquals([...WEIGHT_CHOICES], ["auto", "f32", "f16", "int8", "q8_0", "q4_0"]);
  assertEquals([...GPU_WEIGHT_CHOICES], ["auto", "f32", "f16"]);
  assertEquals([...WASM_WEIGHT_CHOICES], ["auto", "f32", "f16", "int8", "q8_0"]);
  assertEquals([...NATIVE_WEIGHT_FORMATS], ["f32", "f16", "q8_0", "q4_0"]);
  const served = new Set([...GPU_WEIGHT_CHOICES, ...WASM_WEIGHT_CHOICES, ...NATIVE_WEIGHT_FORMATS]);
  assertEquals(WEIGHT_FORMATS.filter((f) => !served.has(f)), []);
  assertEquals(choiceList(WASM_WEIGHT_CHOICES), "auto, f32, f16, int8 or q8_0");
  assertEquals(choiceList(["f32"]), "f32");
  assert(isChoice(GPU_WEIGHT_CHOICES, "f16") && !isChoice(GPU_WEIGHT_CHOICES, "int8"));
  assert(!isChoice(WEIGHT_CHOICES, 16) && !isChoice(WEIGHT_CHOICES, "F16"));
});

Deno.test("weight formats: a format an executor lacks is refused naming weights and what it takes", async () => {
  const w = randomModel("llama3");
  const refusal = async (choice: "gpu" | "wasm", format: "int8" | "q4_0") => {
    try {
      await chooseExecutor(w, choice, { weightFormat: format });
    } catch (e) {
      assert(e instanceof JudgeQError && e.param === "weights", String(e));
      return e.message;
    }
    throw new Error(`${choice} took ${format}`);
  };
  assertEquals(
    await refusal("gpu", "int8"),
    "weights: int8 weights are for the CPU executors (native, wasm); WebGPU takes auto, f32 or f16",
  );
  assertEquals(
    await refusal("wasm", "q4_0"),
    "weights: q4_0 weights are for the native executor; the WebAssembly executor takes auto, f32, f16, int8 or q8_0",
  );
  let flag = "";
  try {
    weightFormatFlag("f8", "--weights");
  } catch (e) {
    flag = (e as Error).message;
  }
  assertEquals(flag, "--weights: expected auto, f32, f16, int8, q8_0, q4_0, got 'f8'");
});
