"""Does an adversarial photo survive what happens to photos? The attack of `python -m training attack`, then JPEG
re-encoding, smaller copies, sensor-like noise, a slight rotation and a mirror image.

For each of the first --n photos of a labelled folder (labels.csv + images/, e.g. ../shared/datasets/faces-in-the-wild)
whose largest face the model does not already call --target, the attack searches the smallest budget that makes the
server's pipeline say the target; the hacked photo then goes through each treatment and the same pipeline (decode,
detect, crop, ONNX) again. The untouched photo gets the same treatments as a control. Prints one line per photo and
the share of flipped photos that still say the target after each treatment.

    python benchmarks/bench_attack.py --n 40 --json attack_jpeg.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.config import Settings  # noqa: E402
from server.pipeline import EmotionPipeline, decode_image  # noqa: E402
from training.attack import AttackError, DifferentiableClassifier, PhotoAttacker, predict_face  # noqa: E402


def default_yunet() -> Path:
    for p in (os.environ.get("EMOTION_YUNET_PATH"), ROOT / "models" / "face_detection_yunet_2023mar.onnx"):
        if p and Path(p).is_file():
            return Path(p)
    return ROOT.parent / "shared" / "models" / "face_detection_yunet_2023mar.onnx"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=str(ROOT.parent / "shared" / "datasets" / "faces-in-the-wild"))
    ap.add_argument("--model", default=str(ROOT / "models" / "emotion_ferplus.onnx"))
    ap.add_argument("--yunet", default=str(default_yunet()))
    ap.add_argument("--n", type=int, default=40, help="photos attacked")
    ap.add_argument("--target", default="sad")
    ap.add_argument("--max-budget", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--quality", type=int, nargs="+", default=[95, 90, 75, 50])
    ap.add_argument("--json", default=None, help="write the per-photo results here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    settings = Settings(model_path=Path(args.model), yunet_path=Path(args.yunet), detector="yunet")
    pipeline = EmotionPipeline.from_settings(settings)
    model = DifferentiableClassifier(args.model)
    attacker = PhotoAttacker(model, pipeline, steps=args.steps, log=lambda _: None)
    photos = Path(args.photos)
    with open(photos / "labels.csv", newline="") as f:
        files = [r["file"] for r in csv.DictReader(f)]

    rows: list[dict] = []
    t0 = time.perf_counter()
    for name in files:
        if len(rows) >= args.n:
            break
        image = decode_image((photos / "images" / name).read_bytes())
        try:
            result = attacker.attack(image, args.target, max_budget=args.max_budget)
        except AttackError:
            continue  # no face
        if result.budget == 0:
            continue  # already the target
        row: dict = {"file": name, "before": result.before.emotion, "budget": result.budget}
        if result.budget is not None:
            for key, treat in _transforms(args.quality).items():
                row[key] = _says(pipeline, *treat(result.hacked, result.face)) == args.target
                # The control: the same treatment of the untouched photo must not say the target by itself.
                row["clean_" + key] = _says(pipeline, *treat(image, result.face)) == args.target
        rows.append(row)
        flags = "  ".join(f"{k} {'yes' if v else 'no'}" for k, v in row.items() if isinstance(v, bool))
        print(f"{name:<40} {row['before']:<9} budget {row['budget']}/255  {flags}", flush=True)

    flipped = [r for r in rows if r["budget"] is not None]
    budgets = np.array([r["budget"] for r in flipped])
    print(f"\n{len(rows)} photos attacked (target {args.target}), {len(flipped)} flipped within {args.max_budget}/255 "
          f"in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    if len(flipped):
        print(f"budget: median {np.median(budgets):g}/255, max {budgets.max()}/255")
        for key in _transforms(args.quality):
            share = np.mean([r[key] for r in flipped])
            clean = np.mean([r["clean_" + key] for r in flipped])
            print(
                f"still {args.target} after {key:<9}: {share:4.0%} of {len(flipped)}"
                f"   (the untouched photo, same treatment, says {args.target}: {clean:.0%})"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "photos": rows}, indent=1))
    return 0


Treatment = Callable[[np.ndarray, tuple[float, ...]], tuple[bytes, tuple[float, ...]]]


def _transforms(qualities: list[int]) -> dict[str, Treatment]:
    """What a photo may go through on its way to a server: name -> (image, face box) -> (file bytes, face box in the
    new image). The face box only serves to pick the same face among the detections."""

    def png(image: np.ndarray, face: tuple[float, ...]) -> tuple[bytes, tuple[float, ...]]:
        return cv2.imencode(".png", image)[1].tobytes(), face

    def jpeg(q: int) -> Treatment:
        return lambda image, face: (cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes(), face)

    def scaled(s: float) -> Treatment:  # a smaller copy, as a messenger or a thumbnail makes
        def run(image: np.ndarray, face: tuple[float, ...]) -> tuple[bytes, tuple[float, ...]]:
            size = (round(image.shape[1] * s), round(image.shape[0] * s))
            return png(cv2.resize(image, size, interpolation=cv2.INTER_AREA), tuple(v * s for v in face))

        return run

    def rotated(image: np.ndarray, face: tuple[float, ...]) -> tuple[bytes, tuple[float, ...]]:
        # 3 degrees about the face centre: a camera held slightly differently
        h, w = image.shape[:2]
        m = cv2.getRotationMatrix2D((face[0] + face[2] / 2, face[1] + face[3] / 2), 3.0, 1.0)
        return png(cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT), face)

    def noisy(image: np.ndarray, face: tuple[float, ...]) -> tuple[bytes, tuple[float, ...]]:
        # sensor-like noise, 2 grey levels standard deviation, fixed seed
        noise = np.random.default_rng(0).normal(0, 2.0, image.shape)
        return png(np.clip(image + noise, 0, 255).round().astype(np.uint8), face)

    def mirrored(image: np.ndarray, face: tuple[float, ...]) -> tuple[bytes, tuple[float, ...]]:
        x, y, w, h = face
        return png(image[:, ::-1].copy(), (image.shape[1] - x - w, y, w, h))

    return {
        "png": png,
        **{f"jpeg{q}": jpeg(q) for q in qualities},
        "half_size": scaled(0.5),
        "scale_0.8": scaled(0.8),
        "noise_2": noisy,
        "rotate_3": rotated,
        "mirror": mirrored,
    }


def _says(pipeline: EmotionPipeline, data: bytes, face: tuple[float, ...]) -> str | None:
    return predict_face(pipeline, decode_image(data), face).emotion


if __name__ == "__main__":
    sys.exit(main())
