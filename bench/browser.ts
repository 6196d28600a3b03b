/**
 * The browser benchmark: this project's fast CPU executor (the bundle, in a dedicated worker) against
 * @wllama/wllama 3.8.1 (llama.cpp compiled to WebAssembly, on the page) in Debian's Chromium, driven by
 * puppeteer-core, on a cross-origin-isolated page (threads need SharedArrayBuffer). Same weights (the
 * random 76M llama, `fixtures/test_models.ts` shape llama76m: safetensors for ours, a GGUF written by the
 * project's converter for wllama, F32 and Q8_0) and the same prompt ids (BOS + story text in the model's tokenizer):
 * prefill of the prompt, then greedy decode. Rounds interleave the configurations (this machine is shared);
 * each figure is a median with its min and max, each ratio ours / wllama per round, then its median.
 *
 *   deno run -A bench/browser.ts [--rounds 3] [--threads 1,2] [--prompt 512] [--decode 64]
 *     [--formats f32,int8,q8_0|none] [--gguf f32,q8_0] [--out results/browser_bench.json]
 *
 * wllama is installed on first use into the gitignored .cache/wllama/ (npm). The GGUF writer is a
 * parameter (`GgufWriter`; default core/gguf's, through bench/gguf.ts). Ratios pair our f32 with wllama's
 * F32, our q8_0 with its Q8_0 (the same blocks: both quantized by ggml's rule), and our int8 (a scale per
 * row) with its Q8_0 (a scale per block of 32): same source weights, each side's own 8-bit rounding of them.
 */
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { createTokenizer } from "../core/tokenizer.ts";
import type { ModelWeights } from "../core/weights.ts";
import { fixtureWeights } from "../fixtures/testing.ts";
import { writeTestModel } from "../fixtures/test_models.ts";
import { parseFlags, usage, UsageError } from "../io/flags.ts";
import { buildBundle } from "../web/build.ts";
import { ISOLATION } from "../web/serve_static.ts";
import { encodeGgufF32, vocabFromTokenizerJson } from "./gguf.ts";
import { median } from "../core/percentile.ts";

const WLLAMA_VERSION = "3.8.1";
const WLLAMA_DIR = new URL("../.cache/wllama/", import.meta.url).pathname;
const SHAPE = "llama76m";

/** GGUF tensor types wllama runs here. */
export type GgufType = "f32" | "q8_0";

/** Writes a GGUF of the weights in a tensor type. */
export type GgufWriter = (w: ModelWeights, tokenizerJson: unknown, type: GgufType) => Uint8Array;
export const projectGguf: GgufWriter = (w, tj, tensorType) =>
  encodeGgufF32(w, vocabFromTokenizerJson(tj, w.config.vocabSize), { tensorType });

/**
 * A story, tokenized with BOS and repeated (with a counter) up to n ids, and the text of those ids after
 * BOS: wllama takes text (its glue refuses token arrays), which llama.cpp tokenizes itself; the count of
 * its prompt tokens is checked against ours.
 */
function storyIds(
  tokenizerJson: unknown,
  tokenizerConfig: unknown,
  n: number,
): { ids: number[]; text: string } {
  const tok = createTokenizer(tokenizerJson, tokenizerConfig);
  if (tok._tag === "Left") throw tok.left;
  const text = (i: number) =>
    `Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her ` +
    `dog, Max. One day ${
      i === 0 ? "" : `(day ${i}) `
    }they found a big red ball under a tree. Lily threw the ` +
    `ball and Max ran after it. They played all afternoon until the sun went down, then walked home happy. `;
  const ids = tok.right.encode(text(0), { addBos: true });
  for (let i = 1; ids.length < n; i++) ids.push(...tok.right.encode(text(i), { addBos: false }));
  const out = ids.slice(0, n);
  // The GGUF does not ask llama.cpp to add BOS (bench/gguf.ts): the text starts with BOS's own piece, which
  // llama.cpp parses as the special token.
  const added = (tokenizerJson as { added_tokens?: { id: number; content: string }[] }).added_tokens ?? [];
  const bos = added.find((t) => t.id === out[0])?.content;
  if (bos === undefined) throw new Error(`BOS id ${out[0]} is not among tokenizer.json's added tokens`);
  return { ids: out, text: bos + tok.right.decode(out.slice(1)) };
}

async function ensureWllama(log: (m: string) => void): Promise<string> {
  const esm = `${WLLAMA_DIR}node_modules/@wllama/wllama/esm/`;
  try {
    await Deno.stat(`${esm}index.js`);
    return esm;
  } catch {
    // not installed yet
  }
  log(`installing @wllama/wllama@${WLLAMA_VERSION} into .cache/wllama/ ...`);
  await Deno.mkdir(WLLAMA_DIR, { recursive: true });
  const out = await new Deno.Command("npm", {
    args: ["i", "-E", "--no-audit", "--no-fund", `@wllama/wllama@${WLLAMA_VERSION}`, "--prefix", WLLAMA_DIR],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`npm install failed: ${new TextDecoder().decode(out.stderr).slice(-400)}`);
  }
  return esm;
}

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  mjs: "text/javascript; charset=utf-8",
  json: "application/json",
  wasm: "application/wasm",
};

/** Serves the page, the bundle, the model directory, the GGUF files and wllama, cross-origin isolated. */
function serve(routes: Record<string, string>) {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    const headers = { ...ISOLATION, "cache-control": "no-store" };
    const prefix = Object.keys(routes).find((p) => path.startsWith(p));
    if (!prefix || path.split("/").includes("..")) return new Response("not found", { status: 404, headers });
    const at = routes[prefix] + path.slice(prefix.length);
    const file = at.endsWith("/") ? at + "index.html" : at;
    try {
      const body = await Deno.readFile(file);
      const type = TYPES[file.split(".").pop()!] ?? "application/octet-stream";
      return new Response(body, { headers: { ...headers, "content-type": type } });
    } catch {
      return new Response("not found", { status: 404, headers });
    }
  });
}

interface Run {
  prefillTokPerS: number;
  decodeTokPerS: number;
}

const label = (g: GgufType) => (g === "f32" ? "F32" : "Q8_0");
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;
const stats = (xs: number[]) => ({
  median: round(median(xs)),
  min: round(Math.min(...xs)),
  max: round(Math.max(...xs)),
});

export interface BrowserBenchOptions {
  rounds: number;
  threads: number[];
  prompt: number;
  decode: number;
  formats: ("f32" | "int8" | "q8_0")[];
  ggufTypes: GgufType[];
  chromium: string;
  gguf?: GgufWriter;
  log?: (m: string) => void;
}

export async function benchBrowser(o: BrowserBenchOptions) {
  const log = o.log ?? ((m: string) => console.error(m));
  const tmp = await Deno.makeTempDir({ prefix: "judgeq-browser-bench-" });
  const modelDir = await writeTestModel(SHAPE, `${tmp}/model`);
  const tokenizerJson = JSON.parse(await Deno.readTextFile(`${modelDir}/tokenizer.json`));
  const tokenizerConfig = JSON.parse(await Deno.readTextFile(`${modelDir}/tokenizer_config.json`));
  const weights = fixtureWeights(SHAPE);
  await Deno.mkdir(`${tmp}/gguf`);
  for (const t of o.ggufTypes) {
    await Deno.writeFile(`${tmp}/gguf/${t}.gguf`, (o.gguf ?? projectGguf)(weights, tokenizerJson, t));
  }
  const { ids, text } = storyIds(tokenizerJson, tokenizerConfig, o.prompt);
  await buildBundle(`${tmp}/dist`);
  const wllamaEsm = await ensureWllama(log);
  const page = new URL("./browser/", import.meta.url).pathname;
  const server = serve({
    "/page/": page,
    "/dist/": `${tmp}/dist/`,
    "/model/": `${modelDir}/`,
    "/gguf/": `${tmp}/gguf/`,
    "/wllama/": wllamaEsm,
  });
  let browser: Browser | null = null;
  try {
    browser = await puppeteer.launch({ executablePath: o.chromium, headless: true, args: ["--no-sandbox"] });
    const tab: Page = await browser.newPage();
    const errors: string[] = [];
    tab.on("pageerror", (e) => errors.push(String(e)));
    if (Deno.env.get("BENCH_BROWSER_CONSOLE")) tab.on("console", (m) => log(`page: ${m.text()}`));
    await tab.goto(
      `http://127.0.0.1:${server.addr.port}/page/${Deno.env.get("BENCH_BROWSER_CONSOLE") ? "?log" : ""}`,
    );
    await tab.waitForFunction(() => "benchPage" in globalThis, { timeout: 60_000 }).catch(() => {
      throw new Error(`the page did not load: ${errors.join("; ")}`);
    });
    const isolated = await tab.evaluate(() =>
      (globalThis as unknown as { benchPage: { isolated: boolean } }).benchPage.isolated
    );
    if (!isolated) throw new Error("the page is not cross-origin isolated");
    const configs = o.threads.flatMap((t) => [
      ...o.formats.map((f) => ({ name: `ours ${f} t${t}`, side: "ours", threads: t, weights: f })),
      ...o.ggufTypes.map((g) => ({
        name: `wllama ${label(g)} t${t}`,
        side: "wllama",
        threads: t,
        weights: g,
      })),
    ]);
    const runs = new Map<string, Run[]>(configs.map((c) => [c.name, []]));
    const notes: Record<string, unknown> = {};
    for (let r = -1; r < o.rounds; r++) { // round -1: warm-up (loads, compiles), not counted
      for (const c of configs) {
        const res = await tab.evaluate(
          (side, args) => {
            const p = (globalThis as unknown as {
              benchPage: Record<string, (a: unknown) => Promise<Record<string, unknown>>>;
            }).benchPage;
            return p[side](args);
          },
          c.side,
          c.side === "ours" ? { threads: c.threads, weights: c.weights, ids, decode: o.decode } : {
            threads: c.threads,
            gguf: `/gguf/${c.weights}.gguf`,
            text,
            promptTokens: ids.length,
            decode: o.decode,
          },
        );
        if (res.error) throw new Error(`${c.name}: ${res.error}`);
        let run: Run;
        if (c.side === "ours") {
          run = {
            prefillTokPerS: ids.length / ((res.prefillMs as number) / 1000),
            decodeTokPerS: (res.decoded as number) / ((res.decodeMs as number) / 1000),
          };
          notes[c.name] = res.description;
        } else {
          const t = res.timings as {
            prompt_n: number;
            prompt_per_second: number;
            predicted_n: number;
            predicted_per_second: number;
          };
          if (t.prompt_n !== ids.length || t.predicted_n !== o.decode) {
            throw new Error(
              `${c.name}: wllama ran ${t.prompt_n} prompt and ${t.predicted_n} generated tokens`,
            );
          }
          run = { prefillTokPerS: t.prompt_per_second, decodeTokPerS: t.predicted_per_second };
          notes[c.name] =
            `wllama ${WLLAMA_VERSION}, ${res.threads} thread(s), multithread build: ${res.multithread}`;
        }
        if (r >= 0) runs.get(c.name)!.push(run);
        log(
          `round ${r}: ${c.name}: prefill ${run.prefillTokPerS.toFixed(1)} tok/s, decode ${
            run.decodeTokPerS.toFixed(1)
          } tok/s`,
        );
      }
    }
    const out: Record<string, unknown> = {};
    for (const c of configs) {
      const rs = runs.get(c.name)!;
      out[c.name] = {
        what: notes[c.name],
        prefillTokPerS: stats(rs.map((x) => x.prefillTokPerS)),
        decodeTokPerS: stats(rs.map((x) => x.decodeTokPerS)),
      };
    }
    const ratios: Record<string, unknown> = {};
    const pairs: [string, GgufType][] = [["f32", "f32"], ["q8_0", "q8_0"], ["int8", "q8_0"], ["int8", "f32"]];
    for (const t of o.threads) {
      for (const [f, g] of pairs) {
        const ours = runs.get(`ours ${f} t${t}`), peer = runs.get(`wllama ${label(g)} t${t}`);
        if (!ours || !peer) continue;
        ratios[`ours ${f} / wllama ${label(g)}, t${t}`] = {
          prefill: stats(ours.map((x, i) => x.prefillTokPerS / peer[i].prefillTokPerS)),
          decode: stats(ours.map((x, i) => x.decodeTokPerS / peer[i].decodeTokPerS)),
        };
      }
    }
    return {
      model: `${SHAPE} (random weights)`,
      browser: await browser.version(),
      prompt: {
        tokens: ids.length,
        what:
          "BOS + story text in the model's tokenizer (ours: the ids; wllama: their text, which llama.cpp " +
          "tokenizes to the same count, checked)",
      },
      decode: o.decode,
      rounds: o.rounds,
      loadAverage: Deno.loadavg()[0],
      configs: out,
      ratios,
    };
  } finally {
    await browser?.close();
    await server.shutdown();
    await Deno.remove(tmp, { recursive: true });
  }
}

const SPEC = {
  rounds: { kind: "int", help: "interleaved rounds after a warm-up (default 3)" },
  threads: { kind: "string", help: "thread counts, comma-separated (default 1,2)" },
  prompt: { kind: "int", help: "prompt tokens (default 512)" },
  decode: { kind: "int", help: "greedy tokens decoded (default 64)" },
  formats: {
    kind: "string",
    help: "this executor's weight formats: f32, int8, q8_0, or none to run wllama alone (default f32,int8)",
  },
  gguf: { kind: "string", help: "wllama's GGUF tensor types (default f32,q8_0)" },
  out: { kind: "string", help: "also write the JSON here (default results/browser_bench.json)" },
  help: { kind: "boolean", help: "this help" },
} as const;

if (import.meta.main) {
  try {
    const f = parseFlags(Deno.args, SPEC);
    if (f.help) {
      console.log(usage("deno run -A bench/browser.ts", SPEC));
      Deno.exit(0);
    }
    const chromium = Deno.env.get("CHROMIUM_PATH") ?? "/usr/bin/chromium";
    try {
      Deno.statSync(chromium);
    } catch {
      throw new UsageError(`no Chromium at ${chromium} (install Debian's chromium, or set CHROMIUM_PATH)`);
    }
    const threads = ((f.threads as string | undefined) ?? "1,2").split(",").map(Number);
    if (!threads.every((t) => Number.isInteger(t) && t >= 1 && t <= 64)) {
      throw new UsageError(`--threads: expected whole numbers from 1 to 64, got '${f.threads}'`);
    }
    // "none": wllama alone (the peer measured by itself, as the guide asks once per comparison).
    const formats = f.formats === "none" ? [] : ((f.formats as string | undefined) ?? "f32,int8").split(",");
    if (!formats.every((x) => x === "f32" || x === "int8" || x === "q8_0")) {
      throw new UsageError(`--formats: expected f32, int8 and/or q8_0, or none, got '${f.formats}'`);
    }
    const ggufTypes = ((f.gguf as string | undefined) ?? "f32,q8_0").split(",");
    if (!ggufTypes.every((x) => x === "f32" || x === "q8_0")) {
      throw new UsageError(`--gguf: expected f32 and/or q8_0, got '${f.gguf}'`);
    }
    const positive = (name: string, v: unknown, d: number) => {
      if (v === undefined) return d;
      if (!(typeof v === "number" && v >= 1)) throw new UsageError(`--${name}: expected a positive integer`);
      return v;
    };
    const result = await benchBrowser({
      rounds: positive("rounds", f.rounds, 3),
      threads,
      prompt: positive("prompt", f.prompt, 512),
      decode: positive("decode", f.decode, 64),
      formats: formats as ("f32" | "int8" | "q8_0")[],
      ggufTypes: ggufTypes as GgufType[],
      chromium,
    });
    const json = JSON.stringify(result, null, 2);
    await Deno.writeTextFile((f.out as string | undefined) ?? "results/browser_bench.json", json + "\n");
    console.log(json);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
}
