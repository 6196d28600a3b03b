/**
 * Where a decoded token's time goes on the fast CPU executor: the 76M llama (random weights), a prompt of
 * CONTEXT ids, then two rounds of 32 single-token forwards, each dispatch timed and summed by its kernels
 * (GEMMs with their output x input sizes). The second round is printed, in ms per token, largest first.
 *
 *   deno run -A bench/wasm_decode_profile.ts [f32|f16|int8|q8_0] [CONTEXT] [THREADS]   (default int8 512 1)
 */
import { WasmExecutor } from "../wasm/executor.ts";
import type { Job } from "../wasm/pool.ts";
import { fixtureWeights } from "../fixtures/testing.ts";
import { isChoice, WASM_WEIGHT_FORMATS } from "../core/weight_formats.ts";

const [format = "int8", contextArg = "512", threadsArg = "1"] = Deno.args;
if (!isChoice(WASM_WEIGHT_FORMATS, format)) {
  console.error(`error: format: expected one of ${WASM_WEIGHT_FORMATS.join(", ")}, got '${format}'`);
  Deno.exit(2);
}
const context = Number(contextArg), threads = Number(threadsArg);
if (!Number.isInteger(context) || context < 1 || !Number.isInteger(threads) || threads < 1) {
  console.error("error: CONTEXT and THREADS must be positive integers");
  Deno.exit(2);
}

/** A dispatch's name: its kernels, a GEMM with its output rows x inputs (the arguments after M). */
function dispatchName(jobs: Job[]): string {
  return jobs.map((j) => {
    if (!j.kernel.startsWith("gemm")) return j.kernel;
    const m = j.kernel === "gemmF32" || j.kernel === "gemmF16" ? 4 : 6; // index of M in the arguments
    return `${j.kernel}(${j.args[m + 1]}x${j.args[m + 2]})`;
  }).join("+");
}

const w = fixtureWeights("llama76m");
const ex = await WasmExecutor.create(w, { threads, weightFormat: format });
const TOKENS = 32;
try {
  const s = ex.createSession(context + 2 * TOKENS + 8);
  const ids = Array.from({ length: context }, (_, i) => 1 + (i * 7919) % (w.config.vocabSize - 1));
  await s.forward({ kind: "tokens", tokens: ids });
  for (let round = 0; round < 2; round++) {
    const times = new Map<string, number>();
    ex.observeDispatches((jobs, ms) => {
      const name = dispatchName(jobs);
      times.set(name, (times.get(name) ?? 0) + ms);
    });
    const t0 = performance.now();
    for (let i = 0; i < TOKENS; i++) await s.forward({ kind: "tokens", tokens: [100 + i] });
    const ms = (performance.now() - t0) / TOKENS;
    ex.observeDispatches(null);
    if (round === 0) continue; // the first round warms up
    console.log(
      `${ex.description}, ${context} cached: ${(1000 / ms).toFixed(1)} tok/s, ${ms.toFixed(2)} ms/token`,
    );
    let sum = 0;
    for (const [name, total] of [...times].sort((a, b) => b[1] - a[1])) {
      sum += total / TOKENS;
      console.log(`  ${(total / TOKENS).toFixed(3)} ms  ${name}`);
    }
    console.log(`  ${sum.toFixed(2)} ms in dispatches`);
  }
} finally {
  ex.dispose();
}
