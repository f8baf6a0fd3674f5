// Wires the page: model info, live camera stream, timeline, session summary, upload panels.

import { setupAccessForm } from './access.js';
import { Camera, CameraError } from './camera.js';
import { ShareChart } from './chart.js';
import { faceCaption, labelColour, labelsFromFaces, personName, sameLabels } from './emotions.js';
import { LiveClient } from './live.js';
import { drawAffectGauge, FaceOverlay } from './overlay.js';
import { download, fileStamp, localTime, saveReport } from './report.js';
import { Session } from './session.js';
import { renderSummaryBars, summarySentence } from './summary.js';
import { setupImagePanel, setupVideoPanel } from './upload.js';

// The timeline shows the last two minutes; a young session gets a 30 s axis so its first seconds are visible.
const TIMELINE_WINDOW_S = 120;
const TIMELINE_MIN_WINDOW_S = 30;
const TIMELINE_REDRAW_MS = 250;
// Results whose labels GET /model did not name: the server may have changed its model. GET /model is read again for
// them, at most this long after the last read began.
const MODEL_REFRESH_MS = 2000;

const $ = (id) => document.getElementById(id);

const elements = {
  modelInfo: $('model-info'),
  toggle: $('camera-toggle'),
  mirror: $('mirror'),
  maxFaces: $('max-faces'),
  status: $('live-status'),
  video: $('video'),
  overlay: $('overlay'),
  placeholder: $('stage-placeholder'),
  fps: $('stat-fps'),
  rtt: $('stat-rtt'),
  server: $('stat-server'),
  faces: $('stat-faces'),
  currentLabels: $('current-labels'),
  summaryText: $('summary-text'),
  summaryBars: $('summary-bars'),
  csv: $('csv-download'),
  report: $('report-download'),
  reset: $('session-reset'),
  person: $('person-select'),
  timelineTitle: $('timeline-title'),
  timeline: $('timeline'),
  summaryHint: $('summary-hint'),
};

let labels = []; // the ones counted: the live results', or GET /model's before the stream's first result
let modelInfo = null; // GET /model's last answer; null before it and when the last read failed
let modelLabels = []; // the labels that answer named (none: it named none, or the read failed)
let modelDescription = '';
let modelKey = ''; // what tells one model from another in GET /model's answer
let modelReadStartedAt = -Infinity;
let modelReading = false; // one GET /model read at a time
let modelReadAgain = false; // asked for while one was in flight: read once more when it is answered
let modelReadTimer = null; // a read for the results' labels, waiting until MODEL_REFRESH_MS have passed
let resultLabels = []; // the labels the live stream's results carry (none before its first result)
let followedLabels = []; // the result labels GET /model has been read for since the stream connected
const session = new Session();
const timeline = new ShareChart($('timeline'), $('timeline-legend'));
const overlay = new FaceOverlay(elements.overlay, elements.video);
setupImagePanel(() => labels);
const videoPanel = setupVideoPanel(() => labels, () => modelDescription); // applyLabels passes it the model's labels
const camera = new Camera(elements.video);
const resultTimes = [];
let rttAverage = null;
let timelineDirty = false;
let timelineTimer = null;

function setStatus(text, kind = 'info') {
  elements.status.textContent = text;
  elements.status.className = `status ${kind}`;
}

// GET /model, one read at a time: asked for while one is in flight, it reads once more when that one is answered.
// Read when the page opens, and again when the server may have restarted with another model: after the live stream
// reconnects, and when results come with labels it did not name (readModelSoon).
async function readModel() {
  clearTimeout(modelReadTimer);
  modelReadTimer = null;
  if (modelReading) {
    modelReadAgain = true;
    return;
  }
  modelReading = true;
  modelReadStartedAt = performance.now();
  try {
    await loadModelInfo();
  } finally {
    modelReading = false;
  }
  if (modelReadAgain) {
    modelReadAgain = false;
    readModel();
  }
}

// GET /model for the results' labels, once MODEL_REFRESH_MS have passed since the last read began; not at all if an
// answer names them by then.
function readModelSoon() {
  if (modelReadTimer !== null) return;
  const wait = Math.max(0, modelReadStartedAt + MODEL_REFRESH_MS - performance.now());
  modelReadTimer = setTimeout(() => {
    modelReadTimer = null;
    if (!sameLabels(resultLabels, modelLabels)) readModel();
  }, wait);
}

// GET /model's answer: labels in output order (7 or 8 classes) plus what to show in the header. The page counts by
// the labels the live results carry, and keeps them when the answer names others (behind a load balancer it may come
// from another server than the stream's).
async function loadModelInfo() {
  let changed = false;
  try {
    const response = await fetch('model');
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    modelInfo = await response.json();
    const meta = modelInfo.metadata ?? {};
    modelLabels = Array.isArray(modelInfo.labels) ? modelInfo.labels : [];
    // An answer without labels (no server of this project's: its models must name theirs) leaves the page the labels
    // it has; without any yet, it takes them from the first result (followModel).
    if (modelLabels.length && (!resultLabels.length || sameLabels(modelLabels, resultLabels))) labels = modelLabels;
    if (Number.isInteger(modelInfo.max_faces)) setMaxFacesLimit(modelInfo.max_faces);
    const previous = modelKey;
    // Not the detector: a fall back to Haar is no new model.
    modelKey = JSON.stringify([meta.label_source, meta.version, modelLabels]);
    changed = previous !== '' && modelKey !== previous;
  } catch (error) {
    modelInfo = null;
    modelLabels = [];
    elements.modelInfo.textContent = `Model information unavailable (${error.message}).`;
  }
  applyLabels(labels);
  if (changed) {
    setStatus(`The server now runs another model (${modelDescription}); the session goes on with its labels.`);
  }
}

// The header: where the model's labels come from, the labels the page counts by, its version and the face detector.
// When GET /model named other labels than the results carry, its version and detector are another model's (another
// server's, or from before a restart): the header names the results' labels and says their version is unknown.
function describeModel() {
  if (!modelInfo) return; // the header says why there is no model information
  const meta = modelInfo.metadata ?? {};
  const source = meta.label_source || meta.dataset;
  const version = meta.version ? `version ${meta.version}` : null;
  const counted = labels.length ? `${labels.length} emotions (${labels.join(', ')})` : null;
  let parts = [source, counted, version, modelInfo.detector ? `face detector: ${modelInfo.detector}` : null];
  if (modelLabels.length && !sameLabels(modelLabels, labels)) {
    const other = [source, `${modelLabels.length} emotions`, version].filter(Boolean).join(', ');
    parts = [counted, `version unknown: GET /model describes another model (${other})`];
  }
  parts = parts.filter(Boolean);
  modelDescription = parts.join(' · ');
  elements.modelInfo.textContent = parts.length ? `Model: ${modelDescription}` : '';
}

// The session keeps labels of an earlier model that this one lacks (Session.setLabels): the charts draw the session's.
function applyLabels(newLabels) {
  labels = newLabels;
  describeModel();
  session.setLabels(labels);
  timeline.setCategories(session.shares.categories, session.labels);
  overlay.setLabels(labels);
  videoPanel.setLabels(labels);
  updatePeople();
  renderSummary();
}

// Within the input's min and max (the server's limit, once GET /model has said it): the server refuses a larger one.
function maxFaces() {
  const { min, max, value } = elements.maxFaces;
  const n = Math.round(Number(value));
  return Math.min(Number(max) || Infinity, Math.max(Number(min), Number.isFinite(n) ? n : 1));
}

// GET /model's max_faces (EMOTION_MAX_FACES): the input offers up to it, and a value over it is brought down to it.
function setMaxFacesLimit(limit) {
  elements.maxFaces.max = String(limit);
  const n = maxFaces();
  if (elements.maxFaces.value === String(n)) return;
  elements.maxFaces.value = String(n);
  client.configure({ max_faces: n });
}

const client = new LiveClient(() => camera.captureJpeg(), {
  onResult(result, rtt) {
    const now = performance.now();
    followModel(result);
    session.add(now, result, client.connections); // numbers the faces' people before they are drawn
    updatePeople();
    overlay.draw(result);
    updateStats(now, result, rtt);
    timelineDirty = true;
  },
  onStatus: setStatus,
  onReconnected() {
    // A restarted server may serve another model, or another version of the same labels.
    resultLabels = [];
    followedLabels = [];
    readModel();
  },
  onError(message) {
    setStatus(`Server: ${message}`, 'error');
  },
  onRefused(reason) {
    stopCamera(`The server refused the live stream: ${reason}. Check the API key at the bottom of the page.`, 'error');
  },
});

// A result whose labels are not the page's: count it under its own labels now. When GET /model named others, read it
// again, once per new set of result labels in a connection (not on every result, should it keep naming others). When
// GET /model names none, the results' are the labels, with nothing to read.
function followModel(result) {
  const seen = labelsFromFaces(result.faces);
  if (!seen.length) return;
  resultLabels = seen;
  if (!sameLabels(seen, labels)) applyLabels(seen);
  const namedNone = modelInfo && !modelLabels.length;
  if (namedNone || sameLabels(seen, modelLabels) || sameLabels(seen, followedLabels)) return;
  followedLabels = seen;
  readModelSoon();
}

function updateStats(now, result, rtt) {
  resultTimes.push(now);
  while (resultTimes.length && now - resultTimes[0] > 1000) resultTimes.shift();
  elements.fps.textContent = resultTimes.length > 1 ? String(resultTimes.length) : '–';
  if (rtt !== null) {
    rttAverage = rttAverage === null ? rtt : 0.9 * rttAverage + 0.1 * rtt;
    elements.rtt.textContent = `${Math.round(rttAverage)} ms`;
  }
  elements.server.textContent = `${Math.round(result.server_ms)} ms`;
  elements.faces.textContent = String(result.faces.length);
  showCurrent(result.faces);
}

// "1: happy 91% · 2: neutral 60%", each with its box's colour, numbered as the boxes are.
function showCurrent(faces) {
  elements.currentLabels.dataset.labels = faces.map((f) => f.emotion).join(',');
  if (!faces.length) {
    elements.currentLabels.textContent = 'no face';
    return;
  }
  const parts = faces.flatMap((face, i) => {
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = labelColour(face.emotion, labels);
    const item = document.createElement('span');
    item.className = 'current-face';
    item.append(swatch, document.createTextNode(faceCaption(face, i)));
    return i ? [document.createTextNode(' · '), item] : [item];
  });
  elements.currentLabels.replaceChildren(...parts);
}

// The person the timeline, summary and report follow; null: face 1.
function selectedPerson() {
  return elements.person.value ? Number(elements.person.value) : null;
}

function followed() {
  const person = selectedPerson();
  return { series: session.series(person), who: person === null ? null : personName(person) };
}

// One option per person seen so far, added as they appear.
function updatePeople() {
  if (elements.person.options.length > session.people.size + 1) elements.person.length = 1; // the session was reset
  for (let person = elements.person.options.length; person <= session.people.size; person++) {
    elements.person.add(new Option(`person #${person}`, String(person)));
  }
}

function redrawTimeline() {
  if (!timelineDirty) return;
  timelineDirty = false;
  const elapsed = session.elapsedSeconds(performance.now());
  const span = Math.min(TIMELINE_WINDOW_S, Math.max(TIMELINE_MIN_WINDOW_S, Math.ceil(elapsed)));
  const end = Math.max(span, Math.ceil(elapsed));
  const start = end - span;
  timeline.update(followed().series.points(Math.floor(start), Math.ceil(end)), [start, end]);
  renderSummary();
}

function renderSummary() {
  const { series, who } = followed();
  const summary = series.summary();
  const whose = who ?? 'face 1';
  elements.timelineTitle.textContent = `Timeline: expression of ${whose}`;
  elements.timeline.setAttribute('aria-label',
    `Stacked bars: share of each second's frames per expression of ${whose}`);
  // The timeline shows the last two minutes; the summary is the whole session's.
  elements.summaryHint.textContent = `Share of the session's analysed time per expression of ${whose}: the ` +
    `average of the timeline's bars over the whole session (the timeline shows its last ${TIMELINE_WINDOW_S / 60} minutes).`;
  elements.csv.disabled = session.rows.length === 0;
  elements.report.disabled = summary.buckets === 0;
  const truncated = session.rowsTruncated ? ' The CSV holds the first 200,000 rows.' : '';
  elements.summaryText.textContent = summarySentence(summary, who) + truncated;
  renderSummaryBars(elements.summaryBars, summary, session.shares.categories, session.labels);
}

// The whole session (not only the last two minutes) as a PNG.
function saveSessionReport() {
  const { series, who } = followed();
  const summary = series.summary();
  const points = series.points();
  const end = points.length ? points[points.length - 1].t + 1 : 1;
  const from = new Date(session.startedWallMs ?? Date.now());
  const to = new Date(session.lastWallMs ?? Date.now());
  return saveReport({
    title: 'Facial-expression session report',
    details: [
      `Live camera session, ${localTime(from)} – ${localTime(to).slice(11)} (local time); ` +
        `${summary.frames} frames analysed over ${summary.buckets} seconds.`,
      ...(modelDescription ? [`Model: ${modelDescription}`] : []),
      `Made with ${window.location.origin}/`,
    ],
    points,
    range: [0, Math.max(end, 10)],
    categories: session.shares.categories,
    labels: session.labels,
    summary,
    who,
    fileStem: `emotion-session-${fileStamp(from)}`,
  });
}

function resetStats() {
  resultTimes.length = 0;
  rttAverage = null;
  for (const el of [elements.fps, elements.rtt, elements.server, elements.faces]) el.textContent = '–';
  elements.currentLabels.replaceChildren('–');
  elements.currentLabels.dataset.labels = '';
}

async function startCamera() {
  elements.toggle.disabled = true;
  setStatus('Starting the camera…');
  try {
    await camera.start();
  } catch (error) {
    setStatus(error instanceof CameraError ? error.message : `Camera error: ${error.message}`, 'error');
    elements.toggle.disabled = false;
    return;
  }
  elements.placeholder.hidden = true;
  elements.toggle.textContent = 'Stop camera';
  elements.toggle.disabled = false;
  client.start({ max_faces: maxFaces() });
  timelineTimer = setInterval(redrawTimeline, TIMELINE_REDRAW_MS);
}

function stopCamera(message = 'Camera is off.', kind = 'info') {
  client.stop();
  camera.stop();
  clearInterval(timelineTimer);
  timelineDirty = true;
  redrawTimeline();
  overlay.clear();
  resetStats();
  elements.placeholder.hidden = false;
  elements.toggle.textContent = 'Start camera';
  setStatus(message, kind);
}

camera.onended = () => stopCamera('The camera stopped (disconnected or permission withdrawn).');

// The camera button is named for what a press does ("Start camera", "Stop camera") and has no aria-pressed: with
// both, a screen reader says "Stop camera, pressed" (WAI-ARIA APG, button pattern: a toggle keeps its label).
elements.toggle.addEventListener('click', () => (camera.running ? stopCamera() : startCamera()));

elements.mirror.addEventListener('change', () => {
  elements.video.classList.toggle('mirrored', elements.mirror.checked);
  overlay.setMirrored(elements.mirror.checked);
});
elements.video.classList.toggle('mirrored', elements.mirror.checked);
overlay.setMirrored(elements.mirror.checked);

elements.maxFaces.addEventListener('change', () => {
  elements.maxFaces.value = String(maxFaces());
  client.configure({ max_faces: maxFaces() });
});

elements.csv.addEventListener('click', () => {
  const stamp = fileStamp(new Date(session.startedWallMs ?? Date.now()));
  download(new Blob([session.csv()], { type: 'text/csv' }), `emotion-session-${stamp}.csv`);
});

elements.report.addEventListener('click', () => {
  saveSessionReport().catch((error) => setStatus(`Could not save the report: ${error.message}`, 'error'));
});

elements.person.addEventListener('change', () => {
  timelineDirty = true;
  redrawTimeline();
});

elements.reset.addEventListener('click', () => {
  session.reset(labels); // drops the labels an earlier model had that this one lacks
  timeline.setCategories(session.shares.categories, session.labels);
  elements.person.length = 1;
  timelineDirty = true;
  redrawTimeline();
});

// The gauge's legend is the gauge itself, drawn for valence +0.6 and arousal -0.3.
drawAffectGauge($('affect-legend').getContext('2d'), 0, 0, 120, 0.6, -0.3, 16);

setupAccessForm();
readModel().then(() => {
  timelineDirty = true;
  redrawTimeline();
});
