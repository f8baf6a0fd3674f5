"""Datasets: FER2013 (Kaggle CSV), FER+ votes, and an image-folder layout.

Every loader returns a `FaceDataset`: 48x48 grayscale uint8 images, per-split
indices and, for each label source ("head"), a target *distribution* per image
plus a mask of the images that have one. Hard labels become one-hot rows, FER+
votes become normalised vote rows, so training treats both the same way and
one backbone can learn from both label sets at once.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

FER2013_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
# FER+ column order in fer2013new.csv, renamed to the same vocabulary as FER2013.
FERPLUS_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
FERPLUS_LABELS = ["neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt"]
SPLITS = ("Training", "PublicTest", "PrivateTest")
DEFAULT_DATA = "../shared/datasets/fer2013/fer2013.csv.gz"
DEFAULT_FERPLUS = "../shared/datasets/fer2013/fer2013new.csv"
FOLDER_SPLITS = {
    "train": "Training",
    "training": "Training",
    "val": "PublicTest",
    "valid": "PublicTest",
    "validation": "PublicTest",
    "test": "PrivateTest",
}
IMAGE_SIZE = 48
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class DataError(ValueError):
    """A data file that breaks its format: the message names the file, row and reason."""

    def __init__(self, path: Path | str, row: int | None, reason: str):
        where = f"{path}" if row is None else f"{path}, row {row}"
        super().__init__(f"{where}: {reason}")


@dataclass
class FaceDataset:
    images: np.ndarray  # uint8 [N, 48, 48]
    splits: dict[str, np.ndarray]  # split name -> row indices
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # head -> float32 [N, K]
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # head -> bool [N]
    labels: dict[str, list[str]] = field(default_factory=dict)  # head -> class names
    raw_votes: np.ndarray | None = None  # FER+ vote counts [N, 10] (8 emotions, unknown, NF), as read

    def set_fer2013_labels(self, labels: np.ndarray) -> None:
        """The "fer2013" head from the original labels 0..6: one-hot rows, every image labelled."""
        self.targets["fer2013"] = np.eye(len(FER2013_LABELS), dtype=np.float32)[labels]
        self.masks["fer2013"] = np.ones(len(labels), bool)
        self.labels["fer2013"] = list(FER2013_LABELS)

    def set_ferplus_votes(self, votes: np.ndarray) -> None:
        """The "ferplus" head from raw vote counts: normalised emotion votes, masked where no emotion won."""
        self.raw_votes = votes
        emotion_votes = votes[:, : len(FERPLUS_LABELS)]
        total = emotion_votes.sum(1, keepdims=True)
        # An image whose winning vote is "unknown" or "not a face" has no usable emotion (Barsoum et al.).
        usable = (total[:, 0] > 0) & (votes.argmax(1) < len(FERPLUS_LABELS))
        self.targets["ferplus"] = np.where(total > 0, emotion_votes / np.maximum(total, 1), 0).astype(np.float32)
        self.masks["ferplus"] = usable
        self.labels["ferplus"] = list(FERPLUS_LABELS)

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits or len(self.splits[name]) == 0:
            raise ValueError(f"split {name!r} is empty; available: {[s for s, i in self.splits.items() if len(i)]}")
        return self.splits[name]

    def hard_labels(self, head: str) -> np.ndarray:
        """Majority label per image (-1 where the head has no label, or a tie under FER+)."""
        t = self.targets[head]
        out = t.argmax(1).astype(np.int64)
        top = np.sort(t, axis=1)
        tie = np.isclose(top[:, -1], top[:, -2]) if t.shape[1] > 1 else np.zeros(len(t), bool)
        out[~self.masks[head] | tie] = -1
        return out


def resize_faces(images: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 faces [N, H0, W0] -> [N, h, w] with OpenCV's INTER_AREA, as the server resizes its crops (and as every
    number measured on these images assumes)."""
    return np.stack([cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in images])


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_fer2013_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the Kaggle file (plain or .gz): images uint8 [N,48,48], labels int64 [N], usage str [N]."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(path, 1, "file is empty")
        header = [h.strip() for h in header]
        for col in ("emotion", "pixels", "Usage"):
            if col not in header:
                raise DataError(path, 1, f"missing column {col!r} (found {header})")
        ie, ip, iu = header.index("emotion"), header.index("pixels"), header.index("Usage")
        images, labels, usage = [], [], []
        for row_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(path, row_no, f"expected {len(header)} columns, found {len(row)}")
            try:
                label = int(row[ie])
            except ValueError:
                raise DataError(path, row_no, f"unknown label {row[ie]!r} (expected 0..6)") from None
            if not 0 <= label < len(FER2013_LABELS):
                raise DataError(path, row_no, f"unknown label {label} (expected 0..6)")
            if row[iu] not in SPLITS:
                raise DataError(path, row_no, f"unknown Usage {row[iu]!r} (expected one of {SPLITS})")
            try:
                pixels = np.array(row[ip].split(), dtype=np.int32)
            except ValueError:
                raise DataError(path, row_no, "pixels are not integers") from None
            if pixels.size != IMAGE_SIZE * IMAGE_SIZE:
                raise DataError(path, row_no, f"wrong pixel count {pixels.size} (expected {IMAGE_SIZE * IMAGE_SIZE})")
            if pixels.min() < 0 or pixels.max() > 255:
                raise DataError(path, row_no, "pixel values outside 0..255")
            images.append(pixels.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE))
            labels.append(label)
            usage.append(row[iu])
    if not images:
        raise DataError(path, None, "no data rows")
    return np.stack(images), np.array(labels, np.int64), np.array(usage)


def read_ferplus_votes(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read fer2013new.csv: votes float32 [N, 10] (8 emotions, unknown, NF) and usage str [N]."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    expected = ["Usage", "Image name", *FERPLUS_COLUMNS, "unknown", "NF"]
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in (next(reader, None) or [])]
        if header != expected:
            missing = [c for c in expected if c not in header]
            reason = (
                f"missing column {missing[0]!r}" if missing else f"columns {header} are not in the order {expected}"
            )
            raise DataError(path, 1, reason)
        votes, usage = [], []
        for row_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(expected):
                raise DataError(path, row_no, f"expected {len(expected)} columns, found {len(row)}")
            try:
                v = [float(x) for x in row[2:]]
            except ValueError:
                raise DataError(path, row_no, "vote counts are not numbers") from None
            if min(v) < 0:
                raise DataError(path, row_no, "negative vote count")
            votes.append(v)
            usage.append(row[0])
    return np.array(votes, np.float32).reshape(-1, len(expected) - 2), np.array(usage)


def _split_indices(usage: np.ndarray) -> dict[str, np.ndarray]:
    return {s: np.flatnonzero(usage == s) for s in SPLITS}


def load_fer2013(csv_path: str | Path, ferplus_path: str | Path | None = None) -> FaceDataset:
    """FER2013 with its original labels (head "fer2013") and, given fer2013new.csv, FER+ votes (head "ferplus")."""
    images, labels, usage = read_fer2013_csv(csv_path)
    ds = FaceDataset(images=images, splits=_split_indices(usage))
    ds.set_fer2013_labels(labels)
    if ferplus_path is not None:
        votes, plus_usage = read_ferplus_votes(ferplus_path)
        if len(votes) != len(images):
            # The row named is the first one that only the longer file has.
            raise DataError(
                ferplus_path,
                min(len(votes), len(images)) + 2,
                f"row-count mismatch: {len(votes)} rows here, {len(images)} in {csv_path}",
            )
        bad = np.flatnonzero(plus_usage != usage)
        if len(bad):
            i = int(bad[0])
            raise DataError(
                ferplus_path, i + 2, f"Usage {str(plus_usage[i])!r} differs from {str(usage[i])!r} in {csv_path}"
            )
        ds.set_ferplus_votes(votes)
    return ds


def load_image_folder(root: str | Path) -> FaceDataset:
    """`<root>/<split>/<emotion>/*.png|jpg`: split is train/val/test (or Training/PublicTest/PrivateTest)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    split_dirs = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        name = FOLDER_SPLITS.get(d.name.lower(), d.name if d.name in SPLITS else None)
        if name is None:
            raise DataError(d, None, f"unknown split folder (expected one of {sorted(FOLDER_SPLITS)})")
        split_dirs[name] = d
    if "Training" not in split_dirs:
        raise DataError(root, None, "no train/ folder")
    labels = sorted({c.name for d in split_dirs.values() for c in d.iterdir() if c.is_dir()})
    if len(labels) < 2:
        raise DataError(root, None, f"need at least two emotion folders, found {labels}")
    images, targets, usage = [], [], []
    for split, d in split_dirs.items():
        for k, label in enumerate(labels):
            for file in sorted((d / label).glob("*")) if (d / label).is_dir() else []:
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                img = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
                if img is None:
                    raise DataError(file, None, "not a readable image")
                images.append(cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA))
                targets.append(k)
                usage.append(split)
    if not images:
        raise DataError(root, None, "no images found")
    usage_arr = np.array(usage)
    ds = FaceDataset(images=np.stack(images), splits=_split_indices(usage_arr))
    ds.targets["folder"] = np.eye(len(labels), dtype=np.float32)[np.array(targets)]
    ds.masks["folder"] = np.ones(len(images), bool)
    ds.labels["folder"] = labels
    return ds


def add_data_arguments(parser, purpose: str = "") -> None:
    """`--data` and `--ferplus`, the same in every command that reads FER2013; `purpose` starts their help."""
    parser.add_argument(
        "--data", default=DEFAULT_DATA, help=f"{purpose}fer2013.csv(.gz) (Kaggle layout) or a .pack from `pack`"
    )
    parser.add_argument(
        "--ferplus",
        default=DEFAULT_FERPLUS,
        help=f"{purpose}FER+ votes joined to the CSV by row; 'none' to skip (a .pack holds its own)",
    )


def ferplus_path(value: str | None, missing_ok: bool = False) -> str | None:
    """`--ferplus` as a path: None for 'none' or '' (and, with `missing_ok`, for a file that is not there)."""
    if value in (None, "", "none") or (missing_ok and not Path(value).exists()):
        return None
    return value


def load_dataset(source: str, path: str | Path, ferplus: str | Path | None = None) -> FaceDataset:
    if source == "pack" or (source == "fer2013" and str(path).endswith(".pack")):
        from training.pack import read_pack  # noqa: PLC0415  (pack imports this module)

        return read_pack(path)
    if source == "fer2013":
        return load_fer2013(path, ferplus)
    if source == "folder":
        return load_image_folder(path)
    raise ValueError(f"unknown data source {source!r} (expected 'fer2013', 'pack' or 'folder')")
