// The one quantity every chart and summary on the page shows, live or for a video:
//
//   the share of analysed time in which face 1 (the largest face; the server sends faces largest first) showed
//   each expression, with "no face" as one more category.
//
// Time is cut into buckets (one second live, one sample of a video). Within a bucket each analysed frame counts
// once, under the top label of its face 1 or under "no face"; a bucket's shares are those counts over its frames.
// The summary is the mean of the buckets' shares, so it is exactly the average of the bars the timeline draws.
// For a video (one frame per bucket) this is the server's own summary: emotion_share * with_face / sampled.
//
// The same quantity for one person (a tracked face, docs/tracking.md) replaces face 1 by that person's face: "no
// face" is then the analysed time the person was not in view.

import { NO_FACE } from './emotions.js';

export function topCategory(faces) {
  return faces.length ? faces[0].emotion : NO_FACE;
}

export class ShareSeries {
  // step: seconds per bucket.
  constructor(labels = [], step = 1) {
    this.step = step;
    this.reset(labels);
  }

  reset(labels = this.labels) {
    this.setLabels(labels);
    this.buckets = new Map(); // key -> {frames, counts: {category: n}}
  }

  // Counts are kept by name, so buckets added before the labels were known still count.
  setLabels(labels) {
    this.labels = labels;
    this.categories = [...labels, NO_FACE];
  }

  // One analysed frame in bucket `key` (its time is key * step).
  add(key, faces) {
    let bucket = this.buckets.get(key);
    if (!bucket) {
      bucket = { frames: 0, counts: {} };
      this.buckets.set(key, bucket);
    }
    const category = topCategory(faces);
    bucket.frames += 1;
    bucket.counts[category] = (bucket.counts[category] || 0) + 1;
  }

  // Every analysed frame of `other` so far, counted as "no face": a person first seen now was not in view before.
  absentLike(other) {
    for (const [key, { frames }] of other.buckets) this.buckets.set(key, { frames, counts: { [NO_FACE]: frames } });
  }

  get size() {
    return this.buckets.size;
  }

  // [{t, width, frames, shares: {category: p}}] for the buckets with keys in [fromKey, toKey], in time order.
  points(fromKey = -Infinity, toKey = Infinity) {
    const keys = [...this.buckets.keys()].filter((k) => k >= fromKey && k <= toKey).sort((a, b) => a - b);
    return keys.map((key) => {
      const { frames, counts } = this.buckets.get(key);
      const shares = Object.fromEntries(this.categories.map((c) => [c, (counts[c] || 0) / frames]));
      return { t: key * this.step, width: this.step, frames, shares };
    });
  }

  // {buckets, seconds, frames, shares: {category: p}, dominant: label | null}; dominant ignores "no face".
  summary() {
    const shares = Object.fromEntries(this.categories.map((c) => [c, 0]));
    let frames = 0;
    for (const point of this.points()) {
      frames += point.frames;
      for (const c of this.categories) shares[c] += point.shares[c];
    }
    const n = this.buckets.size;
    if (n) for (const c of this.categories) shares[c] /= n;
    let dominant = null;
    for (const label of this.labels) {
      if (shares[label] > 0 && (dominant === null || shares[label] > shares[dominant])) dominant = label;
    }
    return { buckets: n, seconds: n * this.step, frames, shares, dominant };
  }
}
