/**
 * The fast CPU executor beyond the contract suite (which also covers its f16 and int8 weights): the random
 * 87.5M llama and the Mistral fixture against the CPU reference, results independent of the thread count
 * (bitwise), bad options (threads, weight format, a model beyond 4 GiB) refused before any allocation
 * with an error naming the field, and a trapping kernel raised on the caller instead of hanging the pool.
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import type { ModelConfig } from "../core/config.ts";
import { JudgeQError } from "../core/errors.ts";
import type { DecodeOptions } from "../core/executor.ts";
import type { ModelWeights } from "../core/weights.ts";
import { WASM_WEIGHT_FORMATS } from "../core/weight_formats.ts";
import { fixtureWeights, maxAbsDiff, promptTokens } from "../fixtures/testing.ts";
import { WasmExecutor, wasmUnsupportedReason } from "../wasm/mod.ts";
import { Arena } from "../wasm/arena.ts";
import { instantiate, kernelModule } from "../wasm/kernels.ts";
import { ThreadPool } from "../wasm/pool.ts";
import { CONTROL_BYTES } from "../wasm/pool_protocol.ts";
import { assert, assertEquals, assertRejects } from "./helpers.ts";

const why = wasmUnsupportedReason();
if (why) console.warn(`wasm_executor_test: skipped: ${why}`);
const opts = { ignore: why !== null, sanitizeResources: false, sanitizeOps: false };
const greedy = (maxTokens: number): DecodeOptions => ({
  maxTokens,
  sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
  stopTokenIds: [],
  returnLogits: true,
});

for (const [shape, L] of [["llama100m", 200], ["mistral", 120]] as const) {
  Deno.test({
    ...opts,
    name:
      `wasm executor: the random ${shape} model within 1e-3 of the CPU reference (prefill + 64 decode steps)`,
    fn: async () => {
      const w = fixtureWeights(shape);
      const x = await WasmExecutor.create(w, {
        threads: 2,
        parallelMinWork: shape === "mistral" ? 0 : undefined,
      });
      try {
        const cs = new CpuExecutor(w).createSession(L + 80), ws = x.createSession(L + 80);
        const toks = promptTokens(L, w.config.vocabSize);
        const cr = await cs.forward({ kind: "tokens", tokens: toks }, { logits: "last" });
        const wr = await ws.forward({ kind: "tokens", tokens: toks }, { logits: "last" });
        const prefill = maxAbsDiff(cr.logits!, wr.logits!);
        assert(prefill < 1e-3, `prefill logits differ by ${prefill}`);
        const cd = await cs.decode(greedy(64)), wd = await ws.decode(greedy(64));
        assertEquals(wd.tokens, cd.tokens, "greedy tokens");
        const decode = Math.max(...cd.logits!.map((l, i) => maxAbsDiff(l, wd.logits![i])));
        assert(decode < 1e-3, `decode logits differ by ${decode}`);
      } finally {
        x.dispose();
      }
    },
  });
}

Deno.test({
  ...opts,
  name: "wasm executor: logits are bitwise the same on 1, 2 and 3 threads, split or not, every weight format",
  fn: async () => {
    const w = fixtureWeights("qwen2");
    const toks = promptTokens(150, w.config.vocabSize);
    for (const weightFormat of WASM_WEIGHT_FORMATS) {
      const runs: Float32Array[][] = [];
      for (
        const o of [{ threads: 1 }, { threads: 2, parallelMinWork: 0 }, { threads: 3, parallelMinWork: 0 }]
      ) {
        const x = await WasmExecutor.create(w, { ...o, weightFormat });
        try {
          const s = x.createSession(200);
          const r = await s.forward({ kind: "tokens", tokens: toks }, { logits: "all" });
          const d = await s.decode(greedy(16));
          runs.push([r.logits!, ...d.logits!]);
        } finally {
          x.dispose();
        }
      }
      for (const other of runs.slice(1)) {
        other.forEach((l, i) =>
          assert(l.every((v, j) => v === runs[0][i][j]), `${weightFormat}: row ${i} differs across threads`)
        );
      }
    }
  },
});

Deno.test({
  ...opts,
  name: "wasm executor: bad thread counts and weight formats are refused, naming the field",
  fn: async () => {
    const w = fixtureWeights("qwen2");
    for (const threads of [0, -1, 1.5, Number.NaN, 1000]) {
      const e = await assertRejects(() => WasmExecutor.create(w, { threads }), "threads");
      assert(e instanceof JudgeQError && e.param === "threads", `threads ${threads}: ${e.message}`);
    }
    const e = await assertRejects(
      () => WasmExecutor.create(w, { weightFormat: "f8" as "f16" }),
      "weights",
      "expected auto, f32, f16, int8 or q8_0",
    );
    assert(e instanceof JudgeQError);
  },
});

Deno.test({
  ...opts,
  name: "wasm executor: a model beyond 4 GiB is refused before anything is allocated",
  fn: async () => {
    // The config of a 7B-class llama with no weight data at all: the size check must come first.
    const config: ModelConfig = {
      ...fixtureWeights("qwen2").config,
      dim: 4096,
      hiddenDim: 11008,
      nLayers: 32,
      nHeads: 32,
      nKvHeads: 32,
      headDim: 128,
      vocabSize: 32000,
      attentionBias: false,
    };
    const empty = new Float32Array(0);
    const weights = { config, embed: empty, lmHead: empty, finalNorm: empty, layers: [] } as ModelWeights;
    const e = await assertRejects(
      () => WasmExecutor.create(weights, { threads: 1 }),
      "model",
      "GiB",
      "4 GiB",
    );
    assert(e instanceof JudgeQError && e.kind === "unprocessable", e.message);
  },
});

Deno.test({
  ...opts,
  name: "wasm thread pool: a kernel that traps on any thread raises on the caller, and the pool goes on",
  fn: async () => {
    const arena = new Arena(CONTROL_BYTES);
    const pool = new ThreadPool(await kernelModule(), arena, 3, 0);
    try {
      await pool.ready();
      const x = arena.alloc(64 * 64 * 4), w = arena.alloc(64 * 4);
      arena.f32.fill(1, x / 4, x / 4 + 64 * 64 + 64);
      // Rows past the end of memory: every chunk's rows trap, whichever thread claims them.
      await assertRejects(
        () => pool.run([{ kernel: "rmsNorm", args: [0xfff00000, w, x, 64, 64, 1e-5, 0] }], 1 << 30),
        "wasm kernel failed (rmsNorm)",
      );
      pool.run([{ kernel: "rmsNorm", args: [x, w, x, 64, 64, 1e-5, 0] }], 1 << 30);
      assert(arena.f32.subarray(x / 4, x / 4 + 64 * 64).every((v) => Math.abs(v - 1) < 1e-5), "rows after");
    } finally {
      pool.dispose();
    }
  },
});

Deno.test({
  ...opts,
  name: "wasm kernels: every finite f16 value widens to exactly its f32 value (subnormals and signs too)",
  fn: async () => {
    const arena = new Arena(CONTROL_BYTES);
    const k = instantiate(await kernelModule(), arena.memory);
    const D = 64, V = 65536 / D;
    const table = arena.alloc(65536 * 2), tokens = arena.alloc(V * 4), x = arena.alloc(65536 * 4);
    arena.u16.set(Uint16Array.from({ length: 65536 }, (_, i) => i), table / 2);
    arena.i32.set(Int32Array.from({ length: V }, (_, i) => i), tokens / 4);
    k.embed(table, 1, 0, tokens, x, V, D, V, 0, 1);
    const want = new Float16Array(Uint16Array.from({ length: 65536 }, (_, i) => i).buffer);
    const got = arena.f32.subarray(x / 4, x / 4 + 65536);
    let checked = 0;
    for (let i = 0; i < 65536; i++) {
      if (!Number.isFinite(want[i])) continue; // weights are checked finite before upload
      assert(Object.is(got[i], want[i]), `half 0x${i.toString(16)}: ${got[i]} != ${want[i]}`);
      checked++;
    }
    assertEquals(checked, 65536 - 2048, "finite halves checked");
  },
});
