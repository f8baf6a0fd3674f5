// The session report: the timeline and the summary of a live session (or a video) drawn as one PNG to take away.

import { drawShares } from './chart.js';
import { labelColour, percent } from './emotions.js';
import { formatDuration, summarySentence } from './summary.js';

const WIDTH = 1200;
const MARGIN = 40;
const CHART_HEIGHT = 260;
const ROW_HEIGHT = 26;
const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';

export const REPORT_NOTE =
  'A label names the facial expression the model sees in a picture of a face (its appearance), not what the ' +
  'person feels. Share = fraction of analysed time in which face 1 (the largest face) showed the expression; ' +
  '"no face" = analysed time with no face found. The chart shows the same quantity per second (per sample for ' +
  'a video); the table is its average. For a chosen person, "no face" is the time they were not in view.';

// report: {title, details: [string], points, range, categories, labels, summary, fileStem, who?}; who names the
// person the chart and table follow ("Person #2"), face 1 without it.
export function drawReport(report) {
  const { categories, labels, summary } = report;
  const noteLines = 4;
  const height = MARGIN + 40 + 22 * report.details.length + 16 + CHART_HEIGHT + 12 + 34 + 30 +
    ROW_HEIGHT * (categories.length + 1) + 20 + 18 * noteLines + MARGIN;
  const canvas = document.createElement('canvas');
  canvas.width = WIDTH;
  canvas.height = height;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#ffffff';
  ctx.fillRect(0, 0, WIDTH, height);
  ctx.textBaseline = 'top';

  let y = MARGIN;
  ctx.fillStyle = '#1d2330';
  ctx.font = `700 28px ${FONT}`;
  ctx.fillText(report.title, MARGIN, y);
  y += 40;
  ctx.font = `15px ${FONT}`;
  ctx.fillStyle = '#444c5a';
  for (const line of report.details) {
    ctx.fillText(line, MARGIN, y);
    y += 22;
  }
  y += 16;

  const chartArea = { x: MARGIN, y, width: WIDTH - 2 * MARGIN, height: CHART_HEIGHT };
  ctx.fillStyle = '#f3f4f6';
  ctx.fillRect(chartArea.x, chartArea.y, chartArea.width, chartArea.height);
  drawShares(ctx, chartArea, report.points, report.range, categories, labels, '#444c5a');
  y += CHART_HEIGHT + 12;

  // Legend, one line.
  ctx.font = `14px ${FONT}`;
  ctx.textBaseline = 'middle';
  let x = MARGIN;
  for (const category of categories) {
    ctx.fillStyle = labelColour(category, labels);
    ctx.fillRect(x, y + 3, 14, 14);
    ctx.fillStyle = '#1d2330';
    ctx.fillText(category, x + 20, y + 10);
    x += 20 + ctx.measureText(category).width + 22;
  }
  y += 34;

  ctx.font = `600 16px ${FONT}`;
  ctx.fillStyle = '#1d2330';
  ctx.textBaseline = 'top';
  ctx.fillText(summarySentence(summary, report.who ?? null), MARGIN, y);
  y += 30;
  ctx.textBaseline = 'middle';

  // Table: expression, bar, share of analysed time, time. The first column is as wide as its header needs
  // ("Expression of Person #12").
  ctx.font = `600 14px ${FONT}`;
  const nameHeader = `Expression of ${report.who ?? 'face 1'}`;
  const bar = MARGIN + Math.max(170, Math.ceil(ctx.measureText(nameHeader).width) + 24);
  const columns = { name: MARGIN, bar, share: bar + 450, time: bar + 570 };
  ctx.fillStyle = '#444c5a';
  ctx.fillText(nameHeader, columns.name, y + ROW_HEIGHT / 2);
  ctx.fillText('Share of analysed time', columns.bar, y + ROW_HEIGHT / 2);
  ctx.fillText('Share', columns.share, y + ROW_HEIGHT / 2);
  ctx.fillText('Time', columns.time, y + ROW_HEIGHT / 2);
  y += ROW_HEIGHT;
  ctx.font = `14px ${FONT}`;
  for (const category of categories) {
    const share = summary.shares[category] ?? 0;
    const mid = y + ROW_HEIGHT / 2;
    ctx.fillStyle = '#1d2330';
    ctx.fillText(category, columns.name, mid);
    ctx.fillStyle = '#eceef2';
    ctx.fillRect(columns.bar, mid - 7, 420, 14);
    ctx.fillStyle = labelColour(category, labels);
    ctx.fillRect(columns.bar, mid - 7, 420 * share, 14);
    ctx.fillStyle = '#1d2330';
    ctx.fillText(percent(share, 1), columns.share, mid);
    ctx.fillText(formatDuration(share * summary.seconds), columns.time, mid);
    y += ROW_HEIGHT;
  }
  y += 20;

  ctx.font = `13px ${FONT}`;
  ctx.fillStyle = '#5b6473';
  ctx.textBaseline = 'top';
  for (const line of wrap(ctx, REPORT_NOTE, WIDTH - 2 * MARGIN).slice(0, noteLines)) {
    ctx.fillText(line, MARGIN, y);
    y += 18;
  }
  return canvas;
}

function wrap(ctx, text, width) {
  const lines = [];
  let line = '';
  for (const word of text.split(' ')) {
    const candidate = line ? `${line} ${word}` : word;
    if (ctx.measureText(candidate).width > width && line) {
      lines.push(line);
      line = word;
    } else {
      line = candidate;
    }
  }
  if (line) lines.push(line);
  return lines;
}

// Draws the report and offers it as a PNG download named `${fileStem}.png`.
export async function saveReport(report) {
  const canvas = drawReport(report);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
  if (!blob) throw new Error('the browser could not encode the report');
  download(blob, `${report.fileStem}.png`);
}

export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// "2026-05-04 14:03:12" in local time.
export function localTime(date) {
  const two = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ` +
    `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

// "2026-05-04_14-03-12" (local time), for file names.
export function fileStamp(date = new Date()) {
  return localTime(date).replace(' ', '_').replace(/:/g, '-');
}
