"""What the benchmarks share: the model to measure."""

from __future__ import annotations

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
