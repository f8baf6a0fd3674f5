"""What the benchmarks share: the model to measure and the YuNet file to detect with."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shipped_or_generated_model(path: Path) -> Path:
    """`path` when it exists, else the tests' generated 48x48 contract model (numbers then say little about the CNN)."""
    if path.is_file():
        return path
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_onnx_model

    print(f"{path} not found: using a generated 48x48 test model")
    return build_onnx_model(Path(tempfile.mkdtemp()) / "tiny_emotion.onnx")


def find_yunet(arg: str | None) -> Path | None:
    """--yunet, else EMOTION_YUNET_PATH, models/, or ../shared/models/ (whichever exists first)."""
    candidates = [
        arg,
        os.environ.get("EMOTION_YUNET_PATH"),
        ROOT / "models/face_detection_yunet_2023mar.onnx",
        ROOT.parent / "shared/models/face_detection_yunet_2023mar.onnx",
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)
