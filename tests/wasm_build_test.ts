/**
 * The committed WebAssembly kernels are what their AssemblyScript source builds to: rebuilds
 * wasm/assembly/kernels.ts with the pinned compiler and compares the bytes of kernels.wasm and of its
 * base64 module.
 */
import { base64Module, buildKernels } from "../wasm/build.ts";
import { assert, assertEquals } from "./helpers.ts";

Deno.test("wasm kernels: the committed .wasm and its base64 module are the build of the source", async () => {
  const built = await buildKernels();
  const committed = await Deno.readFile(new URL("../wasm/kernels.wasm", import.meta.url));
  assertEquals(built.length, committed.length, "kernels.wasm size (run `deno task build:wasm`)");
  assert(built.every((b, i) => b === committed[i]), "kernels.wasm bytes differ: run `deno task build:wasm`");
  const module = await Deno.readTextFile(new URL("../wasm/kernels_wasm.ts", import.meta.url));
  assert(module === base64Module(built), "kernels_wasm.ts differs: run `deno task build:wasm`");
});
