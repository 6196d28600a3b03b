/**
 * The import graph, checked from the sources (static `import`/`export ... from`, side-effect and
 * dynamic imports of relative paths; `import type` included):
 *  - core/ is the pure core: it imports nothing from any other folder (gpu, wasm, server, eval, io,
 *    cli, train, bench, fixtures, web, tests);
 *  - no cycle between top-level folders (folder A imports B and B imports A, directly or through
 *    others), entry folders bench/ and tests/ and root files (mod.ts, serve.ts) included;
 *  - no cycle between the files of gpu/ (the executor, its session and the modules they share).
 */
import { assert, assertEquals } from "./helpers.ts";

const ROOT = new URL("../", import.meta.url);
const SKIP = [".git", ".cache", "node_modules", "scratch", "assembly", "models", "dist", "out"];

async function* sourceFiles(dir: URL, rel = ""): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const path = rel + e.name;
    if (e.isDirectory) {
      if (!SKIP.includes(e.name)) yield* sourceFiles(new URL(e.name + "/", dir), path + "/");
    } else if (/\.(ts|js|mjs)$/.test(e.name)) yield path;
  }
}

const IMPORT = /(?:^|[\n;])\s*(?:import|export)\s(?:[^"'`;]*?\sfrom\s*)?["'](\.{1,2}\/[^"']+)["']/g;
const DYNAMIC = /\bimport\(\s*["'](\.{1,2}\/[^"']+)["']\s*\)/g;

/** Relative imports of `text` (in `path`), as repository paths. */
function importsOf(path: string, text: string): string[] {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  const out: string[] = [];
  for (const re of [IMPORT, DYNAMIC]) {
    for (const m of code.matchAll(re)) out.push(new URL(m[1], new URL(path, "file:///")).pathname.slice(1));
  }
  return out;
}

async function graph(): Promise<Map<string, string[]>> {
  const g = new Map<string, string[]>();
  for await (const path of sourceFiles(ROOT)) {
    g.set(path, importsOf(path, await Deno.readTextFile(new URL(path, ROOT))));
  }
  return g;
}

const folderOf = (path: string) => (path.includes("/") ? path.split("/")[0] : ".");

/** A cycle in `edges` as a path a -> ... -> a, or null. */
function findCycle(edges: Map<string, Set<string>>): string[] | null {
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (n: string): string[] | null => {
    state.set(n, "open");
    stack.push(n);
    for (const m of edges.get(n) ?? []) {
      if (state.get(m) === "open") return [...stack.slice(stack.indexOf(m)), m];
      if (!state.has(m)) {
        const c = visit(m);
        if (c) return c;
      }
    }
    stack.pop();
    state.set(n, "done");
    return null;
  };
  for (const n of edges.keys()) {
    if (state.has(n)) continue;
    const c = visit(n);
    if (c) return c;
  }
  return null;
}

/**
 * Folder cycles allowed, each to be removed: empty now (cli <-> server went when the flag parser
 * moved from cli/ to io/flags.ts). Listed so that any new cycle fails; the test also fails once a
 * listed one is gone, so the list is kept exact.
 */
const KNOWN_FOLDER_CYCLES: [string, string][] = [];

Deno.test("import graph: core/ imports nothing outside core/", async () => {
  const bad: string[] = [];
  for (const [file, deps] of await graph()) {
    if (folderOf(file) !== "core") continue;
    for (const d of deps) if (folderOf(d) !== "core") bad.push(`${file} -> ${d}`);
  }
  assertEquals(bad, []);
});

Deno.test("import graph: no cycle between top-level folders (but the listed ones)", async () => {
  const g = await graph();
  const edges = new Map<string, Set<string>>();
  const why = new Map<string, string>();
  for (const [file, deps] of g) {
    const a = folderOf(file);
    for (const d of deps) {
      const b = folderOf(d);
      if (a === b) continue;
      if (!edges.has(a)) edges.set(a, new Set());
      edges.get(a)!.add(b);
      why.set(`${a}>${b}`, `${file} -> ${d}`);
    }
  }
  for (const [x, y] of KNOWN_FOLDER_CYCLES) {
    assert(
      edges.get(x)?.has(y) && edges.get(y)?.has(x),
      `${x} <-> ${y} is no cycle now: drop it from the list`,
    );
  }
  // Break each known cycle at one of its edges, then no cycle may remain.
  for (const [x, y] of KNOWN_FOLDER_CYCLES) edges.get(x)?.delete(y);
  const cycle = findCycle(edges);
  const trace = cycle?.slice(1).map((b, i) => why.get(`${cycle[i]}>${b}`) ?? `${cycle[i]} -> ${b}`);
  assert(cycle === null, `folder cycle ${cycle?.join(" -> ")}:\n${trace?.join("\n")}`);
});

Deno.test("import graph: no cycle between the files of gpu/", async () => {
  const g = await graph();
  const edges = new Map<string, Set<string>>();
  for (const [file, deps] of g) {
    if (folderOf(file) !== "gpu") continue;
    edges.set(file, new Set(deps.filter((d) => folderOf(d) === "gpu")));
  }
  assert(edges.has("gpu/session.ts") && edges.get("gpu/executor.ts")?.has("gpu/session.ts"), "graph read");
  const cycle = findCycle(edges);
  assertEquals(cycle, null, `import cycle in gpu/: ${cycle?.join(" -> ")}`);
});
