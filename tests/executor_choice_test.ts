/**
 * What `--executor` gets: auto passes software WebGPU adapters over for the native executor (ggml), falls
 * back to wasm where ggml cannot load and to the CPU reference where the runtime cannot run wasm, each
 * fallback with a warning; explicit choices get exactly that executor or an error naming `executor`.
 */
import { JudgeQError } from "../core/errors.ts";
import type { Executor } from "../core/executor.ts";
import { gpuAvailable } from "../gpu/device.ts";
import {
  chooseExecutor,
  type ExecutorChoice,
  hardwareGpuUnavailableReason,
  NATIVE_MIN_PARAMETERS,
  softwareAdapterReason,
} from "../io/executor_choice.ts";
import { loadModel } from "../io/runtime.ts";
import { parameterCount } from "../core/weights.ts";
import { fixtureWeights, loadWeightsOnly } from "../fixtures/testing.ts";
import { wasmUnsupportedReason } from "../wasm/mod.ts";
import { nativeUnsupportedReason } from "../native/mod.ts";
import { assert, assertEquals, assertRejects, randomModel } from "./helpers.ts";

const noWasm = wasmUnsupportedReason();
const noNative = await nativeUnsupportedReason();
/** A stand-in for a runtime where ggml cannot load. */
const nativeMissing = () => Promise.resolve("FFI is not permitted (a stand-in)");
const fakeAdapter = (info: Record<string, unknown>) => () =>
  Promise.resolve({ info: { vendor: "", architecture: "", device: "", description: "", ...info } } as never);

async function kindOf(executor: Promise<Executor>): Promise<string> {
  const x = await executor;
  x.dispose();
  return x.kind;
}

Deno.test("executor choice: software adapters are recognised by their info", () => {
  const software: Record<string, unknown>[] = [
    { vendor: "mesa", device: "llvmpipe (LLVM 15.0.7, 256 bits)", description: "" },
    { description: "Lavapipe" },
    { vendor: "Google", architecture: "swiftshader", description: "SwiftShader Device (Subzero)" },
    { description: "Microsoft Basic Render Driver" },
    { architecture: "cpu" },
    { description: "some software rasterizer" },
    { vendor: "nvidia", isFallbackAdapter: true },
  ];
  for (const info of software) assert(softwareAdapterReason(info) !== null, JSON.stringify(info));
  for (
    const info of [
      { vendor: "nvidia", architecture: "hopper", description: "NVIDIA H200" },
      { vendor: "apple", architecture: "metal-3", description: "Apple M2" },
      { vendor: "amd", architecture: "rdna-3", device: "Radeon RX 7900" },
      { vendor: "intel", architecture: "gen-12lp", description: "Intel(R) UHD Graphics 770" },
    ]
  ) assertEquals(softwareAdapterReason(info), null, JSON.stringify(info));
  assert(/llvmpipe/.test(softwareAdapterReason({ device: "llvmpipe (LLVM 15)" })!));
});

Deno.test("executor choice: a software or missing adapter is no hardware GPU", async () => {
  assert((await hardwareGpuUnavailableReason(() => Promise.resolve(null)))!.length > 0);
  const why = await hardwareGpuUnavailableReason(fakeAdapter({ description: "llvmpipe (LLVM 15)" }));
  assert(why?.includes("software") && why.includes("llvmpipe"), String(why));
  assertEquals(await hardwareGpuUnavailableReason(fakeAdapter({ description: "NVIDIA H200" })), null);
});

Deno.test({
  name: "executor choice: auto takes wasm over a software or missing adapter; explicit choices are kept",
  ignore: noWasm !== null,
  fn: async () => {
    const w = randomModel("llama3");
    const warnings: string[] = [];
    const warn = (m: string) => warnings.push(m);
    for (const info of [{ device: "llvmpipe (LLVM 15.0.7, 256 bits)" }, { isFallbackAdapter: true }]) {
      assertEquals(
        await kindOf(
          chooseExecutor(w, "auto", { warn, requestAdapter: fakeAdapter(info), nativeReason: nativeMissing }),
        ),
        "wasm",
      );
    }
    const none = () => Promise.resolve(null);
    assertEquals(
      await kindOf(chooseExecutor(w, "auto", { warn, requestAdapter: none, nativeReason: nativeMissing })),
      "wasm",
    );
    assertEquals(warnings, [], "a tiny model goes to wasm first: no fallback to say");
    // A model of native's size says why native could not run, once per choice.
    const bigWarnings: string[] = [];
    const large = fixtureWeights("llama76m");
    assertEquals(
      await kindOf(chooseExecutor(large, "auto", {
        warn: (m) => bigWarnings.push(m),
        requestAdapter: none,
        nativeReason: nativeMissing,
        threads: 1,
      })),
      "wasm",
    );
    assertEquals(bigWarnings.length, 1, "one line for the fallback from native");
    assert(/native.*FFI is not permitted.*WebAssembly/.test(bigWarnings[0]), bigWarnings[0]);
    assertEquals(await kindOf(chooseExecutor(w, "wasm", { threads: 2 })), "wasm");
    assertEquals(await kindOf(chooseExecutor(w, "cpu")), "cpu");
    assertEquals(await kindOf(chooseExecutor(w, "reference")), "cpu");
    const threaded = await chooseExecutor(w, "wasm", { threads: 3 });
    assert(threaded.description.includes("3 threads"), threaded.description);
    threaded.dispose();
    // The loaded model too, and what the server and CLI report: the executor's kind.
    const model = await loadModel({ executor: "wasm", adapter: null, threads: 1 });
    assertEquals(model.executor.kind, "wasm");
    model.executor.dispose();
  },
});

Deno.test("executor choice: bad choices and thread counts name their parameter", async () => {
  const w = randomModel("llama3");
  for (const threads of [0, -1, 1.5, 257, NaN]) {
    const e = await assertRejects(() => chooseExecutor(w, "auto", { threads }), "threads");
    assert(e instanceof JudgeQError && e.param === "threads", e.message);
  }
  const e = await assertRejects(() => chooseExecutor(w, "tpu" as ExecutorChoice), "executor", "tpu");
  assert(e instanceof JudgeQError && e.param === "executor");
});

Deno.test("executor choice: without WebAssembly threads, auto warns and runs the CPU reference; wasm fails", async () => {
  const w = randomModel("llama3");
  const g = globalThis as { SharedArrayBuffer?: unknown };
  const saved = g.SharedArrayBuffer;
  g.SharedArrayBuffer = undefined;
  try {
    assert(wasmUnsupportedReason() !== null, "the stub did not take");
    const warnings: string[] = [];
    const none = () => Promise.resolve(null);
    const kind = await kindOf(
      chooseExecutor(w, "auto", {
        warn: (m) => warnings.push(m),
        requestAdapter: none,
        nativeReason: nativeMissing,
      }),
    );
    assertEquals(kind, "cpu");
    assertEquals(warnings.length, 2);
    assert(/native.*FFI is not permitted/.test(warnings[0]), warnings[0]);
    assert(/wasm.*SharedArrayBuffer.*CPU reference/.test(warnings[1]), warnings[1]);
    const e = await assertRejects(() => chooseExecutor(w, "wasm"), "executor: ", "SharedArrayBuffer");
    assert(e instanceof JudgeQError && e.param === "executor");
  } finally {
    g.SharedArrayBuffer = saved;
  }
});

Deno.test({
  name: "executor choice: auto takes WebGPU on a hardware adapter",
  ignore: !gpuAvailable() || !(await navigator.gpu.requestAdapter().catch(() => null)),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const w = randomModel("llama3");
    const hardware = fakeAdapter({ vendor: "nvidia", description: "NVIDIA H200" });
    assertEquals(await kindOf(chooseExecutor(w, "auto", { requestAdapter: hardware })), "gpu");
    assertEquals(await kindOf(chooseExecutor(w, "gpu", { weightFormat: "f32" })), "gpu");
  },
});

Deno.test({
  name:
    "executor choice: int8 weights are the fast CPU executor's: auto passes WebGPU over, gpu refuses them",
  ignore: noWasm !== null,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const w = randomModel("llama3");
    const hardware = fakeAdapter({ vendor: "nvidia", description: "NVIDIA H200" });
    const x = await chooseExecutor(w, "auto", {
      requestAdapter: hardware,
      weightFormat: "int8",
      threads: 1,
      nativeReason: nativeMissing,
      warn: () => {},
    });
    try {
      assertEquals(x.kind, "wasm");
      assert(x.description.includes("int8"), x.description);
    } finally {
      x.dispose();
    }
    const e = await assertRejects(
      () => chooseExecutor(w, "gpu", { weightFormat: "int8" }),
      "weights",
      "int8",
    );
    assert(e instanceof JudgeQError && e.param === "weights", e.message);
  },
});

Deno.test({
  name:
    "executor choice: auto takes native over a missing adapter (wasm for a tiny model), with no warning; native formats are native's",
  ignore: noNative !== null || noWasm !== null,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const w = randomModel("llama3");
    const warnings: string[] = [];
    const none = () => Promise.resolve(null);
    assert(parameterCount(w) < NATIVE_MIN_PARAMETERS, "the llama3 fixture is a tiny model");
    assertEquals(
      await kindOf(chooseExecutor(w, "auto", { warn: (m) => warnings.push(m), requestAdapter: none })),
      "wasm",
    );
    const x = await chooseExecutor(fixtureWeights("llama76m"), "auto", {
      warn: (m) => warnings.push(m),
      requestAdapter: none,
      threads: 1,
    });
    try {
      assertEquals(x.kind, "native");
      assert(x.description.includes("f32 weights"), x.description);
    } finally {
      x.dispose();
    }
    assertEquals(warnings, [], "native is no fallback where WebGPU has no adapter");
    // int8 on native is ggml's Q8_0; q4_0 is native's alone.
    const q = await chooseExecutor(w, "native", { weightFormat: "int8", threads: 1 });
    assert(q.description.includes("q8_0 weights"), q.description);
    q.dispose();
    for (const choice of ["wasm", "gpu"] as const) {
      const e = await assertRejects(
        () => chooseExecutor(w, choice, { weightFormat: "q4_0" }),
        "weights",
        "q4_0",
      );
      assert(e instanceof JudgeQError && e.param === "weights", e.message);
    }
  },
});

Deno.test("executor choice: --executor native where ggml cannot load is an error naming executor", async () => {
  const w = randomModel("llama3");
  const e = await assertRejects(
    () => chooseExecutor(w, "native", { nativeReason: nativeMissing }),
    "executor",
    "FFI is not permitted",
  );
  assert(e instanceof JudgeQError && e.param === "executor", e.message);
});

Deno.test({
  name:
    "executor choice: auto with q8_0 takes wasm for a tiny model of whole blocks, native for stories260K (rows of 172)",
  ignore: noNative !== null || noWasm !== null,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const none = () => Promise.resolve(null);
    const o = { weightFormat: "q8_0" as const, threads: 1, requestAdapter: none };
    const x = await chooseExecutor(randomModel("llama3"), "auto", o);
    try {
      assertEquals(x.kind, "wasm");
      assert(x.description.includes("q8_0 weights"), x.description);
    } finally {
      x.dispose();
    }
    const stories = await loadWeightsOnly();
    assert(parameterCount(stories) < NATIVE_MIN_PARAMETERS, "stories260K is a tiny model");
    assertEquals(await kindOf(chooseExecutor(stories, "auto", o)), "native");
  },
});
