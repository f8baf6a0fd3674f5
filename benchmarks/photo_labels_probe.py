"""Would photos labelled the way faces-in-the-wild is labelled lift a model to the 66% goal? A probe, not a model.

    python benchmarks/photo_labels_probe.py CHECKPOINT.pt [--model models/emotion_ferplus.onnx] [--photos DIR]

The network of CHECKPOINT (the training checkpoint of the served file) is frozen; its FER+ head is refitted on some
of the photos' faces (the server's detection and the served file's crop) and scored on the others: 5-fold
cross-validation stratified by label, the refitted head pulled towards the trained one with a weight lambda; then
fitted on one source of photos and scored on the other (the 350x350 LFW-style photos and the film stills of other
sizes, see bench_photos.py). Photos without a face count as wrong, as in bench_photos.py. The photos are the
benchmark: nothing fitted here is ever served. Needs the [train] extra (torch).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from _common import ROOT, find_yunet  # noqa: E402

from server.classifier import EmotionClassifier  # noqa: E402
from server.detector import create_detector  # noqa: E402
from server.pipeline import EmotionPipeline, crop_for  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="training checkpoint (.pt) of the served file's network")
    p.add_argument("--model", default=str(ROOT / "models/emotion_ferplus.onnx"), help="served file: its crop")
    p.add_argument("--photos", default=str(ROOT.parent / "shared/datasets/faces-in-the-wild"))
    p.add_argument("--yunet", default=None)
    args = p.parse_args()
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    from training.train import load_checkpoint  # noqa: PLC0415

    photos = Path(args.photos)
    classifier = EmotionClassifier(args.model)
    pipeline = EmotionPipeline(create_detector("yunet", find_yunet(args.yunet) or ""), classifier)
    labels = classifier.labels
    with open(photos / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    x, y, source = [], [], []
    for r in rows:
        image = cv2.imread(str(photos / "images" / r["file"]))
        faces = pipeline.detect(image) if image is not None and r["emotion"] in labels else []
        if faces:
            x.append(classifier.preprocess(crop_for(image, faces[0], classifier.spec)[None])[0])
            y.append(labels.index(r["emotion"]))
            source.append("LFW-style" if image.shape[:2] == (350, 350) else "stills")
    total = len(rows)
    inputs = torch.from_numpy(np.stack(x)).float()
    inputs = inputs[:, None] if inputs.ndim == 3 else inputs
    truth, source = np.array(y), np.array(source)
    net, _ = load_checkpoint(args.checkpoint)
    with torch.no_grad():
        feats = (net.embed(inputs) + net.embed(inputs.flip(-1))) / 2  # flip-averaged, as the served file
        w0, b0 = net.heads["ferplus"].weight.clone(), net.heads["ferplus"].bias.clone()
        trained = (feats @ w0.T + b0).argmax(1).numpy()
    target = torch.from_numpy(truth)

    def fit(train: np.ndarray, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")
        mask = torch.from_numpy(train)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(feats[mask] @ w.T + b, target[mask])
            loss = loss + lam * (((w - w0) ** 2).sum() + ((b - b0) ** 2).sum())
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach(), b.detach()

    def line(name: str, pred: np.ndarray, mask: np.ndarray, of_all: bool = False) -> str:
        acc = np.mean(pred[mask] == truth[mask]) * (mask.sum() / total if of_all else 1.0)
        recall = ", ".join(f"{labels[c]} {np.mean(pred[mask & (truth == c)] == c):.2f}" for c in np.unique(truth[mask]))
        return f"  {name}: {acc:.1%}; recall {recall}"

    everyone = np.ones(len(truth), bool)
    print(f"{len(truth)} of {total} photos with a face; features {tuple(feats.shape)} from {args.checkpoint}")
    print(line("trained head (of all photos)", trained, everyone, of_all=True))
    rng = np.random.default_rng(0)
    fold = np.zeros(len(truth), int)
    for c in np.unique(truth):
        idx = np.flatnonzero(truth == c)
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % 5
    for lam in (1.0, 0.1, 0.01, 0.001):
        pred = np.zeros(len(truth), int)
        for k in range(5):
            w, b = fit(fold != k, lam)
            pred[fold == k] = (feats[fold == k] @ w.T + b).argmax(1).numpy()
        by_source = ", ".join(f"{s} {np.mean(pred[source == s] == truth[source == s]):.1%}" for s in np.unique(source))
        print(line(f"5-fold CV, lambda {lam:g} (of all photos; {by_source})", pred, everyone, of_all=True))
    for lam in (0.1, 0.01):
        for fitted, scored in (("LFW-style", "stills"), ("stills", "LFW-style")):
            w, b = fit(source == fitted, lam)
            pred = (feats @ w.T + b).argmax(1).numpy()
            mask = source == scored
            print(line(f"lambda {lam:g}, fitted on {fitted}, scored on {scored}", pred, mask))
            print(line(f"          the trained head on {scored}", trained, mask))
    return 0


if __name__ == "__main__":
    sys.exit(main())
