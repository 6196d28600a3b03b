/**
 * GGUF files without llama.cpp: the writer's output read back (config, weights, tokenizer ids equal the
 * Hugging Face originals), the quantized tensors kept as stored, the embedded adapter bound to the F32
 * file, and malformed files refused with one-line errors naming what is wrong.
 */
import { CpuExecutor } from "../core/cpu/executor.ts";
import { GGML_TYPE } from "../core/gguf/ggml_types.ts";
import { syntheticVocab, vocabFromTokenizerJson } from "../core/gguf/hf_vocab.ts";
import { interleaveRopeRows, writeGguf } from "../core/gguf/model_writer.ts";
import { dequantize, quantizeQ8_0 } from "../core/gguf/quants.ts";
import { parseGguf, parseGgufHeader, tensorBytes } from "../core/gguf/reader.ts";
import type { GgufValue } from "../core/gguf/values.ts";
import { encodeGguf } from "../core/gguf/writer.ts";
import { createTokenizer } from "../core/tokenizer.ts";
import { decodeToF32, encodeBf16, encodeF16 } from "../core/safetensors.ts";
import type { ModelWeights } from "../core/weights.ts";
import { fixtureWeights } from "../fixtures/testing.ts";
import { adapterFromBytes, loadModelFromBytes, loadModelFromUrl, parseGgufBytes } from "../io/from_bytes.ts";
import { EMBEDDED_MODEL_DIR, loadModelDir } from "../io/model_dir.ts";
import { assert, assertEquals, assertLeft, assertRejects, right } from "./helpers.ts";

const hf = await loadModelDir(EMBEDDED_MODEL_DIR);
const storiesVocab = vocabFromTokenizerJson(hf.tokenizerJson, hf.config.vocabSize);
const stories = (tensorType: "f32" | "f16" | "q8_0" | "q4_0") =>
  writeGguf(hf.weights, storiesVocab, { tensorType, addBos: true, unkId: 0 });

const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((x, i) => x === b[i]);

function allMatrices(w: ModelWeights): [string, Float32Array][] {
  const out: [string, Float32Array][] = [["model.embed_tokens.weight", w.embed]];
  w.layers.forEach((l, i) => {
    const p = `model.layers.${i}.`;
    out.push(
      [p + "self_attn.q_proj.weight", l.wq],
      [p + "self_attn.k_proj.weight", l.wk],
      [p + "self_attn.v_proj.weight", l.wv],
      [p + "self_attn.o_proj.weight", l.wo],
      [p + "mlp.gate_proj.weight", l.wGate],
      [p + "mlp.up_proj.weight", l.wUp],
      [p + "mlp.down_proj.weight", l.wDown],
    );
  });
  if (w.lmHead !== w.embed) out.push(["lm_head.weight", w.lmHead]);
  return out;
}

Deno.test("gguf F32 stories260K: config, weights and tokenizer ids equal the HF directory's", async () => {
  const bytes = stories("f32");
  const g = await parseGgufBytes(bytes, "stories260K.gguf");
  assertEquals(g.config, hf.config);
  assertEquals(g.weights.quantized, undefined, "an F32 file keeps no quantized copy");
  for (const [[name, a], [, b]] of allMatrices(hf.weights).map((m, i) => [m, allMatrices(g.weights)[i]])) {
    assert(same(a, b), `${name} differs`);
  }
  assert(g.weights.lmHead === g.weights.embed, "tied");
  const a = right(createTokenizer(hf.tokenizerJson, hf.tokenizerConfig, 512));
  const b = right(createTokenizer(g.tokenizerJson, g.tokenizerConfig, 512));
  for (const t of ["Once upon a time, Lily  saw\ta cat.\n\n", "héllo 😀 123", "<s></s>", " x ", ""]) {
    assertEquals(b.encode(t), a.encode(t), JSON.stringify(t));
    assertEquals(b.decode(b.encode(t, { addBos: false })), a.decode(a.encode(t, { addBos: false })));
  }
  assertEquals([b.bosId, b.addBosDefault, b.eosIds], [1, true, [2]]);
  // The embedded Judge Q adapter is bound to these weights: it loads on the F32 file.
  const adapter = await adapterFromBytes(
    await Deno.readFile(`${EMBEDDED_MODEL_DIR}judgeq.safetensors`),
    g.weights,
  );
  assert(adapter.softEmbeddings.length > 0);
});

Deno.test("gguf Q8_0 / Q4_0 / F16: quantized bytes kept per matrix, rows in HF order, dequantized = weights", async () => {
  for (
    const [type, main, output] of [["q8_0", GGML_TYPE.Q8_0, GGML_TYPE.Q8_0], [
      "q4_0",
      GGML_TYPE.Q4_0,
      GGML_TYPE.Q8_0,
    ], ["f16", GGML_TYPE.F16, GGML_TYPE.F16]] as const
  ) {
    const g = await parseGgufBytes(stories(type), `s.${type}.gguf`);
    const q = g.weights.quantized!;
    for (const [name, values] of allMatrices(g.weights)) {
      const t = q.get(name);
      assert(t, `${type}: ${name} not kept`);
      const rows = values.length / t.shape[1];
      assertEquals(t.shape[0], rows, name);
      // stories' hidden size 172 is not whole blocks of 32: ffn_down falls back to F16; the tied
      // embedding is the output matrix (Q8_0 in a Q4_0 file).
      const want = name.endsWith("down_proj.weight") ? GGML_TYPE.F16 : name.includes("embed") ? output : main;
      assertEquals(t.ggmlType, want, `${type}: type of ${name}`);
      assert(
        same(dequantize(t.ggmlType, t.bytes, values.length), values),
        `${type}: ${name} bytes vs values`,
      );
    }
    // Row order: quantizing the HF-order original gives the kept bytes (q rows de-interleaved as units).
    if (type === "q8_0") {
      assertEquals(
        Array.from(q.get("model.layers.1.self_attn.q_proj.weight")!.bytes),
        Array.from(quantizeQ8_0(hf.weights.layers[1].wq)),
      );
      assertEquals(
        Array.from(q.get("model.layers.1.self_attn.k_proj.weight")!.bytes),
        Array.from(quantizeQ8_0(hf.weights.layers[1].wk)),
      );
    }
  }
});

for (const shape of ["llama3", "qwen2", "mistral"] as const) {
  Deno.test(`gguf F32 ${shape} fixture: config and logits equal the original's`, async () => {
    const w = fixtureWeights(shape);
    const bytes = writeGguf(w, syntheticVocab(w.config.vocabSize), { tensorType: "f32" });
    const g = await parseGgufBytes(bytes);
    // GGUF has no Mistral architecture: a Mistral model is a llama one (the same computation).
    assertEquals(g.config, {
      ...w.config,
      architecture: shape === "mistral" ? "LlamaForCausalLM" : w.config.architecture,
    });
    const tokens = [1, 5, 9, 200, 300, 77];
    const run = async (m: ModelWeights) =>
      (await new CpuExecutor(m).createSession(16).forward({ kind: "tokens", tokens }, { logits: "all" }))
        .logits!;
    assert(same(await run(g.weights), await run(w)), "logits");
  });
}

/** Re-encodes a file without some metadata keys (a file as llama.cpp's own converter would write it). */
function withoutKeys(bytes: Uint8Array, drop: (k: string) => boolean): Uint8Array {
  const f = right(parseGguf(bytes));
  const meta = [...f.metadata].filter(([k]) => !drop(k)) as [string, GgufValue][];
  const tensors = [...f.tensors.values()].map((t) => ({
    name: t.name,
    dims: t.dims,
    ggmlType: t.ggmlType,
    data: tensorBytes(f, bytes, t),
  }));
  return encodeGguf(meta, tensors);
}

Deno.test("gguf llama3 scaling read from rope_freqs.weight alone (llama.cpp's converter): same logits", async () => {
  const w = fixtureWeights("llama3");
  const bytes = withoutKeys(
    writeGguf(w, syntheticVocab(w.config.vocabSize), { tensorType: "f32" }),
    (k) => k.startsWith("judgeq.rope_scaling"),
  );
  const g = await parseGgufBytes(bytes);
  assertEquals(g.config.ropeScaling.type, "freq_factors");
  const tokens = [3, 50, 400, 2, 90];
  const run = async (m: ModelWeights) =>
    (await new CpuExecutor(m).createSession(16).forward({ kind: "tokens", tokens }, { logits: "all" }))
      .logits!;
  const a = await run(g.weights), b = await run(w);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  assert(d < 1e-4, `logits differ by ${d}`); // the factors are f32, the llama3 formula f64
});

Deno.test("interleaveRopeRows: row p of a head's first half -> 2p, of its second half -> 2p + 1", () => {
  const w = Float32Array.from({ length: 2 * 4 * 3 }, (_, i) => Math.floor(i / 3)); // value = row index
  const out = interleaveRopeRows(w, 2, 4, 3);
  assertEquals(Array.from({ length: 8 }, (_, r) => out[r * 3]), [0, 2, 1, 3, 4, 6, 5, 7]);
});

// ---- malformed files ----

const small = () => {
  const w = fixtureWeights("mistral");
  return writeGguf(w, syntheticVocab(w.config.vocabSize), { tensorType: "q8_0" });
};

Deno.test("gguf malformed: each a one-line error naming what is wrong", async () => {
  const good = small();
  const check = (bytes: Uint8Array, ...fragments: string[]) => {
    const e = assertLeft(parseGguf(bytes, "bad.gguf"), ...fragments);
    assert(!e.message.includes("\n"), `one line: ${e.message}`);
    assertEquals(e.kind, "invalid_model_file");
  };
  check(good.subarray(0, 3), "bad.gguf", "truncated");
  check(good.subarray(0, 200), "bad.gguf", "truncated");
  check(good.subarray(0, good.length - 100), "runs past the end of the file");
  const magic = good.slice();
  magic.set([0x47, 0x47, 0x4d, 0x4c]);
  check(magic, "bad magic", "GGML");
  const version = good.slice();
  new DataView(version.buffer).setUint32(4, 1, true);
  check(version, "unsupported GGUF version 1");
  new DataView(version.buffer).setUint32(4, 3, false); // bytes 00 00 00 03
  check(version, "big-endian");
  // A metadata array claiming 2^40 items: refused from its count, nothing allocated.
  const huge = encodeGguf([["x.array", { type: "array", itemType: "u32", value: [1, 2, 3] }]], []);
  // Header 24 bytes, key (8 + 7), value type 4, item type 4: the count is at 47.
  new DataView(huge.buffer).setBigUint64(47, 2n ** 40n, true);
  check(huge, "x.array", "item count 1099511627776 cannot fit");
  const strings = encodeGguf([["s", { type: "array", itemType: "string", value: ["a"] }]], []);
  new DataView(strings.buffer).setBigUint64(24 + 9 + 8, 2n ** 40n, true);
  check(strings, "s:", "cannot fit");
  // Tensor type ids: out of range, and a real ggml type this runtime does not read.
  // Two F32 tensors "a" and "b" of 8 values: a's info is at 24 (name 8 + 1, n_dims 4, dim 8), its type
  // at 45 and its offset at 49.
  const two = encodeGguf([], [
    { name: "a", dims: [8], ggmlType: GGML_TYPE.F32, data: new Uint8Array(32) },
    { name: "b", dims: [8], ggmlType: GGML_TYPE.F32, data: new Uint8Array(32) },
  ]);
  assertEquals(right(parseGguf(two)).tensors.get("b")!.offset, 32);
  const edit = (f: (v: DataView) => void) => {
    const b = two.slice();
    f(new DataView(b.buffer));
    return b;
  };
  check(edit((v) => v.setUint32(45, 99, true)), "a:", "type id 99 is not a ggml type");
  check(edit((v) => v.setUint32(45, 13, true)), "a:", "Q5_K", "not supported");
  check(edit((v) => v.setBigUint64(49, 64n, true)), "a:", "runs past the end");
  check(edit((v) => v.setBigUint64(49, 2n ** 62n, true)), "a:", "past the end");
  check(edit((v) => v.setBigUint64(49, 33n, true)), "a:", "not a multiple of the alignment");
  check(edit((v) => v.setBigUint64(49, 32n, true)), "overlaps");
  check(edit((v) => v.setBigUint64(37, 2n ** 40n, true)), "a:", "cannot fit");
  check(edit((v) => v.setUint32(33, 5, true)), "a:", "5 dimensions");
  // A missing key and a wrong tensor shape are named too (config / weights checks).
  const noLayers = withoutKeys(good, (k) => k === "llama.block_count");
  await assertRejects(() => parseGgufBytes(noLayers), "llama.block_count");
  const header = right(parseGgufHeader(good.subarray(0, 64), good.length));
  assert(!header.complete && header.needBytes > 64, "a short prefix asks for more bytes");
});

Deno.test("gguf: loadModelFromUrl fetches a .gguf URL whole (adapter by URL beside it); loadModelFromBytes({ gguf })", async () => {
  const file = stories("q8_0");
  const adapter = await Deno.readFile(`${EMBEDDED_MODEL_DIR}judgeq.safetensors`);
  const fetched: string[] = [];
  const fetchFake = (input: string | URL | Request) => {
    const url = String(input instanceof Request ? input.url : input);
    fetched.push(url);
    if (url === "https://models.example/s/stories.q8_0.gguf") {
      return Promise.resolve(new Response(file.slice().buffer));
    }
    if (url === "https://models.example/s/a.safetensors") return Promise.resolve(new Response(adapter));
    return Promise.resolve(new Response("no", { status: 404 }));
  };
  const m = await loadModelFromUrl("https://models.example/s/stories.q8_0.gguf", {
    fetch: fetchFake as typeof fetch,
    executor: "cpu",
    warn: () => {},
  });
  assertEquals(fetched, ["https://models.example/s/stories.q8_0.gguf"]);
  assertEquals(m.name, "stories.q8_0");
  assertEquals(
    m.tokenizer.encode("Once upon a time"),
    right(createTokenizer(hf.tokenizerJson, hf.tokenizerConfig, 512)).encode("Once upon a time"),
  );
  // The adapter is bound to the F32 weights: a Q8_0 file's embeddings differ, so it is refused by name.
  await assertRejects(
    () =>
      loadModelFromUrl("https://models.example/s/stories.q8_0.gguf", {
        fetch: fetchFake as typeof fetch,
        adapter: "a.safetensors",
        executor: "cpu",
      }),
    "adapter",
  );
  const f32 = await loadModelFromBytes({ gguf: stories("f32"), adapter, executor: "cpu", warn: () => {} });
  assert(f32.adapter !== null, "the embedded adapter serves the F32 file");
});

Deno.test("gguf BF16 and F16 matrices (as other converters write them) load as their rounded values", async () => {
  const w = fixtureWeights("mistral");
  const f32 = writeGguf(w, syntheticVocab(w.config.vocabSize), { tensorType: "f32" });
  const f = right(parseGguf(f32));
  for (const [type, encode] of [[GGML_TYPE.BF16, encodeBf16], [GGML_TYPE.F16, encodeF16]] as const) {
    const tensors = [...f.tensors.values()].map((t) => {
      const data = tensorBytes(f, f32, t);
      if (t.dims.length !== 2) return { name: t.name, dims: t.dims, ggmlType: t.ggmlType, data };
      return {
        name: t.name,
        dims: t.dims,
        ggmlType: type,
        data: encode(new Float32Array(data.slice().buffer)),
      };
    });
    const g = await parseGgufBytes(encodeGguf([...f.metadata] as [string, GgufValue][], tensors));
    const dtype = type === GGML_TYPE.BF16 ? "BF16" : "F16";
    const round = (a: Float32Array) => decodeToF32(dtype, dtype === "BF16" ? encodeBf16(a) : encodeF16(a));
    assert(same(g.weights.layers[1].wq, round(w.layers[1].wq)), `${dtype} wq`);
    assert(same(g.weights.lmHead, round(w.lmHead)), `${dtype} lm_head`);
    assertEquals(g.weights.quantized!.get("model.layers.0.mlp.up_proj.weight")!.typeName, dtype);
  }
});
