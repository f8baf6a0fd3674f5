"""The metadata of an exported model file (DESIGN.md, Contract 1), read and rewritten without torch.

Every step that rewrites a file (`tta`, `quantize`, `calibrate`, `evaluate --record`) keeps the keys it found and
sets its own, so the file keeps describing its preprocessing and history whatever was done to its graph.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def update_metadata(model: onnx.ModelProto, **values: str) -> onnx.ModelProto:
    """Set `values` in the model's metadata in place (other keys are kept) and return the model."""
    onnx.helper.set_model_props(model, read_metadata(model) | values)  # set_model_props replaces every key
    return model


def set_metadata(path: str | Path, **values: str) -> None:
    """Set `values` in the metadata of the file at `path`, e.g. `set_metadata(path, version="1.3")`."""
    onnx.save(update_metadata(onnx.load(str(path)), **values), str(path))
