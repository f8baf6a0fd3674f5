// Draws face boxes and labels on a canvas laid exactly over a <video> (or <img>) element.
//
// Boxes arrive in the pixel coordinates of the frame that was sent (a downscaled
// copy of the camera picture). The picture occupies only part of the element's
// CSS box when object-fit letterboxes it, and the preview may be mirrored, so
// each box goes: sent-frame pixels -> source pixels -> displayed CSS pixels.

import { valenceColour } from './emotions.js';

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

export class FaceOverlay {
  constructor(canvas, element) {
    this.canvas = canvas;
    this.element = element;
    this.ctx = canvas.getContext('2d');
    this.mirrored = false;
    this.last = null;
    // Redraw on layout changes (rotation, window resize) so boxes stay aligned.
    this.resizeObserver = new ResizeObserver(() => this.redraw());
    this.resizeObserver.observe(element);
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
    });
    this.fitCanvas();
    const ctx = this.ctx;
    const cssWidth = this.canvas.clientWidth;
    ctx.clearRect(0, 0, cssWidth, this.canvas.clientHeight);

    const sourceWidth = this.element.videoWidth || this.element.naturalWidth || result.width;
    const sourceHeight = this.element.videoHeight || this.element.naturalHeight || result.height;
    const rect = contentRect(this.element, sourceWidth, sourceHeight);
    // The sent frame is a uniformly downscaled copy of the source, so one scale per axis maps it.
    const sx = rect.width / result.width;
    const sy = rect.height / result.height;

    const fontSize = Math.max(12, Math.min(18, rect.width / 40));
    ctx.font = `600 ${fontSize}px system-ui, sans-serif`;
    ctx.textBaseline = 'top';
    ctx.lineWidth = Math.max(2, rect.width / 320);

    for (const face of result.faces) {
      const b = face.box;
      let x = rect.x + b.x * sx;
      const y = rect.y + b.y * sy;
      const w = b.w * sx;
      const h = b.h * sy;
      // The video is mirrored with a CSS transform about its centre; mirror the box the
      // same way but keep the text readable.
      if (this.mirrored) x = cssWidth - x - w;
      const colour = valenceColour(face.valence);
      ctx.strokeStyle = colour;
      ctx.strokeRect(x, y, w, h);

      const text = `${face.emotion} ${Math.round(100 * face.confidence)}%`;
      const pad = 3;
      const textWidth = ctx.measureText(text).width + 2 * pad;
      const textHeight = fontSize + 2 * pad;
      const labelY = y - textHeight >= 0 ? y - textHeight : y + h;
      ctx.fillStyle = colour;
      ctx.fillRect(x - ctx.lineWidth / 2, labelY, textWidth, textHeight);
      ctx.fillStyle = '#fff';
      ctx.fillText(text, x - ctx.lineWidth / 2 + pad, labelY + pad);
    }
  }
}

// Draws an image at natural resolution with its faces (upload panel); boxes are in image pixels.
export function drawImageWithFaces(canvas, image, faces) {
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(image, 0, 0);
  const scale = Math.max(1, Math.max(canvas.width, canvas.height) / 640);
  const fontSize = Math.round(14 * scale);
  ctx.font = `600 ${fontSize}px system-ui, sans-serif`;
  ctx.textBaseline = 'top';
  ctx.lineWidth = 2 * scale;
  faces.forEach((face, i) => {
    const { x, y, w, h } = face.box;
    const colour = valenceColour(face.valence);
    ctx.strokeStyle = colour;
    ctx.strokeRect(x, y, w, h);
    const text = `${i + 1}. ${face.emotion} ${Math.round(100 * face.confidence)}%`;
    const pad = 3 * scale;
    const textWidth = ctx.measureText(text).width + 2 * pad;
    const textHeight = fontSize + 2 * pad;
    const labelY = y - textHeight >= 0 ? y - textHeight : y + h;
    ctx.fillStyle = colour;
    ctx.fillRect(x, labelY, textWidth, textHeight);
    ctx.fillStyle = '#fff';
    ctx.fillText(text, x + pad, labelY + pad);
  });
}
