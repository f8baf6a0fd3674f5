// A live session: the per-second shares the timeline and summary show (of face 1, and of each person), and the rows
// of the CSV.

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
    // People: a number per (connection, track id) in order of appearance, each with its own share series.
    this.personOf = new Map();
    this.people = new Map();
  }

  // The session's number for the face with `trackId` on live connection `connection` (the server's track ids
  // restart with each connection); null for a face without a track.
  person(connection, trackId) {
    if (trackId === null || trackId === undefined) return null;
    const key = `${connection}:${trackId}`;
    if (!this.personOf.has(key)) {
      const person = this.personOf.size + 1;
      this.personOf.set(key, person);
      const series = new ShareSeries(this.labels, 1);
      series.absentLike(this.shares);
      this.people.set(person, series);
    }
    return this.personOf.get(key);
  }

  // The share series of one person, or of face 1 (person null).
  series(person = null) {
    return (person !== null && this.people.get(person)) || this.shares;
  }

  // The model's labels, when they first arrive or when the server changes its model mid-session. The session keeps
  // what it has counted: labels of the old model that the new one lacks stay at the end of the list (their frames
  // still count in the charts, the summary and the CSV); before the first result the list is the model's own.
  setLabels(labels) {
    const kept = this.rows.length ? this.labels.filter((label) => !labels.includes(label)) : [];
    const merged = [...labels, ...kept];
    if (merged.join('\u0000') === this.labels.join('\u0000')) return;
    this.labels = merged;
    this.shares.setLabels(merged);
    for (const series of this.people.values()) series.setLabels(merged);
  }

  // Records one processed live frame; nowMs is a performance.now() timestamp, connection the live connection's
  // number (LiveClient.connections). Sets each face's `person`.
  add(nowMs, result, connection = 0) {
    for (const face of result.faces) face.person = this.person(connection, face.track_id);
    if (this.startedAt === null) {
      this.startedAt = nowMs;
      this.startedWallMs = Date.now();
    }
    // Whole milliseconds, so the CSV's time_s (3 decimals) falls in the same second as the timeline's bucket.
    const t = Math.round(nowMs - this.startedAt) / 1000;
    const wallMs = Date.now();
    this.lastWallMs = wallMs;
    const key = Math.floor(t);
    this.shares.add(key, result.faces);
    for (const [person, series] of this.people) series.add(key, result.faces.filter((f) => f.person === person));
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
    // face_index 0 is face 1 of the page (the largest); person numbers the session's tracked faces in order of
    // appearance (#2 on the page), track_id is the server's id on its connection.
    const header = ['time_s', 'timestamp', 'frame_id', 'face_index', 'person', 'track_id', 'emotion', 'confidence',
      'valence', 'arousal',
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
        ...head, index, face.person ?? '', face.track_id ?? '', csvField(face.emotion), fixed(face.confidence), fixed(face.valence), fixed(face.arousal),
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
