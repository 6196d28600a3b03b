/**
 * `deno task bundle [--out DIR] [--no-minify] [--json]`: the browser build. Writes an ESM bundle of
 * mod.ts (`judgeq.js`) and the fast CPU executor's worker (`worker.js`, which the bundle starts from
 * its own URL), both minified, into DIR (default web/dist/, git-ignored), and prints their sizes with
 * what takes the space (each npm package and the project's own code, bundled alone).
 *
 * A page that runs the fast CPU executor with threads needs cross-origin isolation (SharedArrayBuffer):
 * serve it with `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy:
 * require-corp`; on a page's main thread use `threads: 1` (browsers forbid Atomics.wait there) or run
 * the library in a dedicated worker.
 */
import { parseArgs } from "node:util";

const ROOT = new URL("../", import.meta.url);

async function deno(args: string[]): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), { args, cwd: ROOT, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`deno ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
}

async function bundle(entry: string, out: string, minify: boolean, extra: string[] = []): Promise<number> {
  await deno([
    "bundle",
    "--quiet",
    "--platform",
    "browser",
    "--format",
    "esm",
    ...(minify ? ["--minify"] : []),
    ...extra,
    "-o",
    out,
    entry,
  ]);
  return (await Deno.stat(out)).size;
}

export interface BundleReport {
  dir: string;
  files: Record<string, number>;
  /** Minified bytes of each part bundled alone (the parts share nothing, so they roughly add up). */
  parts: Record<string, number>;
}

/** Builds the bundle into `dir`; with `breakdown`, also measures what each dependency takes. */
export async function buildBundle(dir: string, o: { minify?: boolean; breakdown?: boolean } = {}) {
  const minify = o.minify ?? true;
  await Deno.mkdir(dir, { recursive: true });
  const main = `${dir}/judgeq.js`, worker = `${dir}/worker.js`;
  const files: Record<string, number> = {};
  await bundle("mod.ts", main, minify);
  files["worker.js"] = await bundle("wasm/worker.ts", worker, minify);
  // wasm/pool.ts starts `new URL("./worker.ts", import.meta.url)`: in the bundle that is worker.js.
  const code = await Deno.readTextFile(main);
  const patched = code.replace(/(["'`])\.\/worker\.ts\1/g, '"./worker.js"');
  if (patched === code) throw new Error("the bundle no longer names ./worker.ts: update web/build.ts");
  await Deno.writeTextFile(main, patched);
  files["judgeq.js"] = patched.length;
  const parts: Record<string, number> = {};
  if (o.breakdown) {
    const tmp = await Deno.makeTempDir({ prefix: "judgeq-bundle-" });
    try {
      const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
      const external = Object.keys(config.imports).flatMap((k) => ["--external", k]);
      parts["project code (npm packages external)"] = await bundle(
        "mod.ts",
        `${tmp}/own.js`,
        minify,
        external,
      );
      const used = ["zod", "fp-ts/Either", "@huggingface/tokenizers", "@huggingface/jinja"];
      for (const name of used) {
        const entry = `${tmp}/${name.replaceAll("/", "_")}.ts`;
        // What the project imports from each package (all of it, as a namespace re-export).
        await Deno.writeTextFile(entry, `export * from "${config.imports[name]}";\n`);
        parts[name] = await bundle(entry, `${entry}.js`, minify);
      }
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  }
  return { dir, files, parts } satisfies BundleReport;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      out: { type: "string" },
      "no-minify": { type: "boolean" },
      json: { type: "boolean" },
      help: { type: "boolean" },
    },
  });
  if (values.help) {
    console.log("deno task bundle [--out DIR] [--no-minify] [--json]");
    Deno.exit(0);
  }
  const dir = values.out ?? decodeURIComponent(new URL("web/dist", ROOT).pathname);
  const r = await buildBundle(dir, { minify: !values["no-minify"], breakdown: true });
  if (values.json) console.log(JSON.stringify(r, null, 2));
  else {
    const kb = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
    for (const [f, n] of Object.entries(r.files)) console.log(`${r.dir}/${f}: ${kb(n)}`);
    console.log("parts, each bundled alone:");
    for (const [p, n] of Object.entries(r.parts)) console.log(`  ${p}: ${kb(n)}`);
  }
}
