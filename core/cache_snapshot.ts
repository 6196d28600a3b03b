/**
 * Checks on a CacheSnapshot before an executor restores it: the model's shape, the capacity, and per slot
 * ascending positions below the next position with keys and values of count x headDim floats.
 */
import type { ModelConfig } from "./config.ts";
import { JudgeQError } from "./errors.ts";
import type { CacheSnapshot } from "./executor.ts";

const bad = (message: string, param: string) => new JudgeQError("invalid_request", message, param);

/** Throws a JudgeQError naming the field when `s` cannot be restored into a session of `capacity`. */
export function checkSnapshot(s: CacheSnapshot, c: ModelConfig, capacity: number): void {
  if (s.nLayers !== c.nLayers || s.nKvHeads !== c.nKvHeads || s.headDim !== c.headDim) {
    throw bad(
      `snapshot of ${s.nLayers} layers x ${s.nKvHeads} KV heads x ${s.headDim} dims does not fit this model ` +
        `(${c.nLayers} x ${c.nKvHeads} x ${c.headDim})`,
      "snapshot",
    );
  }
  const slots = c.nLayers * c.nKvHeads;
  if (s.positions.length !== slots || s.keys.length !== slots || s.values.length !== slots) {
    throw bad(`expected ${slots} slots of positions, keys and values`, "snapshot.positions");
  }
  if (!Number.isInteger(s.nextPosition) || s.nextPosition < 0) {
    throw bad(`next position ${s.nextPosition} is not a non-negative integer`, "snapshot.nextPosition");
  }
  if (!Number.isInteger(capacity) || capacity < 1) {
    throw bad(`capacity ${capacity} must be a positive integer`, "capacity");
  }
  for (let slot = 0; slot < slots; slot++) {
    const p = s.positions[slot], n = p.length;
    if (n > capacity) throw bad(`slot ${slot} holds ${n} entries, over capacity ${capacity}`, "capacity");
    if (s.keys[slot].length !== n * c.headDim || s.values[slot].length !== n * c.headDim) {
      throw bad(`slot ${slot}: keys and values must hold ${n} x ${c.headDim} floats`, "snapshot.keys");
    }
    for (let i = 0; i < n; i++) {
      if (p[i] < 0 || p[i] >= s.nextPosition || (i > 0 && p[i] <= p[i - 1])) {
        throw bad(
          `slot ${slot}: positions must ascend in [0, ${s.nextPosition}), got ${p[i]} at ${i}`,
          "snapshot.positions",
        );
      }
    }
  }
  if (s.logits !== null && s.logits.length !== c.vocabSize) {
    throw bad(`logits must hold ${c.vocabSize} floats, got ${s.logits.length}`, "snapshot.logits");
  }
}
