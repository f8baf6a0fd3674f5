// Image (POST /predict) and video (POST /predict/video?format=ndjson) upload panels.

import { labelsFromFaces, meanProbabilities, percent } from './emotions.js';
import { drawImageWithFaces } from './overlay.js';
import { formatSeconds, renderBars, StackedChart } from './timeline.js';

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

function describeFace(face) {
  const { x, y, w, h } = face.box;
  return `${face.emotion} (${percent(face.confidence)}), box at ${x},${y} size ${w}×${h}`;
}

export function setupImagePanel() {
  const form = document.getElementById('image-form');
  const input = document.getElementById('image-file');
  const status = document.getElementById('image-status');
  const canvas = document.getElementById('image-canvas');
  const list = document.getElementById('image-faces');

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const file = input.files?.[0];
    if (!file) {
      setStatus(status, 'Choose an image file first.', 'error');
      return;
    }
    setStatus(status, 'Analysing…');
    list.replaceChildren();
    const body = new FormData();
    body.append('file', file);
    try {
      const response = await fetch('predict', { method: 'POST', body });
      if (!response.ok) {
        setStatus(status, `Could not analyse the image: ${await errorText(response)}`, 'error');
        return;
      }
      const result = await response.json();
      let picture = null;
      try {
        picture = await loadImage(file);
        drawImageWithFaces(canvas, picture.image, result.faces);
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

export function setupVideoPanel(getLabels) {
  const form = document.getElementById('video-form');
  const input = document.getElementById('video-file');
  const every = document.getElementById('video-every');
  const cancel = document.getElementById('video-cancel');
  const status = document.getElementById('video-status');
  const summary = document.getElementById('video-summary');
  const bars = document.getElementById('video-bars');
  const chart = new StackedChart(document.getElementById('video-chart'), document.getElementById('video-legend'));
  chart.setLabels(getLabels());
  let controller = null;

  // The server's summary counts the largest face of each sampled frame; without it (an older server), all faces.
  function showSummary(server, counts, faceCount, labels) {
    let share = server?.emotion_share;
    let dominant = server?.dominant_emotion;
    let basis = server ? `${server.with_face} of ${server.sampled} sampled frames had a face` : '';
    if (!server) {
      share = Object.fromEntries(Object.entries(counts).map(([label, n]) => [label, n / faceCount]));
      dominant = Object.entries(counts).sort((a, b) => b[1] - a[1])[0]?.[0];
      basis = `${faceCount} face samples`;
    }
    if (!dominant) {
      summary.textContent = 'No faces were found in the video.';
      return;
    }
    summary.textContent = `Dominant emotion: ${dominant} (${percent(share[dominant] ?? 0)}; ${basis}).`;
    const order = labels.length ? labels : Object.keys(share);
    renderBars(bars, order.map((label) => ({ label, share: share[label] ?? 0, count: counts[label] ?? 0 })), order);
  }

  cancel.addEventListener('click', () => controller?.abort());

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
    summary.textContent = '';
    bars.replaceChildren();
    const seconds = Math.max(0.2, Number(every.value) || 1);
    let labels = getLabels();
    chart.setLabels(labels);
    chart.step = seconds;
    chart.update([], [0, 10]);
    setStatus(status, 'Uploading and analysing…');

    const points = [];
    let end = null; // the closing line: {duration, fps, every, width, height, summary}
    const counts = {};
    let faceCount = 0;
    const body = new FormData();
    body.append('file', file);
    try {
      const response = await fetch(`predict/video?format=ndjson&every=${seconds}`, { method: 'POST', body, signal });
      if (!response.ok) {
        setStatus(status, `Could not analyse the video: ${await errorText(response)}`, 'error');
        return;
      }
      for await (const line of ndjsonLines(response, signal)) {
        if (line.error || line.detail) {
          setStatus(status, `Analysis stopped: ${line.error || line.detail}`, 'error');
          return;
        }
        if (typeof line.t === 'number' && Array.isArray(line.faces)) {
          if (!labels.length) {
            labels = labelsFromFaces(line.faces);
            chart.setLabels(labels);
          }
          for (const face of line.faces) {
            counts[face.emotion] = (counts[face.emotion] || 0) + 1;
            faceCount += 1;
          }
          points.push({ t: line.t, shares: meanProbabilities(line.faces, labels) });
          const end = Math.max(10, line.t + seconds);
          chart.update(points, [0, end]);
          setStatus(status, `Analysed up to ${formatSeconds(line.t)}…`);
        }
        if (line.summary) end = line;
      }
      const duration = end?.duration ?? (points.length ? points[points.length - 1].t : 0);
      chart.update(points, [0, Math.max(duration, seconds)]);
      setStatus(status, `Done: ${points.length} samples over ${formatSeconds(duration)}.`, 'ok');
      showSummary(end?.summary, counts, faceCount, labels);
    } catch (error) {
      if (signal.aborted) setStatus(status, 'Cancelled.');
      else setStatus(status, `Could not analyse the video: ${error.message}`, 'error');
    } finally {
      cancel.disabled = true;
    }
  });
}
