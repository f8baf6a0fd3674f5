"""Face detectors: YuNet (``cv2.FaceDetectorYN``) and OpenCV's bundled Haar cascade.

Both take a BGR image and return ``Detection``s in that image's pixels; the pipeline hands them an already
downscaled copy. OpenCV detector objects keep per-call state (YuNet's input size, the cascade's feature
evaluator), so each thread gets its own instance instead of sharing one behind a lock: requests run in a
thread pool and would otherwise serialise on the detector.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)

# The YuNet release the project ships in models/ (opencv_zoo, 2023mar, 232,589 bytes; models/YUNET.md).
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


class DetectorError(RuntimeError):
    """A detector file that cannot be used (missing, or not the file it claims to be)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Detection:
    x: float
    y: float
    w: float
    h: float
    score: float
    # YuNet's five landmarks (x, y) in the same pixels as the box: right eye, left eye (the person's, so the right
    # eye is on the image's left), nose tip, right and left mouth corners. None for detectors without landmarks.
    landmarks: tuple[float, ...] | None = None

    def eyes(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        if self.landmarks is None:
            return None
        lm = self.landmarks
        return (lm[0], lm[1]), (lm[2], lm[3])


class FaceDetector(Protocol):
    name: str
    path: Path | None
    window: int  # smallest face (px) it finds reliably in the image it is given
    fallback_reason: str | None  # why this detector stands in for the one asked for, if it does

    def infer(self, image_bgr: np.ndarray, min_size: int = 1) -> list[Detection]: ...


class YuNetDetector:
    """YuNet from opencv_zoo; the input size follows each image, so any resolution works."""

    name = "yunet"
    window = 10
    fallback_reason: str | None = None

    def __init__(
        self,
        path: Path | str,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        *,
        sha256: str | None = YUNET_SHA256,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise DetectorError(f"YuNet model not found: {self.path} (run `python -m server.download`)")
        # A damaged or swapped file could load and still find nothing; refuse anything but the pinned release.
        if sha256 and (actual := sha256_of(self.path)) != sha256.lower():
            raise DetectorError(
                f"YuNet model {self.path} has sha256 {actual}, expected {sha256} "
                "(run `python -m server.download` to restore it, or set EMOTION_YUNET_SHA256 for a file of your own)"
            )
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self._local = threading.local()
        self._instance()  # load once now so a broken file fails at start-up, not on the first request

    def _instance(self) -> cv2.FaceDetectorYN:
        det = getattr(self._local, "det", None)
        if det is None:
            det = cv2.FaceDetectorYN.create(
                str(self.path), "", (320, 320), self.score_threshold, self.nms_threshold, self.top_k
            )
            self._local.det = det
        return det

    # On a tiny image OpenCV's YuNet answers differently from run to run (a 36x32 px face crop: a 26x37 box in one
    # process, a 0x0 box with score 1.0 in another), so an image whose longer side is under this is enlarged to it
    # first and the boxes scaled back; such tight crops are also found more often (faces-in-the-wild: 712 of 718
    # photos with a face in every run instead of 707 or 700). A tracked face's search window (at most 128 px) is not
    # grown past this either.
    MIN_SIDE = 128

    def infer(self, image_bgr: np.ndarray, min_size: int = 1) -> list[Detection]:
        det = self._instance()
        h, w = image_bgr.shape[:2]
        scale = max(1.0, self.MIN_SIDE / max(h, w))
        if scale > 1.0:
            w, h = round(w * scale), round(h * scale)
            image_bgr = cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        det.setInputSize((w, h))
        _, faces = det.detect(image_bgr)
        if faces is None:
            return []
        # Rows: x, y, w, h, five landmarks (x, y), score; back to the pixels of the image given.
        faces = faces.astype(np.float64)
        faces[:, :14] /= scale
        return [
            Detection(
                float(f[0]),
                float(f[1]),
                float(f[2]),
                float(f[3]),
                float(f[14]),
                tuple(float(v) for v in f[4:14]) if np.isfinite(f[4:14]).all() else None,
            )
            for f in faces
            # YuNet can emit a row of NaNs (seen on a real photo); such a box cannot be cropped, so it is no face.
            if np.isfinite(f[:4]).all() and min(f[2], f[3]) >= max(min_size, 1)
        ]


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (ships inside opencv-python-headless 4.x).

    The cascade cannot find a face that fills its whole image (it needs a margin around the face): tight face
    crops, which users do send, are found only after padding the image with its own replicated border.
    Defaults measured on the 718 photos of ../shared/datasets/faces-in-the-wild (the pipeline's 160-320 px
    copies): the "alt2" cascade with 10% padding and min_neighbors 4 finds a face in 82% of them (no padding:
    70%; YuNet: 98.5%) with no false positive on twelve face-less scikit-image photos; "default" is no better
    and slower; min_neighbors 3 adds 1% recall and false positives at full resolution.
    """

    name = "haar"
    path: Path | None = None
    fallback_reason: str | None = None  # set when "auto" wanted YuNet and could not load it

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 4,
        cascade: str = "frontalface_alt2",
        pad: float = 0.1,
        equalize: bool = True,
    ):
        self.cascade = Path(cv2.data.haarcascades) / f"haarcascade_{cascade}.xml"
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.pad = pad
        self.equalize = equalize
        self._local = threading.local()
        self.window = int(min(self._instance().getOriginalWindowSize()))  # 20 for alt2, 24 for default

    def _instance(self) -> cv2.CascadeClassifier:
        clf = getattr(self._local, "clf", None)
        if clf is None:
            clf = cv2.CascadeClassifier(str(self.cascade))
            if clf.empty():
                raise RuntimeError(f"could not load Haar cascade {self.cascade}")
            self._local.clf = clf
        return clf

    def infer(self, image_bgr: np.ndarray, min_size: int = 1) -> list[Detection]:
        gray = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        if self.equalize:  # less sensitive to exposure (webcams, backlight)
            gray = cv2.equalizeHist(gray)
        p = round(self.pad * max(gray.shape))
        if p:
            gray = cv2.copyMakeBorder(gray, p, p, p, p, cv2.BORDER_REPLICATE)
        side = max(min_size, self.window)  # smaller than the cascade's window would only cost time
        boxes, neighbours = self._instance().detectMultiScale2(
            gray, self.scale_factor, self.min_neighbors, minSize=(side, side)
        )
        if len(boxes) == 0:
            return []
        # The cascade has no calibrated score; the number of overlapping raw hits merged into a box is the usual
        # proxy. 1 - exp(-n / 10) maps it into [0, 1): 5 hits (the fewest kept with min_neighbors 4) -> 0.39,
        # 20 -> 0.86.
        # Boxes reaching into the padding are clipped by the pipeline.
        return [
            Detection(float(x - p), float(y - p), float(w), float(h), 1.0 - math.exp(-float(n) / 10.0))
            for (x, y, w, h), n in zip(boxes, np.ravel(neighbours), strict=True)
        ]


def create_detector(
    kind: str,
    yunet_path: Path | str,
    *,
    yunet_sha256: str | None = YUNET_SHA256,
    yunet_score_threshold: float = 0.7,
    yunet_nms_threshold: float = 0.3,
    haar_scale_factor: float = 1.1,
    haar_min_neighbors: int = 4,
) -> FaceDetector:
    """``kind`` is "yunet" (``DetectorError`` if its file is missing or fails the sha256 check), "haar", or "auto":
    YuNet when its file loads, else the Haar cascade, with a warning that says why (``fallback_reason``)."""
    if kind not in ("auto", "yunet", "haar"):
        raise ValueError(f"unknown detector {kind!r}; expected 'auto', 'yunet' or 'haar'")
    if kind != "haar":
        try:
            return YuNetDetector(yunet_path, yunet_score_threshold, yunet_nms_threshold, sha256=yunet_sha256)
        except DetectorError as exc:
            if kind == "yunet":
                raise
            reason = str(exc)
        log.warning("%s; falling back to the Haar cascade, which misses more faces", reason)
        haar = HaarDetector(haar_scale_factor, haar_min_neighbors)
        haar.fallback_reason = reason
        return haar
    return HaarDetector(haar_scale_factor, haar_min_neighbors)
