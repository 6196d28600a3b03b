/**
 * The native executor beyond the contract suite (which runs every session operation on f32, f16, Q8_0 and
 * Q4_0 weights against the reference): greedy text on the real stories260K equal to the reference's; a GGUF
 * file's quantized tensors run as they are (the same numbers as quantizing the f32 weights with ggml at
 * load, since the project's writer rounds as ggml does); an f16 KV cache; a model too large refused before
 * anything is allocated; bad formats named.
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import { vocabFromTokenizerJson } from "../core/gguf/hf_vocab.ts";
import { writeGguf } from "../core/gguf/model_writer.ts";
import type { DecodeOptions } from "../core/executor.ts";
import { JudgeQError } from "../core/errors.ts";
import type { ModelWeights } from "../core/weights.ts";
import { fixtureWeights, loadWeightsOnly, maxAbsDiff } from "../fixtures/testing.ts";
import { parseGgufBytes } from "../io/from_bytes.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "../io/model_dir.ts";
import { loadGgml, NativeExecutor, nativeUnsupportedReason, roundToNativeFormat } from "../native/mod.ts";
import { assert, assertEquals, assertRejects } from "./helpers.ts";

const why = await nativeUnsupportedReason();
const opts = { ignore: why !== null, sanitizeResources: false, sanitizeOps: false };
if (why) console.warn(`native_executor_test: skipped: ${why}`);

const greedy = (maxTokens: number): DecodeOptions => ({
  maxTokens,
  sampling: { temperature: 0, topP: 1, topK: 0, seed: 1 },
  stopTokenIds: [],
  returnLogits: true,
});

const hf = await loadModelDir(EMBEDDED_MODEL_DIR);
const prompt = [1, 403, 407, 261, 378, 285, 1100 % 512, 300, 99, 402];

Deno.test({
  ...opts,
  name: "native executor: stories260K greedy text (64 tokens) equals the CPU reference's",
  fn: async () => {
    const x = await NativeExecutor.create(hf.weights, { threads: 1 });
    const s = x.createSession(256), r = new CpuExecutor(hf.weights).createSession(256);
    try {
      await s.forward({ kind: "tokens", tokens: prompt });
      await r.forward({ kind: "tokens", tokens: prompt });
      const a = await s.decode(greedy(64)), b = await r.decode(greedy(64));
      assertEquals(a.tokens, b.tokens);
      for (let i = 0; i < a.logits!.length; i++) {
        const d = maxAbsDiff(a.logits![i], b.logits![i]);
        assert(d < 1e-3, `step ${i}: logits ${d} from the reference`);
      }
    } finally {
      s.dispose();
      x.dispose();
    }
  },
});

Deno.test({
  ...opts,
  name: "native executor: a GGUF file's Q8_0 / Q4_0 tensors run as stored, equal to ggml quantizing at load",
  fn: async () => {
    const vocab = vocabFromTokenizerJson(hf.tokenizerJson, hf.config.vocabSize);
    for (const format of ["q8_0", "q4_0"] as const) {
      const fromFile = await parseGgufBytes(
        writeGguf(hf.weights, vocab, { tensorType: format, addBos: true }),
      );
      assert(
        (fromFile.weights.quantized?.size ?? 0) > 0,
        `${format}: the file's matrices are kept quantized`,
      );
      const a = await NativeExecutor.create(fromFile.weights, { threads: 1 });
      const b = await NativeExecutor.create(hf.weights, { threads: 1, weightFormat: format, warn: () => {} });
      try {
        assert(a.description.includes("f32 weights"), "no format asked: the file's types are used");
        const la = (await a.createSession(64).forward({ kind: "tokens", tokens: prompt }, { logits: "all" }))
          .logits!;
        const lb = (await b.createSession(64).forward({ kind: "tokens", tokens: prompt }, { logits: "all" }))
          .logits!;
        assertEquals(maxAbsDiff(la, lb), 0, `${format}: the file's blocks are ggml's own rounding`);
        // And not the f32 numbers: the quantized blocks are what ran.
        const f32 = await NativeExecutor.create(hf.weights, { threads: 1 });
        const lf =
          (await f32.createSession(64).forward({ kind: "tokens", tokens: prompt }, { logits: "all" }))
            .logits!;
        assert(maxAbsDiff(la, lf) > 1e-4, `${format}: differs from f32`);
        f32.dispose();
      } finally {
        a.dispose();
        b.dispose();
      }
    }
  },
});

Deno.test({
  ...opts,
  name: "native executor: an f16 KV cache stays within 2e-2 of the f32 cache over prefill and 32 steps",
  fn: async () => {
    // The random llama3 fixture's logits reach ~10; f16 keys and values (2^-11 relative) move them by ~1e-2.
    const w = fixtureWeights("llama3");
    const a = await NativeExecutor.create(w, { threads: 1, kvType: "f16" });
    const b = await NativeExecutor.create(w, { threads: 1 });
    try {
      const toks = Array.from({ length: 72 }, (_, i) => (i * 37 + 11) % w.config.vocabSize);
      const sa = a.createSession(128), sb = b.createSession(128);
      let worst = 0;
      const step = async (rows: number[]) => {
        const la = (await sa.forward({ kind: "tokens", tokens: rows }, { logits: "all" })).logits!;
        const lb = (await sb.forward({ kind: "tokens", tokens: rows }, { logits: "all" })).logits!;
        worst = Math.max(worst, maxAbsDiff(la, lb));
      };
      await step(toks.slice(0, 40));
      assertEquals(sa.kvBytes() * 2, sb.kvBytes(), "f16 entries take half the bytes");
      for (let i = 40; i < 72; i++) await step([toks[i]]); // the same tokens fed to both: no greedy divergence
      assert(worst < 2e-2, `f16 cache: logits ${worst} from the f32 cache`);
      assert(worst > 0, "the f16 cache did round something");
      // Snapshots are f32 whatever the storage: an f16 session restores on the reference.
      const snap = await sa.exportCache();
      const restored = await new CpuExecutor(w).restoreSession(snap, 128);
      assertEquals(await restored.positions(), await sa.positions());
    } finally {
      a.dispose();
      b.dispose();
    }
  },
});

Deno.test({
  ...opts,
  name: "native executor: a model larger than memory is refused with the bytes it needs, before allocating",
  fn: async () => {
    const small = fixtureWeights("llama3");
    // The shapes say 200 layers of 16384 x 65536 matrices; the arrays are never read before the check.
    const huge: ModelWeights = {
      ...small,
      config: {
        ...small.config,
        dim: 16384,
        hiddenDim: 65536,
        nLayers: 200,
        nHeads: 128,
        nKvHeads: 8,
        headDim: 128,
      },
      layers: Array.from({ length: 200 }, () => small.layers[0]),
    };
    const e = await assertRejects(() => NativeExecutor.create(huge, { threads: 1 }), "weights", "bytes");
    assert(e instanceof JudgeQError && e.param === "weights", e.message);
    assert(/need \d{12,} bytes, over the \d+ bytes of memory available/.test(e.message), e.message);
  },
});

Deno.test({
  ...opts,
  name: "native executor: 1, 2 and 3 threads give the same logits, bit for bit",
  fn: async () => {
    const w = fixtureWeights("qwen2");
    const toks = Array.from({ length: 33 }, (_, i) => (i * 53 + 7) % w.config.vocabSize);
    const run = async (threads: number) => {
      const x = await NativeExecutor.create(w, { threads, weightFormat: "q8_0" });
      try {
        const s = x.createSession(64);
        const pre = (await s.forward({ kind: "tokens", tokens: toks }, { logits: "all" })).logits!;
        const step = (await s.forward({ kind: "tokens", tokens: [5] }, { logits: "last" })).logits!;
        return [pre, step];
      } finally {
        x.dispose();
      }
    };
    const one = await run(1);
    for (const threads of [2, 3]) {
      const got = await run(threads);
      for (let i = 0; i < 2; i++) {
        assertEquals(maxAbsDiff(got[i], one[i]), 0, `${threads} threads, part ${i}`);
      }
    }
  },
});

Deno.test({
  ...opts,
  name: "native executor: f16, Q8_0 and Q4_0 weights against the reference on the same rounded weights",
  fn: async () => {
    // The reference runs the weights as each format stores them (ggml's quantizer, then its dequantizer);
    // what remains is ggml rounding the activations for its dot products: f16 (2^-11 relative), or blocks of
    // 32 to 8 bits for Q8_0 and Q4_0. Teacher-forced (the same tokens into both), so no near tie diverges.
    // Stated tolerances, as a fraction of the largest |logit| (measured: f16 4e-4 to 9e-4, Q8_0 / Q4_0
    // 1.2e-2 to 2.5e-2 on these models); a wrong rotation, mask or layout is off by the logits' own size.
    const g = await loadGgml();
    const tolerance = { f16: 2e-3, q8_0: 5e-2, q4_0: 5e-2 } as const;
    const models: [string, ModelWeights][] = [["stories260K", await loadWeightsOnly()], [
      "qwen2",
      fixtureWeights("qwen2"),
    ]];
    for (const [name, w] of models) {
      for (const format of ["f16", "q8_0", "q4_0"] as const) {
        const x = await NativeExecutor.create(w, { threads: 1, weightFormat: format, warn: () => {} });
        const ref = new CpuExecutor(roundToNativeFormat(g, w, format));
        try {
          const toks = Array.from({ length: 72 }, (_, i) => (i * 37 + 11) % w.config.vocabSize);
          const a = x.createSession(128), b = ref.createSession(128);
          let worst = 0, scale = 0;
          const step = async (rows: number[]) => {
            const la = (await a.forward({ kind: "tokens", tokens: rows }, { logits: "all" })).logits!;
            const lb = (await b.forward({ kind: "tokens", tokens: rows }, { logits: "all" })).logits!;
            worst = Math.max(worst, maxAbsDiff(la, lb));
            for (const v of lb) scale = Math.max(scale, Math.abs(v));
          };
          await step(toks.slice(0, 40));
          for (let i = 40; i < 72; i++) await step([toks[i]]);
          const rel = worst / scale;
          assert(
            rel < tolerance[format],
            `${name} ${format}: logits ${worst} off, ${rel} of their scale ${scale}`,
          );
        } finally {
          x.dispose();
        }
      }
    }
  },
});

Deno.test({
  ...opts,
  name:
    "native executor: a batched step gives each session its own forward's logits (ragged pruned caches, a prefill)",
  fn: async () => {
    const w = fixtureWeights("llama3"), c = w.config;
    const x = await NativeExecutor.create(w, { threads: 1 });
    try {
      const toks = (n: number, seed: number) =>
        Array.from({ length: n }, (_, i) => (i * seed + 3) % c.vocabSize);
      // s1: 30 prompt rows pruned to different positions per KV head; s2: 12 rows; s3: empty (its prefill batches).
      const s1 = x.createSession(128), s2 = x.createSession(128), s3 = x.createSession(128);
      await s1.forward({ kind: "tokens", tokens: toks(30, 7) });
      const kept = Array.from(
        { length: c.nLayers },
        (_, l) =>
          Array.from(
            { length: c.nKvHeads },
            (_, g) => Int32Array.from({ length: 8 + g + l }, (_, i) => i * 2 + g),
          ),
      );
      await s1.keepPositions(kept, 30);
      await s2.forward({ kind: "tokens", tokens: toks(12, 11) });
      const alone = [await s1.clone(), await s2.clone(), await s3.clone()];
      const inputs = [[5], [7], toks(9, 13)];
      const want: ("last" | "all")[] = ["last", "last", "all"];
      for (let step = 0; step < 4; step++) {
        const batch = await x.forwardBatch!([s1, s2, s3].map((session, i) => ({
          session,
          input: { kind: "tokens", tokens: inputs[i] },
          options: { logits: want[i] },
        })));
        for (let i = 0; i < 3; i++) {
          const solo = await alone[i].forward({ kind: "tokens", tokens: inputs[i] }, { logits: want[i] });
          const d = maxAbsDiff(batch[i].logits!, solo.logits!);
          assert(d <= 1e-4, `step ${step}, session ${i}: batched logits ${d} from its own forward`);
        }
        // Next step: every session decodes one token (the argmax of its last logits).
        for (let i = 0; i < 3; i++) {
          const l = await [s1, s2, s3][i].currentLogits();
          inputs[i] = [l.indexOf(Math.max(...l))];
          want[i] = "last";
        }
      }
      assertEquals(await s1.positions(), await alone[0].positions(), "the pruned session appended in place");
      assertEquals([s1, s2, s3].map((s) => s.nextPosition), alone.map((s) => s.nextPosition));
      await assertRejects(
        () =>
          x.forwardBatch!([{ session: s1, input: { kind: "tokens", tokens: [1] } }, {
            session: s1,
            input: { kind: "tokens", tokens: [2] },
          }]),
        "twice",
      );
    } finally {
      x.dispose();
    }
  },
});
