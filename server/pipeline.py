"""Image -> faces: decode, detect on a downscaled copy, crop from full resolution, classify in one batch.

No web framework here, so training and evaluation code can reuse ``crop_face`` and the pipeline.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from server.classifier import FER2013_LANDMARKS, EmotionClassifier, ModelSpec
from server.detector import Detection, FaceDetector, create_detector
from server.schemas import Box, Face, PredictResponse

if TYPE_CHECKING:
    from collections.abc import Sequence

    from server.config import Settings

log = logging.getLogger(__name__)

# Circumplex coordinates (valence, arousal) per emotion, after Russell (1980) "A circumplex model of affect" and
# the placements commonly used for the basic emotions. A face's valence/arousal is the probability-weighted sum
# over the model's labels; a label missing from this table contributes 0 to both.
CIRCUMPLEX: dict[str, tuple[float, float]] = {
    "happy": (0.8, 0.5),
    "surprise": (0.4, 0.8),
    "neutral": (0.0, 0.0),
    "contempt": (-0.5, 0.2),
    "disgust": (-0.7, 0.3),
    "angry": (-0.6, 0.7),
    "fear": (-0.6, 0.6),
    "sad": (-0.7, -0.4),
}

SUPPORTED_FORMATS = "JPEG, PNG, WebP or BMP"


class InputError(Exception):
    """Input the client got wrong; ``status_code`` is the HTTP status it maps to."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


# --- header sniffing: the size of an image without decoding it (decompression-bomb guard) ---------------------

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_format_and_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the header of a JPEG, PNG, WebP or BMP; None if not one of those or unreadable.

    Only these formats are decoded, so every image is sized before cv2 allocates its pixels.
    """
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return "png", w, h
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:2] == b"BM":
            header_size = struct.unpack("<I", data[14:18])[0]
            if header_size == 12:  # BITMAPCOREHEADER: 16-bit unsigned sizes
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return "bmp", abs(w), abs(h)  # negative height means top-down rows
    except (struct.error, IndexError):
        return None
    return None


def other_image_format(data: bytes) -> str | None:
    """The name of a common image format the service does not decode, from its signature (for a 415, not a 400)."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"hevc", b"msf1"):
        return "HEIC"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    if data[4:8] == b"ftyp" and data[8:12] == b"mif1":  # the generic brand of both
        return "HEIF"
    if data[:4] == b"%PDF":
        return "PDF"
    if re.search(rb"<svg[\s>/]", data[:1024], re.IGNORECASE):  # after any XML prolog, comment or doctype
        return "SVG"
    return None


# Markers and fill bytes walked before the frame header. A real JPEG has a few dozen (an ICC profile split over many
# APP2 segments, a few hundred); 20 MB of 4-byte comments walked here for 2.3 s (libjpeg skips them in 0.04 s).
MAX_JPEG_HEADER_STEPS = 4096


def _jpeg_size(data: bytes) -> tuple[str, int, int] | None:
    i, n = 2, len(data)
    for _ in range(MAX_JPEG_HEADER_STEPS):
        if i + 4 > n or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x00:
            # A stuffed zero outside a scan: libjpeg skips it as garbage and reads the next marker, where this walk
            # would read a length and skip past the real frame header to a tiny one hidden in a later segment.
            return None
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return "jpeg", w, h
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[str, int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: frame tag (3 bytes), start code 9d 01 2a, then 14-bit width / height
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack("<HH", data[26:30])
        return "webp", w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then (width-1) and (height-1) in 14 bits each
        if data[20] != 0x2F:
            return None
        bits = int.from_bytes(data[21:25], "little")
        return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: canvas (width-1) and (height-1) in 24 bits each
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return "webp", w, h
    return None


MAX_JPEG_SCANS = 100  # progressive passes; libjpeg's own progression (jpeg_simple_progression) has 10
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: gray, RGB, palette, gray + alpha, RGBA
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
PNG_SLACK = 64 * 1024  # image data an encoder may leave past the last row that is still decoded
MAX_PNG_CHUNKS = 65536  # libpng writes 8 KiB IDAT chunks: a 20 MB PNG has a few thousand


def png_refusal(data: bytes, width: int, height: int) -> str | None:
    """Why a PNG is refused before libpng reads it, or None.

    - Image data (its IDAT chunks) that inflates to more than the rows need: libpng inflates all of it for nothing
      (zeros compress 1000:1: an 8x8 PNG of 10 MB held a thread for 20 s). Inflating stops at what the rows need, so
      this costs at most what decoding a real image of that size does.
    - More than ``MAX_PNG_CHUNKS`` chunks: libpng logs a warning for each one it cannot use (1.7 million empty tEXt
      chunks in 20 MB: 7 s and as many log lines), and this walk would take a second over them.
    """
    if len(data) < 33:
        return None  # a header cut short: the decoder refuses it
    bit_depth, colour_type, interlaced = data[24], data[25], data[28]
    bits = PNG_CHANNELS.get(colour_type, 0) * bit_depth
    if not bits:
        return None  # an invalid header: the decoder refuses it

    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w > 0 and h > 0 else 0

    if interlaced:
        needed = sum(rows((width - x + dx - 1) // dx, (height - y + dy - 1) // dy) for x, y, dx, dy in ADAM7)
    else:
        needed = rows(width, height)
    left = needed + PNG_SLACK
    inflater = zlib.decompressobj()
    i, chunks = 8, 0
    try:
        while i + 8 <= len(data):
            chunks += 1
            if chunks > MAX_PNG_CHUNKS:
                return f"the PNG has more than {MAX_PNG_CHUNKS} chunks"
            length, kind = struct.unpack(">I4s", data[i : i + 8])
            if kind == b"IEND":
                break
            if kind == b"IDAT":
                pending = data[i + 8 : i + 8 + length]
                while pending and not inflater.eof:
                    left -= len(inflater.decompress(pending, min(left + 1, 1 << 20)))
                    if left < 0:
                        return f"the PNG holds more image data than its {width}x{height} pixels need"
                    pending = inflater.unconsumed_tail
            i += 12 + length
    except zlib.error:
        return None  # corrupt data: the decoder says so
    return None


def decode_image(data: bytes, settings: Settings | None = None, *, max_pixels: int | None = None) -> np.ndarray:
    """Bytes of a JPEG/PNG/WebP/BMP -> BGR uint8 image; ``InputError`` (400 / 413) for bad or oversized input.

    The pixel limit is checked on the header, before decoding, so a small file that claims a huge canvas (a
    decompression bomb) is refused without allocating it.
    """
    if max_pixels is None:
        max_pixels = settings.max_pixels if settings is not None else 40_000_000
    if not data:
        raise InputError(400, f"empty image: no bytes to decode (send {SUPPORTED_FORMATS})")
    if settings is not None and len(data) > settings.max_upload_bytes:
        raise InputError(413, f"image is {len(data)} bytes, over the limit of {settings.max_upload_bytes} bytes")
    header = image_format_and_size(data)
    if header is None and (other := other_image_format(data)):
        raise InputError(415, f"{other} images are not supported: send {SUPPORTED_FORMATS}")
    if header is None:
        raise InputError(400, f"could not decode the image: not a readable {SUPPORTED_FORMATS} file")
    fmt, w, h = header
    if w <= 0 or h <= 0:
        raise InputError(400, f"could not decode the image: the {fmt.upper()} header gives a size of {w}x{h}")
    if w * h > max_pixels:
        raise InputError(413, f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} pixels")
    # Each scan of a progressive JPEG is a pass over the whole image, and a scan can be 14 bytes: 1000 of them made a
    # 200 kB JPEG of 6000x6000 take 46 s to decode (a 20 MB one, hours). Encoders write about 10. Counted on the
    # bytes, which holds every real scan marker (entropy-coded data stuffs its FF bytes) and rarely anything else.
    if fmt == "jpeg" and (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise InputError(
            400, f"could not decode the image: the JPEG has {scans} scans, over the limit of {MAX_JPEG_SCANS}"
        )
    if fmt == "png" and (problem := png_refusal(data, w, h)):
        raise InputError(400, f"could not decode the image: {problem}")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        # OpenCV's own checks (e.g. a side over 2^20 px with a total under the pixel limit) raise instead of
        # returning None: still input the client got wrong.
        raise InputError(400, f"could not decode the image: OpenCV refused the {fmt.upper()} data ({w}x{h})") from exc
    if image is None or image.size == 0:
        raise InputError(400, f"could not decode the image: the {fmt.upper()} data is corrupt or truncated")
    return image


# --- crop ----------------------------------------------------------------------------------------------------


def square_box(box: Sequence[float], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop region (x0, y0, x1, y1): a square of side max(w, h) * (1 + 2 * margin) centred on the box,
    clamped to the image (so it is only non-square at the image border)."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = max(0, int(round(cx - side / 2.0)))
    y0 = max(0, int(round(cy - side / 2.0)))
    x1 = min(width, int(round(cx + side / 2.0)))
    y1 = min(height, int(round(cy + side / 2.0)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def landmark_square(landmarks: Sequence[float], template: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """(x0, y0, side) of the square that puts ``template`` (points as fractions of its side) on the five
    ``landmarks`` (x, y, ... in image pixels) by scale and shift alone: its side is the ratio of the two point sets'
    spreads (root-mean-square distance from their centroid), and it puts the template's centroid on the landmarks'.
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    target = np.asarray(template, dtype=np.float64).reshape(-1, 2)
    side = float(np.sqrt(((points - points.mean(0)) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()))
    x0, y0 = points.mean(0) - target.mean(0) * side
    return float(x0), float(y0), side


def landmark_box(
    landmarks: Sequence[float], template: Sequence[Sequence[float]], box: Sequence[float], width: int, height: int
) -> tuple[int, int, int, int] | None:
    """The crop region (x0, y0, x1, y1) for ``align: landmarks``: `landmark_square`, clamped to the image as
    `square_box` is. None when the landmarks do not fit the face's ``box`` (x, y, w, h): a square under half or
    over twice the box's longer side, or centred outside the box, is a landmark slip, not a face."""
    x0, y0, side = landmark_square(landmarks, template)
    x, y, w, h = (float(v) for v in box)
    cx, cy = x0 + side / 2.0, y0 + side / 2.0
    if not (0.5 * max(w, h) <= side <= 2.0 * max(w, h) and x <= cx <= x + w and y <= cy <= y + h):
        return None
    left, top = min(max(0, int(round(x0))), width - 1), min(max(0, int(round(y0))), height - 1)
    right, bottom = min(width, int(round(x0 + side))), min(height, int(round(y0 + side)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def face_region(
    box: Sequence[float],
    margin: float,
    width: int,
    height: int,
    landmarks: Sequence[float] | None = None,
    template: Sequence[Sequence[float]] = FER2013_LANDMARKS,
) -> tuple[int, int, int, int]:
    """The unturned crop region: placed by the ``landmarks`` when given and plausible (`landmark_box`), else the
    ``box`` plus ``margin`` (`square_box`)."""
    region = landmark_box(landmarks, template, box, width, height) if landmarks is not None else None
    return region or square_box(box, margin, width, height)


# Eye lines steeper than this are more likely a landmark slip than a head that far over: leave those faces as they are.
MAX_ALIGN_DEGREES = 45.0


def eye_angle(eyes: tuple[tuple[float, float], tuple[float, float]]) -> float:
    """Degrees the image must turn (counter-clockwise, OpenCV's sense) for the eyes to be level."""
    (rx, ry), (lx, ly) = eyes
    return float(np.degrees(np.arctan2(ly - ry, lx - rx)))


def crop_face(
    image: np.ndarray,
    box: Sequence[float] | Box,
    margin: float,
    size: int | Sequence[int],
    channels: int,
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None,
    landmarks: Sequence[float] | None = None,
    template: Sequence[Sequence[float]] = FER2013_LANDMARKS,
) -> np.ndarray:
    """Cut the model's input for one face: uint8 [H, W] (channels=1, gray) or [H, W, 3] (channels=3, RGB).

    ``image`` is BGR (or already gray); ``box`` is (x, y, w, h) in its pixels; ``size`` is an int or (H, W).
    With ``eyes`` (the detector's right and left eye), the square is turned about the box centre so the eyes are
    level, as the model's ``align: eyes`` metadata asks; pixels the turn brings in from outside the image repeat
    the border. With ``landmarks`` (the detector's five points), the square is the one that puts them at
    ``template``, as ``align: landmarks`` asks (`face_region`: the margin serves only if they do not fit the box).
    A face is either turned or framed by its landmarks, not both.
    """
    if eyes is not None and landmarks is not None:
        raise ValueError("crop_face takes eyes (to turn the crop) or landmarks (to frame it), not both")
    if isinstance(box, Box):
        box = (box.x, box.y, box.w, box.h)
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    angle = eye_angle(eyes) if eyes is not None else 0.0
    if eyes is not None and 0.5 <= abs(angle) <= MAX_ALIGN_DEGREES:
        x, y, w, h = (float(v) for v in box)
        side = max(2, int(round(max(w, h) * (1.0 + 2.0 * margin))))
        rot = cv2.getRotationMatrix2D((x + w / 2.0, y + h / 2.0), angle, 1.0)
        rot[:, 2] += side / 2.0 - np.array([x + w / 2.0, y + h / 2.0])  # the box centre lands mid-square
        region = cv2.warpAffine(image, rot, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    else:
        x0, y0, x1, y1 = face_region(box, margin, image.shape[1], image.shape[0], landmarks, template)
        region = image[y0:y1, x0:x1]
    if channels == 1:
        if region.ndim == 3:
            region = cv2.cvtColor(region, cv2.COLOR_BGR2GRAY)
    elif channels == 3:
        region = cv2.cvtColor(region, cv2.COLOR_GRAY2RGB if region.ndim == 2 else cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    # INTER_AREA when shrinking (the usual case) averages instead of aliasing; upscaling tiny faces wants linear.
    interp = cv2.INTER_AREA if region.shape[0] >= out_h and region.shape[1] >= out_w else cv2.INTER_LINEAR
    return cv2.resize(region, (out_w, out_h), interpolation=interp)


def crop_for(image: np.ndarray, d: Detection, spec: ModelSpec) -> np.ndarray:
    """One detected face cut as the model's metadata asks (``crop_margin``, ``align``, ``face_template``); a face
    without landmarks (the Haar detector) gets the box plus the margin whatever the alignment."""
    return crop_face(
        image,
        (d.x, d.y, d.w, d.h),
        spec.crop_margin,
        spec.input_size,
        spec.channels,
        d.eyes() if spec.align == "eyes" else None,
        d.landmarks if spec.align == "landmarks" else None,
        spec.face_template,
    )


def crop_region(d: Detection, spec: ModelSpec, width: int, height: int) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) region `crop_for` cuts when it does not turn the face (every alignment but eyes)."""
    landmarks = d.landmarks if spec.align == "landmarks" else None
    return face_region((d.x, d.y, d.w, d.h), spec.crop_margin, width, height, landmarks, spec.face_template)


def valence_arousal(probabilities: dict[str, float]) -> tuple[float, float]:
    valence = sum(p * CIRCUMPLEX.get(label, (0.0, 0.0))[0] for label, p in probabilities.items())
    arousal = sum(p * CIRCUMPLEX.get(label, (0.0, 0.0))[1] for label, p in probabilities.items())
    return valence, arousal


def _iou(a: Detection, b: Detection) -> float:
    iw = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    ih = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / (a.w * a.h + b.w * b.h - iw * ih)


# --- pipeline ------------------------------------------------------------------------------------------------


class EmotionPipeline:
    """``predict(image)`` -> (faces, timings_ms). Thread-safe: detectors are per-thread, the onnxruntime session
    is safe to call concurrently."""

    def __init__(
        self,
        detector: FaceDetector,
        classifier: EmotionClassifier,
        *,
        detect_max_side: int = 320,
        detect_min_face: int | None = None,
        detect_min_side: int = 160,
        min_face_size: int = 20,
        max_faces: int = 32,
    ):
        self.detector = detector
        self.classifier = classifier
        self.detect_max_side = detect_max_side
        self.detect_min_face = detect_min_face
        self.detect_min_side = detect_min_side
        self.min_face_size = min_face_size
        self.max_faces = max_faces

    @classmethod
    def from_settings(cls, settings: Settings) -> EmotionPipeline:
        from server.config import resolve_path

        detector = create_detector(
            settings.detector,
            resolve_path(Path(settings.yunet_path)),
            yunet_sha256=settings.yunet_sha256 or None,
            yunet_score_threshold=settings.yunet_score_threshold,
            yunet_nms_threshold=settings.yunet_nms_threshold,
            haar_scale_factor=settings.haar_scale_factor,
            haar_min_neighbors=settings.haar_min_neighbors,
        )
        classifier = EmotionClassifier(
            resolve_path(Path(settings.model_path)), settings.intra_op_threads, settings.provider_list
        )
        if detector.name == "haar":
            max_side, min_face = settings.haar_max_side, settings.haar_min_face_size
        else:
            max_side, min_face = settings.detect_max_side, None
        return cls(
            detector,
            classifier,
            detect_max_side=max_side,
            detect_min_face=min_face,
            detect_min_side=settings.haar_min_side,
            min_face_size=settings.min_face_size,
            max_faces=settings.max_faces,
        )

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def detection_scale(self, width: int, height: int) -> float:
        """Scale of the copy the detector sees (never enlarged): its longer side at most ``detect_max_side``.

        With ``detect_min_face`` (the Haar cascade, whose cost grows with the square of the copy's size) the copy
        is only as large as needed for a face of that many pixels to fill the detector's window, but its longer
        side stays at least ``detect_min_side``, so small images are searched for small faces at little cost.
        """
        longer = max(width, height)
        side = float(self.detect_max_side)
        if self.detect_min_face:
            side = min(side, max(longer * self.detector.window / self.detect_min_face, self.detect_min_side))
        return min(1.0, side / longer)

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Faces in full-resolution pixels, largest first, at most ``max_faces``, none under ``min_face_size``."""
        h, w = image_bgr.shape[:2]
        scale = self.detection_scale(w, h)
        small = image_bgr
        if scale < 1.0:
            small = cv2.resize(
                image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        found = self.detector.infer(small, min_size=max(1, int(self.min_face_size * scale)))
        faces = [f for d in found if (f := self._to_frame(d, scale, 0, 0, w, h)) is not None]
        faces.sort(key=lambda d: d.w * d.h, reverse=True)
        return faces

    def _to_frame(self, d: Detection, scale: float, ox: int, oy: int, width: int, height: int) -> Detection | None:
        """A detection in a copy (scaled by ``scale``, cut at ``ox, oy``) -> full-resolution pixels, clipped to the
        image (YuNet boxes may poke past the border); landmarks move with the box so the crop's eye alignment
        works on every path. None when the clipped face is under ``min_face_size``."""
        x0, y0 = max(0.0, ox + d.x / scale), max(0.0, oy + d.y / scale)
        x1, y1 = min(float(width), ox + (d.x + d.w) / scale), min(float(height), oy + (d.y + d.h) / scale)
        if min(x1 - x0, y1 - y0) < self.min_face_size:
            return None
        landmarks = None
        if d.landmarks is not None:
            landmarks = tuple((oy if i % 2 else ox) + v / scale for i, v in enumerate(d.landmarks))
        return Detection(x0, y0, x1 - x0, y1 - y0, d.score, landmarks)

    # Between full detections a live stream looks for each tracked face in a window of WINDOW_SCALE times its side
    # around where it is expected (server/tracker.py), shrunk so that its longer side is at most WINDOW_SIDE: the
    # face is then ~64 px, well inside YuNet's range, and the window costs a fraction of the full-frame copy.
    WINDOW_SCALE = 2.0
    WINDOW_SIDE = 128

    def _window(self, box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
        x, y, w, h = (float(v) for v in box)
        side = max(w, h) * self.WINDOW_SCALE
        cx, cy = x + w / 2.0, y + h / 2.0
        x0, y0 = max(0, int(cx - side / 2.0)), max(0, int(cy - side / 2.0))
        x1, y1 = min(width, int(cx + side / 2.0) + 1), min(height, int(cy + side / 2.0) + 1)
        return x0, y0, x1, y1

    def detection_pixels(self, width: int, height: int) -> float:
        """Pixels of the copy a full detection searches."""
        scale = self.detection_scale(width, height)
        return width * scale * height * scale

    def window_pixels(self, boxes: Sequence[Sequence[float]]) -> float:
        """Pixels the windowed search around ``boxes`` would look at (an upper bound: windows are not clamped)."""
        return sum(min(max(b[2], b[3]) * self.WINDOW_SCALE, self.WINDOW_SIDE) ** 2 for b in boxes)

    def detect_near(self, image_bgr: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[Detection]:
        """Faces near each of ``boxes`` (x, y, w, h, full-resolution pixels): in each box's window, the face whose
        centre is nearest the box's, if it lies in the middle half of the window. Boxes and landmarks in
        full-resolution pixels, as ``detect`` gives them; largest first, duplicates (two windows finding one face)
        merged."""
        h, w = image_bgr.shape[:2]
        found: list[Detection] = []
        for box in boxes:
            x0, y0, x1, y1 = self._window(box, w, h)
            if x1 - x0 < self.min_face_size or y1 - y0 < self.min_face_size:
                continue  # the face left the image
            region = image_bgr[y0:y1, x0:x1]
            scale = min(1.0, self.WINDOW_SIDE / max(x1 - x0, y1 - y0))
            if scale < 1.0:
                size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
                region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
            cx, cy = box[0] + box[2] / 2.0, box[1] + box[3] / 2.0
            best: Detection | None = None
            best_distance = math.inf
            for d in self.detector.infer(region, min_size=max(1, int(self.min_face_size * scale))):
                face = self._to_frame(d, scale, x0, y0, w, h)
                if face is None:
                    continue
                distance = math.hypot(face.x + face.w / 2.0 - cx, face.y + face.h / 2.0 - cy)
                # A face cut by the window's edge is a neighbour seen in part: the next full detection finds it.
                if distance <= max(box[2], box[3]) * self.WINDOW_SCALE / 4.0 and distance < best_distance:
                    best, best_distance = face, distance
            if best is not None and all(_iou(best, other) < 0.5 for other in found):
                found.append(best)
        found.sort(key=lambda d: d.w * d.h, reverse=True)
        return found

    def predict(
        self, image_bgr: np.ndarray, max_faces: int | None = None, detections: list[Detection] | None = None
    ) -> tuple[list[Face], dict[str, float]]:
        """Faces of the image with this frame's probabilities; ``detections`` (largest first) skip the detector."""
        t0 = time.perf_counter()
        limit = self.max_faces if max_faces is None else max(0, min(max_faces, self.max_faces))
        detections = (self.detect(image_bgr) if detections is None else detections)[:limit]
        t1 = time.perf_counter()
        spec = self.classifier.spec
        faces: list[Face] = []
        if detections:
            crops = np.stack([crop_for(image_bgr, d, spec) for d in detections])
            probs = self.classifier.infer(crops)
            for d, p in zip(detections, probs, strict=True):
                probabilities = {label: float(v) for label, v in zip(spec.labels, p, strict=True)}
                best = int(np.argmax(p))
                valence, arousal = valence_arousal(probabilities)
                faces.append(
                    Face(
                        box=Box(x=int(round(d.x)), y=int(round(d.y)), w=int(round(d.w)), h=int(round(d.h))),
                        detection_score=round(d.score, 4),
                        emotion=spec.labels[best],
                        confidence=float(p[best]),
                        probabilities=probabilities,
                        valence=round(valence, 4),
                        arousal=round(arousal, 4),
                    )
                )
        t2 = time.perf_counter()
        timings = {"detect": (t1 - t0) * 1e3, "classify": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3}
        return faces, {k: round(v, 3) for k, v in timings.items()}


def predict_bytes(
    pipeline: EmotionPipeline, data: bytes, settings: Settings, max_faces: int | None = None
) -> PredictResponse:
    """Decode + predict one encoded image: the answer of ``POST /predict`` and of one ``WS /ws`` frame.

    Runs in the app's thread pool; ``InputError`` for input that is not a decodable image within the limits.
    """
    t0 = time.perf_counter()
    image = decode_image(data, settings)
    decode_ms = (time.perf_counter() - t0) * 1e3
    faces, timings = pipeline.predict(image, max_faces)
    timings = {"decode": round(decode_ms, 3), **timings, "total": round(decode_ms + timings["total"], 3)}
    return PredictResponse(width=image.shape[1], height=image.shape[0], faces=faces, timings_ms=timings)
