// The fast CPU executor's side of the browser benchmark, in a dedicated worker (the pool's calling thread
// waits with Atomics.wait, which a page's main thread may not). Messages: { modelUrl, threads, weights,
// ids, decode } -> { prefillMs, decodeMs, decoded, description } or { error }.
const { loadModelFromUrl } = await import(new URL("/dist/judgeq.js", location.href).href);
const models = new Map();

self.onmessage = async (e) => {
  const { modelUrl, threads, weights, ids, decode } = e.data;
  try {
    const key = `${threads}/${weights}`;
    if (!models.has(key)) {
      models.set(
        key,
        await loadModelFromUrl(modelUrl, { executor: "wasm", threads, weights, adapter: null }),
      );
    }
    const ex = models.get(key).executor;
    const s = ex.createSession(ids.length + decode + 1);
    try {
      let t = performance.now();
      await s.forward({ kind: "tokens", tokens: ids }, { logits: "last" });
      const prefillMs = performance.now() - t;
      t = performance.now();
      const r = await s.decode({
        maxTokens: decode,
        sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
        stopTokenIds: [],
      });
      // decode() samples maxTokens tokens and runs all but the last through the model.
      self.postMessage({
        prefillMs,
        decodeMs: performance.now() - t,
        decoded: r.tokens.length,
        description: ex.description,
      });
    } finally {
      s.dispose();
    }
  } catch (err) {
    self.postMessage({ error: String(err?.stack ?? err) });
  }
};
self.postMessage({ ready: true });
