"""Export one head of a checkpoint to the ONNX file the server loads (DESIGN.md, Contract 1).

The file carries its own preprocessing in `metadata_props`; a torch-vs-onnxruntime parity check runs on every export,
and the crop margin is chosen by running the server's own detect -> crop -> classify pipeline on real photos.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from training.model import ExportWrapper
from training.train import load_checkpoint

MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    tta: bool = True,
    crop_margin: float = 0.1,
    metrics: dict | None = None,
    version: str = "1",
) -> Path:
    net, ckpt = load_checkpoint(checkpoint)
    cfg, head = ckpt["train_config"], ckpt["head"]
    size = int(cfg["input_size"])
    wrapper = ExportWrapper(net, head, tta=tta).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        wrapper,
        torch.zeros(1, 1, size, size),
        buf,
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load_from_string(buf.getvalue())
    meta = {
        "labels": json.dumps(ckpt["heads"][head]),
        "input_size": str(size),
        "channels": "1",
        "mean": json.dumps([cfg["mean"]]),
        "std": json.dumps([cfg["std"]]),
        "crop_margin": f"{crop_margin:g}",
        "dataset": " + ".join(Path(p).name for p in (cfg["data"], cfg["ferplus"] if head == "ferplus" else None) if p),
        "label_source": ckpt["label_source"],
        "metrics": json.dumps(metrics or {}),
        "version": version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tta": "flip" if tta else "none",
    }
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)
    parity_check(wrapper, out, size)
    return out


def parity_check(wrapper: torch.nn.Module, path: Path, size: int, n: int = 16, atol: float = 1e-4) -> float:
    """Max |torch - onnxruntime| over a random batch; raises if the exported graph disagrees with torch."""
    x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = wrapper(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(expected - got).max())
    if diff > atol:
        raise RuntimeError(f"parity check failed: torch and onnxruntime differ by {diff:.2e} (> {atol:.0e})")
    print(f"parity: max |torch - onnxruntime| = {diff:.2e} over {n} inputs")
    return diff


def set_metadata(path: str | Path, **values: str) -> None:
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props} | values
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def measure_margin(
    model_path: str | Path, photos: str | Path, yunet: str | Path | None, margins: tuple[float, ...] = MARGINS
) -> dict[float, dict]:
    """End-to-end accuracy on labelled real photos per crop margin, through the server's own pipeline code.

    Photos whose label the model does not have (e.g. contempt for a 7-class model) are skipped; the largest face is
    the one judged.
    """
    import cv2

    from server.classifier import EmotionClassifier  # the server's code, so the crop is exactly what it serves
    from server.detector import create_detector
    from server.pipeline import crop_face

    photos = Path(photos)
    classifier = EmotionClassifier(model_path)
    detector = create_detector("yunet" if yunet else "haar", yunet or "")
    with open(photos / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["emotion"] in classifier.labels]
    boxes, images, truth = [], [], []
    for r in rows:
        image = cv2.imread(str(photos / "images" / r["file"]))
        faces = detector.infer(image) if image is not None else []
        if not faces:
            continue
        face = max(faces, key=lambda d: d.w * d.h)
        boxes.append((face.x, face.y, face.w, face.h))
        images.append(image)
        truth.append(classifier.labels.index(r["emotion"]))
    truth_arr = np.array(truth)
    results = {}
    spec = classifier.spec
    for m in margins:
        crops = np.stack(
            [crop_face(img, box, m, spec.input_size, spec.channels) for img, box in zip(images, boxes, strict=True)]
        )
        pred = classifier.infer(crops).argmax(1)
        results[m] = {"accuracy": float((pred == truth_arr).mean()), "faces": len(truth), "photos": len(rows)}
        print(
            f"margin {m:.2f}: accuracy {results[m]['accuracy']:.3f} on {len(truth)} detected faces "
            f"({len(rows)} labelled photos)"
        )
    return results


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint head to ONNX with metadata, parity check, margin choice",
        description="Export best_<head>.pt to an ONNX file honouring the model-file contract, check "
        "torch/onnxruntime parity and, given --photos, measure end-to-end accuracy per crop margin on "
        "labelled real photos and record the best margin in the file.",
    )
    p.add_argument("checkpoint", help="runs/<name>/best_<head>.pt")
    p.add_argument("out", help="output .onnx path, e.g. models/emotion_ferplus.onnx")
    p.add_argument("--no-tta", action="store_true", help="do not average with the horizontally flipped face in-graph")
    p.add_argument("--margin", type=float, default=0.1, help="crop margin when --photos is not given (default 0.1)")
    p.add_argument(
        "--photos",
        default=None,
        help="labelled photos (labels.csv + images/), e.g. "
        "../shared/datasets/faces-in-the-wild, to choose the crop margin",
    )
    p.add_argument("--yunet", default=None, help="YuNet model for the margin measurement (Haar if absent)")
    p.add_argument("--version", default="1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    history = Path(args.checkpoint).parent / "history.json"
    metrics = {}
    if history.exists():
        state = json.loads(history.read_text())
        head = torch.load(args.checkpoint, weights_only=False)["head"]
        metrics = {"PublicTest": {"accuracy": round(state["best"][head]["accuracy"], 4)}}
    path = export_onnx(
        args.checkpoint, args.out, tta=not args.no_tta, crop_margin=args.margin, metrics=metrics, version=args.version
    )
    if args.photos:
        yunet = args.yunet if args.yunet and Path(args.yunet).exists() else None
        results = measure_margin(path, args.photos, yunet)
        best = max(results, key=lambda m: results[m]["accuracy"])
        set_metadata(
            path,
            crop_margin=f"{best:g}",
            margin_search=json.dumps({f"{m:g}": round(r["accuracy"], 4) for m, r in results.items()}),
        )
        print(f"chosen crop margin {best:g} (accuracy {results[best]['accuracy']:.3f})")
    print(f"wrote {path}")
    return 0
