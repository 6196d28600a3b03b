/**
 * One output's text as its tokens arrive: UTF-8-safe incremental detokenizing, and stop strings that
 * cut the text where they begin (OpenAI semantics). Text that could be the start of a stop string is
 * held back, so a stream never shows what the final text will not contain.
 */
import { createStreamDecoder, type StreamDecoder, type TextTokenizer } from "../core/tokenizer.ts";

export class OutputText {
  private readonly decoder: StreamDecoder;
  private held = "";
  /** Text emitted so far (the final text once finished). */
  text = "";
  readonly tokens: number[] = [];
  /** A stop string matched; no more text will come. */
  stopped = false;

  constructor(tok: TextTokenizer, prefixIds: readonly number[], readonly stops: readonly string[]) {
    // The prefix (prompt or question) gives the first token its leading space back.
    this.decoder = createStreamDecoder(tok, { skipSpecial: true, prefixIds: prefixIds.slice(-8) });
  }

  /** Takes one generated token; returns the text it makes safe to show (often ""). */
  push(id: number): string {
    if (this.stopped) return "";
    this.tokens.push(id);
    return this.feed(this.decoder.push(id));
  }

  /** The output ended: returns whatever was held back. */
  finish(): string {
    if (this.stopped) return "";
    let out = this.feed(this.decoder.flush());
    if (!this.stopped) {
      out += this.held;
      this.text += this.held;
      this.held = "";
    }
    return out;
  }

  private feed(piece: string): string {
    const buf = this.held + piece;
    let cut = -1;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.stopped = true;
      this.held = "";
      return this.emit(buf.slice(0, cut));
    }
    const hold = heldSuffix(buf, this.stops);
    this.held = buf.slice(buf.length - hold);
    return this.emit(buf.slice(0, buf.length - hold));
  }

  private emit(s: string): string {
    this.text += s;
    return s;
  }
}

/** Length of the longest suffix of `buf` that is a proper prefix of some stop string. */
export function heldSuffix(buf: string, stops: readonly string[]): number {
  let best = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, buf.length); n > best; n--) {
      if (buf.endsWith(s.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}
