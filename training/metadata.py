"""The metadata of an exported model file (DESIGN.md, Contract 1), read and rewritten without torch.

Every step that rewrites a file (`tta`, `quantize`, `calibrate`, `evaluate --record`) keeps the keys it found and
sets its own, so the file keeps describing its preprocessing and history whatever was done to its graph.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def update_metadata(model: onnx.ModelProto, remove: tuple[str, ...] = (), **values: str) -> onnx.ModelProto:
    """Set `values` in the model's metadata in place, drop the keys in `remove` (others are kept), return the model."""
    kept = {k: v for k, v in read_metadata(model).items() if k not in remove}
    onnx.helper.set_model_props(model, kept | values)  # set_model_props replaces every key
    return model


def set_metadata(path: str | Path, remove: tuple[str, ...] = (), **values: str) -> None:
    """Set `values` (and drop the keys in `remove`) in the metadata of the file at `path`, e.g.
    `set_metadata(path, version="1.3")`."""
    onnx.save(update_metadata(onnx.load(str(path)), remove, **values), str(path))
