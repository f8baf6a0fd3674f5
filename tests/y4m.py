"""A fake-camera clip for Chromium (``--use-file-for-fake-video-capture=clip.y4m``) and live-stream test frames.

Y4M is a text header, then per frame ``FRAME\\n`` and the raw planar YUV 4:2:0 bytes (Y, then U, then V), which is
exactly OpenCV's I420 layout. Chromium loops the clip, so a second or two of a still photo is a steady camera.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np


def astronaut_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """scikit-image's astronaut photo letterboxed into an RGB frame of ``width`` x ``height`` (grey bars)."""
    from skimage import data

    photo = data.astronaut()  # 512x512 RGB, one face
    scale = min(width / photo.shape[1], height / photo.shape[0])
    w, h = round(photo.shape[1] * scale), round(photo.shape[0] * scale)
    frame = np.full((height, width, 3), 96, np.uint8)
    x, y = (width - w) // 2, (height - h) // 2
    frame[y : y + h, x : x + w] = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
    return frame


def write_y4m(path: Path, frames: Iterable[np.ndarray], fps: int = 25) -> Path:
    """Write RGB uint8 frames (all the same even width and height) as a 4:2:0 Y4M clip."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"4:2:0 needs even sizes, got {width}x{height}")
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii"))
        for rgb in frames:
            if rgb.shape[:2] != (height, width):
                raise ValueError("all frames must have the same size")
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    """RGB frame -> JPEG bytes, as the page sends them."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
