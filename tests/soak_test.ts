/**
 * The soak, CI-sized (`deno task soak` runs 2,000 + 2,000 requests): a real server process under a mix of
 * kept contexts, answers, streams, disconnects and megabyte prompts answers no 5xx, frees every context it
 * kept, and its resident memory after the run is not far over the start.
 */
import { runSoak } from "../ops/soak.ts";
import { assert, assertEquals, runScript } from "./helpers.ts";

Deno.test({
  name:
    "soak (short): 300 mixed requests after a 300-request warm-up: no 5xx, contexts freed, RSS back near the start",
  ignore: Deno.build.os !== "linux", // resident memory is read from /proc
  fn: async () => {
    const r = await runSoak({
      requests: 300,
      warmup: 300,
      concurrency: 8,
      durationS: 120,
      seed: 7,
      contextMaxMb: 16,
      executor: "wasm",
    });
    assertEquals(r.server_errors, 0, JSON.stringify(r.statuses));
    assertEquals(r.requests, 300);
    for (const status of Object.keys(r.statuses)) {
      assert(
        ["200", "404", "422", "disconnect"].includes(status),
        `unexpected ${status}: ${JSON.stringify(r)}`,
      );
    }
    assert(
      (r.statuses["422"] ?? 0) > 0 && r.disconnects > 0,
      "oversize prompts and disconnects were in the mix",
    );
    assert(r.contexts_created > 0 && r.rss_mb.start > 0, JSON.stringify(r));
    assertEquals(
      r.contexts_left,
      { count: 0, bytes: 0 },
      "every kept context deleted or evicted, its bytes freed",
    );
    // `deno task soak` fails past 20% (README, Soak); this short run has not fully settled (four runs of it
    // ended 7.6% to 15.7% over the start), so CI allows 30%, as README says: a leak still shows.
    assert(r.end_over_start <= 0.3, `RSS ${r.rss_mb.start} -> ${r.rss_mb.end} MB`);
  },
});

Deno.test("soak and loadtest: a bad flag exits 2 naming it, before any server starts", async () => {
  for (
    const [script, args, message] of [
      ["ops/soak.ts", ["--requests", "0"], "--requests: expected a number >= 1, got '0'"],
      ["ops/soak.ts", ["--concurrency", "-2"], "--concurrency: expected a number >= 1, got '-2'"],
      ["ops/loadtest.ts", ["--long", "65"], "--long: expected 0..64, got '65'"],
      ["ops/loadtest.ts", ["--max-streams", "0"], "--max-streams: expected a number >= 1, got '0'"],
    ] as [string, string[], string][]
  ) {
    const r = await runScript(script, ...args);
    assertEquals(r.code, 2, `${script} ${args.join(" ")}: ${r.stderr}`);
    assert(r.stderr.includes(message), r.stderr);
  }
});
