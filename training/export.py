"""Export one head of a checkpoint to the ONNX file the server loads (DESIGN.md, Contract 1).

The file carries its own preprocessing in `metadata_props`; a torch-vs-onnxruntime parity check runs on every export,
and the crop margin is chosen by running the server's own detect -> crop -> classify pipeline on real photos.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
import torch

from training.evaluate import confusion_matrix, in_frame
from training.metadata import read_metadata, set_metadata, update_metadata
from training.model import ExportWrapper
from training.train import load_checkpoint

if TYPE_CHECKING:
    from server.classifier import ModelSpec

MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
ZOOMS = (0.9, 1.0, 1.1, 1.2)  # of the landmark template, for align "landmarks"
FRAME = 0.4  # choose_crop also measures each photo in a grey frame this much of its longer side wide on each side


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


def add_flip_tta(path: str | Path, out: str | Path) -> Path:
    """Average an exported file's output with its output on the mirrored face, in the graph, for a file whose
    checkpoint is gone (or an int8 file): the batch is run once with its mirror images appended, the two halves of
    the result are averaged. Every metadata key is kept; `tta` becomes "flip"."""
    model = onnx.load(str(path))
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError(f"{path}: expected one input and one output")
    x, y = graph.input[0].name, graph.output[0].name
    meta = read_metadata(model)
    if meta.get("tta") == "flip":
        raise ValueError(f"{path}: already averages with the mirror image (tta: flip)")
    inner = {x: f"{x}/with_mirrors", y: f"{y}/with_mirrors"}  # the old graph now runs between these two
    for node in graph.node:
        node.input[:] = [inner.get(n, n) for n in node.input]
        node.output[:] = [inner.get(n, n) for n in node.output]
    k = len(json.loads(meta["labels"]))
    const = onnx.numpy_helper.from_array
    graph.initializer.extend(
        [
            const(np.array([-1], np.int64), "tta/start"),
            const(np.array([np.iinfo(np.int64).min], np.int64), "tta/end"),
            const(np.array([3], np.int64), "tta/axis"),  # NCHW: the width
            const(np.array([-1], np.int64), "tta/step"),
            const(np.array([2, -1, k], np.int64), "tta/views"),  # (2N, K) -> (2, N, K): the faces, then mirrors
        ]
    )
    make = onnx.helper.make_node
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 18:  # ReduceMean's axes became an input
        graph.initializer.append(const(np.array([0], np.int64), "tta/first"))
        mean = make("ReduceMean", ["tta/by_view", "tta/first"], [y], keepdims=0)
    else:
        mean = make("ReduceMean", ["tta/by_view"], [y], axes=[0], keepdims=0)
    nodes = [
        make("Slice", [x, "tta/start", "tta/end", "tta/axis", "tta/step"], ["tta/mirrored"]),
        make("Concat", [x, "tta/mirrored"], [inner[x]], axis=0),
        *graph.node,
        make("Reshape", [inner[y], "tta/views"], ["tta/by_view"]),
        mean,
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    update_metadata(model, tta="flip")
    onnx.checker.check_model(model)
    out = Path(out)
    onnx.save(model, str(out))
    return out


def zoom_template(template: Sequence[Sequence[float]], zoom: float) -> list[list[float]]:
    """`template` (fractions of the crop) spread about the crop's centre by `zoom`: above 1 the face fills more."""
    return [[round(0.5 + (x - 0.5) * zoom, 4), round(0.5 + (y - 0.5) * zoom, 4)] for x, y in template]


def crop_candidates(
    spec: ModelSpec, aligns: Sequence[str], margins: Sequence[float], zooms: Sequence[float]
) -> dict[tuple[str, float], ModelSpec]:
    """The model's spec with each crop to measure: (align, margin) for "none" and "eyes", (align, zoom of FER2013's
    landmark template) for "landmarks"."""
    from server.classifier import FER2013_LANDMARKS

    candidates = {}
    for align in aligns:
        for value in zooms if align == "landmarks" else margins:
            if align == "landmarks":
                crop = {"face_template": tuple(map(tuple, zoom_template(FER2013_LANDMARKS, value)))}
            else:
                crop = {"crop_margin": value}
            candidates[(align, value)] = dataclasses.replace(spec, align=align, **crop)
    return candidates


def measure_crops(
    model_path: str | Path,
    photos: str | Path,
    yunet: str | Path | None,
    margins: tuple[float, ...] = MARGINS,
    aligns: tuple[str, ...] = ("none",),
    zooms: tuple[float, ...] = ZOOMS,
    frame: float = 0.0,
    own_crop: bool = False,
) -> dict[tuple[str, float], dict]:
    """End-to-end accuracy on labelled real photos per crop, through the server's own pipeline code (its detection
    on a downscaled copy, its crop, its classifier), with the recall of every class. A crop is (align, margin) or,
    for align "landmarks", (align, zoom of FER2013's landmark template).

    With `frame`, each photo is first put in a grey frame `frame` times its longer side wide on every side: the
    photos are tight crops of faces, so their border hides how much of its surroundings a crop takes in, which a
    webcam frame or a head-and-shoulders upload shows. With `own_crop`, only the crop the file records is measured,
    under the key ("own", 0). Photos whose label the model does not have (e.g. contempt for a 7-class model) are
    skipped; the largest face is the one judged; a photo where no face is found counts as wrong.
    """
    import cv2

    from server.classifier import EmotionClassifier  # the server's code: the crop it serves
    from server.detector import create_detector
    from server.pipeline import EmotionPipeline, crop_for

    photos = Path(photos)
    classifier = EmotionClassifier(model_path)
    pipeline = EmotionPipeline(create_detector("yunet" if yunet else "haar", yunet or ""), classifier)
    with open(photos / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["emotion"] in classifier.labels]
    found, images, truth, kept = [], [], [], []
    for i, r in enumerate(rows):
        image = cv2.imread(str(photos / "images" / r["file"]))
        if image is not None and frame > 0:
            image = in_frame(image, frame)
        faces = pipeline.detect(image) if image is not None else []
        if not faces:
            continue
        found.append(faces[0])  # largest first
        images.append(image)
        truth.append(classifier.labels.index(r["emotion"]))
        kept.append(i)
    truth_arr = np.array(truth)
    present = sorted(set(truth))
    results = {}
    own = {("own", 0.0): classifier.spec}
    for (align, value), spec in (own if own_crop else crop_candidates(classifier.spec, aligns, margins, zooms)).items():
        probs = classifier.infer(np.stack([crop_for(img, d, spec) for img, d in zip(images, found, strict=True)]))
        pred = probs.argmax(1)
        correct = int((pred == truth_arr).sum())
        cm = confusion_matrix(truth_arr, pred, len(classifier.labels))
        recall = {classifier.labels[k]: round(float(cm[k, k] / cm[k].sum()), 4) for k in present}
        predicted: list[tuple[str | None, float]] = [(None, 0.0)] * len(rows)  # None: no face found
        for i, k, p in zip(kept, pred, probs.max(1), strict=True):
            predicted[i] = (classifier.labels[k], round(float(p), 4))
        results[(align, value)] = {
            "accuracy": correct / max(len(rows), 1),  # photos without a detected face count as wrong
            "accuracy_detected": correct / max(len(truth), 1),
            "faces": len(truth),
            "photos": len(rows),
            "recall": recall,  # over the photos with a face
            "confusion_matrix": cm.tolist(),
            "labels": classifier.labels,
            # (file, label, prediction or None, its confidence) per photo
            "per_photo": [(r["file"], r["emotion"], *k) for r, k in zip(rows, predicted, strict=True)],
        }
        crop = (
            "the file's crop"
            if own_crop
            else f"align {align:9} {'zoom' if align == 'landmarks' else 'margin'} {value:.2f}"
        )
        print(
            f"{'framed: ' if frame else ''}{crop}: accuracy "
            f"{results[(align, value)]['accuracy']:.3f} over {len(rows)} labelled photos ({len(truth)} with a "
            "face); recall " + ", ".join(f"{k} {v:.2f}" for k, v in recall.items())
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
    p.add_argument(
        "checkpoint", help="runs/<name>/best_<head>.pt (PublicTest's pick) or final_<head>.pt (the schedule's end)"
    )
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
    p.add_argument(
        "--align",
        choices=["auto", "none", "eyes", "landmarks"],
        default="auto",
        help="eyes: turn crops so the eyes are level; landmarks: frame them by YuNet's five landmarks as FER2013's "
        "faces are framed; auto: measure all three on --photos and keep the best (default auto; 'none' without "
        "--photos)",
    )
    p.add_argument("--version", default="1")
    p.set_defaults(func=run)


def add_tta_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tta",
        help="add in-graph flip averaging to an exported file (float or int8) whose checkpoint is gone",
        description=add_flip_tta.__doc__,
    )
    p.add_argument("model", help="exported .onnx file")
    p.add_argument("out", help="output .onnx (may be the same path)")
    p.add_argument("--photos", default=None, help="labelled photos: choose the crop again, as `export --photos`")
    p.add_argument("--yunet", default=None, help="YuNet model for that measurement (Haar if absent)")
    p.add_argument("--align", choices=["auto", "none", "eyes", "landmarks"], default="auto")
    p.set_defaults(func=_run_tta)


def _run_tta(args: argparse.Namespace) -> int:
    path = add_flip_tta(args.model, args.out)
    if args.photos:
        choose_crop(path, args.photos, args.yunet, args.align)
    print(f"wrote {path}")
    return 0


def checkpoint_metrics(checkpoint: str | Path) -> dict:
    """The PublicTest accuracy a checkpoint was picked with, for the exported file's `metrics` (replaced by `evaluate
    --record` with the file's own)."""
    ckpt = torch.load(checkpoint, weights_only=False, map_location="cpu")
    history = Path(checkpoint).parent / "history.json"
    if "accuracy" in ckpt:  # the checkpoint's own epoch (best_ or final_)
        return {"PublicTest": {"accuracy": round(ckpt["accuracy"], 4)}}
    if history.exists():  # checkpoints written before session 6: the run's best
        state = json.loads(history.read_text())
        return {"PublicTest": {"accuracy": round(state["best"][ckpt["head"]]["accuracy"], 4)}}
    return {}


def run(args: argparse.Namespace) -> int:
    path = export_onnx(
        args.checkpoint,
        args.out,
        tta=not args.no_tta,
        crop_margin=args.margin,
        metrics=checkpoint_metrics(args.checkpoint),
        version=args.version,
    )
    if args.photos:
        choose_crop(path, args.photos, args.yunet, args.align)
    elif args.align in ("eyes", "landmarks"):
        set_metadata(path, align=args.align)
    print(f"wrote {path}")
    return 0


def choose_crop(path: str | Path, photos: str | Path, yunet: str | None, align: str = "auto") -> None:
    """Measure every crop (margins; with `align` auto and YuNet, eye-levelled crops and landmark-framed ones too;
    with `align` eyes or landmarks, those and the plain ones) end to end on the labelled photos as they are and in
    a grey frame, and write into the file the crop of `align` with the best mean of the two, with the whole search
    and the chosen crop's recall per class (on the photos as they are).

    The frame matters: the photos are tight crops of faces, where every margin from 0.1 up cuts the same whole
    image, so on them alone the margin is barely measured; in a frame, as users' photos and webcams show faces,
    a margin too wide shows the model a smaller face than it was trained on."""
    if yunet and not Path(yunet).is_file():
        raise FileNotFoundError(f"{yunet}: no such YuNet file")
    if align in ("eyes", "landmarks") and not yunet:
        raise ValueError(f"align {align} needs YuNet's landmarks: give the YuNet file (--yunet)")
    wanted = (("none", "eyes", "landmarks") if yunet else ("none",)) if align == "auto" else (align,)
    # Plain box crops are always measured: their best margin also serves faces without landmarks (Haar).
    aligns = tuple(dict.fromkeys(("none", *wanted)))
    as_given = measure_crops(path, photos, yunet, aligns=aligns)
    framed = measure_crops(path, photos, yunet, aligns=aligns, frame=FRAME)
    # Rounded, so that exact ties go to the first crop measured: plain, eyes, landmarks; smaller margin or zoom first.
    score = {k: round((as_given[k]["accuracy"] + framed[k]["accuracy"]) / 2, 9) for k in as_given}
    best_align, value = max((k for k in score if k[0] in wanted), key=score.get)
    margins = [m for a, m in score if a == "none"]
    margin = value if best_align != "landmarks" else max(margins, key=lambda m: score[("none", m)])
    values = dict(
        crop_margin=f"{margin:g}",
        align=best_align,
        margin_search=json.dumps(
            {
                f"{a}/{v:g}": [round(as_given[(a, v)]["accuracy"], 4), round(framed[(a, v)]["accuracy"], 4)]
                for a, v in score
            }
        ),
        photo_recall=json.dumps(as_given[(best_align, value)]["recall"]),
    )
    if best_align == "landmarks":
        from server.classifier import FER2013_LANDMARKS

        values["face_template"] = json.dumps(zoom_template(FER2013_LANDMARKS, value))
    set_metadata(path, remove=("face_template",), **values)  # a template of an earlier search must not linger
    given, in_frame = as_given[(best_align, value)]["accuracy"], framed[(best_align, value)]["accuracy"]
    name = "zoom" if best_align == "landmarks" else "crop margin"
    print(f"chosen: align {best_align}, {name} {value:g} (accuracy {given:.3f} as given, {in_frame:.3f} framed)")
