"""End-to-end accuracy on labelled real photos, through the server's own detection, crop and classifier.

    python benchmarks/bench_photos.py [models/emotion_ferplus.onnx ...] [--photos DIR] [--plot DIR]

Each file is measured with its own crop (its metadata), on the photos as they are and on the photos put in a grey
frame (they are tight crops of faces; a frame shows how a crop copes with the surroundings a webcam frame or a
head-and-shoulders upload has). Photos where no face is found count as wrong; photos whose label the model does not
have (contempt for a 7-class file) are skipped. Prints the accuracy, every class's recall and the confusion matrix;
--plot writes <DIR>/<file>_photos.png.

The same numbers are then given per image size, because in faces-in-the-wild the size tells the sources apart: the
350x350 photos are LFW-style crops of the face, the other sizes are mostly video stills from films (and hold
most of the disgust and half of the sad labels). A size shared by fewer than 10% of the photos counts as "other".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
from _common import ROOT, find_yunet  # noqa: E402

from server.classifier import EmotionClassifier  # noqa: E402
from server.pipeline import image_format_and_size  # noqa: E402


def by_size(per_photo: list[tuple[str, str, str | None, float]], images: Path) -> dict[str, dict]:
    """Accuracy, mean confidence (of the photos with a face) and per-class recall per image size (sizes under 10%
    of the photos are pooled as "other")."""
    sizes = []
    for name, *_ in per_photo:  # from the header, as the server sizes uploads: no second decode of every photo
        found = image_format_and_size((images / name).read_bytes())
        sizes.append("unreadable" if found is None else f"{found[1]}x{found[2]}")
    common = {s for s in set(sizes) if sizes.count(s) >= 0.1 * len(sizes)}
    groups: dict[str, list[tuple[str, str | None, float]]] = {}
    for size, (_, label, pred, conf) in zip(sizes, per_photo, strict=True):
        groups.setdefault(size if size in common else "other", []).append((label, pred, conf))
    out = {}
    for size, rows in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        recall = {}
        for label in sorted({lab for lab, _, _ in rows}):
            hits = [pred == label for lab, pred, _ in rows if lab == label]
            recall[label] = (round(sum(hits) / len(hits), 4), len(hits))
        confidences = [c for _, pred, c in rows if pred is not None]
        out[size] = {
            "photos": len(rows),
            "accuracy": round(sum(p == lab for lab, p, _ in rows) / len(rows), 4),
            "mean_confidence": round(sum(confidences) / max(len(confidences), 1), 4),
            "recall": recall,
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="ONNX files (default: models/emotion_*.onnx)")
    p.add_argument("--photos", default=str(ROOT.parent / "shared/datasets/faces-in-the-wild"))
    p.add_argument("--yunet", default=None, help="YuNet file (default: models/ or ../shared/models/); 'none': Haar")
    p.add_argument("--plot", default=None, help="folder for one confusion-matrix picture per file")
    args = p.parse_args()
    from training.evaluate import plot_confusion, report_from_confusion  # noqa: PLC0415  (the [train] extra)
    from training.export import FRAME, measure_crops  # noqa: PLC0415

    photos = Path(args.photos)
    if not (photos / "labels.csv").is_file():
        sys.exit(f"{photos}: no labels.csv (give --photos)")
    yunet = None if args.yunet == "none" else find_yunet(args.yunet)
    paths = args.models or [str(m) for m in sorted((ROOT / "models").glob("emotion_*.onnx"))]
    for path in paths:
        spec = EmotionClassifier(path).spec
        crop = f"margin {spec.crop_margin:g}, align {spec.align}"
        if spec.align == "landmarks":
            crop += f" (template {json.dumps(spec.face_template)})"
        print(f"{Path(path).name}: {crop}, detector {'YuNet' if yunet else 'Haar'}")
        result = measure_crops(path, photos, yunet, own_crop=True)[("own", 0.0)]
        framed = measure_crops(path, photos, yunet, own_crop=True, frame=FRAME)[("own", 0.0)]
        labels, cm = result["labels"], result["confusion_matrix"]
        width = max(len(n) for n in labels) + 1
        print(f"  accuracy {result['accuracy']:.1%} of {result['photos']} photos ({result['faces']} with a face)")
        print(f"  in a grey frame ({FRAME:g} of the longer side each way): accuracy {framed['accuracy']:.1%}")
        print("  confusion (rows: label, columns: prediction)")
        print("  " + " " * width + "".join(f"{n[:5]:>6}" for n in labels))
        for name, row in zip(labels, cm, strict=True):
            if sum(row):
                print(f"  {name:<{width}}" + "".join(f"{v:>6}" for v in row))
        if args.plot:
            report = report_from_confusion(np.array(cm), labels)
            report.update(split=f"{photos.name} (faces found)", label_source=Path(path).stem)
            out = Path(args.plot) / f"{Path(path).stem}_photos.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            plot_confusion(report, out)
            print(f"  wrote {out}")
        sizes = by_size(result["per_photo"], photos / "images")
        for size, g in sizes.items():
            recall = ", ".join(f"{k} {r:.2f} ({n})" for k, (r, n) in g["recall"].items())
            print(
                f"  {size}: accuracy {g['accuracy']:.1%} of {g['photos']} photos, mean confidence "
                f"{g['mean_confidence']:.1%}; recall {recall}"
            )
        summary = {"accuracy": round(result["accuracy"], 4), "framed": round(framed["accuracy"], 4)}
        summary["recall"] = result["recall"]
        summary["by_size"] = {
            k: {key: g[key] for key in ("photos", "accuracy", "mean_confidence")} for k, g in sizes.items()
        }
        print("  " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
