/** Judge Q adapters: an adapter made elsewhere loads, scores and prunes; mismatched or broken ones are refused. */
import { decodeAdapter, encodeAdapter } from "../core/adapter.ts";
import { generateText } from "../core/engine.ts";
import { modelFingerprint } from "../core/fingerprint.ts";
import { encodeSafetensors } from "../core/safetensors.ts";
import { randomSoftTokens } from "../core/soft_tokens.ts";
import { loadModel, maxAdapterBytes, readAdapter } from "../io/runtime.ts";
import { assert, assertEquals, assertLeft, assertRejects, embeddedModel, randomModel } from "./helpers.ts";

const tmp = await Deno.makeTempDir({ prefix: "judgeq-adapter-" });

async function writeAdapter(name: string, bytes: Uint8Array) {
  const path = `${tmp}/${name}.safetensors`;
  await Deno.writeFile(path, bytes);
  return path;
}

Deno.test("an adapter written elsewhere loads, and judgeq prunes with it to the budget", async () => {
  const { weights } = await embeddedModel();
  const soft = randomSoftTokens(weights.embed, 64, 16, 9);
  const fingerprint = await modelFingerprint(weights);
  const path = await writeAdapter(
    "good",
    encodeAdapter({ softEmbeddings: soft, n: 16, dim: 64, fingerprint, info: { steps: "0" } }),
  );
  const model = await loadModel({ executor: "cpu", adapter: path });
  assertEquals(model.adapter!.n, 16);
  assertEquals(model.adapter!.info.steps, "0");
  const prompt =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. ".repeat(3);
  const r = await generateText(model, {
    prompt,
    compression: { method: "judgeq", budget: 20 },
    maxTokens: 8,
  });
  assertEquals(r.plan.steps.map((s) => s.op), [
    "prefill",
    "append_soft",
    "score",
    "select",
    "prune",
    "decode",
  ]);
  for (const heads of r.run.compression.kept) for (const k of heads) assertEquals(k.length, 20);
  assert(
    r.run.compression.kvBytesAfter === (r.run.compression.kvBytesBefore * 20) / r.promptTokens.length,
    "bytes",
  );
  assertEquals(r.outputs[0].tokens.length, 8);
  // The same embeddings given as the ablation's random tokens would be another set: the adapter is used.
  const ablation = await generateText(model, {
    prompt,
    compression: { method: "judgeq", budget: 20, random_soft: true },
    maxTokens: 8,
  });
  assert(
    JSON.stringify(ablation.run.compression.kept) !== JSON.stringify(r.run.compression.kept),
    "adapter rows used",
  );
});

Deno.test("adapters for another model, or malformed ones, are refused with a clear error", async () => {
  const { weights } = await embeddedModel();
  const fingerprint = await modelFingerprint(weights);
  const other = randomModel("mistral");
  const foreign = encodeAdapter({
    softEmbeddings: new Float32Array(64 * 4),
    n: 4,
    dim: 64,
    fingerprint: await modelFingerprint(other),
    info: {},
  });
  await assertRejects(
    async () => readAdapter(await writeAdapter("foreign", foreign), weights),
    "fingerprint mismatch",
  );
  const narrow = encodeAdapter({
    softEmbeddings: new Float32Array(32 * 4),
    n: 4,
    dim: 32,
    fingerprint,
    info: {},
  });
  await assertRejects(async () => readAdapter(await writeAdapter("narrow", narrow), weights), "width 32");
  await assertRejects(() => readAdapter(`${tmp}/absent.safetensors`, weights), "adapter", "cannot read");
  assertLeft(decodeAdapter(new TextEncoder().encode("garbage!garbage")), "header");
  const noFormat = encodeSafetensors({
    soft_embeddings: { dtype: "F32", shape: [1, 64], data: new Float32Array(64) },
  }, {});
  assertLeft(decodeAdapter(noFormat), "format must be judgeq-adapter-v1");
  const noTensor = encodeSafetensors({ other: { dtype: "F32", shape: [1], data: new Float32Array(1) } }, {
    format: "judgeq-adapter-v1",
    model_fingerprint: fingerprint,
  });
  assertLeft(decodeAdapter(noTensor), "missing tensor soft_embeddings");
  const nan = encodeAdapter({
    softEmbeddings: new Float32Array(64).fill(NaN),
    n: 1,
    dim: 64,
    fingerprint,
    info: {},
  });
  assertLeft(decodeAdapter(nan), "NaN");
  const truncated = encodeAdapter({
    softEmbeddings: new Float32Array(64),
    n: 1,
    dim: 64,
    fingerprint,
    info: {},
  });
  assertLeft(decodeAdapter(truncated.subarray(0, truncated.length - 10)), "truncated");
});

Deno.test("adapter round trip keeps embeddings and info", async () => {
  const { weights } = await embeddedModel();
  const soft = randomSoftTokens(weights.embed, 64, 3, 1);
  const fp = await modelFingerprint(weights);
  const back = decodeAdapter(
    encodeAdapter({ softEmbeddings: soft, n: 3, dim: 64, fingerprint: fp, info: { loss: "kl" } }),
  );
  assert(back._tag === "Right");
  assertEquals(Array.from(back.right.softEmbeddings), Array.from(soft));
  assertEquals([back.right.n, back.right.dim, back.right.fingerprint, back.right.info.loss], [
    3,
    64,
    fp,
    "kl",
  ]);
});

Deno.test("adapter files: a FIFO, a directory or an oversized file are refused before reading; one prefix", async () => {
  const { weights } = await embeddedModel();
  // A directory, and (where mkfifo exists) a FIFO: reading either would block start-up or fail oddly.
  await assertRejects(() => readAdapter(tmp, weights), "adapter: ", "a directory, not a regular file");
  if (Deno.build.os !== "windows") {
    const fifo = `${tmp}/fifo.safetensors`;
    const made = await new Deno.Command("mkfifo", { args: [fifo] }).output().catch(() => null);
    if (made?.success) {
      const t0 = performance.now();
      await assertRejects(() => readAdapter(fifo, weights), "a FIFO, not a regular file");
      assert(performance.now() - t0 < 5000, "refused without waiting for a writer");
    }
  }
  // Larger than any adapter for this model can be: refused on its size, not read (a sparse file).
  const big = `${tmp}/big.safetensors`;
  const f = await Deno.open(big, { write: true, create: true });
  await f.truncate(maxAdapterBytes(weights) + 1);
  f.close();
  await assertRejects(() => readAdapter(big, weights), "more than an adapter for this model can be");
  // The safetensors reader's errors carry one "adapter:" prefix, not two.
  const garbage = await writeAdapter("garbage", new TextEncoder().encode("garbage!garbage"));
  const e = await assertRejects(() => readAdapter(garbage, weights), "adapter: ");
  assert(!e.message.includes("adapter: adapter:"), e.message);
});
