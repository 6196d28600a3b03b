/** The loss curves as a hand-written SVG: one panel per objective, log-scale y (MSE and KL differ in scale). */
import type { EvalPoint, StepPoint } from "./fit.ts";

export interface Curve {
  title: string;
  steps: StepPoint[];
  evals: EvalPoint[];
}

const W = 460, H = 320, PAD = { left: 64, right: 16, top: 36, bottom: 44 };
const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const fmt = (x: number) => (x >= 0.01 && x < 1000 ? x.toPrecision(2) : x.toExponential(0));

function panel(c: Curve, x0: number): string {
  const values = [...c.steps.map((s) => s.loss), ...c.evals.map((e) => e.heldout)].filter((v) => v > 0);
  const lo = Math.log10(Math.min(...values)), hi = Math.log10(Math.max(...values));
  const yMin = Math.floor(lo * 4) / 4, yMax = Math.max(Math.ceil(hi * 4) / 4, yMin + 0.25);
  const last = Math.max(1, ...c.steps.map((s) => s.step + 1), ...c.evals.map((e) => e.step));
  const pw = W - PAD.left - PAD.right, ph = H - PAD.top - PAD.bottom;
  const sx = (step: number) => x0 + PAD.left + (pw * step) / last;
  const sy = (v: number) => PAD.top + ph * (1 - (Math.log10(v) - yMin) / (yMax - yMin));
  const path = (pts: [number, number][]) =>
    pts.filter(([, v]) => v > 0).map(([s, v], i) => `${i ? "L" : "M"}${sx(s).toFixed(1)},${sy(v).toFixed(1)}`)
      .join("");
  const parts: string[] = [];
  parts.push(`<text x="${x0 + W / 2}" y="20" text-anchor="middle" font-size="14">${esc(c.title)}</text>`);
  parts.push(
    `<rect x="${x0 + PAD.left}" y="${PAD.top}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`,
  );
  for (let k = 0; k <= 4; k++) {
    const v = Math.pow(10, yMin + ((yMax - yMin) * k) / 4), y = sy(v);
    parts.push(`<line x1="${x0 + PAD.left}" x2="${x0 + PAD.left + pw}" y1="${y}" y2="${y}" stroke="#eee"/>`);
    parts.push(
      `<text x="${x0 + PAD.left - 6}" y="${y + 4}" text-anchor="end" font-size="11">${fmt(v)}</text>`,
    );
    const s = Math.round((last * k) / 4), x = sx(s);
    parts.push(`<text x="${x}" y="${PAD.top + ph + 16}" text-anchor="middle" font-size="11">${s}</text>`);
  }
  parts.push(
    `<text x="${x0 + PAD.left + pw / 2}" y="${H - 8}" text-anchor="middle" font-size="12">step</text>`,
  );
  const ym = PAD.top + ph / 2;
  parts.push(
    `<text x="${x0 + 14}" y="${ym}" transform="rotate(-90 ${
      x0 + 14
    } ${ym})" text-anchor="middle" font-size="12">loss (log scale)</text>`,
  );
  parts.push(
    `<path d="${path(c.steps.map((s) => [s.step, s.loss]))}" fill="none" stroke="#9ecae1" stroke-width="1"/>`,
  );
  parts.push(
    `<path d="${
      path(c.evals.map((e) => [e.step, e.heldout]))
    }" fill="none" stroke="#d94801" stroke-width="2"/>`,
  );
  const lx = x0 + PAD.left + pw - 150, ly = PAD.top + 14;
  parts.push(`<line x1="${lx}" x2="${lx + 20}" y1="${ly}" y2="${ly}" stroke="#9ecae1"/>`);
  parts.push(`<text x="${lx + 26}" y="${ly + 4}" font-size="11">train (batch)</text>`);
  parts.push(
    `<line x1="${lx}" x2="${lx + 20}" y1="${ly + 16}" y2="${ly + 16}" stroke="#d94801" stroke-width="2"/>`,
  );
  parts.push(`<text x="${lx + 26}" y="${ly + 20}" font-size="11">held-out</text>`);
  return parts.join("\n");
}

export function lossCurveSvg(curves: Curve[]): string {
  const width = W * Math.max(1, curves.length);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${H}" viewBox="0 0 ${width} ${H}" font-family="sans-serif">`,
    `<rect width="${width}" height="${H}" fill="white"/>`,
    ...curves.map((c, i) => panel(c, i * W)),
    "</svg>",
    "",
  ].join("\n");
}
