// Image (POST /predict) and video (POST /predict/video?format=ndjson) upload panels.

import { authHeaders } from './access.js';
import { formatSeconds, ShareChart } from './chart.js';
import { labelsFromFaces, percent, sameLabels } from './emotions.js';
import { drawImageWithFaces } from './overlay.js';
import { fileStamp, localTime, saveReport } from './report.js';
import { ShareSeries } from './shares.js';
import { renderSummaryBars, summarySentence } from './summary.js';

function setStatus(element, text, kind = 'info') {
  element.textContent = text;
  element.className = `status ${kind}`;
}

// The `detail` of a FastAPI error response as one readable line.
async function errorText(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (typeof body.detail === 'string') detail = body.detail;
    else if (Array.isArray(body.detail)) detail = body.detail.map((d) => d.msg || JSON.stringify(d)).join('; ');
  } catch {
    // Not JSON: keep the status line.
  }
  if (response.status === 404) return 'This server does not offer this analysis.';
  return detail;
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.onload = () => resolve({ image, url });
    image.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new Error('the browser cannot display this image'));
    };
    image.src = url;
  });
}

// The list is an <ol>, so its numbers are the boxes' numbers.
function describeFace(face) {
  const { x, y, w, h } = face.box;
  const signed = (v) => (v >= 0 ? '+' : '−') + Math.abs(v).toFixed(2);
  return `${face.emotion} ${percent(face.confidence)}, valence ${signed(face.valence)}, ` +
    `arousal ${signed(face.arousal)}; box at ${x},${y} size ${w}×${h}`;
}

export function setupImagePanel(getLabels) {
  const form = document.getElementById('image-form');
  const input = document.getElementById('image-file');
  const status = document.getElementById('image-status');
  const canvas = document.getElementById('image-canvas');
  const list = document.getElementById('image-faces');

  let current = null; // the AbortController of the analysis the panel shows

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const file = input.files?.[0];
    if (!file) {
      setStatus(status, 'Choose an image file first.', 'error');
      return;
    }
    // A newer upload replaces this one: its answer, should it come later, must not overwrite the newer one's.
    current?.abort();
    const controller = new AbortController();
    current = controller;
    const replaced = () => controller !== current;
    setStatus(status, 'Analysing…');
    list.replaceChildren();
    canvas.hidden = true; // the last image's faces are not this one's
    const body = new FormData();
    body.append('file', file);
    try {
      const response = await fetch('predict', {
        method: 'POST', body, headers: authHeaders(), signal: controller.signal,
      });
      if (replaced()) return;
      if (!response.ok) {
        setStatus(status, `Could not analyse the image: ${await errorText(response)}`, 'error');
        return;
      }
      const result = await response.json();
      let picture = null;
      try {
        picture = await loadImage(file);
        if (replaced()) return;
        drawImageWithFaces(canvas, picture.image, result.faces, getLabels());
        canvas.hidden = false;
      } catch {
        canvas.hidden = true;
      } finally {
        if (picture) URL.revokeObjectURL(picture.url);
      }
      const count = result.faces.length;
      setStatus(status, `${count} face${count === 1 ? '' : 's'} found in a ${result.width}×${result.height} image.`,
        count ? 'ok' : 'info');
      list.replaceChildren(...result.faces.map((face) => {
        const item = document.createElement('li');
        item.textContent = describeFace(face);
        return item;
      }));
    } catch (error) {
      if (replaced()) return;
      setStatus(status, `Could not reach the server: ${error.message}`, 'error');
    }
  });
}

// Splits a byte stream into parsed JSON lines as they arrive.
async function* ndjsonLines(response, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      if (signal.aborted) return;
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) yield JSON.parse(line);
      }
    }
    buffer += decoder.decode();
    if (buffer.trim()) yield JSON.parse(buffer);
  } finally {
    reader.releaseLock();
  }
}

export function setupVideoPanel(getLabels, getModelDescription) {
  const form = document.getElementById('video-form');
  const input = document.getElementById('video-file');
  const every = document.getElementById('video-every');
  const cancel = document.getElementById('video-cancel');
  const status = document.getElementById('video-status');
  const summaryText = document.getElementById('video-summary');
  const bars = document.getElementById('video-bars');
  const people = document.getElementById('video-people');
  const reportButton = document.getElementById('video-report');
  const chart = new ShareChart(document.getElementById('video-chart'), document.getElementById('video-legend'));
  const series = new ShareSeries(getLabels());
  chart.setCategories(series.categories, series.labels);
  let controller = null;
  let report = null; // what the report button saves: the last finished analysis
  let started = false; // whether an analysis has begun: from then on the panel's labels are the server's answers'

  cancel.addEventListener('click', () => controller?.abort());
  reportButton.addEventListener('click', () => {
    if (report) saveReport(report).catch((error) => setStatus(status, `Could not save the report: ${error.message}`, 'error'));
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const file = input.files?.[0];
    if (!file) {
      setStatus(status, 'Choose a video file first.', 'error');
      return;
    }
    controller?.abort();
    controller = new AbortController();
    const { signal } = controller;
    cancel.disabled = false;
    reportButton.disabled = true;
    report = null;
    summaryText.textContent = '';
    bars.replaceChildren();
    people.replaceChildren();
    // The input's min and max are the API's limits (EVERY_MIN, EVERY_MAX in server/video.py; a test keeps them equal).
    const seconds = Math.min(Number(every.max), Math.max(Number(every.min), Number(every.value) || 1));
    let labels = getLabels();
    // One bucket per analysed frame: each stands for `seconds` of the video.
    series.step = seconds;
    series.reset(labels);
    chart.setCategories(series.categories, labels);
    chart.update([], [0, 10]);
    setStatus(status, 'Uploading and analysing…');

    let end = null; // the closing line: {duration, fps, every, width, height, summary}
    let last = 0;
    const body = new FormData();
    body.append('file', file);
    try {
      const response = await fetch(`predict/video?format=ndjson&every=${seconds}`, {
        method: 'POST',
        body,
        signal,
        headers: authHeaders(),
      });
      if (!response.ok) {
        setStatus(status, `Could not analyse the video: ${await errorText(response)}`, 'error');
        return;
      }
      started = true;
      for await (const line of ndjsonLines(response, signal)) {
        if (line.error || line.detail) {
          setStatus(status, `Analysis stopped: ${line.error || line.detail}`, 'error');
          return;
        }
        if (typeof line.t === 'number' && Array.isArray(line.faces)) {
          // The labels the server answers with are the ones to count by: the page's may be another model's, read
          // before the server restarted with a new one.
          if (line.faces.length && !sameLabels(labelsFromFaces(line.faces), labels)) {
            labels = labelsFromFaces(line.faces);
            series.setLabels(labels);
            chart.setCategories(series.categories, labels);
          }
          series.add(series.size, line.faces);
          last = line.t;
          chart.update(series.points(), [0, Math.max(10, series.size * seconds)]);
          setStatus(status, `Analysed up to ${formatSeconds(line.t)}…`);
        }
        if (line.summary) end = line;
      }
      signal.throwIfAborted(); // the stream stopped because this analysis was cancelled or replaced
      // The server's interval: longer than asked when the video has fewer frames (every=0.1 on a 5 fps video: 0.2).
      if (end?.every > 0) series.step = end.every;
      const duration = end?.duration ?? last;
      const range = [0, Math.max(duration, series.size * series.step)];
      chart.update(series.points(), range);
      setStatus(status, `Done: ${series.size} samples over ${formatSeconds(duration)}.`, 'ok');
      const summary = series.summary();
      summaryText.textContent = summarySentence(summary);
      renderSummaryBars(bars, summary, series.categories, labels);
      renderPeople(people, end?.summary);
      const model = getModelDescription();
      report = {
        title: 'Facial-expression report: video',
        details: [
          `Video ${file.name}: ${formatSeconds(duration)}, one frame analysed every ${series.step} s ` +
            `(${series.size} frames); analysed ${localTime(new Date())} (local time).`,
          ...(model ? [`Model: ${model}`] : []),
          `Made with ${window.location.origin}/`,
        ],
        points: series.points(),
        range,
        categories: series.categories,
        labels,
        summary,
        fileStem: `emotion-video-${fileStamp()}`,
      };
      reportButton.disabled = false;
    } catch (error) {
      // A newer upload replaced this one: the panel is that upload's now.
      if (signal.aborted && controller.signal !== signal) return;
      if (signal.aborted) setStatus(status, 'Cancelled.');
      else setStatus(status, `Could not analyse the video: ${error.message}`, 'error');
    } finally {
      if (controller.signal === signal) cancel.disabled = true;
    }
  });

  return {
    // The model's labels (GET /model): the empty chart's legend shows them until a video is analysed.
    setLabels(labels) {
      if (started) return;
      series.reset(labels);
      chart.setCategories(series.categories, labels);
    },
  };
}

// One line per face the server tracked through the video (summary.tracks), in the page's quantity: the share of the
// video's analysed time in which that person showed their most shown expression. The server's emotion_share is over
// the person's own frames, so it is scaled by samples / sampled.
export function renderPeople(list, summary) {
  const tracks = summary?.tracks ?? [];
  list.replaceChildren(...tracks.map((track) => {
    const item = document.createElement('li');
    const share = (track.emotion_share[track.dominant_emotion] ?? 0) * track.samples / Math.max(1, summary.sampled);
    item.dataset.trackId = String(track.track_id);
    item.dataset.share = String(share);
    item.textContent = `Person #${track.track_id}: in view ${formatSeconds(track.first_seen)}–` +
      `${formatSeconds(track.last_seen)} (${track.samples} of ${summary.sampled} frames); showed ` +
      `${track.dominant_emotion} most: ${percent(share)} of the analysed time.`;
    return item;
  }));
}
