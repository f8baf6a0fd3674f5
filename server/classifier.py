"""The ONNX emotion classifier: one onnxruntime session, preprocessing read from the file's metadata.

The model file carries everything the server needs to use it (DESIGN.md, Contract 1), so a retrained model is a
file swap. A file whose metadata is missing, unparseable or inconsistent with its graph is refused at load time
with a ``ModelError`` that names the offending key.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

REQUIRED_KEYS = ("labels", "input_size", "channels", "mean", "std", "crop_margin")
ALIGN_VALUES = ("none", "eyes", "landmarks")

# Where YuNet puts its five landmarks (right eye, left eye, nose tip, right and left mouth corner: the person's) on
# FER2013's own faces, as fractions of the 48 px image: medians over the 1,951 of the first 2,000 PublicTest faces
# where YuNet finds one when each is enlarged to 192 px (`python benchmarks/bench_framing.py template`).
# `align: landmarks` crops the square of a photo that puts a face's landmarks there (or at the file's own
# `face_template`), so the model sees faces framed as in training.
FER2013_LANDMARKS = ((0.303, 0.380), (0.684, 0.384), (0.492, 0.595), (0.347, 0.756), (0.645, 0.756))


class ModelError(ValueError):
    """The model file breaks the contract; the message names the key or graph property at fault."""


@dataclass(frozen=True)
class ModelSpec:
    """What the metadata says about using the model."""

    labels: list[str]
    input_size: tuple[int, int]  # (H, W)
    channels: int  # 1 = gray, 3 = RGB
    mean: list[float]
    std: list[float]
    crop_margin: float
    metadata: dict[str, str] = field(default_factory=dict)
    # Optional: "eyes" turns each crop so the eyes are level, "landmarks" frames it by the five landmarks at
    # face_template (both need YuNet's landmarks; without them the crop is the box plus crop_margin), "none".
    align: str = "none"
    face_template: tuple[tuple[float, float], ...] = FER2013_LANDMARKS  # optional key, for align "landmarks"

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> ModelSpec:
        for key in REQUIRED_KEYS:
            if key not in meta:
                raise ModelError(f"model metadata is missing {key!r} (required: {', '.join(REQUIRED_KEYS)})")

        labels = _json(meta, "labels")
        if (
            not isinstance(labels, list)
            or not labels
            or not all(isinstance(s, str) and s for s in labels)
            or len(set(labels)) != len(labels)
        ):
            raise ModelError(
                f"model metadata 'labels' must be a JSON list of distinct non-empty strings, got {meta['labels']!r}"
            )

        size = _json(meta, "input_size")
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise ModelError(
                f"model metadata 'input_size' must be a positive int or [H, W], got {meta['input_size']!r}"
            )

        try:
            channels = int(meta["channels"])
        except ValueError:
            channels = 0
        if channels not in (1, 3):
            raise ModelError(f"model metadata 'channels' must be 1 or 3, got {meta['channels']!r}")

        mean, std = _floats(meta, "mean", channels), _floats(meta, "std", channels)
        if any(s <= 0 for s in std):
            raise ModelError(f"model metadata 'std' must be positive, got {meta['std']!r}")

        try:
            margin = float(meta["crop_margin"])
        except ValueError:
            margin = -1.0
        if not 0.0 <= margin <= 1.0:
            raise ModelError(f"model metadata 'crop_margin' must be a number in [0, 1], got {meta['crop_margin']!r}")

        align = meta.get("align", "none")
        if align not in ALIGN_VALUES:
            raise ModelError(f"model metadata 'align' must be one of {ALIGN_VALUES}, got {align!r}")

        template = _json(meta, "face_template") if "face_template" in meta else FER2013_LANDMARKS
        numbers = isinstance(template, list | tuple) and all(
            isinstance(p, list | tuple) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in p)
            for p in template
        )
        if not numbers or not _plausible_template(points := np.array(template, dtype=np.float64)):
            raise ModelError(
                "model metadata 'face_template' must be five [x, y] numbers in [0, 1] (fractions of the crop) laid "
                "out as a face: right eye left of left eye, nose tip between and below the eyes, mouth corners below "
                f"the nose (right one on the left); got {meta.get('face_template')!r}"
            )
        template = tuple((float(x), float(y)) for x, y in points)
        return cls(labels, (size[0], size[1]), channels, mean, std, margin, dict(meta), align, template)


def _plausible_template(points: np.ndarray) -> bool:
    """Five points in [0, 1], in the image-left-to-right order of a face seen from the front (the person's right
    eye first); so a template in pixels, mirrored or upside down, is refused."""
    if points.shape != (5, 2) or not np.isfinite(points).all() or points.min() < 0 or points.max() > 1:
        return False
    (rex, rey), (lex, ley), (nx, ny), (rmx, rmy), (lmx, lmy) = points
    return rex < lex and rmx < lmx and max(rey, ley) < ny < min(rmy, lmy) and rex < nx < lex


def _json(meta: dict[str, str], key: str) -> object:
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelError(f"model metadata {key!r} is not valid JSON: {meta[key]!r}") from exc


def _floats(meta: dict[str, str], key: str, channels: int) -> list[float]:
    """A JSON number or list of numbers, one per channel (a single value is broadcast)."""
    value = _json(meta, key)
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ModelError(f"model metadata {key!r} must be a JSON list of numbers, got {meta[key]!r}")
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ModelError(f"model metadata {key!r} has {len(values)} values but 'channels' is {channels}")
    return [float(v) for v in values]


def usable_providers(wanted: list[str] | None) -> list[str]:
    """The wanted onnxruntime providers this build has, in order, and the CPU last (a GPU build without a usable
    GPU falls back to it instead of failing)."""
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted or [] if p in available and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


class EmotionClassifier:
    """``infer(crops)``: uint8 face crops [N, H, W] (gray) or [N, H, W, 3] (RGB) -> probabilities [N, K]."""

    def __init__(self, path: Path | str, intra_op_threads: int = 1, providers: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Requests already run in parallel (one per pool thread); more intra-op threads would oversubscribe.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=usable_providers(providers))
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise ModelError(f"cannot load ONNX model {self.path}: {exc}") from exc
        self.spec = ModelSpec.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        self._input, self._output = self._check_graph()
        self._scale = (1.0 / (255.0 * np.asarray(self.spec.std, np.float32))).reshape(1, -1, 1, 1)
        self._shift = (np.asarray(self.spec.mean, np.float32) / np.asarray(self.spec.std, np.float32)).reshape(
            1, -1, 1, 1
        )
        self._check_output()

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    def _check_graph(self) -> tuple[str, str]:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"model must have one input and one output, has {len(inputs)} and {len(outputs)}")
        shape = inputs[0].shape
        if len(shape) != 4:
            raise ModelError(f"model input must be NCHW (4-D), got shape {shape}")
        if inputs[0].type != "tensor(float)":
            raise ModelError(f"model input must be float32, got {inputs[0].type}")
        _, c, h, w = shape
        if isinstance(c, int) and c != self.spec.channels:
            raise ModelError(f"model metadata 'channels' is {self.spec.channels} but the graph input has {c} channels")
        for name, static, meta in (("height", h, self.spec.input_size[0]), ("width", w, self.spec.input_size[1])):
            if isinstance(static, int) and static != meta:
                raise ModelError(f"model metadata 'input_size' gives {name} {meta} but the graph input has {static}")
        out_shape = outputs[0].shape
        if len(out_shape) != 2:
            raise ModelError(f"model output must be [N, K], got shape {out_shape}")
        k = out_shape[1]
        if isinstance(k, int) and k != len(self.spec.labels):
            raise ModelError(f"model metadata 'labels' has {len(self.spec.labels)} entries but the output has {k}")
        return inputs[0].name, outputs[0].name

    def _check_output(self) -> None:
        # One real run on a batch of two proves the batch dimension is dynamic and the output is a softmax over
        # exactly len(labels) classes, which the static shape may not say.
        h, w = self.spec.input_size
        shape = (2, h, w) if self.spec.channels == 1 else (2, h, w, 3)
        try:
            probs = self.infer(np.full(shape, 128, np.uint8))
        except Exception as exc:
            raise ModelError(f"model fails on a batch of 2 (is the batch dimension dynamic?): {exc}") from exc
        if probs.shape != (2, len(self.spec.labels)):
            raise ModelError(
                f"model metadata 'labels' has {len(self.spec.labels)} entries but the output has shape "
                f"{probs.shape[1:]}"
            )
        if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) or (probs < 0).any():
            raise ModelError("model output is not a probability distribution (softmax must be inside the graph)")

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """uint8 NHW / NHWC crops -> normalised float32 NCHW."""
        x = crops[:, None] if crops.ndim == 3 else crops.transpose(0, 3, 1, 2)
        return x.astype(np.float32) * self._scale - self._shift  # == (x / 255 - mean) / std

    def infer(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, len(self.spec.labels)), np.float32)
        probs = self.session.run([self._output], {self._input: self.preprocess(crops)})[0]
        return np.asarray(probs, np.float32)


def per_face_ms(classifier: EmotionClassifier, batch: int = 1, runs: int = 300) -> np.ndarray:
    """Milliseconds per face of `runs` calls on a batch of random crops, after 20 calls to warm up: what
    `benchmarks/bench_model.py` and `training quantize` report."""
    h, w = classifier.spec.input_size
    shape = (h, w) if classifier.spec.channels == 1 else (h, w, 3)
    crops = np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)
    for _ in range(20):
        classifier.infer(crops)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        classifier.infer(crops)
        times[i] = (time.perf_counter() - t0) * 1000 / batch
    return times
