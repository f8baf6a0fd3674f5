// The page's colour language and face captions, shared by the boxes, the charts, the summaries and the report.
// Labels come from GET /model, so FER2013 (7 classes) and FER+ (8 classes) names both map here.
//
// One colour per expression, everywhere. The palette is Okabe & Ito's colour-blind-safe set (plus a wine red for
// the ninth colour); grey is kept for "no face", so no expression is grey.

export const NO_FACE = 'no face';
export const NO_FACE_COLOUR = '#bdbdbd';

const NAMED_COLOURS = {
  neutral: '#56b4e9',
  happiness: '#e69f00', happy: '#e69f00',
  surprise: '#f0e442', surprised: '#f0e442',
  sadness: '#0072b2', sad: '#0072b2',
  anger: '#d55e00', angry: '#d55e00',
  disgust: '#009e73', disgusted: '#009e73',
  fear: '#cc79a7', fearful: '#cc79a7',
  contempt: '#882255',
};

// For labels a future model might add.
const SPARE_COLOURS = ['#6a3d9a', '#b15928', '#1f78b4', '#33a02c', '#000000', '#fb9a99'];

export function labelColour(label, labels = []) {
  if (label === NO_FACE) return NO_FACE_COLOUR;
  const key = String(label).toLowerCase();
  if (key in NAMED_COLOURS) return NAMED_COLOURS[key];
  const index = Math.max(0, labels.indexOf(label));
  return SPARE_COLOURS[index % SPARE_COLOURS.length];
}

// Near-black or white, whichever has the higher contrast ratio (WCAG 2) on a background colour given as #rrggbb.
export function textColourOn(hex) {
  const linear = (v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
  const luminance = (colour) => {
    const [r, g, b] = [1, 3, 5].map((i) => linear(parseInt(colour.slice(i, i + 2), 16) / 255));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const background = luminance(hex);
  const dark = '#111111';
  return (background + 0.05) / (luminance(dark) + 0.05) >= 1.05 / (background + 0.05) ? dark : '#ffffff';
}

export function percent(x, digits = 0) {
  return `${(100 * x).toFixed(digits)}%`;
}

// How a face is named on its box, in the "Current:" line and in the image panel's list. A face of the live stream
// has a person number it keeps while the server tracks it ("#2 happy 91%"; the number, not a colour, says who it is);
// other faces are numbered largest first ("1: happy 91%"), as the server sends them: face 1 is the one the charts
// follow unless a person is chosen.
export function faceCaption(face, index) {
  const who = Number.isInteger(face.person) ? `#${face.person} ` : `${index + 1}: `;
  return `${who}${face.emotion} ${percent(face.confidence)}`;
}

export function personName(person) {
  return `Person #${person}`;
}

// Labels in model order; falls back to the keys of the first face's probabilities.
export function labelsFromFaces(faces) {
  for (const face of faces) {
    if (face.probabilities) return Object.keys(face.probabilities);
  }
  return [];
}

// Whether two label lists name the same classes (in any order): a result's labels against the model's.
export function sameLabels(a, b) {
  return a.length === b.length && a.every((label) => b.includes(label));
}

// A legend list: one swatch per category, in the order given.
export function renderLegend(list, categories, labels = categories) {
  list.replaceChildren(...categories.map((category) => {
    const item = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = labelColour(category, labels);
    item.append(swatch, document.createTextNode(category));
    return item;
  }));
}
