/** JSON shapes shared by the endpoints: compression stats and timings. */
import type { DecodeCompressionStats } from "../core/decode_compression.ts";
import type { CompressionStats } from "../core/interpret.ts";

/** Kept counts per layer and KV head always; the kept positions themselves on request. */
export const compressionJson = (s: CompressionStats, withPositions: boolean) => ({
  method: s.method,
  budget: s.budget,
  window: s.window,
  prompt_tokens: s.promptTokens,
  kept_tokens: s.kept.map((layer) => layer.map((head) => head.length)),
  ...(withPositions ? { kept_positions: s.kept } : {}),
  kv_bytes_before: s.kvBytesBefore,
  kv_bytes_after: s.kvBytesAfter,
  kv_bytes_saved: s.kvBytesBefore - s.kvBytesAfter,
  ...(s.decode ? { decode: decodeJson(s.decode) } : {}),
});

/** Compression during decoding: its settings, one event per compression, the KV bytes each output ended with. */
export const decodeJson = (d: DecodeCompressionStats) => ({
  method: d.method,
  budget: d.budget,
  fraction: d.fraction,
  interval: d.interval,
  buffer: d.buffer,
  compressions: d.events.length,
  events: d.events.map((e) => ({
    output: e.output,
    step: e.step,
    position: e.position,
    entries_before: e.entriesBefore,
    entries_after: e.entriesAfter,
    ms: round(e.ms),
  })),
  kv_bytes_end: d.kvBytesEnd,
});

const round = (ms: number) => Math.round(ms * 1000) / 1000;

/** Milliseconds: waiting in the queue, each plan step, time to first token, the whole run. */
export function timingsJson(
  steps: Record<string, number>,
  queueMs: number,
  runMs: number,
): Record<string, number> {
  const out: Record<string, number> = { queue: round(queueMs) };
  for (const [k, v] of Object.entries(steps)) out[k] = round(v);
  out.run = round(runMs);
  return out;
}
