/** A progress bar on stderr: redrawn in place on a terminal, a line every ~10% otherwise (CI logs). */

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${Math.round(s)}s`;
  const m = Math.floor(s / 60);
  return m < 60
    ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s`
    : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/** The bar's text: `[#####.....] 50/100 cells 12.3/s eta 4s <label>`. Pure, for tests. */
export function renderBar(done: number, total: number, elapsedS: number, label: string, width = 24): string {
  const frac = total === 0 ? 1 : Math.min(1, done / total);
  const filled = Math.round(frac * width);
  const rate = elapsedS > 0 ? done / elapsedS : 0;
  const eta = rate > 0 ? (total - done) / rate : Infinity;
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${done}/${total} cells ${
    rate.toFixed(1)
  }/s eta ${formatSeconds(eta)} ${label}`;
}

export class Progress {
  private done = 0;
  private readonly t0 = performance.now();
  private lastDecile = -1;
  private readonly tty: boolean;
  private readonly enc = new TextEncoder();

  constructor(private readonly total: number, private readonly quiet = false) {
    this.tty = Deno.stderr.isTerminal();
  }

  tick(label: string, n = 1) {
    this.done += n;
    if (this.quiet) return;
    const line = renderBar(this.done, this.total, (performance.now() - this.t0) / 1000, label);
    if (this.tty) Deno.stderr.writeSync(this.enc.encode(`\r\x1b[K${line.slice(0, 150)}`));
    else {
      const decile = Math.floor((10 * this.done) / Math.max(1, this.total));
      if (decile !== this.lastDecile) {
        this.lastDecile = decile;
        Deno.stderr.writeSync(this.enc.encode(line + "\n"));
      }
    }
  }

  finish() {
    if (!this.quiet && this.tty) Deno.stderr.writeSync(this.enc.encode("\n"));
  }

  get elapsedSeconds() {
    return (performance.now() - this.t0) / 1000;
  }
}
