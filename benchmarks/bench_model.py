"""Per-face latency of the shipped emotion classifier on ONE CPU core (onnxruntime, one intra-op thread).

    python benchmarks/bench_model.py [models/emotion_ferplus.onnx ...]

Prints p50/p95 for one face per call (the live-page case) and the per-face cost inside a batch of 8.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from server.classifier import EmotionClassifier, per_face_ms  # noqa: E402


def bench(path: str, runs: int = 300) -> None:
    classifier = EmotionClassifier(path, intra_op_threads=1)
    h, w = classifier.spec.input_size
    for batch in (1, 8):
        p50, p95 = np.percentile(per_face_ms(classifier, batch, runs), [50, 95])
        print(
            f"{Path(path).name:<24} batch {batch}: per face p50 {p50:.2f} ms  p95 {p95:.2f} ms  "
            f"(tta={classifier.spec.metadata.get('tta', '?')}, input {h}x{w})"
        )


if __name__ == "__main__":
    paths = sys.argv[1:] or [str(p) for p in sorted(Path("models").glob("emotion_*.onnx"))]
    if not paths:
        sys.exit("no models given and none in models/")
    for p in paths:
        bench(p)
