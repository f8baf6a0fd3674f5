"""Knowledge distillation: larger teacher networks (too slow to serve) teach the small shipped student.

Teachers are ordinary training runs (`python -m training train --widths 64 128 256 512 ...`). Their knowledge reaches
the student in one of two ways:

- stored: `python -m training soft-targets RUN [RUN ...] --out teachers.npz` averages the teachers' flip-averaged
  probabilities for every image, per head (a few MB), and reports each teacher's and the ensemble's PublicTest
  accuracy; `train --soft-targets teachers.npz` then distils on any machine, a CPU included;
- online: `train --teachers RUN [RUN ...]` runs the teachers on each augmented (and mixed) batch, which matches the
  student's input exactly and is cheap on a GPU.

An exported model file (`models/emotion_ferplus.onnx`) can be a stored-targets teacher too: it teaches the one head
its `label_source` names, through the server's own preprocessing, so a shipped model whose checkpoint is gone can
still teach its successor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from training.data import FaceDataset, add_data_arguments, ferplus_path, load_dataset, resize_faces


def _train_config(values: dict):  # -> TrainConfig; imported late, train.py imports this module
    from training.train import TrainConfig  # noqa: PLC0415

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names})


def teacher_checkpoints(run: str | Path, head: str) -> Path:
    """A teacher run's checkpoint for one head: its best epoch on PublicTest (or the file itself)."""
    run = Path(run)
    path = run / f"best_{head}.pt" if run.is_dir() else run
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such teacher checkpoint")
    return path


def teacher_probabilities(
    runs: list[str], ds: FaceDataset, heads: list[str], device: torch.device, log=print
) -> tuple[dict[str, np.ndarray], dict]:
    """Ensemble probabilities per head for every image (mean of the teachers' flip-averaged softmax), and a report
    of each teacher's and the ensemble's PublicTest accuracy."""
    from training.train import load_checkpoint, pick_precision, predict  # noqa: PLC0415

    val = ds.split("PublicTest")
    report: dict = {"teachers": {}, "ensemble": {}}
    ensemble: dict[str, np.ndarray] = {}
    for h in heads:
        truth = ds.hard_labels(h)[val]
        ok = truth >= 0
        members = []
        for run in runs:
            t0 = time.time()
            if str(run).endswith(".onnx"):
                probs = onnx_probabilities(run, ds, h)
                if probs is None:  # a file teaches only the head it was exported from
                    continue
                size = f"{Path(run).stat().st_size / 1e6:.1f} MB file"
                path = run
            else:
                path = teacher_checkpoints(run, h)
                net, ckpt = load_checkpoint(path)
                cfg = dataclasses.replace(_train_config(ckpt["train_config"]), val_tta=True)
                bf16 = pick_precision("auto", device)[0] == "bf16"
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    probs = predict(net.to(device, memory_format=torch.channels_last), ds.images, cfg)[h]
                size = f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f}M"
            acc = float((probs[val][ok].argmax(1) == truth[ok]).mean())
            report["teachers"].setdefault(str(run), {})[h] = acc
            log(f"teacher {path} ({size}): {h} PublicTest {acc:.4f} (flip-averaged), {time.time() - t0:.0f} s")
            members.append(probs)
        if not members:  # e.g. only exported FER+ files were given: the student learns this head from labels
            log(f"no teacher for head {h}: it is not distilled")
            continue
        ensemble[h] = np.mean(members, axis=0).astype(np.float32)
        report["ensemble"][h] = float((ensemble[h][val][ok].argmax(1) == truth[ok]).mean())
        log(f"ensemble of {len(members)}: {h} PublicTest {report['ensemble'][h]:.4f}")
    return ensemble, report


def onnx_probabilities(path: str | Path, ds: FaceDataset, head: str) -> np.ndarray | None:
    """An exported model's flip-averaged probabilities for every image, through the server's preprocessing; None
    when the file was exported from another head."""
    from server.classifier import EmotionClassifier  # noqa: PLC0415

    classifier = EmotionClassifier(path)
    spec = classifier.spec
    if spec.metadata.get("label_source") != head:
        return None
    if spec.labels != ds.labels[head] or spec.channels != 1:
        raise ValueError(f"{path}: labels {spec.labels} ({spec.channels} channels) do not match head {head}")
    h, w = spec.input_size
    out = []
    for i in range(0, len(ds.images), 512):
        faces = resize_faces(ds.images[i : i + 512], h, w)
        out.append(0.5 * (classifier.infer(faces) + classifier.infer(np.ascontiguousarray(faces[:, :, ::-1]))))
    return np.concatenate(out).astype(np.float32)


def save_soft_targets(path: str | Path, probs: dict[str, np.ndarray], ds: FaceDataset, report: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"probs_{h}": p.astype(np.float16) for h, p in probs.items()}
    meta = {"rows": len(ds.images), "labels": {h: ds.labels[h] for h in probs}, "report": report}
    np.savez_compressed(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def load_soft_targets(path: str | Path, ds: FaceDataset, heads: list[str]) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        meta = json.loads(f["meta"].tobytes())
        if meta["rows"] != len(ds.images):
            raise ValueError(f"{path}: soft targets for {meta['rows']} images, the data has {len(ds.images)}")
        out = {}
        for h in heads:
            if f"probs_{h}" not in f:
                continue
            if meta["labels"][h] != ds.labels[h]:
                raise ValueError(f"{path}: labels of head {h} are {meta['labels'][h]}, the data has {ds.labels[h]}")
            out[h] = f[f"probs_{h}"].astype(np.float32)
    if not out:
        raise ValueError(f"{path}: no soft targets for heads {heads}")
    return out


class Teachers:
    """What the student is taught per batch: stored probabilities gathered by image index, or teacher nets run on
    the very batch the student sees (resized and re-normalised to each teacher's own input)."""

    def __init__(
        self, stored: dict[str, torch.Tensor], nets: dict[str, list[tuple[torch.nn.Module, dict]]], student_cfg
    ):
        self._stored, self._nets, self._cfg = stored, nets, student_cfg

    @classmethod
    def from_config(cls, cfg, heads: list[str], ds: FaceDataset, device: torch.device, log=print) -> Teachers | None:
        if not cfg.soft_targets and not cfg.teachers:
            return None
        if cfg.soft_targets and cfg.teachers:
            raise ValueError("give --soft-targets or --teachers, not both")
        stored, nets = {}, {}
        if cfg.soft_targets:
            probs = load_soft_targets(cfg.soft_targets, ds, heads)
            stored = {h: torch.from_numpy(p).to(device) for h, p in probs.items()}
            log(f"distilling from {cfg.soft_targets} (heads {sorted(stored)})")
        else:
            from training.train import load_checkpoint  # noqa: PLC0415

            for h in heads:
                for run in cfg.teachers:
                    net, ckpt = load_checkpoint(teacher_checkpoints(run, h))
                    for p in net.parameters():
                        p.requires_grad_(False)
                    nets.setdefault(h, []).append((net.to(device, memory_format=torch.channels_last), ckpt))
            log(f"distilling online from {len(cfg.teachers)} teacher run(s): {cfg.teachers}")
        return cls(stored, nets, cfg)

    def stored(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {h: p[idx] for h, p in self._stored.items()}

    @torch.no_grad()
    def online(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        pixels = x * self._cfg.std + self._cfg.mean  # back to [0, 1]
        for h, members in self._nets.items():
            probs = []
            for net, ckpt in members:
                tc = ckpt["train_config"]
                size = int(tc["input_size"])
                xt = (
                    pixels
                    if size == x.shape[-1]
                    else F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                )
                probs.append(F.softmax(net.eval()((xt - tc["mean"]) / tc["std"])[h].float(), 1))
            out[h] = torch.stack(probs).mean(0)
        return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "soft-targets",
        help="store a teacher ensemble's probabilities for every image, for distillation on any machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "runs", nargs="+", help="teacher run folders (their best_<head>.pt are used) or exported .onnx files"
    )
    p.add_argument("--out", required=True, help="output .npz (a few MB)")
    add_data_arguments(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.train import pick_device  # noqa: PLC0415

    ds = load_dataset("fer2013", args.data, ferplus_path(args.ferplus))
    device = pick_device(args.device)
    probs, report = teacher_probabilities(args.runs, ds, list(ds.targets), device)
    if not probs:
        raise SystemExit("no teacher covers any head of the data")
    save_soft_targets(args.out, probs, ds, report)
    Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=1))
    size = Path(args.out).stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.1f} MB) and its report {Path(args.out).with_suffix('.json')}")
    return 0
