// Session recording (per-frame rows, per-second shares, summary, CSV) and a stacked-share chart.

import { labelColour, percent } from './emotions.js';

// Rows kept for the CSV; beyond this a session keeps its per-second shares and counts
// but stops adding rows, so a forgotten tab cannot grow memory without bound.
const MAX_ROWS = 200_000;

export class Session {
  constructor() {
    this.reset();
  }

  reset(labels = this.labels || []) {
    this.labels = labels;
    this.startedAt = null;
    this.rows = [];
    this.rowsTruncated = false;
    this.frames = 0;
    this.faceFrames = 0;
    this.counts = Object.fromEntries(labels.map((l) => [l, 0]));
    // Per-second buckets: second index -> {sums, faces}
    this.buckets = new Map();
  }

  setLabels(labels) {
    if (labels.join('\u0000') === this.labels.join('\u0000')) return;
    this.reset(labels);
  }

  // Records one processed live frame; nowMs is a performance.now() timestamp.
  add(nowMs, result) {
    if (this.startedAt === null) this.startedAt = nowMs;
    const t = (nowMs - this.startedAt) / 1000;
    const wallMs = Date.now();
    this.frames += 1;
    const second = Math.floor(t);
    let bucket = this.buckets.get(second);
    if (!bucket) {
      bucket = { sums: Object.fromEntries(this.labels.map((l) => [l, 0])), faces: 0, frames: 0 };
      this.buckets.set(second, bucket);
    }
    bucket.frames += 1;
    result.faces.forEach((face, index) => {
      this.faceFrames += 1;
      if (face.emotion in this.counts) this.counts[face.emotion] += 1;
      bucket.faces += 1;
      for (const label of this.labels) bucket.sums[label] += face.probabilities?.[label] ?? 0;
      if (this.rows.length < MAX_ROWS) {
        this.rows.push({ t, wallMs, frameId: result.frame_id, index, face });
      } else {
        this.rowsTruncated = true;
      }
    });
  }

  // [{t, shares|null}] for seconds in [fromSecond, toSecond], shares null where no face was seen.
  series(fromSecond, toSecond) {
    const points = [];
    for (let s = Math.max(0, fromSecond); s <= toSecond; s++) {
      const bucket = this.buckets.get(s);
      if (!bucket) continue;
      const shares = bucket.faces
        ? Object.fromEntries(this.labels.map((l) => [l, bucket.sums[l] / bucket.faces]))
        : null;
      points.push({ t: s, shares });
    }
    return points;
  }

  elapsedSeconds(nowMs) {
    return this.startedAt === null ? 0 : (nowMs - this.startedAt) / 1000;
  }

  summary() {
    const total = this.faceFrames;
    const distribution = this.labels.map((label) => ({
      label,
      count: this.counts[label] || 0,
      share: total ? (this.counts[label] || 0) / total : 0,
    }));
    const dominant = total ? distribution.reduce((a, b) => (b.count > a.count ? b : a)) : null;
    return { frames: this.frames, faceFrames: total, distribution, dominant };
  }

  csv() {
    // frame_id numbers the frames of one connection (it restarts after a reconnect); time_s is the session clock.
    const header = ['time_s', 'timestamp', 'frame_id', 'face_index', 'emotion', 'confidence', 'valence', 'arousal',
      'box_x', 'box_y', 'box_w', 'box_h', 'detection_score', ...this.labels.map((l) => `p_${l}`)];
    const lines = [header.join(',')];
    for (const { t, wallMs, frameId, index, face } of this.rows) {
      const b = face.box;
      lines.push([
        t.toFixed(3), new Date(wallMs).toISOString(), frameId, index, csvField(face.emotion), fixed(face.confidence), fixed(face.valence),
        fixed(face.arousal), b.x, b.y, b.w, b.h, fixed(face.detection_score),
        ...this.labels.map((l) => fixed(face.probabilities?.[l])),
      ].join(','));
    }
    return lines.join('\n') + '\n';
  }
}

function fixed(x) {
  return Number.isFinite(x) ? x.toFixed(4) : '';
}

function csvField(s) {
  const text = String(s ?? '');
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

// Stacked area chart of label shares over time; gaps where no face was seen.
export class StackedChart {
  constructor(canvas, legend) {
    this.canvas = canvas;
    this.legend = legend;
    this.ctx = canvas.getContext('2d');
    this.labels = [];
    this.points = [];
    this.range = [0, 1];
    // Seconds between samples; a longer pause splits the area into separate runs.
    this.step = 1;
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(canvas);
  }

  setLabels(labels) {
    this.labels = labels;
    this.legend.replaceChildren(...labels.map((label) => {
      const item = document.createElement('li');
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = labelColour(label, labels);
      item.append(swatch, document.createTextNode(label));
      return item;
    }));
  }

  // points: [{t, shares}], range: [t0, t1] seconds shown on the x axis.
  update(points, range) {
    this.points = points;
    this.range = range;
    this.canvas.dataset.points = String(points.filter((p) => p.shares).length);
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

    const left = 34;
    const right = 8;
    const top = 8;
    const bottom = 20;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const [t0, t1] = this.range;
    const span = Math.max(1e-6, t1 - t0);
    const xOf = (t) => left + ((t - t0) / span) * plotW;
    const yOf = (share) => top + (1 - share) * plotH;

    ctx.strokeStyle = 'rgba(128,128,128,0.35)';
    ctx.fillStyle = getComputedStyle(canvas).color || '#666';
    ctx.font = '11px system-ui, sans-serif';
    ctx.lineWidth = 1;
    ctx.textBaseline = 'middle';
    for (const share of [0, 0.5, 1]) {
      ctx.beginPath();
      ctx.moveTo(left, yOf(share));
      ctx.lineTo(left + plotW, yOf(share));
      ctx.stroke();
      ctx.fillText(percent(share), 2, yOf(share));
    }
    ctx.textBaseline = 'top';
    const step = niceStep(span / 6);
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      const text = formatSeconds(t);
      const x = Math.min(Math.max(0, xOf(t) - 10), width - ctx.measureText(text).width - 2);
      ctx.fillText(text, x, top + plotH + 4);
    }

    // Contiguous runs of seconds with faces become one stacked area each.
    const runs = [];
    let run = [];
    for (const p of this.points) {
      const prev = run[run.length - 1];
      if (p.shares && prev && p.t - prev.t <= this.step * 1.5) {
        run.push(p);
      } else {
        if (run.length) runs.push(run);
        run = p.shares ? [p] : [];
      }
    }
    if (run.length) runs.push(run);

    const barWidth = Math.max(2, (this.step * plotW) / span);
    for (const points of runs) {
      let lower = points.map(() => 0);
      for (const label of this.labels) {
        const upper = points.map((p, i) => lower[i] + (p.shares[label] || 0));
        ctx.fillStyle = labelColour(label, this.labels);
        ctx.beginPath();
        if (points.length === 1) {
          // A single second: a bar, since an area needs two points.
          const x = xOf(points[0].t);
          ctx.rect(x, yOf(upper[0]), barWidth, yOf(lower[0]) - yOf(upper[0]));
        } else {
          points.forEach((p, i) => (i ? ctx.lineTo(xOf(p.t), yOf(upper[i])) : ctx.moveTo(xOf(p.t), yOf(upper[i]))));
          for (let i = points.length - 1; i >= 0; i--) ctx.lineTo(xOf(points[i].t), yOf(lower[i]));
          ctx.closePath();
        }
        ctx.fill();
        lower = upper;
      }
    }
  }
}

function niceStep(raw) {
  for (const s of [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]) if (s >= raw) return s;
  return 3600;
}

export function formatSeconds(t) {
  const s = Math.round(t);
  const m = Math.floor(s / 60);
  return m ? `${m}:${String(s % 60).padStart(2, '0')}` : `${s}s`;
}

// Renders distribution bars (session summary) into a container.
export function renderBars(container, distribution, labels) {
  container.replaceChildren(...distribution.map(({ label, share, count }) => {
    const row = document.createElement('div');
    row.className = 'bar';
    row.setAttribute('role', 'listitem');
    row.setAttribute('aria-label', `${label}: ${percent(share)} (${count} face frames)`);
    const name = document.createElement('span');
    name.textContent = label;
    const track = document.createElement('span');
    track.className = 'bar-track';
    const fill = document.createElement('span');
    fill.className = 'bar-fill';
    fill.style.display = 'block';
    fill.style.width = percent(share, 1);
    fill.style.background = labelColour(label, labels);
    track.append(fill);
    const value = document.createElement('span');
    value.className = 'bar-value';
    value.textContent = percent(share);
    row.append(name, track, value);
    return row;
  }));
}
