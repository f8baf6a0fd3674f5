// A live session: the per-second shares the timeline and summary show, and the rows of the CSV.

import { ShareSeries } from './shares.js';

// Rows kept for the CSV; beyond this a session keeps its per-second shares but stops adding rows, so a forgotten
// tab cannot grow memory without bound.
const MAX_ROWS = 200_000;

export class Session {
  constructor() {
    this.shares = new ShareSeries([], 1);
    this.reset([]);
  }

  reset(labels = this.labels) {
    this.labels = labels;
    this.shares.reset(labels);
    this.startedAt = null; // performance.now() of the first result
    this.startedWallMs = null;
    this.lastWallMs = null;
    this.rows = [];
    this.rowsTruncated = false;
  }

  setLabels(labels) {
    if (labels.join('\u0000') === this.labels.join('\u0000')) return;
    this.reset(labels);
  }

  // Records one processed live frame; nowMs is a performance.now() timestamp.
  add(nowMs, result) {
    if (this.startedAt === null) {
      this.startedAt = nowMs;
      this.startedWallMs = Date.now();
    }
    // Whole milliseconds, so the CSV's time_s (3 decimals) falls in the same second as the timeline's bucket.
    const t = Math.round(nowMs - this.startedAt) / 1000;
    const wallMs = Date.now();
    this.lastWallMs = wallMs;
    this.shares.add(Math.floor(t), result.faces);
    // A frame without a face is one row with empty face columns, so the CSV holds the "no face" stretches too.
    const faces = result.faces.length ? result.faces : [null];
    faces.forEach((face, index) => {
      if (this.rows.length < MAX_ROWS) {
        this.rows.push({ t, wallMs, frameId: result.frame_id, index, face });
      } else {
        this.rowsTruncated = true;
      }
    });
  }

  elapsedSeconds(nowMs) {
    return this.startedAt === null ? 0 : (nowMs - this.startedAt) / 1000;
  }

  csv() {
    // frame_id numbers the frames of one connection (it restarts after a reconnect); time_s is the session clock;
    // face_index 0 is face 1 of the page (the largest).
    const header = ['time_s', 'timestamp', 'frame_id', 'face_index', 'emotion', 'confidence', 'valence', 'arousal',
      'box_x', 'box_y', 'box_w', 'box_h', 'detection_score', ...this.labels.map((l) => `p_${l}`)];
    const lines = [header.join(',')];
    for (const { t, wallMs, frameId, index, face } of this.rows) {
      const head = [t.toFixed(3), new Date(wallMs).toISOString(), frameId];
      if (!face) {
        lines.push([...head, ...Array(header.length - head.length).fill('')].join(','));
        continue;
      }
      const b = face.box;
      lines.push([
        ...head, index, csvField(face.emotion), fixed(face.confidence), fixed(face.valence), fixed(face.arousal),
        b.x, b.y, b.w, b.h, fixed(face.detection_score), ...this.labels.map((l) => fixed(face.probabilities?.[l])),
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
