// Draws face boxes and labels on a canvas laid exactly over a <video> (or <img>) element.
//
// Boxes arrive in the pixel coordinates of the frame that was sent (a downscaled
// copy of the camera picture). The picture occupies only part of the element's
// CSS box when object-fit letterboxes it, and the preview may be mirrored, so
// each box goes: sent-frame pixels -> source pixels -> displayed CSS pixels.
//
// A face is drawn the same way everywhere: a box in its expression's colour, captioned like the "Current:" line
// ("#2 happy 91%" for a tracked person, "1: happy 91%" for an image's faces), and under it a small valence / arousal
// gauge in white, so the box colour says one thing only (who it is, is the caption's number).

import { faceCaption, labelColour, textColourOn } from './emotions.js';

// Where the picture lies inside the element, in CSS pixels, for the element's object-fit.
export function contentRect(element, sourceWidth, sourceHeight) {
  const boxWidth = element.clientWidth;
  const boxHeight = element.clientHeight;
  if (!sourceWidth || !sourceHeight || !boxWidth || !boxHeight) {
    return { x: 0, y: 0, width: boxWidth, height: boxHeight };
  }
  const fit = getComputedStyle(element).objectFit || 'fill';
  let scaleX = boxWidth / sourceWidth;
  let scaleY = boxHeight / sourceHeight;
  if (fit === 'contain' || fit === 'scale-down') {
    let s = Math.min(scaleX, scaleY);
    if (fit === 'scale-down') s = Math.min(s, 1);
    scaleX = scaleY = s;
  } else if (fit === 'cover') {
    scaleX = scaleY = Math.max(scaleX, scaleY);
  } else if (fit === 'none') {
    scaleX = scaleY = 1;
  }
  const width = sourceWidth * scaleX;
  const height = sourceHeight * scaleY;
  // object-position defaults to centre; that is all this page uses.
  return { x: (boxWidth - width) / 2, y: (boxHeight - height) / 2, width, height };
}

// Valence / arousal gauge: two rows, "V" and "A", each a track centred on 0 with a white bar to the value in [-1, 1].
export function drawAffectGauge(ctx, x, y, width, valence, arousal, fontSize) {
  const letterFont = Math.max(8, Math.round(fontSize * 0.7));
  const rowH = letterFont + 3;
  const pad = 3;
  const height = 2 * rowH + pad;
  ctx.save();
  ctx.fillStyle = 'rgba(20, 20, 20, 0.72)';
  ctx.fillRect(x, y, width, height);
  ctx.font = `700 ${letterFont}px system-ui, sans-serif`;
  ctx.textBaseline = 'middle';
  const letterW = ctx.measureText('V').width;
  const trackX = x + pad + letterW + pad;
  const trackW = Math.max(10, x + width - pad - trackX);
  const centre = trackX + trackW / 2;
  [['V', valence], ['A', arousal]].forEach(([letter, value], row) => {
    const midY = y + pad / 2 + rowH * row + rowH / 2;
    ctx.fillStyle = '#ffffff';
    ctx.fillText(letter, x + pad, midY);
    ctx.fillStyle = 'rgba(255, 255, 255, 0.3)';
    ctx.fillRect(trackX, midY - 1, trackW, 2);
    const v = Number.isFinite(value) ? Math.max(-1, Math.min(1, value)) : 0;
    const barH = Math.max(3, rowH * 0.5);
    ctx.fillStyle = '#ffffff';
    ctx.fillRect(Math.min(centre, centre + (v * trackW) / 2), midY - barH / 2, Math.abs(v * trackW) / 2, barH);
    ctx.fillRect(centre - 0.5, midY - rowH / 2 + 1, 1, rowH - 2); // the zero mark
  });
  ctx.restore();
  return height;
}

// One face: box and caption in the expression's colour, the gauge under the box (inside it where there is no room).
// (x, y, w, h) in the context's units; bounds: {width, height} of the drawable area; labels: the model's labels.
export function drawFace(ctx, face, index, { x, y, w, h }, bounds, fontSize, labels = []) {
  const colour = labelColour(face.emotion, labels);
  ctx.save();
  ctx.lineWidth = Math.max(2, fontSize / 7);
  ctx.strokeStyle = colour;
  ctx.strokeRect(x, y, w, h);

  ctx.font = `600 ${fontSize}px system-ui, sans-serif`;
  ctx.textBaseline = 'top';
  const text = faceCaption(face, index);
  const pad = Math.round(fontSize / 5);
  const tagW = ctx.measureText(text).width + 2 * pad;
  const tagH = fontSize + 2 * pad;
  const tagX = Math.max(0, Math.min(x - ctx.lineWidth / 2, bounds.width - tagW));
  const tagY = y - tagH >= 0 ? y - tagH : y;
  ctx.fillStyle = colour;
  ctx.fillRect(tagX, tagY, tagW, tagH);
  ctx.fillStyle = textColourOn(colour);
  ctx.fillText(text, tagX + pad, tagY + pad);
  ctx.restore();

  const gaugeW = Math.max(fontSize * 5, Math.min(w, fontSize * 9));
  const gaugeH = 2 * (Math.max(8, Math.round(fontSize * 0.7)) + 3) + 3;
  const gaugeX = Math.max(0, Math.min(x, bounds.width - gaugeW));
  const gaugeY = y + h + 2 + gaugeH <= bounds.height ? y + h + 2 : Math.max(0, y + h - gaugeH - 2);
  drawAffectGauge(ctx, gaugeX, gaugeY, gaugeW, face.valence, face.arousal, fontSize);
}

export class FaceOverlay {
  constructor(canvas, element) {
    this.canvas = canvas;
    this.element = element;
    this.ctx = canvas.getContext('2d');
    this.mirrored = false;
    this.labels = [];
    this.last = null;
    // Redraw on layout changes (rotation, window resize) so boxes stay aligned.
    this.resizeObserver = new ResizeObserver(() => this.redraw());
    this.resizeObserver.observe(element);
  }

  setLabels(labels) {
    this.labels = labels;
  }

  setMirrored(mirrored) {
    this.mirrored = mirrored;
    this.redraw();
  }

  // Match the canvas backing store to its CSS size at device-pixel resolution.
  fitCanvas() {
    const dpr = window.devicePixelRatio || 1;
    const width = Math.round(this.canvas.clientWidth * dpr);
    const height = Math.round(this.canvas.clientHeight * dpr);
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  clear() {
    this.last = null;
    delete this.canvas.dataset.frame;
    this.fitCanvas();
    this.ctx.clearRect(0, 0, this.canvas.clientWidth, this.canvas.clientHeight);
  }

  redraw() {
    if (this.last) this.draw(this.last);
  }

  // result: {width, height, faces}; width/height are those of the frame the boxes refer to.
  draw(result) {
    this.last = result;
    // What is drawn, in the sent frame's pixels: for tests and for anyone inspecting the page.
    this.canvas.dataset.frame = JSON.stringify({
      width: result.width, height: result.height, boxes: result.faces.map((f) => f.box),
      people: result.faces.map((f) => f.person ?? null),
    });
    this.fitCanvas();
    const cssWidth = this.canvas.clientWidth;
    const cssHeight = this.canvas.clientHeight;
    this.ctx.clearRect(0, 0, cssWidth, cssHeight);

    const sourceWidth = this.element.videoWidth || this.element.naturalWidth || result.width;
    const sourceHeight = this.element.videoHeight || this.element.naturalHeight || result.height;
    const rect = contentRect(this.element, sourceWidth, sourceHeight);
    // The sent frame is a uniformly downscaled copy of the source, so one scale per axis maps it.
    const sx = rect.width / result.width;
    const sy = rect.height / result.height;
    const fontSize = Math.max(12, Math.min(18, rect.width / 40));

    result.faces.forEach((face, index) => {
      const b = face.box;
      let x = rect.x + b.x * sx;
      const w = b.w * sx;
      // The video is mirrored with a CSS transform about its centre; mirror the box the
      // same way but keep the text readable.
      if (this.mirrored) x = cssWidth - x - w;
      const box = { x, y: rect.y + b.y * sy, w, h: b.h * sy };
      drawFace(this.ctx, face, index, box, { width: cssWidth, height: cssHeight }, fontSize, this.labels);
    });
  }
}

// Draws an image at natural resolution with its faces (upload panel); boxes are in image pixels.
export function drawImageWithFaces(canvas, image, faces, labels = []) {
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(image, 0, 0);
  const scale = Math.max(1, Math.max(canvas.width, canvas.height) / 640);
  const bounds = { width: canvas.width, height: canvas.height };
  faces.forEach((face, index) => drawFace(ctx, face, index, face.box, bounds, Math.round(14 * scale), labels));
}
