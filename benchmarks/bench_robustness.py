"""PublicTest accuracy of model files on faces as cameras give them, side by side: clean, small (shrunk to 32, 24 and
16 px and enlarged back, as the server enlarges a small face) and with each camera fault of
`training.evaluate.camera_fault` (underexposed, flat, noisy, blurred, JPEG at quality 15).

    python benchmarks/bench_robustness.py [FILE ...] [--data data_cache/fer2013.pack] [--plot FILE]

Every file runs through the server's own classifier (`training.evaluate.evaluate_onnx`). Prints one row per file and
one column per condition; --plot draws the same as grouped bars under one PublicTest face in each condition.
Files of different label sets (FER+ 8 classes, FER2013 7) are scored on their own labels and do not compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
from _common import ROOT  # noqa: E402

from training.data import add_data_arguments, ferplus_path, load_dataset  # noqa: E402
from training.evaluate import (  # noqa: E402
    CAMERA_FAULTS,
    SMALL_FACE_SIDES,
    camera_fault,
    evaluate_onnx,
    shrink_faces,
)

CONDITIONS = ["clean", *(f"{side} px" for side in SMALL_FACE_SIDES), *CAMERA_FAULTS]


def accuracies(report: dict) -> dict[str, float]:
    """The report of `evaluate_onnx` as condition -> accuracy."""
    small = {f"{side} px": acc for side, acc in report["small_faces"].items()}
    return {"clean": report["accuracy"], **small, **report["camera_faults"]}


# The face the picture shows each condition on: PublicTest's sixth, a frontal photograph (its first is a drawing).
EXAMPLE = 5


def example_faces(face: np.ndarray) -> list[np.ndarray]:
    """One 48 px face in every condition, for the picture."""
    small = [shrink_faces(face[None], side, face.shape)[0] for side in SMALL_FACE_SIDES]
    return [face, *small, *(camera_fault(face[None], kind)[0] for kind in CAMERA_FAULTS)]


def plot(rows: dict[str, dict[str, float]], face: np.ndarray, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig = plt.figure(figsize=(11, 5.2))
    grid = fig.add_gridspec(2, len(CONDITIONS), height_ratios=[1, 3.2], hspace=0.25)
    for i, (name, img) in enumerate(zip(CONDITIONS, example_faces(face), strict=True)):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    x, width = np.arange(len(CONDITIONS)), 0.8 / max(len(rows), 1)
    for k, (label, acc) in enumerate(rows.items()):
        values = [100 * acc[c] for c in CONDITIONS]
        bars = ax.bar(x + (k - (len(rows) - 1) / 2) * width, values, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, CONDITIONS)
    ax.set_ylabel("PublicTest accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="ONNX files (default: models/emotion_*.onnx)")
    add_data_arguments(p)
    p.add_argument("--split", default="PublicTest")
    p.add_argument("--plot", default=None, help="write the grouped bar chart to this PNG")
    args = p.parse_args()
    models = [Path(m) for m in args.models] or sorted((ROOT / "models").glob("emotion_*.onnx"))
    ds = load_dataset("fer2013", args.data, ferplus_path(args.ferplus, missing_ok=True))
    rows = {}
    print(f"{args.split} accuracy, %: " + " | ".join(CONDITIONS))
    for model in models:
        acc = accuracies(evaluate_onnx(model, ds, args.split))
        rows[model.name] = acc
        print(f"{model}: " + " | ".join(f"{100 * acc[c]:.1f}" for c in CONDITIONS))
    if args.plot:
        faces = ds.images[ds.split(args.split)]
        plot(rows, faces[min(EXAMPLE, len(faces) - 1)], Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
