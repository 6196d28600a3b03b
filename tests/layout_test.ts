/**
 * The repository's layout rules (README, Layout): server/ holds the service alone, at most 20 files
 * directly in it; the operator tools (ops/) are outside it and nothing in server/ imports them; no
 * TypeScript file outside tests/, fuzz/ and wasm/assembly/ is over 600 lines.
 */
import { assertEquals } from "./helpers.ts";

const ROOT = new URL("../", import.meta.url);
const SKIP = [".git", ".cache", "node_modules", "scratch", "models", "dist", "out"];

async function* files(dir: URL, rel = ""): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const path = rel + e.name;
    if (e.isDirectory) {
      if (!SKIP.includes(e.name)) yield* files(new URL(e.name + "/", dir), path + "/");
    } else yield path;
  }
}

Deno.test("layout: at most 20 files directly in server/", async () => {
  const top: string[] = [];
  for await (const e of Deno.readDir(new URL("server/", ROOT))) if (e.isFile) top.push(e.name);
  top.sort();
  assertEquals(top.length <= 20 ? [] : top, [], `${top.length} files directly in server/`);
});

Deno.test("layout: nothing in server/ imports ops/ (the operator tools stay outside the service)", async () => {
  const bad: string[] = [];
  for await (const path of files(new URL("server/", ROOT), "server/")) {
    if (!path.endsWith(".ts")) continue;
    const text = await Deno.readTextFile(new URL(path, ROOT));
    for (const m of text.matchAll(/["'](\.{1,2}\/[^"']+)["']/g)) {
      const target = new URL(m[1], new URL(path, "file:///")).pathname.slice(1);
      if (target.startsWith("ops/")) bad.push(`${path} -> ${target}`);
    }
  }
  assertEquals(bad, []);
});

Deno.test("layout: no TypeScript file outside tests/, fuzz/ and wasm/assembly/ over 600 lines", async () => {
  const long: string[] = [];
  for await (const path of files(ROOT)) {
    if (!path.endsWith(".ts") || /^(tests|fuzz|wasm\/assembly)\//.test(path)) continue;
    const lines = (await Deno.readTextFile(new URL(path, ROOT))).split("\n").length - 1;
    if (lines > 600) long.push(`${path}: ${lines} lines`);
  }
  assertEquals(long, []);
});
