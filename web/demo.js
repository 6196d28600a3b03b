// The demo page: loads stories260K and its Judge Q adapter over HTTP with the browser bundle, compresses
// the story with Judge Q and with SnapKV at the same budget, and draws which KV entries each kept.
// The bundle is build output (`deno task bundle`), imported by URL so that checking the sources does
// not need it.
const { generateText, loadModelFromUrl } = await import(new URL("./dist/judgeq.js", import.meta.url).href);

const $ = (sel, root = document) => root.querySelector(sel);
const METHODS = ["judgeq", "snapkv"];
const HEAT = [214, 64, 32]; // the heat colour (kept entries)
const models = new Map();

function load(executor) {
  if (!models.has(executor)) {
    // threads: 1 on the page's main thread (browsers forbid Atomics.wait there).
    models.set(
      executor,
      loadModelFromUrl(new URL("../fixtures/models/stories260K/", location.href), { executor, threads: 1 }),
    );
  }
  return models.get(executor);
}

/** The text of each prompt token (SentencePiece pieces: ▁ is a space, <0x0A> a byte). */
function pieces(model, ids) {
  return ids.map((id, i) => {
    if (i === 0 && id === model.tokenizer.bosId) return "";
    const t = model.tokenizer.idToToken(id) ?? "";
    const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(t);
    return byte ? String.fromCharCode(parseInt(byte[1], 16)) : t.replaceAll("\u2581", " ");
  });
}

function drawGrid(canvas, kept, positions) {
  const rows = kept.flat();
  const cell = Math.max(2, Math.floor(900 / positions));
  canvas.width = positions * cell;
  canvas.height = rows.length * cell;
  const g = canvas.getContext("2d");
  g.fillStyle = "#f4f4f4";
  g.fillRect(0, 0, canvas.width, canvas.height);
  g.fillStyle = `rgb(${HEAT.join(",")})`;
  rows.forEach((row, r) => {
    for (const p of row) g.fillRect(p * cell, r * cell, cell, cell);
  });
  return cell;
}

function shadeText(el, words, kept, row) {
  const rows = kept.flat();
  const share = new Float32Array(words.length);
  for (const [r, positions] of rows.entries()) {
    if (row !== null && r !== row) continue;
    for (const p of positions) share[p] += 1 / (row === null ? rows.length : 1);
  }
  el.replaceChildren(...words.map((w, p) => {
    const s = document.createElement("span");
    s.className = "tok";
    s.textContent = w;
    s.dataset.share = share[p].toFixed(3);
    s.style.background = `rgba(${HEAT.join(",")}, ${(0.85 * share[p]).toFixed(3)})`;
    s.title = `position ${p}: kept by ${(100 * share[p]).toFixed(0)}% of the heads`;
    return s;
  }));
}

export async function run() {
  const status = $("#status");
  const executor = $("#executor").value;
  const budget = Number($("#budget").value);
  status.textContent = `loading the model on ${executor}...`;
  const model = await load(executor);
  const results = {};
  for (const method of METHODS) {
    status.textContent = `${method}: compressing and generating on ${model.executor.kind}...`;
    const t0 = performance.now();
    const r = await generateText(model, {
      prompt: $("#story").value,
      maxTokens: 32,
      compression: { method, budget },
    });
    const ms = performance.now() - t0;
    const c = r.run.compression;
    const root = $(`#${method}`);
    const words = pieces(model, r.promptTokens);
    const cell = drawGrid($("canvas", root), c.kept, r.promptTokens.length);
    shadeText($(".text", root), words, c.kept, null);
    $("canvas", root).onclick = (e) => {
      const rect = e.target.getBoundingClientRect();
      const row = Math.floor(((e.clientY - rect.top) / rect.height) * e.target.height / cell);
      shadeText($(".text", root), words, c.kept, row);
    };
    const saved = c.kvBytesBefore - c.kvBytesAfter;
    $(".stats", root).textContent =
      `${r.promptTokens.length} prompt tokens, ${c.kept[0][0].length} kept per head; ` +
      `KV bytes ${c.kvBytesBefore} -> ${c.kvBytesAfter} (${saved} saved, ${
        (100 * saved / c.kvBytesBefore).toFixed(0)
      }%); ` +
      `${ms.toFixed(0)} ms`;
    $(".continuation", root).textContent = `continuation: ${r.outputs[0].text}`;
    results[method] = {
      text: r.outputs[0].text,
      kept: c.kept,
      kvBytesBefore: c.kvBytesBefore,
      kvBytesAfter: c.kvBytesAfter,
    };
  }
  status.textContent = `done on ${model.executor.kind}`;
  return results;
}

$("#run").onclick = () => run().catch((e) => ($("#status").textContent = `error: ${e.message}`));
const params = new URLSearchParams(location.search);
if (params.get("executor")) $("#executor").value = params.get("executor");
// For tests and the console: window.judgeqDemo.run() resolves to each method's text and kept positions.
globalThis.judgeqDemo = {
  run,
  ready: load($("#executor").value).then(() => ($("#status").textContent = "ready")),
};
if (params.has("autorun")) judgeqDemo.ready.then(run);
