"""Face detectors: YuNet (``cv2.FaceDetectorYN``) and OpenCV's bundled Haar cascade.

Both take a BGR image and return ``Detection``s in that image's pixels; the pipeline hands them an already
downscaled copy. OpenCV detector objects keep per-call state (YuNet's input size, the cascade's feature
evaluator), so each thread gets its own instance instead of sharing one behind a lock: requests run in a
thread pool and would otherwise serialise on the detector.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    x: float
    y: float
    w: float
    h: float
    score: float


class FaceDetector(Protocol):
    name: str
    path: Path | None

    def infer(self, image_bgr: np.ndarray, min_size: int = 1) -> list[Detection]: ...


class YuNetDetector:
    """YuNet from opencv_zoo; the input size follows each image, so any resolution works."""

    name = "yunet"

    def __init__(self, path: Path | str, score_threshold: float = 0.7, nms_threshold: float = 0.3, top_k: int = 5000):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"YuNet model not found: {self.path} (run `python -m server.download`)")
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

    def infer(self, image_bgr: np.ndarray, min_size: int = 1) -> list[Detection]:
        det = self._instance()
        h, w = image_bgr.shape[:2]
        det.setInputSize((w, h))
        _, faces = det.detect(image_bgr)
        if faces is None:
            return []
        # Rows: x, y, w, h, five landmarks (x, y), score.
        return [
            Detection(float(f[0]), float(f[1]), float(f[2]), float(f[3]), float(f[14]))
            for f in faces
            if min(f[2], f[3]) >= min_size
        ]


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (ships inside opencv-python-headless 4.x).

    The "alt2" cascade: its window is 20 px (default's is 24), so on the same downscaled copy it finds smaller
    faces at about the same cost; on the test photos its recall matches "default" with no false positives.
    """

    name = "haar"
    path: Path | None = None

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, cascade: Path | str | None = None):
        self.cascade = Path(cascade or Path(cv2.data.haarcascades) / "haarcascade_frontalface_alt2.xml")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self._local = threading.local()
        self._instance()

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
        # Equalisation makes the cascade far less sensitive to exposure (webcams, backlight).
        gray = cv2.equalizeHist(gray)
        side = max(min_size, 20)  # the cascade's own window; smaller sizes would only cost time
        boxes, neighbours = self._instance().detectMultiScale2(
            gray, self.scale_factor, self.min_neighbors, minSize=(side, side)
        )
        if len(boxes) == 0:
            return []
        # The cascade has no calibrated score; the number of overlapping raw hits merged into a box is the usual
        # proxy. 1 - exp(-n / 10) maps it into [0, 1): 6 hits (just over min_neighbors) -> 0.45, 20 -> 0.86.
        return [
            Detection(float(x), float(y), float(w), float(h), 1.0 - math.exp(-float(n) / 10.0))
            for (x, y, w, h), n in zip(boxes, np.ravel(neighbours), strict=True)
        ]


def create_detector(
    kind: str,
    yunet_path: Path | str,
    *,
    yunet_score_threshold: float = 0.7,
    yunet_nms_threshold: float = 0.3,
    haar_scale_factor: float = 1.1,
    haar_min_neighbors: int = 5,
) -> FaceDetector:
    """``kind`` is "yunet", "haar" or "auto" (YuNet when its file exists, else Haar, with a warning)."""
    yunet_path = Path(yunet_path)
    if kind == "yunet" or (kind == "auto" and yunet_path.is_file()):
        return YuNetDetector(yunet_path, yunet_score_threshold, yunet_nms_threshold)
    if kind == "auto":
        log.warning("YuNet model %s not found, falling back to the Haar cascade (run `python -m server.download`)",
                    yunet_path)
    elif kind != "haar":
        raise ValueError(f"unknown detector {kind!r}; expected 'auto', 'yunet' or 'haar'")
    return HaarDetector(haar_scale_factor, haar_min_neighbors)
