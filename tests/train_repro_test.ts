/**
 * Training is reproducible byte for byte (issue 26): a seeded short `deno task train --executor cpu` run on
 * the embedded stories260K (own data, MSE and KL fits, report) writes an adapter whose bytes hash to the
 * digest committed here. The full run that made the shipped adapter is the same code at larger settings
 * (README, Judge Q training); this pins that nothing in data generation, the fit or the file layout
 * depends on anything but the seed.
 *
 * Bugs this test catches: an unseeded random source (Math.random, time) in data or fit; a change to the
 * optimiser, the loss or the adapter layout that was not meant (re-record the digest on purpose then).
 */
import { main } from "../train/main.ts";
import { main as validateLoss } from "../train/validate_loss.ts";
import { UsageError } from "../io/flags.ts";
import { assert, assertEquals, assertRejects } from "./helpers.ts";

/** SHA-256 of the adapter file the run below writes, recorded from this code. */
const DIGEST = "6b6c4bc7f651a90d42c174131002412b5a74fbd49e574c4d5f9f8ef2702a0cda";

const hex = (b: ArrayBuffer) =>
  Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");

Deno.test("train --executor cpu: a seeded short run writes an adapter with the committed digest", async () => {
  const work = await Deno.makeTempDir(), out = `${work}/judgeq.safetensors`;
  const err: string[] = [];
  try {
    const code = await main(
      [
        ["--executor", "cpu", "--work", work, "--out", out, "--samples", "3", "--heldout", "2"],
        ["--steps", "4", "--batch", "2", "--prompt-len", "40-50", "--heldout-len", "40-50"],
        [
          "--response-len",
          "8-12",
          "--n",
          "4",
          "--budgets",
          "8,16",
          "--eval-every",
          "2",
          "--checkpoint-every",
          "2",
        ],
      ].flat(),
      { out: () => {}, err: (s) => err.push(s), progress: false },
    );
    assertEquals(code, 0, err.join("\n"));
    const digest = hex(await crypto.subtle.digest("SHA-256", await Deno.readFile(out)));
    console.log(`train_repro_test: adapter sha256 ${digest}`);
    assertEquals(digest, DIGEST, "adapter bytes");
    // The loss choice on a validation split of its own, from the same work directory.
    const json = `${work}/validation.json`;
    assertEquals(await validateLoss(["--work", work, "--samples", "1", "--out", json]), 0);
    const v = JSON.parse(await Deno.readTextFile(json));
    assertEquals(v.split, { seed: 2, samples: 1, trainingSeed: 1, disjoint: true });
    assert(["mse", "kl"].includes(v.choice.loss), JSON.stringify(v.choice));
    assertEquals(v.rows.length, 2 * 4 * 3, "2 losses x 4 variants x 3 budgets");
    const e = await assertRejects(
      () => validateLoss(["--work", work, "--seed", "1"]),
      "--seed",
      "training data's seed",
    );
    assert(e instanceof UsageError);
    await assertRejects(() => validateLoss([]), "--work");
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
