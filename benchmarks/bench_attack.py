"""Does an adversarial photo survive JPEG? The attack of `python -m training attack`, then re-encoding.

For each of the first --n photos of a labelled folder (labels.csv + images/, e.g. ../shared/datasets/faces-in-the-wild)
whose largest face the model does not already call --target, the attack searches the smallest budget that makes the
server's pipeline say the target; the hacked photo is then re-encoded as JPEG at each --quality and sent through the
same pipeline (decode, detect, crop, ONNX) again. Prints one line per photo and the survival rate per format.

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
            for key, encode in _transforms(args.quality).items():
                data, scale = encode(result.hacked)
                row[key] = _says(pipeline, data, result.face, scale) == args.target
                # The control: the same treatment of the untouched photo must not say the target by itself.
                data, scale = encode(image)
                row["clean_" + key] = _says(pipeline, data, result.face, scale) == args.target
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


def _transforms(qualities: list[int]) -> dict[str, Callable[[np.ndarray], tuple[bytes, float]]]:
    """What a photo goes through on its way to a server: name -> image -> (encoded bytes, scale of the image)."""

    def png(image: np.ndarray) -> tuple[bytes, float]:
        return cv2.imencode(".png", image)[1].tobytes(), 1.0

    def jpeg(q: int) -> Callable[[np.ndarray], tuple[bytes, float]]:
        return lambda image: (cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes(), 1.0)

    def half(image: np.ndarray) -> tuple[bytes, float]:  # a smaller copy, as a messenger or a thumbnail makes
        small = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
        return cv2.imencode(".png", small)[1].tobytes(), 0.5

    return {"png": png, **{f"jpeg{q}": jpeg(q) for q in qualities}, "half_size": half}


def _says(pipeline: EmotionPipeline, data: bytes, face: tuple[float, ...], scale: float) -> str | None:
    return predict_face(pipeline, decode_image(data), [v * scale for v in face]).emotion


if __name__ == "__main__":
    sys.exit(main())
