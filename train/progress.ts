/** A one-line progress bar on stderr (step, metrics, ETA); plain lines when stderr is not a terminal. */

const enc = new TextEncoder();

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds), m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}

export class Progress {
  private readonly started = performance.now();
  private firstDone: number | null = null;
  private lastLine = 0;
  private readonly tty: boolean;

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly write: (s: string) => void = (s) => Deno.stderr.writeSync(enc.encode(s)),
    tty = Deno.stderr.isTerminal(),
  ) {
    this.tty = tty;
  }

  /** `done` of `total` finished; `fields` are shown after the bar, in order. */
  update(done: number, fields: Record<string, string> = {}) {
    this.firstDone ??= done;
    const elapsed = (performance.now() - this.started) / 1000;
    const rate = (done - this.firstDone) / Math.max(elapsed, 1e-9);
    const eta = done >= this.total ? 0 : rate > 0 ? (this.total - done) / rate : Infinity;
    const width = 24, filled = Math.round((width * done) / this.total);
    const bar = "#".repeat(filled) + "-".repeat(width - filled);
    const extra = Object.entries(fields).map(([k, v]) => `${k} ${v}`).join("  ");
    const line = `${this.label} [${bar}] ${done}/${this.total}  ${extra}  ETA ${formatDuration(eta)}`;
    if (this.tty) this.write(`\r\x1b[2K${line}`);
    else if (done === this.total || performance.now() - this.lastLine > 5000) {
      this.write(line + "\n");
      this.lastLine = performance.now();
    }
  }

  finish() {
    if (this.tty) this.write("\n");
  }
}
