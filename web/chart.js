// The timeline chart: one stacked bar per bucket (a second live, a sample of a video), its height split into the
// shares of shares.js, "no face" in grey on top; time without analysed frames stays empty.

import { labelColour, percent, renderLegend } from './emotions.js';

// Bars narrower than this (a long session on a small canvas) are merged into wider bins.
const MIN_BAR_PX = 2;

// Draws points [{t, width, shares}] into `area` ({x, y, width, height}, CSS pixels) of a 2D context.
// range: [t0, t1] seconds on the x axis; categories: stacking order, bottom first. Returns the plot's rectangle.
export function drawShares(ctx, area, points, range, categories, labels, textColour = '#555') {
  const left = area.x + 38;
  const top = area.y + 8;
  const plotW = area.width - 38 - 8;
  const plotH = area.height - 8 - 20;
  const [t0, t1] = range;
  const span = Math.max(1e-6, t1 - t0);
  const xOf = (t) => left + ((t - t0) / span) * plotW;
  const yOf = (share) => top + (1 - share) * plotH;

  ctx.save();
  ctx.strokeStyle = 'rgba(128,128,128,0.35)';
  ctx.fillStyle = textColour;
  ctx.font = '11px system-ui, sans-serif';
  ctx.lineWidth = 1;
  ctx.textBaseline = 'middle';
  for (const share of [0, 0.5, 1]) {
    ctx.beginPath();
    ctx.moveTo(left, yOf(share));
    ctx.lineTo(left + plotW, yOf(share));
    ctx.stroke();
    ctx.fillText(percent(share), area.x + 2, yOf(share));
  }
  ctx.textBaseline = 'top';
  const tick = niceStep(span / 6);
  for (let t = Math.ceil(t0 / tick) * tick; t <= t1 + 1e-9; t += tick) {
    const text = formatSeconds(t);
    const x = Math.min(Math.max(area.x, xOf(t) - 10), area.x + area.width - ctx.measureText(text).width - 2);
    ctx.fillText(text, x, top + plotH + 4);
  }

  for (const bar of mergeNarrowBars(points, plotW / span, categories)) {
    const x0 = xOf(bar.t);
    const x1 = Math.max(x0 + 1, xOf(bar.t + bar.width));
    let lower = 0;
    for (const category of categories) {
      const share = bar.shares[category] || 0;
      if (share > 0) {
        ctx.fillStyle = labelColour(category, labels);
        // Whole pixels, so neighbouring bars and stacked segments leave no hairline gaps.
        const yTop = Math.round(yOf(lower + share));
        ctx.fillRect(Math.round(x0), yTop, Math.round(x1) - Math.round(x0), Math.round(yOf(lower)) - yTop);
      }
      lower += share;
    }
  }
  ctx.restore();
  return { left, top, width: plotW, height: plotH, t0, t1 };
}

// Averages neighbouring buckets into bins at least MIN_BAR_PX wide (each bucket weighs the same, as in the summary).
function mergeNarrowBars(points, pxPerSecond, categories) {
  if (!points.length) return points;
  const width = points[0].width;
  const perBin = Math.ceil(MIN_BAR_PX / Math.max(1e-9, width * pxPerSecond));
  if (perBin <= 1) return points;
  const binWidth = perBin * width;
  const bins = new Map();
  for (const p of points) {
    const key = Math.floor(p.t / binWidth + 1e-9);
    const bin = bins.get(key) ?? { t: key * binWidth, width: binWidth, n: 0, shares: {} };
    bin.n += 1;
    for (const c of categories) bin.shares[c] = (bin.shares[c] || 0) + (p.shares[c] || 0);
    bins.set(key, bin);
  }
  return [...bins.values()].map((bin) => {
    for (const c of categories) bin.shares[c] /= bin.n;
    return bin;
  });
}

// The chart on the page: a canvas sized to its CSS box, plus its legend.
export class ShareChart {
  constructor(canvas, legend) {
    this.canvas = canvas;
    this.legend = legend;
    this.ctx = canvas.getContext('2d');
    this.labels = [];
    this.categories = [];
    this.points = [];
    this.range = [0, 1];
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(canvas);
  }

  setCategories(categories, labels) {
    this.categories = categories;
    this.labels = labels;
    renderLegend(this.legend, categories, labels);
  }

  // points: [{t, width, shares}], range: [t0, t1] seconds shown on the x axis.
  update(points, range) {
    this.points = points;
    this.range = range;
    this.canvas.dataset.points = String(points.length);
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const area = { x: 0, y: 0, width, height };
    const plot = drawShares(ctx, area, this.points, this.range, this.categories, this.labels,
      getComputedStyle(canvas).color);
    // Where the bars are, in CSS pixels and seconds: for tests and for anyone inspecting the page.
    canvas.dataset.plot = JSON.stringify(plot);
  }
}

function niceStep(raw) {
  for (const s of [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]) if (s >= raw) return s;
  return 3600;
}

export function formatSeconds(t) {
  const s = Math.round(t);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  if (h) return `${h}:${String(m).padStart(2, '0')}:${sec}`;
  return m ? `${m}:${sec}` : `${s}s`;
}
