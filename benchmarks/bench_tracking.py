"""Label flicker on steady faces and the delay to follow a real change of expression, raw vs smoothed.

Clips are made from the real photos of faces-in-the-wild: each photo pasted into a 640x480 frame and shown for
``--seconds`` at ``--fps`` with webcam-like noise (sensor noise, a sub-pixel wobble, JPEG at quality 75), so the
classifier sees a steady face whose pixels change a little every frame, as a camera's do. The pipeline (YuNet +
the shipped classifier) runs once per frame; the tracker then replays its answers with each time constant.

- flicker: label changes per second of a steady face (0 would be perfectly still);
- delay: for two photos of one person that the model labels differently, shown one after the other, the time from
  the switch until the label settles on the second photo's (the label it shows most often raw).

    python benchmarks/bench_tracking.py                       # every 6th photo, 3 s clips at 15 frames/s
    python benchmarks/bench_tracking.py --step 1 --taus 0.25 0.5 1 2
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from _common import ROOT, find_yunet, shipped_or_generated_model

sys.path.insert(0, str(ROOT / "tests"))
from videos import WILD, camera_noise, scene, wild_face  # noqa: E402

from server.config import Settings  # noqa: E402
from server.pipeline import EmotionPipeline  # noqa: E402
from server.schemas import Face  # noqa: E402
from server.tracker import FaceTracker  # noqa: E402


def raw_clip(pipeline: EmotionPipeline, frames: list[np.ndarray]) -> list[list[Face]]:
    return [pipeline.predict(frame)[0][:1] for frame in frames]


def replay(raw: list[list[Face]], tau: float, fps: float) -> list[str | None]:
    """The label of the clip's face, frame by frame, through a tracker with time constant ``tau``."""
    tracker = FaceTracker(smoothing_seconds=tau)
    labels: list[str | None] = []
    for i, faces in enumerate(raw):
        out = tracker.update(faces, i / fps)
        labels.append(out[0].emotion if out else None)
    return labels


def changes(labels: list[str | None]) -> int:
    seen = [label for label in labels if label is not None]
    return sum(a != b for a, b in zip(seen, seen[1:], strict=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each steady clip")
    parser.add_argument("--step", type=int, default=6, help="use every n-th photo for the flicker clips")
    parser.add_argument("--pairs", type=int, default=30, help="most same-person pairs for the delay")
    parser.add_argument("--switch-seconds", type=float, default=4.0, help="length of each switch clip (half each)")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/emotion_ferplus.onnx")
    parser.add_argument("--yunet", help="YuNet file (default: EMOTION_YUNET_PATH, models/, ../shared/models/)")
    args = parser.parse_args()

    yunet = find_yunet(args.yunet)
    if yunet is None or not WILD.is_dir():
        raise SystemExit(f"needs YuNet and the photos in {WILD}")
    settings = Settings(model_path=shipped_or_generated_model(args.model), detector="yunet", yunet_path=yunet)
    pipeline = EmotionPipeline.from_settings(settings)
    with open(WILD.parent / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n = round(args.seconds * args.fps)
    rng = np.random.default_rng(0)

    def clip(names: list[str], frames: int = n) -> list[np.ndarray]:
        per = frames // len(names)
        return [camera_noise(scene([(wild_face(names[i // per]), 260, 180)]), rng) for i in range(per * len(names))]

    print(f"model {settings.model_path}, YuNet; {args.fps:g} frames/s, webcam-like noise")
    # Flicker on steady faces.
    raws = [raw_clip(pipeline, clip([r["file"]])) for r in rows[:: args.step]]
    raws = [r for r in raws if sum(bool(f) for f in r) >= 0.9 * n]  # faces YuNet keeps finding
    seconds = len(raws) * n / args.fps
    print(f"\nflicker: {len(raws)} steady clips of {args.seconds:g} s ({seconds:.0f} s in all)")
    print(f"{'smoothing s':>11} {'changes/s':>9} {'clips that flicker':>18}")
    for tau in [0.0, *args.taus]:
        counts = [changes(replay(r, tau, args.fps)) for r in raws]
        flickering = sum(c > 0 for c in counts) / len(counts)
        print(f"{tau:>11g} {sum(counts) / seconds:>9.3f} {flickering:>17.0%}")

    # Delay on a switch between two photos of one person with different labels.
    by_person: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_person[r["file"].rsplit("_", 1)[0]].append(r["file"])
    switch_frames = round(args.switch_seconds * args.fps)
    half = switch_frames // 2
    delays: dict[float, list[float]] = {tau: [] for tau in [0.0, *args.taus]}
    firsts: dict[float, list[float]] = {tau: [] for tau in delays}
    pairs = 0
    for files in by_person.values():
        if pairs >= args.pairs or len(files) < 2:
            continue
        raw = raw_clip(pipeline, clip(files[:2], switch_frames))
        if sum(bool(f) for f in raw) < 0.9 * len(raw):
            continue
        first = Counter(f[0].emotion for f in raw[:half] if f).most_common(1)[0][0]
        second = Counter(f[0].emotion for f in raw[half:] if f).most_common(1)[0][0]
        if first == second:
            continue
        pairs += 1
        for tau in delays:
            labels = replay(raw, tau, args.fps)
            first_shown = next((i for i in range(half, len(labels)) if labels[i] == second), len(labels))
            firsts[tau].append((first_shown - half) / args.fps)
            settled = next(
                (i for i in range(half, len(labels)) if all(x in (second, None) for x in labels[i:])), len(labels)
            )
            delays[tau].append((settled - half) / args.fps)
    print(f"\ndelay to follow a change of expression: {pairs} same-person pairs, switch after {half / args.fps:g} s")
    print("(first: the new label first shown; settled: from when on it stays; never: not settled by the clip's end)")
    print(f"{'smoothing s':>11} {'first median s':>14} {'settled median s':>16} {'settled p90 s':>13} {'never':>5}")
    for tau, values in delays.items():
        never = sum(v >= (2 * half - half) / args.fps for v in values)
        q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
        print(
            f"{tau:>11g} {statistics.median(firsts[tau]):>14.2f} {statistics.median(values):>16.2f} "
            f"{q[8]:>13.2f} {never:>5}"
        )


if __name__ == "__main__":
    main()
