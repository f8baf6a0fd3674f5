"""The training loop: one readable file, a plain config dataclass, no trainer framework.

One backbone learns every label set the data has at once (FER2013 labels and FER+ votes share the same images), each
through its own head; the best epoch per head, measured on PublicTest, is kept for export.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from training.data import FaceDataset, load_dataset
from training.model import EmotionNet, ModelConfig


@dataclass
class TrainConfig:
    data: str = "../shared/datasets/fer2013/fer2013.csv.gz"
    source: str = "fer2013"  # fer2013 | folder
    ferplus: str | None = "../shared/datasets/fer2013/fer2013new.csv"
    out: str = "runs/emotion"
    input_size: int = 40
    epochs: int = 18
    batch_size: int = 128
    lr: float = 0.05  # peak of the one-cycle schedule
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    class_weight_power: float = 0.5  # loss weight per class = frequency^-power (0: none, 1: fully balanced)
    widths: tuple[int, ...] = (32, 64, 128, 256)
    convs_per_stage: tuple[int, ...] = (1, 2, 2, 2)
    dropout: float = 0.3
    erase_prob: float = 0.5  # share of training images that get a random grey rectangle
    val_tta: bool = False  # pick checkpoints on flip-averaged accuracy (match `export` without --no-tta)
    seed: int = 0
    threads: int = 0  # 0: torch's default
    limit: int = 0  # use only the first N training images (smoke tests)
    heads: list[str] = field(default_factory=list)  # empty: every label set the data has
    init: str = ""  # start from this checkpoint's weights (fine-tuning with a fresh schedule)
    mean: float = 0.5
    std: float = 0.25


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(x: torch.Tensor, size: int, generator: torch.Generator, erase_prob: float = 0.5) -> torch.Tensor:
    """Random flip, rotation, scale and shift in one affine resample to `size`, then random erasing."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(15)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.15
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.1
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Random erasing: a grey rectangle on some images, so no single facial region is relied on.
    erase = torch.rand(n, generator=generator) < erase_prob
    for i in torch.nonzero(erase).flatten().tolist():
        h, w = (torch.randint(size // 5, size // 2, (2,), generator=generator)).tolist()
        y, x0 = (
            torch.randint(0, size - h, (1,), generator=generator).item(),
            torch.randint(0, size - w, (1,), generator=generator).item(),
        )
        out[i, :, y : y + h, x0 : x0 + w] = 0.5
    return out


def to_input(images: np.ndarray, size: int, mean: float, std: float) -> torch.Tensor:
    """uint8 [N,48,48] -> normalised float [N,1,size,size], resized with OpenCV's INTER_AREA exactly as the server
    and `evaluate` do, so the PublicTest accuracy that picks the best epoch is the one the exported model gets."""
    if images.shape[-1] != size:
        images = np.stack([cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) for img in images])
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)
    return (x - mean) / std


@torch.no_grad()
def predict(net: EmotionNet, images: np.ndarray, cfg: TrainConfig, batch: int = 512) -> dict[str, np.ndarray]:
    """Probabilities per head; flip-averaged with `cfg.val_tta`, as an exported file with in-graph TTA would be."""
    net.eval()
    outs: dict[str, list[np.ndarray]] = {h: [] for h in net.heads}
    for i in range(0, len(images), batch):
        x = to_input(images[i : i + batch], cfg.input_size, cfg.mean, cfg.std).contiguous(
            memory_format=torch.channels_last
        )
        logits = net(x)
        mirrored = net(torch.flip(x, dims=[3])) if cfg.val_tta else None
        for h in outs:
            probs = F.softmax(logits[h], 1)
            if mirrored is not None:
                probs = 0.5 * (probs + F.softmax(mirrored[h], 1))
            outs[h].append(probs.numpy())
    return {h: np.concatenate(v) for h, v in outs.items()}


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, smoothing: float
) -> torch.Tensor:
    k = target.shape[1]
    target = target * (1 - smoothing) + smoothing / k
    per_row = -(target * F.log_softmax(logits, 1) * weight).sum(1)
    return per_row.mean()


def train(cfg: TrainConfig, data: FaceDataset | None = None, log=print) -> dict:
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"config: {json.dumps(asdict(cfg))}")
    ds = data or load_dataset(cfg.source, cfg.data, cfg.ferplus)
    heads = cfg.heads or list(ds.targets)
    train_idx = ds.split("Training")
    if cfg.limit:
        train_idx = train_idx[: cfg.limit]
    val_idx = ds.split("PublicTest")
    log(f"data: {len(train_idx)} training, {len(val_idx)} PublicTest images; heads {heads}")

    weights = {}
    for h in heads:
        t, m = ds.targets[h][train_idx], ds.masks[h][train_idx]
        freq = t[m].sum(0) / max(m.sum(), 1)
        w = np.power(np.maximum(freq, 1e-3), -cfg.class_weight_power)
        weights[h] = torch.tensor(w / (w * freq).sum(), dtype=torch.float32)  # mean weight over the data is 1
        log(
            f"class weights {h}: "
            + ", ".join(f"{n} {v:.2f}" for n, v in zip(ds.labels[h], weights[h].tolist(), strict=True))
        )

    model_cfg = ModelConfig(widths=tuple(cfg.widths), convs_per_stage=tuple(cfg.convs_per_stage), dropout=cfg.dropout)
    net = EmotionNet({h: len(ds.labels[h]) for h in heads}, model_cfg).to(memory_format=torch.channels_last)
    log(f"model: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters")
    if cfg.init:
        net.load_state_dict(torch.load(cfg.init, weights_only=False)["model"])
        log(f"initialised from {cfg.init}")
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2
    )

    state = {"epoch": 0, "history": [], "best": {h: {"accuracy": -1.0, "epoch": -1} for h in heads}}
    last = out / "last.pt"
    if last.exists():  # resume
        ckpt = torch.load(last, weights_only=False)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt["scheduler"]["total_steps"] == sched.total_steps:
            sched.load_state_dict(ckpt["scheduler"])
        else:  # resumed with another --epochs: the saved schedule would stop at its old end, so follow the new one
            sched.last_epoch = ckpt["scheduler"]["last_epoch"]
        state = ckpt["state"]
        torch.set_rng_state(ckpt["rng"])
        log(f"resumed from {last} after epoch {state['epoch']}")

    gen = torch.Generator().manual_seed(cfg.seed)
    val_labels = {h: ds.hard_labels(h)[val_idx] for h in heads}
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        net.train()
        gen.manual_seed(cfg.seed * 1000 + epoch)
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        t0, total, seen = time.time(), 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = torch.from_numpy(ds.images[idx]).float().div_(255).unsqueeze(1)
            x = augment(x, cfg.input_size, gen, cfg.erase_prob)
            x = ((x - cfg.mean) / cfg.std).contiguous(memory_format=torch.channels_last)
            logits = net(x)
            loss = torch.zeros(())
            for h in heads:
                mask = torch.from_numpy(ds.masks[h][idx])
                if mask.any():
                    target = torch.from_numpy(ds.targets[h][idx])[mask]
                    loss = loss + soft_cross_entropy(logits[h][mask], target, weights[h], cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            done = (step + 1) / steps_per_epoch
            bar = "#" * int(done * 30)
            print(
                f"\repoch {epoch}/{cfg.epochs} [{bar:<30}] {done:4.0%} loss {total / seen:.4f} "
                f"{seen / (time.time() - t0):.0f} img/s",
                end="",
                flush=True,
            )
        print(flush=True)
        probs = predict(net, ds.images[val_idx], cfg)
        row = {"epoch": epoch, "train_loss": total / seen, "lr": sched.get_last_lr()[0], "seconds": time.time() - t0}
        for h in heads:
            ok = val_labels[h] >= 0
            target = torch.from_numpy(ds.targets[h][val_idx][ok])
            row[f"{h}_val_loss"] = float(-(target * torch.log(torch.from_numpy(probs[h][ok]) + 1e-8)).sum(1).mean())
            row[f"{h}_val_acc"] = float((probs[h][ok].argmax(1) == val_labels[h][ok]).mean())
            if row[f"{h}_val_acc"] > state["best"][h]["accuracy"]:
                state["best"][h] = {"accuracy": row[f"{h}_val_acc"], "epoch": epoch}
                torch.save(_checkpoint(net, cfg, ds, h), out / f"best_{h}.pt")
        state["history"].append(row)
        state["epoch"] = epoch
        log("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        torch.save(
            {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "state": state,
                "rng": torch.get_rng_state(),
            },
            last,
        )
        (out / "history.json").write_text(json.dumps(state, indent=1))
    log(f"best: {json.dumps(state['best'])}")
    return state


def _checkpoint(net: EmotionNet, cfg: TrainConfig, ds: FaceDataset, head: str) -> dict:
    """A self-contained checkpoint for one head: what `export` needs, nothing of the optimiser."""
    return {
        "model": net.state_dict(),
        "train_config": asdict(cfg),
        "model_config": asdict(net.config),
        "heads": {h: ds.labels[h] for h in net.heads},
        "head": head,
        "label_source": "ferplus" if head == "ferplus" else ("fer2013" if head == "fer2013" else "folder"),
    }


def load_checkpoint(path: str | Path) -> tuple[EmotionNet, dict]:
    ckpt = torch.load(path, weights_only=False)
    mc = ckpt["model_config"]
    config = ModelConfig(
        widths=tuple(mc["widths"]),
        convs_per_stage=tuple(mc["convs_per_stage"]),
        dropout=mc["dropout"],
        in_channels=mc["in_channels"],
    )
    net = EmotionNet({h: len(labels) for h, labels in ckpt["heads"].items()}, config)
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt
