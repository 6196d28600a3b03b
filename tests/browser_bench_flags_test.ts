/** bench/browser.ts refuses bad --formats by name before it starts anything (a browser, a server, wllama). */
import { assert, assertEquals } from "./helpers.ts";

const script = new URL("../bench/browser.ts", import.meta.url).pathname;

async function run(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    // Any existing file passes the Chromium check, which comes first; nothing is launched before the flags.
    env: { CHROMIUM_PATH: Deno.execPath() },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("bench:browser: --formats takes f32, int8, q8_0 or none alone; anything else exits 2 naming it", async () => {
  for (const bad of ["none,f32", "q4_0", ""]) {
    const r = await run("--formats", bad);
    assertEquals(r.code, 2, `--formats '${bad}': ${r.stderr}`);
    assert(r.stderr.includes("--formats: expected f32, int8 and/or q8_0, or none"), r.stderr);
  }
});
