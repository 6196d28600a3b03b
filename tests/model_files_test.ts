/** Model directories: every fixture architecture and dtype loads and runs; malformed files fail clearly. */
import { parseModelConfig, ropeInverseFrequencies } from "../core/config.ts";
import { CpuExecutor } from "../core/cpu/executor.ts";
import { decodeToF32, encodeBf16, encodeF16, encodeSafetensors } from "../core/safetensors.ts";
import { testModelConfig, testModelFiles, writeTestModel } from "../fixtures/test_models.ts";
import { loadModelDir } from "../io/model_dir.ts";
import {
  assert,
  assertClose,
  assertEquals,
  assertLeft,
  assertRejects,
  randomModel,
  right,
} from "./helpers.ts";

/** A parsed safetensors header, edited by the malformed-file cases. */
type Header = Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>;

const tmp = await Deno.makeTempDir({ prefix: "judgeq-models-" });

for (const shape of ["llama3", "qwen2", "mistral"] as const) {
  Deno.test(`fixture ${shape}: loads, weights equal the dtype-rounded originals, runs`, async () => {
    const dir = await writeTestModel(shape, `${tmp}/${shape}`);
    const m = await loadModelDir(dir);
    const original = randomModel(shape);
    const round = shape === "llama3"
      ? (a: Float32Array) => decodeToF32("BF16", encodeBf16(a))
      : shape === "qwen2"
      ? (a: Float32Array) => decodeToF32("F16", encodeF16(a))
      : (a: Float32Array) => a;
    assertEquals(
      Array.from(m.weights.layers[1].wk.slice(0, 50)),
      Array.from(round(original.layers[1].wk).slice(0, 50)),
    );
    assertEquals(m.config.attentionBias, shape === "qwen2");
    assertEquals(m.config.tiedEmbeddings, shape === "qwen2");
    assertEquals(m.config.ropeScaling.type, shape === "llama3" ? "llama3" : "default");
    const s = new CpuExecutor(m.weights).createSession(64);
    const r = await s.forward({ kind: "tokens", tokens: [1, 5, 9, 200, 300] }, { logits: "all" });
    assert(r.logits!.every(Number.isFinite), "finite logits");
    // The float32 original gives nearly the same logits: the dtype conversion is right.
    const ref = await new CpuExecutor(original).createSession(64).forward({
      kind: "tokens",
      tokens: [1, 5, 9, 200, 300],
    }, { logits: "all" });
    assertClose(r.logits!, ref.logits!, shape === "mistral" ? 0 : 0.5, "vs float32 original");
  });
}

Deno.test("llama3 RoPE scaling equals the published formula", () => {
  const c = right(parseModelConfig(testModelConfig("llama3")));
  const inv = ropeInverseFrequencies(c);
  const s = { factor: 8, low: 1, high: 4, orig: 64 };
  for (let i = 0; i < c.headDim / 2; i++) {
    const f = 1 / Math.pow(c.ropeTheta, (2 * i) / c.headDim);
    const wavelen = 2 * Math.PI / f;
    let want: number;
    if (wavelen < s.orig / s.high) want = f;
    else if (wavelen > s.orig / s.low) want = f / s.factor;
    else {
      const smooth = (s.orig / wavelen - s.low) / (s.high - s.low);
      want = (1 - smooth) * f / s.factor + smooth * f;
    }
    assert(Math.abs(inv[i] - want) <= 1e-12 * Math.max(1, want), `freq ${i}`);
  }
});

Deno.test("sharded safetensors with an index load like one file", async () => {
  const dir = await writeTestModel("mistral", `${tmp}/sharded`);
  const whole = await loadModelDir(dir);
  const bytes = await Deno.readFile(`${dir}/model.safetensors`);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const names = Object.keys(header).filter((k) => k !== "__metadata__").sort();
  const shards: Record<string, string> = {};
  for (const [i, part] of [names.slice(0, 7), names.slice(7)].entries()) {
    const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Uint8Array }> = {};
    for (const name of part) {
      const [b, e] = header[name].data_offsets;
      tensors[name] = { dtype: "F32", shape: header[name].shape, data: bytes.slice(8 + n + b, 8 + n + e) };
      shards[name] = `model-0000${i + 1}-of-00002.safetensors`;
    }
    await Deno.writeFile(`${dir}/model-0000${i + 1}-of-00002.safetensors`, encodeSafetensors(tensors));
  }
  await Deno.remove(`${dir}/model.safetensors`);
  await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify({ weight_map: shards }));
  const sharded = await loadModelDir(dir);
  assertEquals(Array.from(sharded.weights.layers[1].wDown), Array.from(whole.weights.layers[1].wDown));
  // An index naming a shard that is not there.
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ weight_map: { ...shards, "model.norm.weight": "gone.safetensors" } }),
  );
  await assertRejects(() => loadModelDir(dir), "gone.safetensors", "missing");
});

/** A mistral-shaped directory whose model.safetensors (or config) is replaced by a broken one. */
async function brokenDir(
  name: string,
  edit: (bytes: Uint8Array, header: Header, n: number) => Uint8Array,
  config?: Record<string, unknown>,
) {
  const dir = `${tmp}/broken-${name}`;
  await writeTestModel("mistral", dir);
  const bytes = testModelFiles("mistral")["model.safetensors"] as Uint8Array;
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  await Deno.writeFile(`${dir}/model.safetensors`, edit(bytes, header, n));
  if (config) await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  return dir;
}

/** Re-encodes a file image with an edited JSON header over the same data block. */
function withHeader(bytes: Uint8Array, n: number, header: unknown): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + bytes.length - 8 - n);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(bytes.subarray(8 + n), 8 + json.length);
  return out;
}

const cfg = testModelConfig("mistral");
const malformed: [
  string,
  (b: Uint8Array, h: Header, n: number) => Uint8Array,
  string[],
  Record<string, unknown>?,
][] = [
  ["tiny", () => new Uint8Array(5), ["model.safetensors", "shorter than the 8-byte"]],
  ["truncated-data", (b) => b.subarray(0, b.length - 100), ["truncated", "data block"]],
  ["header-past-end", (b) => {
    const c = b.slice(0, 1000);
    new DataView(c.buffer).setBigUint64(0, 5000n, true);
    return c;
  }, ["runs past the end"]],
  ["huge-header", (b) => {
    const c = b.slice();
    new DataView(c.buffer).setBigUint64(0, 1n << 40n, true);
    return c;
  }, ["exceeds"]],
  ["not-json", (b, _h, n) => {
    const c = b.slice();
    c[8] = "x".charCodeAt(0);
    return c.subarray(0, 8 + n + (b.length - 8 - n));
  }, ["not valid JSON"]],
  [
    "bad-dtype",
    (b, h, n) => withHeader(b, n, { ...h, "model.norm.weight": { ...h["model.norm.weight"], dtype: "I8" } }),
    ["model.norm.weight", "unsupported dtype"],
  ],
  [
    "shape-bytes",
    (b, h, n) => withHeader(b, n, { ...h, "model.norm.weight": { ...h["model.norm.weight"], shape: [65] } }),
    ["model.norm.weight", "needs 260 bytes"],
  ],
  ["overlap", (b, h, n) => {
    const first = h["model.layers.0.input_layernorm.weight"];
    return withHeader(b, n, {
      ...h,
      "model.norm.weight": { ...h["model.norm.weight"], data_offsets: first.data_offsets },
    });
  }, ["overlaps"]],
  ["missing-tensor", (b, h, n) => {
    const { ["model.layers.1.mlp.up_proj.weight"]: _gone, ...rest } = h;
    return withHeader(b, n, rest);
  }, ["model.layers.1.mlp.up_proj.weight", "missing"]],
  ["wrong-shape", (b, h, n) => {
    const t = h["model.layers.0.self_attn.k_proj.weight"];
    return withHeader(b, n, {
      ...h,
      "model.layers.0.self_attn.k_proj.weight": { ...t, shape: [t.shape[1], t.shape[0]] },
    });
  }, ["model.layers.0.self_attn.k_proj.weight", "the config needs"]],
  ["architecture", (b) => b, ["config.architectures", "unsupported architecture"], {
    ...cfg,
    architectures: ["GPT2LMHeadModel"],
  }],
  ["hidden-size", (b) => b, ["config.hidden_size"], { ...cfg, hidden_size: "64" }],
  ["rope-scaling", (b) => b, ["config.rope_scaling", "unsupported rope scaling"], {
    ...cfg,
    rope_scaling: { rope_type: "yarn", factor: 2 },
  }],
  ["kv-heads", (b) => b, ["config.num_key_value_heads"], { ...cfg, num_key_value_heads: 3 }],
];
for (const [name, edit, fragments, config] of malformed) {
  Deno.test(`malformed model (${name}) gives a specific error`, async () => {
    const dir = await brokenDir(name, edit, config);
    await assertRejects(() => loadModelDir(dir), ...fragments);
  });
}

Deno.test("missing or broken config.json and tokenizer.json are named", async () => {
  const dir = await writeTestModel("qwen2", `${tmp}/noconfig`);
  await Deno.remove(`${dir}/tokenizer.json`);
  await assertRejects(() => loadModelDir(dir), "tokenizer.json", "cannot read");
  await Deno.writeTextFile(`${dir}/config.json`, "{ not json");
  await assertRejects(() => loadModelDir(dir), "config.json", "not valid JSON");
  await Deno.remove(`${dir}/config.json`);
  await assertRejects(() => loadModelDir(dir), "config.json", "cannot read");
  assertLeft(parseModelConfig({ architectures: [] }), "config.architectures");
});
