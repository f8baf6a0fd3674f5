"""Tiny datasets on disk in the three formats `training.data` reads: Kaggle fer2013.csv, FER+ fer2013new.csv, folders.

The images are synthetic 48x48 faces-in-name-only (noise plus a class-dependent bright patch), so a few dozen of them
train in milliseconds; the tests check the plumbing, not accuracy.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import cv2
import numpy as np

FERPLUS_HEADER = [
    "Usage",
    "Image name",
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
]
# Vote rows (8 emotions, unknown, NF) cycled over the images, with what the loader must make of each:
# (votes, usable, majority label index or -1 for a tie / no label).
FERPLUS_VOTES: list[tuple[list[int], bool, int]] = [
    ([0, 10, 0, 0, 0, 0, 0, 0, 0, 0], True, 1),  # happy, unanimous
    ([6, 2, 0, 0, 0, 0, 0, 0, 2, 0], True, 0),  # neutral 6 of 8 emotion votes: distribution 0.75 / 0.25
    ([0, 0, 0, 0, 0, 0, 0, 0, 7, 3], False, -1),  # "unknown" wins: no usable emotion
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], False, -1),  # "not a face" wins
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], True, -1),  # tie: a training target, but no majority label
    ([1, 0, 0, 0, 0, 0, 0, 4, 0, 0], True, 7),  # contempt
    ([0, 0, 1, 0, 9, 0, 0, 0, 0, 0], True, 4),  # angry
    ([0, 0, 0, 8, 0, 0, 2, 0, 0, 0], True, 3),  # sad
]
USAGES = ["Training"] * 32 + ["PublicTest"] * 8 + ["PrivateTest"] * 8


def synthetic_faces(labels: list[int] | np.ndarray, seed: int = 0, size: int = 48) -> np.ndarray:
    """uint8 [N, size, size]: noise with a bright square whose position depends on the label."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, (len(labels), size, size), dtype=np.uint8)
    for img, label in zip(images, labels, strict=True):
        y, x = divmod(int(label) % 9, 3)
        s = size // 3
        img[y * s : (y + 1) * s, x * s : (x + 1) * s] = 230
    return images


def fer2013_rows(images: np.ndarray, labels: list[int], usages: list[str]) -> list[list[str]]:
    return [
        [str(label), " ".join(map(str, img.ravel().tolist())), usage]
        for img, label, usage in zip(images, labels, usages, strict=True)
    ]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """Plain or gzip (by suffix), with the Kaggle file's comma separation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_fer_pair(root: Path, n: int = len(USAGES)) -> dict:
    """fer2013.csv, fer2013.csv.gz and the matching fer2013new.csv; returns the paths and the ground truth."""
    usages = USAGES[:n]
    labels = [i % 7 for i in range(n)]
    images = synthetic_faces(labels)
    rows = fer2013_rows(images, labels, usages)
    votes = [FERPLUS_VOTES[i % len(FERPLUS_VOTES)] for i in range(n)]
    plus_rows = [
        [usage, f"fer{i:07d}.png", *map(str, v)] for i, (usage, (v, _, _)) in enumerate(zip(usages, votes, strict=True))
    ]
    return {
        "csv": write_csv(root / "fer2013.csv", ["emotion", "pixels", "Usage"], rows),
        "gz": write_csv(root / "fer2013.csv.gz", ["emotion", "pixels", "Usage"], rows),
        "ferplus": write_csv(root / "fer2013new.csv", FERPLUS_HEADER, plus_rows),
        "images": images,
        "labels": np.array(labels),
        "usages": np.array(usages),
        "rows": rows,
        "plus_rows": plus_rows,
        "votes": votes,
    }


def write_image_folder(root: Path, counts: dict[str, dict[str, int]], size: int = 64) -> dict[str, list[Path]]:
    """`<root>/<split>/<emotion>/*.png|jpg`, alternating PNG and JPEG; images are `size` px so loading must resize."""
    written: dict[str, list[Path]] = {}
    k = 0
    for split, per_emotion in counts.items():
        for e, (emotion, n) in enumerate(per_emotion.items()):
            folder = root / split / emotion
            folder.mkdir(parents=True, exist_ok=True)
            for img in synthetic_faces([e] * n, seed=k, size=size):
                path = folder / f"{k:03d}.{'png' if k % 2 == 0 else 'jpg'}"
                assert cv2.imwrite(str(path), img)
                written.setdefault(split, []).append(path)
                k += 1
    return written
