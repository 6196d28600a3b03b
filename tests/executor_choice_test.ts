/**
 * What `--executor` gets: auto passes software WebGPU adapters over for the fast CPU executor (wasm),
 * and falls back to the CPU reference with a warning where the runtime cannot run wasm; explicit
 * choices get exactly that executor or an error naming `executor`.
 */
import { JudgeQError } from "../core/errors.ts";
import type { Executor } from "../core/executor.ts";
import { gpuAvailable } from "../gpu/device.ts";
import {
  chooseExecutor,
  type ExecutorChoice,
  hardwareGpuUnavailableReason,
  softwareAdapterReason,
} from "../io/executor_choice.ts";
import { loadModel } from "../io/runtime.ts";
import { wasmUnsupportedReason } from "../wasm/mod.ts";
import { assert, assertEquals, assertRejects, randomModel } from "./helpers.ts";

const noWasm = wasmUnsupportedReason();
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
        await kindOf(chooseExecutor(w, "auto", { warn, requestAdapter: fakeAdapter(info) })),
        "wasm",
      );
    }
    const none = () => Promise.resolve(null);
    assertEquals(await kindOf(chooseExecutor(w, "auto", { warn, requestAdapter: none })), "wasm");
    assertEquals(warnings, [], "choosing wasm over a software adapter is no fallback");
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
      chooseExecutor(w, "auto", { warn: (m) => warnings.push(m), requestAdapter: none }),
    );
    assertEquals(kind, "cpu");
    assertEquals(warnings.length, 1);
    assert(/wasm.*SharedArrayBuffer.*CPU reference/.test(warnings[0]), warnings[0]);
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
    const x = await chooseExecutor(w, "auto", { requestAdapter: hardware, weightFormat: "int8", threads: 1 });
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
