/**
 * The browser build in a real browser (issue 13): Debian's `chromium` driven by puppeteer-core against
 * web/serve_static.ts on 127.0.0.1. The bundle (web/build.ts) loads stories260K and its adapter over
 * HTTP; the demo page compresses a story with Judge Q and SnapKV on the CPU reference, the fast CPU
 * executor (one thread on the page, two in a dedicated worker) and WebGPU (SwiftShader), and each gives
 * Deno's greedy text and kept positions; every WGSL module compiled there has no error; a screenshot of
 * the page shows the heat map. Skipped, saying why, where Chromium is absent (.ci/run installs it
 * with apt-get when it runs as root; CHROMIUM_PATH names another binary).
 */
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { parseModelConfig } from "../core/config.ts";
import { generateText } from "../core/engine.ts";
import { encodeSafetensors } from "../core/safetensors.ts";
import { randomTensors, testModelConfig } from "../fixtures/test_models.ts";
import { loadModel } from "../io/runtime.ts";
import { buildBundle } from "../web/build.ts";
import { serveStatic } from "../web/serve_static.ts";
import { assert, assertEquals } from "./helpers.ts";

function findChromium(): string | null {
  const candidates = [Deno.env.get("CHROMIUM_PATH"), "/usr/bin/chromium", "/usr/bin/chromium-browser"];
  for (const c of candidates) {
    if (!c) continue;
    try {
      if (Deno.statSync(c).isFile) return c;
    } catch {
      // not there
    }
  }
  return null;
}

const CHROMIUM = findChromium();
if (!CHROMIUM) {
  console.warn(
    "browser_test: Chromium not found (/usr/bin/chromium or CHROMIUM_PATH), the browser tests are skipped; " +
      "install it with `apt-get install chromium` (.ci/run does when root)",
  );
}

type Runs = Record<string, { text: string; kept: number[][][]; kvBytesBefore: number; kvBytesAfter: number }>;

/** Deno's results for the demo's request (its story, budget 16, 32 greedy tokens), CPU reference. */
async function denoRuns(story: string, budget: number): Promise<Runs> {
  const model = await loadModel({ executor: "cpu" });
  try {
    const out: Runs = {};
    for (const method of ["judgeq", "snapkv"]) {
      const r = await generateText(model, { prompt: story, maxTokens: 32, compression: { method, budget } });
      const c = r.run.compression;
      out[method] = {
        text: r.outputs[0].text,
        kept: c.kept,
        kvBytesBefore: c.kvBytesBefore,
        kvBytesAfter: c.kvBytesAfter,
      };
    }
    return out;
  } finally {
    model.executor.dispose();
  }
}

/** Opens the demo page on an executor, records every shader module's compilation messages. */
async function openDemo(browser: Browser, base: string, executor: string): Promise<Page> {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 1000 });
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  // Every WGSL module the page compiles is kept, to read its compilation info afterwards.
  await page.evaluateOnNewDocument(() => {
    const modules: GPUShaderModule[] = [];
    (globalThis as unknown as { __shaders: GPUShaderModule[] }).__shaders = modules;
    if (typeof GPUDevice === "undefined") return;
    const create = GPUDevice.prototype.createShaderModule;
    GPUDevice.prototype.createShaderModule = function (d: GPUShaderModuleDescriptor) {
      const m = create.call(this, d);
      modules.push(m);
      return m;
    };
  });
  await page.goto(`${base}/web/?executor=${executor}`);
  // demo.js imports the bundle with top-level await: judgeqDemo appears after the load event.
  await page.waitForFunction(() => "judgeqDemo" in globalThis, { timeout: 60_000 });
  const ready = await page.evaluate(async () => {
    try {
      await (globalThis as unknown as { judgeqDemo: { ready: Promise<unknown> } }).judgeqDemo.ready;
      return "ok";
    } catch (e) {
      return String(e);
    }
  });
  assertEquals(ready, "ok", `${executor}: the page loaded the model (page errors: ${errors.join("; ")})`);
  return page;
}

const runDemo = (page: Page) =>
  page.evaluate(() =>
    (globalThis as unknown as { judgeqDemo: { run(): Promise<unknown> } }).judgeqDemo.run()
  ) as Promise<Runs>;

function assertSameRuns(got: Runs, want: Runs, what: string) {
  for (const method of Object.keys(want)) {
    assertEquals(got[method].text, want[method].text, `${what}, ${method}: greedy text`);
    assertEquals(got[method].kept, want[method].kept, `${what}, ${method}: kept positions`);
    assertEquals(got[method].kvBytesAfter, want[method].kvBytesAfter, `${what}, ${method}: KV bytes after`);
  }
}

Deno.test({
  name:
    "browser: the bundle in Chromium generates like Deno on the CPU executors and WebGPU; the demo shows its heat map",
  ignore: !CHROMIUM,
  // puppeteer's websocket and child process outlive single steps; they are closed in finally.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const dist = await Deno.makeTempDir({ prefix: "judgeq-dist-" });
    const server = serveStatic({ port: 0, dist });
    let browser: Browser | null = null;
    try {
      const bundle = await buildBundle(dist);
      assert(bundle.files["judgeq.js"] > 100_000, "bundle written");
      const base = `http://127.0.0.1:${server.addr.port}`;
      browser = await puppeteer.launch({
        executablePath: CHROMIUM!,
        headless: true,
        args: [
          "--no-sandbox",
          "--enable-unsafe-webgpu",
          "--use-webgpu-adapter=swiftshader",
          "--enable-features=Vulkan",
        ],
      });
      const first = await openDemo(browser, base, "cpu");
      const story = await first.$eval("#story", (e) => (e as HTMLTextAreaElement).value);
      const budget = Number(await first.$eval("#budget", (e) => (e as HTMLInputElement).value));
      const want = await denoRuns(story, budget);
      assert(want.judgeq.kvBytesAfter < want.judgeq.kvBytesBefore, "the story is compressed");

      await t.step("CPU reference on the page", async () => {
        assertSameRuns(await runDemo(first), want, "cpu");
      });

      await t.step("demo screenshot shows the heat map", async () => {
        const png = await first.screenshot({ fullPage: true, encoding: "base64" });
        // Count heat-coloured pixels in the screenshot itself, decoded by the browser.
        const heat = await first.evaluate(async (b64: string) => {
          const blob = await (await fetch(`data:image/png;base64,${b64}`)).blob();
          const bitmap = await createImageBitmap(blob);
          const c = new OffscreenCanvas(bitmap.width, bitmap.height);
          const g = c.getContext("2d")!;
          g.drawImage(bitmap, 0, 0);
          const px = g.getImageData(0, 0, c.width, c.height).data;
          let full = 0, tinted = 0;
          for (let i = 0; i < px.length; i += 4) {
            const [r, gr, b] = [px[i], px[i + 1], px[i + 2]];
            if (Math.abs(r - 214) < 6 && Math.abs(gr - 64) < 6 && Math.abs(b - 32) < 6) full++;
            else if (r > 200 && gr < 200 && b < 190 && r - b > 40) tinted++;
          }
          const shaded = [...document.querySelectorAll(".text .tok")].filter((s) =>
            Number((s as HTMLElement).dataset.share) > 0
          ).length;
          return { full, tinted, shaded, width: bitmap.width, height: bitmap.height };
        }, png as string);
        assert(heat.full > 2000, `kept cells drawn in the heat colour: ${JSON.stringify(heat)}`);
        assert(heat.tinted > 500, `text shaded by heat: ${JSON.stringify(heat)}`);
        assert(heat.shaded > 2 * budget, `shaded tokens in both panels: ${JSON.stringify(heat)}`);
        const out = Deno.env.get("JUDGEQ_SCREENSHOT");
        if (out) await Deno.writeFile(out, Uint8Array.from(atob(png as string), (c) => c.charCodeAt(0)));
      });
      await first.close();

      await t.step("fast CPU executor, one thread on the page", async () => {
        const page = await openDemo(browser!, base, "wasm");
        assertSameRuns(await runDemo(page), want, "wasm");
        await page.close();
      });

      await t.step("fast CPU executor, two threads in a dedicated worker", async () => {
        const page = await openDemo(browser!, base, "cpu");
        const got = await page.evaluate(
          async (story: string, budget: number) => {
            const code = `
            const lib = await import("${location.origin}/web/dist/judgeq.js");
            const model = await lib.loadModelFromUrl("${location.origin}/fixtures/models/stories260K/", { executor: "wasm", threads: 2 });
            const out = { executor: model.executor.kind, isolated: self.crossOriginIsolated };
            for (const method of ["judgeq", "snapkv"]) {
              const r = await lib.generateText(model, { prompt: ${
              JSON.stringify(story)
            }, maxTokens: 32, compression: { method, budget: ${budget} } });
              const c = r.run.compression;
              out[method] = { text: r.outputs[0].text, kept: c.kept, kvBytesBefore: c.kvBytesBefore, kvBytesAfter: c.kvBytesAfter };
            }
            postMessage(out);`;
            const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
            const w = new Worker(url, { type: "module" });
            return await new Promise((resolve) => {
              w.onmessage = (e) => resolve(e.data);
              w.onerror = (e) => resolve({ error: e.message ?? String(e) });
            });
          },
          story,
          budget,
        ) as Runs & { executor: string; isolated: boolean; error?: string };
        assertEquals(got.error, undefined, "worker error");
        assertEquals([got.executor, got.isolated], ["wasm", true]);
        assertSameRuns(got, want, "wasm in a worker, 2 threads");
        await page.close();
      });

      await t.step("WebGPU (SwiftShader): same text and kept positions; every kernel compiles", async () => {
        const page = await openDemo(browser!, base, "gpu");
        assertSameRuns(await runDemo(page), want, "gpu");
        // Sampling (temperature, top-k, top-p) compiles and runs the sampling kernel too.
        const sampled = await page.evaluate(async () => {
          const lib = await import(`${location.origin}/web/dist/judgeq.js`);
          const model = await lib.loadModelFromUrl(`${location.origin}/fixtures/models/stories260K/`, {
            executor: "gpu",
          });
          const r = await lib.generateText(model, {
            prompt: "Once upon a time",
            maxTokens: 16,
            temperature: 0.8,
            topP: 0.9,
            topK: 20,
            seed: 7,
          });
          return { kind: model.executor.kind, tokens: r.outputs[0].tokens.length };
        });
        assertEquals(sampled.kind, "gpu");
        assert(sampled.tokens > 0, "sampled tokens");
        const compiled = await page.evaluate(async () => {
          const modules = (globalThis as unknown as { __shaders: GPUShaderModule[] }).__shaders;
          const errors: string[] = [];
          for (const m of modules) {
            for (const msg of (await m.getCompilationInfo()).messages) {
              if (msg.type === "error") errors.push(`${m.label}: ${msg.message}`);
            }
          }
          return { count: modules.length, errors };
        });
        assert(compiled.count >= 5, `shader modules compiled: ${compiled.count}`);
        assertEquals(compiled.errors, [], "WGSL compilation errors in Chromium (Tint)");
        await page.close();
      });

      await t.step(
        "WebGPU kernel variants (q/k/v bias, separate RMSNorm, f16 weights) compile and match",
        async () => {
          // A random Qwen2-shaped model (bias, GQA), given to the page as bytes.
          const config = testModelConfig("qwen2");
          const parsed = parseModelConfig(config);
          assert(parsed._tag === "Right", "qwen2 config");
          const tensors = Object.fromEntries(
            [...randomTensors(parsed.right, 5)].map(([n, t]) => [n, { dtype: "F32" as const, ...t }]),
          );
          const weights = btoa(
            Array.from(encodeSafetensors(tensors), (b) => String.fromCharCode(b)).join(""),
          );
          const page = await openDemo(browser!, base, "cpu");
          const got = await page.evaluate(
            async (config: Record<string, unknown>, b64: string) => {
              const lib = await import(`${location.origin}/web/dist/judgeq.js`);
              const safetensors = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              const tokenizer = await (await fetch("/fixtures/models/stories260K/tokenizer.json")).text();
              const files = await lib.parseModelBytes({ config, tokenizer, safetensors });
              const request = (method: string) => ({
                input: { kind: "prompt", tokens: Array.from({ length: 40 }, (_, i) => 1 + (i * 37) % 500) },
                compression: { method, budget: 12 },
                decode: {
                  maxTokens: 12,
                  sampling: { temperature: 0, topP: 1, topK: 0, seed: 0 },
                  stopTokenIds: [],
                },
              });
              const run = async (executor: unknown, method: string) => {
                const model = {
                  name: "qwen2",
                  config: files.config,
                  tokenizer: null,
                  executor,
                  adapter: null,
                  tokenEmbeddings: files.weights.embed,
                  stopTokenIds: [],
                };
                const r = await lib.generateTokens(model, request(method));
                return { tokens: r.run.outputs[0].tokens, kept: r.run.compression.kept };
              };
              const cpu = new lib.CpuExecutor(files.weights);
              const out: Record<string, unknown> = {};
              const variants: [string, Record<string, unknown>][] = [
                ["f32, separate norm", { weightFormat: "f32", separateNorm: true }],
                ["f32, fused norm", { weightFormat: "f32", separateNorm: false }],
                ["f16, separate norm", { weightFormat: "f16", separateNorm: true }],
              ];
              for (const method of ["snapkv", "h2o"]) out[`cpu ${method}`] = await run(cpu, method);
              for (const [name, o] of variants) {
                const gpu = await lib.GpuExecutor.create(files.weights, o);
                for (const method of ["snapkv", "h2o"]) out[`${name} ${method}`] = await run(gpu, method);
                gpu.dispose();
              }
              return out;
            },
            config,
            weights,
          ) as Record<string, { tokens: number[]; kept: number[][][] }>;
          for (const name of ["f32, separate norm", "f32, fused norm"]) {
            for (const method of ["snapkv", "h2o"]) {
              assertEquals(
                got[`${name} ${method}`],
                got[`cpu ${method}`],
                `${name}, ${method}: tokens and kept positions`,
              );
            }
          }
          assertEquals(got["f16, separate norm snapkv"].tokens.length, 12, "f16 decodes");
          const errors = await page.evaluate(async () => {
            const out: string[] = [];
            for (const m of (globalThis as unknown as { __shaders: GPUShaderModule[] }).__shaders) {
              for (const msg of (await m.getCompilationInfo()).messages) {
                if (msg.type === "error") out.push(`${m.label}: ${msg.message}`);
              }
            }
            return out;
          });
          assertEquals(errors, [], "WGSL compilation errors in Chromium (Tint)");
          await page.close();
        },
      );
    } finally {
      await browser?.close();
      await server.shutdown();
      await Deno.remove(dist, { recursive: true });
    }
  },
});
