// Webcam access and frame capture as downscaled JPEG blobs.

const MAX_SIDE = 640;
const JPEG_QUALITY = 0.8;

export class CameraError extends Error {}

// A message a person can act on, from a getUserMedia failure.
function explain(error) {
  switch (error?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera access was denied. Allow the camera for this site in the browser settings and try again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera was found. Connect a camera and try again.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The camera is in use by another application or could not be started.';
    default:
      return `Could not start the camera: ${error?.message || error}`;
  }
}

export class Camera {
  constructor(video) {
    this.video = video;
    this.stream = null;
    this.canvas = document.createElement('canvas');
    this.ctx = this.canvas.getContext('2d');
  }

  get running() {
    return this.stream !== null;
  }

  async start() {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new CameraError(
        'This browser does not allow camera access here. Open the page over https or on localhost.');
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: 'user' },
        audio: false,
      });
    } catch (error) {
      throw new CameraError(explain(error));
    }
    this.stream = stream;
    this.video.srcObject = stream;
    // The camera may end on its own (unplugged, permission revoked).
    for (const track of stream.getVideoTracks()) {
      track.addEventListener('ended', () => this.onended?.());
    }
    await this.video.play();
    if (!this.video.videoWidth) {
      await new Promise((resolve) => this.video.addEventListener('loadedmetadata', resolve, { once: true }));
    }
  }

  stop() {
    if (this.stream) {
      for (const track of this.stream.getTracks()) track.stop();
    }
    this.stream = null;
    this.video.srcObject = null;
  }

  // The current picture as a JPEG blob whose long side is at most MAX_SIDE; null if no picture yet.
  async captureJpeg() {
    const vw = this.video.videoWidth;
    const vh = this.video.videoHeight;
    if (!vw || !vh) return null;
    const scale = Math.min(1, MAX_SIDE / Math.max(vw, vh));
    const width = Math.round(vw * scale);
    const height = Math.round(vh * scale);
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    // The unmirrored picture is sent; mirroring is only how the preview is shown.
    this.ctx.drawImage(this.video, 0, 0, width, height);
    const blob = await new Promise((resolve) => this.canvas.toBlob(resolve, 'image/jpeg', JPEG_QUALITY));
    return blob ? { blob, width, height } : null;
  }
}
