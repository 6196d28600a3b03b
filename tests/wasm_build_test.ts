/**
 * The committed WebAssembly kernels are what their AssemblyScript source builds to: rebuilds
 * wasm/assembly/kernels.ts with the pinned compiler, with and without relaxed SIMD, and compares the bytes
 * of each .wasm and of its base64 module.
 */
import { base64Module, buildKernels, flavorFiles, KERNEL_FLAVORS } from "../wasm/build.ts";
import { assert, assertEquals } from "./helpers.ts";

for (const flavor of KERNEL_FLAVORS) {
  const files = flavorFiles(flavor);
  Deno.test(`wasm kernels (${flavor}): the committed .wasm and its base64 module are the build of the source`, async () => {
    const built = await buildKernels(flavor);
    const committed = await Deno.readFile(new URL(`../wasm/${files.wasm}`, import.meta.url));
    assertEquals(built.length, committed.length, `${files.wasm} size (run \`deno task build:wasm\`)`);
    assert(
      built.every((b, i) => b === committed[i]),
      `${files.wasm} bytes differ: run \`deno task build:wasm\``,
    );
    const module = await Deno.readTextFile(new URL(`../wasm/${files.module}`, import.meta.url));
    assert(module === base64Module(built, flavor), `${files.module} differs: run \`deno task build:wasm\``);
  });
}
