"""How faces are framed: FER2013's own framing as YuNet sees it, and each model's crop in different surroundings.

    python benchmarks/bench_framing.py template [--data data_cache/fer2013.pack] [--limit 2000]
    python benchmarks/bench_framing.py frames [models/emotion_ferplus.onnx ...] [--photos DIR]

`template` runs YuNet on PublicTest faces (each enlarged to 192 px; their pixels only, no labels) and prints the
median box and five landmarks as fractions of the 48 px image: the numbers behind
`server.classifier.FER2013_LANDMARKS`, which `align: landmarks` crops to.

`frames` measures each file's own crop and the box crop at margins 0 and 0.1 on the labelled photos (tight crops of
faces) put in three kinds of frame, each 0.4 of the photo's longer side wide: grey (as `choose_crop` measures),
the photo's border pixels repeated, and the photo itself enlarged and blurred behind it. A crop that frames faces
as the model was trained keeps its accuracy whatever the surroundings.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from _common import ROOT, find_yunet  # noqa: E402

from server.classifier import EmotionClassifier  # noqa: E402
from server.detector import create_detector  # noqa: E402
from server.pipeline import EmotionPipeline, crop_for  # noqa: E402
from training.evaluate import in_frame  # noqa: E402  (numpy and cv2 only)

POINTS = ("right eye", "left eye", "nose tip", "right mouth corner", "left mouth corner")


def template(data: str, limit: int, yunet: Path) -> None:
    from training.data import load_fer2013  # noqa: PLC0415  (numpy only; the data loaders live in training/)
    from training.pack import read_pack  # noqa: PLC0415

    ds = read_pack(data) if data.endswith(".pack") else load_fer2013(data)
    detector = create_detector("yunet", yunet)
    side = 192
    rows = []
    idx = ds.split("PublicTest")[:limit]
    for i in idx:
        big = cv2.cvtColor(cv2.resize(ds.images[i], (side, side), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR)
        faces = [f for f in detector.infer(big) if f.landmarks is not None]
        if faces:
            f = max(faces, key=lambda d: d.w * d.h)
            rows.append([f.x, f.y, f.w, f.h, *f.landmarks])
    r = np.array(rows) / side
    med = np.median(r, axis=0)
    print(f"YuNet found a face with landmarks in {len(r)} of {len(idx)} PublicTest faces (enlarged to {side} px)")
    print(f"box: x {med[0]:.3f} y {med[1]:.3f} w {med[2]:.3f} h {med[3]:.3f} (fractions of the image, medians)")
    for k, name in enumerate(POINTS):
        print(f"{name:18} ({med[4 + 2 * k]:.3f}, {med[5 + 2 * k]:.3f})")
    print("FER2013_LANDMARKS = (" + ", ".join(f"({med[4 + 2 * k]:.3f}, {med[5 + 2 * k]:.3f})" for k in range(5)) + ")")


def frames(models: list[str], photos: Path, yunet: Path) -> None:
    with open(photos / "labels.csv", newline="") as f:
        labelled = list(csv.DictReader(f))
    for path in models:
        classifier = EmotionClassifier(path)
        pipeline = EmotionPipeline(create_detector("yunet", yunet), classifier)
        spec = classifier.spec
        crops = {
            f"own ({spec.align})": spec,
            "margin 0": dataclasses.replace(spec, align="none", crop_margin=0.0),
            "margin 0.1": dataclasses.replace(spec, align="none", crop_margin=0.1),
        }
        rows = [r for r in labelled if r["emotion"] in classifier.labels]
        print(f"{Path(path).name}: {len(rows)} photos; accuracy per frame and crop (no face found: wrong)")
        for kind in ("none", "grey", "repeated", "blurred"):
            hits = dict.fromkeys(crops, 0)
            for r in rows:
                image = cv2.imread(str(photos / "images" / r["file"]))
                if image is None:  # unreadable: counts as wrong, as no face found does
                    continue
                image = image if kind == "none" else in_frame(image, 0.4, kind)
                faces = pipeline.detect(image)
                if not faces:
                    continue
                for name, crop_spec in crops.items():
                    p = classifier.infer(crop_for(image, faces[0], crop_spec)[None])[0]
                    hits[name] += classifier.labels[int(p.argmax())] == r["emotion"]
            print(f"  frame {kind:8} " + "  ".join(f"{name} {n / len(rows):.1%}" for name, n in hits.items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("template", help="FER2013's median landmarks as YuNet finds them")
    t.add_argument("--data", default=str(ROOT / "data_cache/fer2013.pack"), help="a .pack or fer2013.csv(.gz)")
    t.add_argument("--limit", type=int, default=2000, help="PublicTest faces to look at (default 2000)")
    f = sub.add_parser("frames", help="each file's crop on the photos in three kinds of frame")
    f.add_argument("models", nargs="*", help="ONNX files (default: models/emotion_*.onnx)")
    f.add_argument("--photos", default=str(ROOT.parent / "shared/datasets/faces-in-the-wild"))
    for q in (t, f):
        q.add_argument("--yunet", default=None, help="YuNet file (default: models/ or ../shared/models/)")
    args = p.parse_args()
    yunet = find_yunet(args.yunet)
    if yunet is None:
        sys.exit("no YuNet file: both measurements need its landmarks (give --yunet)")
    if args.command == "template":
        template(args.data, args.limit, yunet)
    else:
        frames(
            args.models or [str(m) for m in sorted((ROOT / "models").glob("emotion_*.onnx"))], Path(args.photos), yunet
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
