/** Dependency-free SVG charts (pure string builders): line plots of a metric vs budget, and heat maps. */

const PALETTE = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
  "#393b79",
  "#637939",
  "#8c6d31",
  "#843c39",
  "#7b4173",
  "#3182bd",
  "#e6550d",
  "#31a354",
  "#756bb1",
  "#636363",
];

/** Series past the first ten are dashed, so similar colours stay apart. */
const dashOf = (k: number) => (k >= 10 ? ` stroke-dasharray="5,3"` : "");

const esc = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const num = (x: number) => (Math.round(x * 10) / 10).toString();

export interface Series {
  name: string;
  values: (number | null)[];
}

export interface LinePlot {
  title: string;
  xLabels: string[];
  series: Series[];
  yLabel: string;
  /** Fixed y range; by default [0, max of the data]. */
  yMin?: number;
  yMax?: number;
}

/** Tick values: about 5 round numbers covering [lo, hi]. */
export function ticks(lo: number, hi: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / 5, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((k) => k * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(10)));
  }
  return out;
}

/** One plot at (x, y) of size w x h, as an SVG group; lines break at nulls. */
export function linePlotGroup(p: LinePlot, x: number, y: number, w: number, h: number): string {
  const m = { l: 52, r: 10, t: 24, b: 34 };
  const pw = w - m.l - m.r, ph = h - m.t - m.b;
  const vals = p.series.flatMap((s) => s.values).filter((v): v is number => v !== null && Number.isFinite(v));
  const yMin = p.yMin ?? 0, yMax = p.yMax ?? (vals.length ? Math.max(...vals, yMin + 1e-9) : 1);
  const n = p.xLabels.length;
  const px = (i: number) => m.l + (n === 1 ? pw / 2 : (i * pw) / (n - 1));
  const py = (v: number) => m.t + ph - ((v - yMin) / (yMax - yMin || 1)) * ph;
  const parts = [
    `<g transform="translate(${x},${y})">`,
    `<text x="${w / 2}" y="15" text-anchor="middle" font-size="13" font-weight="bold">${esc(p.title)}</text>`,
  ];
  for (const t of ticks(yMin, yMax)) {
    parts.push(`<line x1="${m.l}" x2="${m.l + pw}" y1="${num(py(t))}" y2="${num(py(t))}" stroke="#ddd"/>`);
    parts.push(
      `<text x="${m.l - 4}" y="${num(py(t) + 4)}" text-anchor="end" font-size="10">${
        Number(t.toPrecision(4))
      }</text>`,
    );
  }
  p.xLabels.forEach((l, i) =>
    parts.push(
      `<text x="${num(px(i))}" y="${m.t + ph + 14}" text-anchor="middle" font-size="10">${esc(l)}</text>`,
    )
  );
  parts.push(`<text x="${m.l + pw / 2}" y="${h - 4}" text-anchor="middle" font-size="11">budget</text>`);
  parts.push(
    `<text transform="translate(12,${m.t + ph / 2}) rotate(-90)" text-anchor="middle" font-size="11">${
      esc(p.yLabel)
    }</text>`,
  );
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
  p.series.forEach((s, k) => {
    const color = PALETTE[k % PALETTE.length], dash = dashOf(k);
    let d = "", pen = false;
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) pen = false;
      else {
        d += `${pen ? "L" : "M"}${num(px(i))},${num(py(v))} `;
        pen = true;
      }
    });
    const path = d.trim();
    if (path) parts.push(`<path d="${path}" fill="none" stroke="${color}" stroke-width="1.6"${dash}/>`);
    s.values.forEach((v, i) => {
      if (v !== null && Number.isFinite(v)) {
        parts.push(`<circle cx="${num(px(i))}" cy="${num(py(v))}" r="2.2" fill="${color}"/>`);
      }
    });
  });
  parts.push("</g>");
  return parts.join("\n");
}

/** Several plots sharing one legend (series names of the first plot), in a grid of `cols` columns. */
export function linePlots(title: string, plots: LinePlot[], cols = 2, w = 360, h = 250): string {
  const rows = Math.ceil(plots.length / cols);
  const names = plots[0]?.series.map((s) => s.name) ?? [];
  const legendW = 260, W = cols * w + legendW, H = Math.max(rows * h + 30, 30 + names.length * 16 + 10);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">${esc(title)}</text>`,
  ];
  plots.forEach((p, i) => parts.push(linePlotGroup(p, (i % cols) * w, 30 + Math.floor(i / cols) * h, w, h)));
  names.forEach((n, k) => {
    const y = 40 + k * 16;
    parts.push(
      `<line x1="${cols * w + 10}" x2="${cols * w + 30}" y1="${y}" y2="${y}" stroke="${
        PALETTE[k % PALETTE.length]
      }" stroke-width="2.5"${dashOf(k)}/>`,
    );
    parts.push(`<text x="${cols * w + 36}" y="${y + 4}" font-size="11">${esc(n)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

export interface HeatMap {
  title: string;
  rowLabels: string[];
  colLabels: string[];
  /** [row][col] in [0, 1]; null draws a hatched grey cell. */
  values: (number | null)[][];
}

/** White (0) to dark green (1). */
export function heatColor(v: number): string {
  const t = Math.min(1, Math.max(0, v));
  const c = (a: number, b: number) => Math.round(a + (b - a) * t);
  return `rgb(${c(247, 0)},${c(252, 109)},${c(245, 44)})`;
}

/** Heat maps in a grid, `perRow` panels a row, cells labelled with percentages. */
export function heatMaps(
  title: string,
  panels: HeatMap[],
  rowAxis: string,
  colAxis: string,
  perRow = 4,
  cell = 34,
): string {
  const cols = Math.max(1, Math.min(perRow, panels.length));
  // Wide enough for a short panel title.
  const pw = Math.max(70 + (panels[0]?.colLabels.length ?? 0) * cell + 20, 200);
  const ph = 50 + (panels[0]?.rowLabels.length ?? 0) * cell + 36;
  const rows = Math.ceil(panels.length / cols);
  const W = Math.max(cols * pw, title.length * 8 + 20), H = 30 + rows * ph;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">${esc(title)}</text>`,
  ];
  panels.forEach((p, i) => {
    const ox = (i % cols) * pw, oy = 30 + Math.floor(i / cols) * ph;
    parts.push(`<g transform="translate(${ox},${oy})">`);
    parts.push(
      `<text x="${pw / 2}" y="16" text-anchor="middle" font-size="12" font-weight="bold">${
        esc(p.title)
      }</text>`,
    );
    p.rowLabels.forEach((r, ri) => {
      parts.push(
        `<text x="64" y="${50 + ri * cell + cell / 2 + 4}" text-anchor="end" font-size="10">${esc(r)}</text>`,
      );
      p.colLabels.forEach((_, ci) => {
        const v = p.values[ri]?.[ci] ?? null;
        const x = 70 + ci * cell, y = 50 + ri * cell;
        parts.push(
          `<rect x="${x}" y="${y}" width="${cell - 2}" height="${cell - 2}" fill="${
            v === null ? "#ccc" : heatColor(v)
          }"/>`,
        );
        if (v !== null) {
          parts.push(
            `<text x="${x + cell / 2 - 1}" y="${y + cell / 2 + 3}" text-anchor="middle" font-size="9" fill="${
              v > 0.6 ? "white" : "black"
            }">${Math.round(v * 100)}</text>`,
          );
        }
      });
    });
    p.colLabels.forEach((c, ci) =>
      parts.push(
        `<text x="${70 + ci * cell + cell / 2 - 1}" y="44" text-anchor="middle" font-size="10">${
          esc(c)
        }</text>`,
      )
    );
    parts.push(
      `<text x="${70 + (p.colLabels.length * cell) / 2}" y="32" text-anchor="middle" font-size="10">${
        esc(colAxis)
      }</text>`,
    );
    parts.push(
      `<text transform="translate(12,${
        50 + (p.rowLabels.length * cell) / 2
      }) rotate(-90)" text-anchor="middle" font-size="10">${esc(rowAxis)}</text>`,
    );
    parts.push("</g>");
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
