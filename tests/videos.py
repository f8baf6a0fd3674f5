"""Test videos written with OpenCV: a face for a while then none, and clips whose frames carry their number."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from y4m import astronaut_frame

FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".webm": "VP90"}


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 25.0) -> Path:
    """BGR frames (all one size) -> a video; the codec follows the suffix (MJPG .avi, mp4v .mp4, VP9 .webm)."""
    writer = None
    for frame in frames:
        if writer is None:
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), fps, (w, h))
            if not writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write {path}")
        writer.write(frame)
    if writer is None:
        raise ValueError("no frames")
    writer.release()
    return path


def faceless_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """scikit-image's coffee cup, no face, BGR."""
    from skimage import data

    return cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), (width, height), interpolation=cv2.INTER_AREA)


def face_then_no_face(
    path: Path,
    face_seconds: float = 10,
    empty_seconds: float = 10,
    fps: float = 25.0,
    width: int = 640,
    height: int = 480,
) -> Path:
    """The astronaut photo for ``face_seconds``, then the coffee cup for ``empty_seconds``."""
    face = cv2.cvtColor(astronaut_frame(width, height), cv2.COLOR_RGB2BGR)
    empty = faceless_frame(width, height)
    n_face, n_empty = round(face_seconds * fps), round(empty_seconds * fps)
    return write_video(path, (face if i < n_face else empty for i in range(n_face + n_empty)), fps)


def numbered_frame(i: int, width: int = 160, height: int = 120) -> np.ndarray:
    """Frame ``i``: its number in binary as ten black/white cells along the top, big enough to survive codecs."""
    frame = np.full((height, width, 3), 64, np.uint8)
    cell = width // 10
    for bit in range(10):
        if i >> bit & 1:
            frame[:cell, bit * cell : (bit + 1) * cell] = 255
        else:
            frame[:cell, bit * cell : (bit + 1) * cell] = 0
    return frame


def frame_number(image: np.ndarray) -> int:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    cell = gray.shape[1] // 10
    q = cell // 4
    return sum(1 << bit for bit in range(10) if gray[q : cell - q, bit * cell + q : (bit + 1) * cell - q].mean() > 128)


def truncate(path: Path, out: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out
