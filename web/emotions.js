// Colours and label helpers shared by the live overlay, the charts and the upload panels.
// Labels come from GET /model, so FER2013 (7 classes) and FER+ (8 classes) names both map here.

const NAMED_COLOURS = {
  neutral: '#9aa0a6',
  happiness: '#2e9d4f', happy: '#2e9d4f',
  surprise: '#f2b233', surprised: '#f2b233',
  sadness: '#3f6fd1', sad: '#3f6fd1',
  anger: '#d93025', angry: '#d93025',
  disgust: '#7b8b2a', disgusted: '#7b8b2a',
  fear: '#8e44ad', fearful: '#8e44ad',
  contempt: '#b5651d',
};

// Fallback for labels a future model might add.
const SPARE_COLOURS = ['#00897b', '#c2185b', '#5d4037', '#455a64', '#ef6c00', '#6a1b9a'];

export function labelColour(label, labels = []) {
  const key = String(label).toLowerCase();
  if (key in NAMED_COLOURS) return NAMED_COLOURS[key];
  const index = Math.max(0, labels.indexOf(label));
  return SPARE_COLOURS[index % SPARE_COLOURS.length];
}

const RED = [214, 48, 39];
const GREY = [150, 150, 150];
const GREEN = [34, 170, 76];

// Valence in [-1, 1]: red when negative, grey at zero, green when positive.
export function valenceColour(valence) {
  const v = Number.isFinite(valence) ? Math.max(-1, Math.min(1, valence)) : 0;
  const target = v < 0 ? RED : GREEN;
  const t = Math.abs(v);
  const rgb = GREY.map((g, i) => Math.round(g + (target[i] - g) * t));
  return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
}

export function percent(x, digits = 0) {
  return `${(100 * x).toFixed(digits)}%`;
}

// Mean probability per label over a list of faces; null when there are no faces.
export function meanProbabilities(faces, labels) {
  if (!faces.length) return null;
  const sums = Object.fromEntries(labels.map((l) => [l, 0]));
  for (const face of faces) {
    for (const label of labels) sums[label] += face.probabilities?.[label] ?? 0;
  }
  for (const label of labels) sums[label] /= faces.length;
  return sums;
}

// Labels in model order; falls back to the keys of the first face's probabilities.
export function labelsFromFaces(faces) {
  for (const face of faces) {
    if (face.probabilities) return Object.keys(face.probabilities);
  }
  return [];
}
