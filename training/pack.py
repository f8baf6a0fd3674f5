"""`python -m training pack`: FER2013 (+ FER+ votes) as one small, lossless, checksummed file.

A GPU machine may hold nothing but the project tree (64 MiB in all, no ../shared, no internet), so the training
data travels as a pack in an ignored folder. The 48x48 faces compress poorly as they are (xz: ~55 MB); each pixel
is first replaced by its error against the LOCO-I / JPEG-LS median predictor (from its left, top and top-left
neighbours), which leaves small numbers that xz packs to ~50 MB. Decoding runs the predictor forward again, one
anti-diagonal at a time, so the pack is exact; a sha256 of the decoded arrays, stored inside, proves it on every load.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import time
from pathlib import Path

import numpy as np

from training.data import SPLITS, FaceDataset, add_data_arguments, ferplus_path, load_fer2013

FORMAT = "emotion-pack/1"


def _neighbours(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left, top and top-left neighbours of every pixel (zero outside the image), int16."""
    a = img.astype(np.int16)
    left = np.pad(a, ((0, 0), (0, 0), (1, 0)))[:, :, :-1]
    top = np.pad(a, ((0, 0), (1, 0), (0, 0)))[:, :-1, :]
    top_left = np.pad(a, ((0, 0), (1, 0), (1, 0)))[:, :-1, :-1]
    return left, top, top_left


def _median_predict(left: np.ndarray, top: np.ndarray, top_left: np.ndarray) -> np.ndarray:
    lo, hi = np.minimum(left, top), np.maximum(left, top)
    return np.where(top_left >= hi, lo, np.where(top_left <= lo, hi, left + top - top_left))


def encode_residuals(images: np.ndarray) -> np.ndarray:
    """uint8 [N,H,W] -> uint8 residuals (prediction error mod 256, zig-zagged so small errors are small bytes)."""
    r = (images.astype(np.int16) - _median_predict(*_neighbours(images)) + 128) % 256 - 128
    return np.where(r >= 0, 2 * r, -2 * r - 1).astype(np.uint8)


def decode_residuals(zz: np.ndarray) -> np.ndarray:
    """Inverse of `encode_residuals`. A pixel's predictor reads only the previous two anti-diagonals (x + y - 1 and
    x + y - 2), so each anti-diagonal is decoded at once, over all images: 95 steps for 48x48, not 2,304."""
    z = zz.astype(np.int16)
    r = np.where(z % 2 == 0, z // 2, -(z + 1) // 2)
    n, h, w = zz.shape
    out = np.zeros((n, h + 1, w + 1), np.int16)  # one zero row/column of padding: the neighbours outside the image
    for d in range(h + w - 1):
        ys = np.arange(max(0, d - w + 1), min(h, d + 1))
        xs = d - ys
        pred = _median_predict(out[:, ys + 1, xs], out[:, ys, xs + 1], out[:, ys, xs])
        out[:, ys + 1, xs + 1] = (pred + r[:, ys, xs]) % 256
    return out[:, 1:, 1:].astype(np.uint8)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def write_pack(ds: FaceDataset, path: str | Path, preset: int = 6) -> dict:
    """Write `ds` (images, splits, fer2013 labels and FER+ votes) to `path`; returns the manifest."""
    usage = np.full(len(ds.images), -1, np.int8)
    for code, split in enumerate(SPLITS):
        usage[ds.splits.get(split, [])] = code
    arrays = {"images": ds.images, "usage": usage, "fer2013": ds.hard_labels("fer2013").astype(np.int8)}
    if "ferplus" in ds.targets:
        arrays["ferplus_votes"] = ds.raw_votes.astype(np.uint8)
        if not np.array_equal(arrays["ferplus_votes"], ds.raw_votes):
            raise ValueError("FER+ votes are not whole numbers in 0..255; the pack stores them as bytes")
    manifest = {
        "format": FORMAT,
        "rows": len(ds.images),
        "splits": {s: int((usage == i).sum()) for i, s in enumerate(SPLITS)},
        "sha256": _digest(arrays),
    }
    stored = dict(arrays, images=encode_residuals(ds.images))
    buf = io.BytesIO()
    np.savez(buf, manifest=np.frombuffer(json.dumps(manifest).encode(), np.uint8), **stored)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(lzma.compress(buf.getvalue(), preset=preset))
    tmp.replace(path)  # a cut-off run never leaves a half-written pack under the real name
    return manifest


def read_pack(path: str | Path) -> FaceDataset:
    """Load a pack written by `write_pack`, verifying its checksum: the same FaceDataset the CSV loaders give."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        stored = dict(np.load(io.BytesIO(lzma.decompress(path.read_bytes()))))
    except (lzma.LZMAError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a training pack ({e})") from None
    manifest = json.loads(stored.pop("manifest").tobytes())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    arrays = dict(stored, images=decode_residuals(stored["images"]))
    if _digest(arrays) != manifest["sha256"]:
        raise ValueError(f"{path}: checksum mismatch (the pack is damaged)")
    usage = arrays["usage"]
    ds = FaceDataset(images=arrays["images"], splits={s: np.flatnonzero(usage == i) for i, s in enumerate(SPLITS)})
    ds.set_fer2013_labels(arrays["fer2013"].astype(np.int64))
    if "ferplus_votes" in arrays:
        ds.set_ferplus_votes(arrays["ferplus_votes"].astype(np.float32))
    return ds


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="write FER2013 (+ FER+ votes) as one lossless, checksummed file for machines without ../shared",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_arguments(p)
    p.add_argument("--out", default="data_cache/fer2013.pack", help="pack file (keep it out of git)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    t0 = time.time()
    ds = load_fer2013(args.data, ferplus_path(args.ferplus))
    manifest = write_pack(ds, args.out)
    size = Path(args.out).stat().st_size
    print(
        f"{args.out}: {size / 1e6:.1f} MB, {manifest['rows']} rows {manifest['splits']}, "
        f"sha256 {manifest['sha256'][:16]}..., {time.time() - t0:.0f} s"
    )
    t0 = time.time()
    back = read_pack(args.out)
    same = np.array_equal(back.images, ds.images) and all(
        np.array_equal(back.targets[h], ds.targets[h]) and np.array_equal(back.masks[h], ds.masks[h])
        for h in ds.targets
    )
    print(f"read back in {time.time() - t0:.1f} s: {'identical' if same else 'DIFFERENT'} to the source")
    return 0 if same else 1
