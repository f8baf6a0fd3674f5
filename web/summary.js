// The summary under a timeline (live session or video): one sentence and one bar per category, showing
// ShareSeries.summary() (shares.js), the same quantity as the chart above it.

import { labelColour, NO_FACE, percent } from './emotions.js';

export function formatDuration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

// who: null for face 1, or a person's name ("Person #2"), whose "no face" is the time they were not in view.
export function summarySentence(summary, who = null) {
  if (!summary.buckets) return 'Nothing analysed yet.';
  const analysed = formatDuration(summary.seconds);
  if (!summary.dominant) {
    return who ? `${who} showed no expression in ${analysed} of analysed time.`
      : `No face was found in ${analysed} of analysed time.`;
  }
  const absent = who ? 'not in view' : 'no face';
  return `${who ?? 'Face 1'} showed ${summary.dominant} most: ${percent(summary.shares[summary.dominant])} of ` +
    `${analysed} analysed (${absent}: ${percent(summary.shares[NO_FACE])}).`;
}

// One row per category: name, bar, share; data-category / data-share carry the exact numbers.
export function renderSummaryBars(container, summary, categories, labels) {
  container.replaceChildren(...categories.map((category) => {
    const share = summary.shares[category] ?? 0;
    const row = document.createElement('div');
    row.className = 'bar';
    row.setAttribute('role', 'listitem');
    row.dataset.category = category;
    row.dataset.share = String(share);
    row.setAttribute('aria-label', `${category}: ${percent(share)} of analysed time`);
    const name = document.createElement('span');
    name.textContent = category;
    const track = document.createElement('span');
    track.className = 'bar-track';
    const fill = document.createElement('span');
    fill.className = 'bar-fill';
    fill.style.width = percent(share, 1);
    fill.style.background = labelColour(category, labels);
    track.append(fill);
    const value = document.createElement('span');
    value.className = 'bar-value';
    value.textContent = percent(share);
    row.append(name, track, value);
    return row;
  }));
}
