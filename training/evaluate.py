"""Evaluate an exported ONNX model exactly as the server runs it: the server's EmotionClassifier on area-resized faces.

Writes `metrics.json` (accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, calibration error,
accuracy on the same faces made small and as a poor camera gives them),
`confusion_matrix.png`, `reliability.png` and, given the training history, `learning_curves.png`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from training.data import FaceDataset, add_data_arguments, ferplus_path, load_dataset, resize_faces


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """[k, k] counts: rows the true class, columns the prediction."""
    return np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)


def classification_report(truth: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict:
    return report_from_confusion(confusion_matrix(truth, pred, len(labels)), labels)


def report_from_confusion(cm: np.ndarray, labels: list[str]) -> dict:
    k = len(labels)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(k), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(k), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = cm.sum(1) > 0  # macro-F1 over the classes the split has
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()),
        "images": int(cm.sum()),
        "per_class": {
            labels[i]: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(cm[i].sum()),
            }
            for i in range(k)
        },
        "labels": labels,
        "confusion_matrix": cm.tolist(),
    }


def split_faces(
    spec, ds: FaceDataset, split: str, side: int | None = None, fault: str | None = None
) -> tuple[str, np.ndarray, np.ndarray, int]:
    """A split's faces as the model takes them (area-resized uint8) and their labels for the model's head:
    (head, faces, truth, rows dropped by the FER+ majority protocol: unknown / not-a-face / tied).

    With `side`, each face is first shrunk to side x side pixels and then enlarged to the model's input, bilinearly,
    as the server's crop enlarges a face that small in a photo: how the model fares on small faces. With `fault`
    (one of CAMERA_FAULTS), each 48 px face first gets that fault (`camera_fault`)."""
    head = spec.metadata.get("label_source", "fer2013")
    if head not in ds.targets:
        head = next((h for h in ds.targets if ds.labels[h] == spec.labels), head)
    if head not in ds.targets:
        raise ValueError(f"the data has no {head} labels for this model (FER+ votes need --ferplus or a .pack)")
    if ds.labels[head] != spec.labels:
        raise ValueError(f"model labels {spec.labels} differ from the data's {ds.labels[head]}")
    idx = ds.split(split)
    truth = ds.hard_labels(head)[idx]
    keep = truth >= 0
    faces = ds.images[idx][keep]
    if fault is not None:
        faces = camera_fault(faces, fault)
    faces = resize_faces(faces, *spec.input_size) if side is None else shrink_faces(faces, side, spec.input_size)
    if spec.channels == 3:
        faces = np.repeat(faces[..., None], 3, axis=3)
    return head, faces, truth[keep], int((~keep).sum())


def shrink_faces(faces: np.ndarray, side: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 faces area-shrunk to side x side and enlarged to `size` (h, w), interpolated as the server's crop_face
    enlarges a face that small in a photo."""
    h, w = size
    interp = cv2.INTER_LINEAR if side < min(h, w) else cv2.INTER_AREA  # as the server's crop_face picks
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in resize_faces(faces, side, side)])


CAMERA_FAULTS = ("dark", "low_contrast", "noise", "blur", "jpeg")


def camera_fault(faces: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """uint8 faces as a poor camera gives them, at one fixed strength each: `dark` (underexposed: gamma 2.2, then
    x0.8), `low_contrast` (x0.4 about each face's mean), `noise` (Gaussian, sigma 15 of 255, seeded), `blur`
    (Gaussian, sigma 1.2 px on a 48 px face: defocus or motion) and `jpeg` (quality 15, a starved video stream).
    `train --degrade-prob` teaches the first four at random strengths; JPEG is never trained on."""
    f = faces.astype(np.float32) / 255
    if kind == "dark":
        f = f**2.2 * 0.8
    elif kind == "low_contrast":
        mean = f.mean((1, 2), keepdims=True)
        f = (f - mean) * 0.4 + mean
    elif kind == "noise":
        f = f + np.random.default_rng(seed).normal(0, 15 / 255, f.shape).astype(np.float32)
    elif kind == "blur":
        f = np.stack([cv2.GaussianBlur(x, (0, 0), 1.2, borderType=cv2.BORDER_REPLICATE) for x in f])
    elif kind == "jpeg":
        jpeg = [cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, 15])[1] for x in faces]
        return np.stack([cv2.imdecode(b, cv2.IMREAD_GRAYSCALE) for b in jpeg])
    else:
        raise ValueError(f"unknown camera fault {kind!r} (expected one of {', '.join(CAMERA_FAULTS)})")
    return (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8)


def calibration_error(probs: np.ndarray, truth: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error (Guo et al. 2017: confidence bins of equal width, each weighted by its share of
    the faces) and the reliability table behind it: per bin the faces, their mean confidence, the share right."""
    conf, right = probs.max(1), probs.argmax(1) == truth
    which = np.minimum((conf * bins).astype(int), bins - 1)
    table = [
        {
            "faces": int(m.sum()),
            "confidence": round(float(conf[m].mean()), 4),
            "accuracy": round(float(right[m].mean()), 4),
        }
        for m in (which == b for b in range(bins))
        if m.any()
    ]
    ece = sum(r["faces"] * abs(r["accuracy"] - r["confidence"]) for r in table) / max(len(truth), 1)
    return {"ece": round(float(ece), 4), "mean_confidence": round(float(conf.mean()), 4), "bins": table}


SMALL_FACE_SIDES = (32, 24, 16)  # pixels; the split's faces are 48 px


def in_frame(image: np.ndarray, width: float, kind: str = "grey") -> np.ndarray:
    """A photo inside a frame `width` times its longer side wide on every side: grey (what `choose_crop` measures),
    its border pixels "repeated" outwards, or the photo "blurred" and enlarged behind itself. The labelled photos are
    tight crops of faces; a frame shows how a crop copes with the surroundings a webcam frame or an upload has."""
    h, w = image.shape[:2]
    pad = int(round(width * max(h, w)))
    if kind == "grey":
        return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    if kind == "repeated":
        return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    if kind != "blurred":
        raise ValueError(f"unknown frame {kind!r} (grey, repeated or blurred)")
    background = cv2.GaussianBlur(cv2.resize(image, (w + 2 * pad, h + 2 * pad)), (0, 0), 15)
    background[pad : pad + h, pad : pad + w] = image
    return background


def infer_batched(classifier, faces: np.ndarray, batch: int = 256) -> np.ndarray:
    """The classifier's probabilities for many uint8 faces, `batch` at a time (bounded memory)."""
    return np.concatenate([classifier.infer(faces[i : i + batch]) for i in range(0, len(faces), batch)])


def evaluate_onnx(model_path: str | Path, ds: FaceDataset, split: str = "PublicTest") -> dict:
    from server.classifier import EmotionClassifier  # the server's own preprocessing and session

    classifier = EmotionClassifier(model_path)
    spec = classifier.spec
    head, faces, truth, dropped = split_faces(spec, ds, split)
    t0 = time.perf_counter()
    probs = infer_batched(classifier, faces)
    seconds = time.perf_counter() - t0
    report = classification_report(truth, probs.argmax(1), spec.labels)

    def accuracy(variant: np.ndarray) -> float:
        return round(float((infer_batched(classifier, variant).argmax(1) == truth).mean()), 4)

    small = {str(side): accuracy(split_faces(spec, ds, split, side)[1]) for side in SMALL_FACE_SIDES}
    faults = {kind: accuracy(split_faces(spec, ds, split, fault=kind)[1]) for kind in CAMERA_FAULTS}
    report.update(
        split=split,
        model=str(model_path),
        label_source=head,
        dropped_rows=dropped,
        ms_per_face_batched=round(1000 * seconds / len(faces), 3),
        calibration=calibration_error(probs, truth),
        small_faces=small,
        camera_faults=faults,
    )
    return report


def plot_confusion(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(report["confusion_matrix"], float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    labels = report["labels"]
    fig, ax = plt.subplots(figsize=(1.0 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n{int(cm[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{report['split']} ({report['label_source']}): accuracy {report['accuracy']:.1%}, "
        f"macro-F1 {report['macro_f1']:.3f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(report: dict, path: Path) -> None:
    """Reliability diagram: per confidence bin, the share of faces labelled right against the mean confidence
    (on the diagonal when confidences mean what they say), with each bin's share of the faces below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = report["calibration"]
    conf = [b["confidence"] for b in cal["bins"]]
    acc = [b["accuracy"] for b in cal["bins"]]
    share = [b["faces"] / report["images"] for b in cal["bins"]]
    fig, (a, b) = plt.subplots(2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    a.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="calibrated")
    a.plot(conf, acc, marker="o", label="this model")
    a.set_ylabel("share right")
    a.set_title(
        f"{report['split']} ({report['label_source']}): calibration error {cal['ece']:.3f}\n"
        f"mean confidence {cal['mean_confidence']:.1%}, accuracy {report['accuracy']:.1%}",
        fontsize=9,
    )
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    b.bar(conf, share, width=0.05)
    b.set_xlabel("confidence (bins of 1/15)")
    b.set_ylabel("faces")
    b.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curves(histories: list[dict], path: Path) -> None:
    """Loss and PublicTest accuracy per epoch. Several histories (a run, then fine-tunes started from its weights
    with `--init`) are drawn one after the other, a dashed line where each new schedule starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, starts, offset = [], [], 0
    for history in histories:
        starts.append(offset)
        rows += [dict(r, epoch=offset + r["epoch"]) for r in history["history"]]
        offset = rows[-1]["epoch"] if rows else offset
    epochs = [r["epoch"] for r in rows]
    keys = {k for r in rows for k in r}
    heads = sorted(k[: -len("_val_acc")] for k in keys if k.endswith("_val_acc") and not k.endswith("_raw_val_acc"))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(epochs, [r["train_loss"] for r in rows], label="train loss (all heads)")
    for h in heads:
        a.plot(epochs, [r[f"{h}_val_loss"] for r in rows], label=f"{h} PublicTest loss")
        line = b.plot(epochs, [r[f"{h}_val_acc"] for r in rows], marker="o", ms=3, label=f"{h} PublicTest accuracy")
        if f"{h}_raw_val_acc" in keys:  # a run with --ema: its val_acc is the average's, beside the trained weights'
            raw = [r.get(f"{h}_raw_val_acc", np.nan) for r in rows]
            b.plot(epochs, raw, color=line[0].get_color(), lw=0.8, alpha=0.5, label=f"{h}, trained weights (--ema)")
    for ax in (a, b):
        for start in starts[1:]:
            ax.axvline(start + 0.5, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("epoch" + (" (dashed: a new schedule from the previous weights)" if len(starts) > 1 else ""))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_runs(runs: list[str | Path], path: Path | None = None, tail: int = 3) -> list[dict]:
    """Training runs side by side, from their history.json: per head the best epoch's PublicTest accuracy (what
    selection on PublicTest picks, and overrates), the mean of the last `tail` epochs (the schedule's end point, the
    steadier number for an ablation) and the epochs run. With `path`, one panel per head with every run's curve."""
    if tail < 1:
        raise ValueError(f"--tail must be at least 1, got {tail}")
    rows = []
    for run in runs:
        state = json.loads((Path(run) / "history.json").read_text())
        history = state["history"]
        if not history:
            raise ValueError(f"{run}: its history.json has no epoch yet")
        keys = {k for r in history for k in r}
        heads = sorted(k[: -len("_val_acc")] for k in keys if k.endswith("_val_acc") and "_raw_" not in k)
        # A run still going (or cut by its budget before its schedule's end) has not annealed: say so beside it.
        row = {"run": str(run), "epochs": len(history), "of": state.get("epochs", len(history)), "heads": {}}
        row["history"] = history
        for h in heads:
            acc = np.array([r.get(f"{h}_val_acc", np.nan) for r in history])
            best = int(np.nanargmax(acc))
            row["heads"][h] = {
                "best": float(acc[best]),
                "best_epoch": history[best]["epoch"],
                "end": float(np.nanmean(acc[-tail:])),
            }
        rows.append(row)
    if path is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        heads = sorted({h for row in rows for h in row["heads"]})
        fig, axes = plt.subplots(1, len(heads), figsize=(5.5 * len(heads), 4), squeeze=False)
        for ax, h in zip(axes[0], heads, strict=True):
            for row in rows:
                if h in row["heads"]:
                    xs = [r["epoch"] for r in row["history"]]
                    ys = [100 * r[f"{h}_val_acc"] for r in row["history"]]
                    ax.plot(
                        xs, ys, marker="o", ms=2, label=f"{Path(row['run']).name}: end {row['heads'][h]['end']:.2%}"
                    )
            ax.set_title(f"{h}: PublicTest accuracy per epoch")
            ax.set_xlabel("epoch")
            ax.set_ylabel("%")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return rows


def _compare(args: argparse.Namespace) -> int:
    rows = compare_runs(args.runs, Path(args.plot) if args.plot else None, args.tail)
    for row in rows:
        cells = "  ".join(
            f"{h} best {r['best']:.2%} (epoch {r['best_epoch']}), last {args.tail} mean {r['end']:.2%}"
            for h, r in row["heads"].items()
        )
        done = "" if row["epochs"] >= row["of"] else f" of {row['of']} (unfinished: not annealed yet)"
        print(f"{row['run']}: {row['epochs']} epochs{done}  {cells}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="training runs side by side (an ablation): best and end-of-schedule PublicTest accuracy per head",
        description="Read each run folder's history.json and print, per head, the best epoch's PublicTest accuracy "
        "and the mean of the last epochs; --plot draws every run's curve, one panel per head.",
    )
    p.add_argument("runs", nargs="+", help="run folders (each with history.json)")
    p.add_argument("--tail", type=int, default=3, help="epochs at the end of the schedule to average (default 3)")
    p.add_argument("--plot", default=None, help="write the curves to this PNG")
    p.set_defaults(func=_compare)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate an exported ONNX model through onnxruntime, as the server runs it",
        description="Run the ONNX model through the server's classifier on a split and write "
        "metrics.json, confusion_matrix.png, reliability.png and (with --history) learning_curves.png to --out.",
    )
    p.add_argument("model", help="exported .onnx file")
    add_data_arguments(p)
    p.add_argument(
        "--source",
        default="fer2013",
        choices=["fer2013", "folder"],
        help="folder: --data is a root of <split>/<emotion>/ image folders",
    )
    p.add_argument("--split", default="PublicTest", help="Training, PublicTest or PrivateTest (default PublicTest)")
    p.add_argument(
        "--history",
        nargs="+",
        default=None,
        help="history.json from training, for learning_curves.png; several (a run, then its --init fine-tunes) "
        "are drawn one after the other",
    )
    p.add_argument("--out", default=None, help="output folder (default: beside the model)")
    p.add_argument(
        "--record",
        action="store_true",
        help="write the split's accuracy and macro-F1 into the model's `metrics` metadata",
    )
    p.set_defaults(func=run)


def write_report(
    model: str | Path,
    ds: FaceDataset,
    out: str | Path,
    split: str = "PublicTest",
    history: list[str | Path] | None = None,
    record: bool = False,
) -> dict:
    """Evaluate `model` on `split` and write metrics.json, confusion_matrix.png, reliability.png and (with
    `history`) learning_curves.png to `out`; with `record`, also the split's scores into the file's `metrics`."""
    report = evaluate_onnx(model, ds, split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    plot_confusion(report, out / "confusion_matrix.png")
    plot_reliability(report, out / "reliability.png")
    if history:
        plot_learning_curves([json.loads(Path(h).read_text()) for h in history], out / "learning_curves.png")
    if record:
        import onnx

        from training.metadata import read_metadata, set_metadata

        metrics = json.loads(read_metadata(onnx.load(str(model))).get("metrics") or "{}")
        metrics[report["split"]] = {
            "accuracy": round(report["accuracy"], 4),
            "macro_f1": round(report["macro_f1"], 4),
            "calibration_error": report["calibration"]["ece"],
        }
        set_metadata(model, metrics=json.dumps(metrics))
    return report


def run(args: argparse.Namespace) -> int:
    ds = load_dataset(args.source, args.data, ferplus_path(args.ferplus, missing_ok=True))
    out = Path(args.out) if args.out else Path(args.model).parent
    report = write_report(args.model, ds, out, args.split, args.history, args.record)
    print_report(report, out)
    return 0


def print_report(report: dict, out: Path) -> None:
    print(
        f"{report['split']}: accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
        f"({report['images']} images, {report['dropped_rows']} dropped)"
    )
    for label, r in report["per_class"].items():
        print(
            f"  {label:<9} precision {r['precision']:.3f}  recall {r['recall']:.3f}  f1 {r['f1']:.3f}  n={r['support']}"
        )
    cal = report["calibration"]
    print(f"  calibration error {cal['ece']:.3f} (mean confidence {cal['mean_confidence']:.3f})")
    small = ", ".join(f"{side} px {acc:.1%}" for side, acc in report["small_faces"].items())
    print(f"  small faces (each shrunk to a side, then enlarged to the input): {small}")
    faults = ", ".join(f"{kind} {acc:.1%}" for kind, acc in report["camera_faults"].items())
    print(f"  camera faults (each face underexposed, flat, noisy, blurred or JPEG-starved): {faults}")
    print(f"wrote {out / 'metrics.json'}, {out / 'confusion_matrix.png'}, {out / 'reliability.png'}")
