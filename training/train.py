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

import numpy as np
import torch
from torch.nn import functional as F

from training.data import DEFAULT_DATA, DEFAULT_FERPLUS, FaceDataset, load_dataset, resize_faces
from training.distill import Teachers
from training.model import EmotionNet, ModelConfig


@dataclass
class TrainConfig:
    data: str = DEFAULT_DATA
    source: str = "fer2013"  # fer2013 | pack | folder (a path ending in .pack is read as a pack)
    ferplus: str | None = DEFAULT_FERPLUS
    out: str = "runs/emotion"
    input_size: int = 40
    epochs: int = 18
    minutes: float = 0.0  # time budget: the schedule is shortened to fit it (0: none)
    batch_size: int = 128
    lr: float = 0.05  # peak of the one-cycle schedule
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    class_weight_power: float = 0.5  # loss weight per class = frequency^-power (0: none, 1: fully balanced)
    widths: tuple[int, ...] = (32, 64, 128, 256)
    convs_per_stage: tuple[int, ...] = (1, 2, 2, 2)
    dropout: float = 0.3
    erase_prob: float = 0.5  # share of training images that get a random grey rectangle
    lowres_prob: float = 0.0  # share of training images shrunk to a random smaller size and enlarged back
    lowres_min: int = 12  # the smallest side, in pixels, such an image is shrunk to
    degrade_prob: float = 0.0  # share of training images given a camera's faults: exposure, contrast, blur, noise
    mix: str = "none"  # none | mixup | cutmix: blend pairs of images and their targets
    mix_prob: float = 0.5  # share of batches that are mixed
    mix_alpha: float = 1.0  # Beta(alpha, alpha) for the mixing weight
    soft_targets: str = ""  # distil from stored teacher probabilities (`python -m training soft-targets`)
    teachers: list[str] = field(default_factory=list)  # or from teacher runs, run on each augmented batch
    distill_weight: float = 0.7  # share of the loss that follows the teachers (with soft_targets or teachers)
    distill_temperature: float = 2.0
    val_tta: bool = False  # pick checkpoints on flip-averaged accuracy (match `export` without --no-tta)
    ema: float = 0.0  # > 0: checkpoints hold an exponential moving average of the weights, this decay per step
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 (autocast); auto: bf16 on CUDA and on CPUs with native bf16
    seed: int = 0
    threads: int = 0  # 0: torch's default
    limit: int = 0  # use only the first N training images (smoke tests)
    heads: list[str] = field(default_factory=list)  # empty: every label set the data has
    init: str = ""  # start from this checkpoint's weights (fine-tuning with a fresh schedule)
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:
        # JSON plans and argparse give lists; the model config (and checkpoints) keep tuples.
        self.widths, self.convs_per_stage = tuple(self.widths), tuple(self.convs_per_stage)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    return torch.device(name)


def pick_precision(name: str, device: torch.device, flags: set[str] | None = None) -> tuple[str, str]:
    """(precision, why). bf16 autocast pays where the hardware multiplies bf16 natively: CUDA, AMX, AVX512-BF16.
    On an AVX2-only CPU bf16 is emulated and ~20x slower than fp32, so auto keeps fp32 there."""
    if name in ("fp32", "bf16"):
        return name, "forced"
    if name != "auto":
        raise ValueError(f"unknown precision {name!r} (expected auto, fp32 or bf16)")
    if device.type == "cuda":
        return "bf16", "CUDA"
    native = sorted({"amx_bf16", "avx512_bf16"} & (cpu_flags() if flags is None else flags))
    if native:
        return "bf16", f"CPU has {', '.join(native)}"
    return "fp32", "CPU has no native bf16 (no amx_bf16 / avx512_bf16)"


def one_cycle_lr(step: int, total: int, peak: float, warmup: float = 0.2) -> float:
    """Cosine one-cycle: up from peak/25 over the first `warmup` share of the steps, then down to peak/1e4. A pure
    function of (step, total), so a budget that shortens the run mid-way just continues on the shorter curve."""
    warm = max(1, int(warmup * total))
    if step < warm:
        return peak / 25 + (peak - peak / 25) * (1 - math.cos(math.pi * step / warm)) / 2
    t = min(1.0, (step - warm) / max(1, total - warm))
    return peak / 1e4 + (peak - peak / 1e4) * (1 + math.cos(math.pi * t)) / 2


def augment(
    x: torch.Tensor,
    size: int,
    generator: torch.Generator,
    erase_prob: float = 0.5,
    lowres_prob: float = 0.0,
    lowres_min: int = 12,
    rng: np.random.Generator | None = None,
    degrade_prob: float = 0.0,
) -> torch.Tensor:
    """Random flip, rotation, scale and shift in one affine resample to `size`, then low resolution, then a camera's
    faults, then random erasing; batched on the tensor's device, no per-image Python. The host-side numbers (the
    low-resolution side, the blur's width) come from `rng`, so a GPU never waits for them. Pixels are in [0, 1]."""
    n, dev = x.shape[0], x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    angle = (rand(n) * 2 - 1) * math.radians(15)
    scale = 1 + (rand(n) * 2 - 1) * 0.15
    shift = (rand(n, 2) * 2 - 1) * 0.1
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if lowres_prob > 0 and lowres_min < size:
        # Small faces (a webcam across the room, a crowd, a film still) reach the model enlarged and blurred: some
        # images are area-shrunk to one side drawn per batch in [lowres_min, size) and enlarged back bilinearly.
        side = int((rng or np.random.default_rng()).integers(lowres_min, size))
        small = F.interpolate(out, size=(side, side), mode="area")
        blurred = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
        out = torch.where((rand(n) < lowres_prob)[:, None, None, None], blurred, out)
    if degrade_prob > 0:
        out = torch.where((rand(n) < degrade_prob)[:, None, None, None], degrade(out, generator, rng), out)
    # Random erasing: a grey rectangle (sides size/5..size/2) on some images, so no single region is relied on.
    lo, hi = size // 5, size // 2
    hw = (lo + rand(n, 2) * (hi - lo)).long()
    corner = (rand(n, 2) * (size - hw + 1)).long()
    ax = torch.arange(size, device=dev)
    rows = (ax >= corner[:, :1]) & (ax < corner[:, :1] + hw[:, :1])
    cols = (ax >= corner[:, 1:]) & (ax < corner[:, 1:] + hw[:, 1:])
    box = rows[:, :, None] & cols[:, None, :] & (rand(n) < erase_prob)[:, None, None]
    return out.masked_fill(box[:, None], 0.5)


def degrade(x: torch.Tensor, generator: torch.Generator, rng: np.random.Generator | None = None) -> torch.Tensor:
    """What a webcam in a dim room or a cheap lens does to a face, at a random strength per image: exposure (gamma
    1/2.2 to 2.2, brightness +-0.1), contrast (x0.4 to x1.25 about the face's mean), defocus (a Gaussian blur whose
    sigma, 0 to 1.2 px, is drawn per batch) and sensor noise (sigma 0 to 0.06). FER2013's faces are mostly well
    exposed and sharp; models trained on them alone lose 3 to 15 points of PublicTest under such faults
    (`evaluate`'s camera_faults)."""
    n, dev = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=generator, device=dev)

    gamma = torch.exp(uniform(-math.log(2.2), math.log(2.2)))
    x = x.clamp(0, 1) ** gamma + uniform(-0.1, 0.1)
    mean = x.mean((2, 3), keepdim=True)
    x = (x - mean) * torch.exp(uniform(math.log(0.4), math.log(1.25))) + mean
    sigma = float((rng or np.random.default_rng()).uniform(0, 1.2))
    if sigma >= 0.3:  # narrower kernels barely change a pixel
        r = math.ceil(3 * sigma)
        k = torch.exp(-(torch.arange(-r, r + 1, device=dev, dtype=x.dtype) ** 2) / (2 * sigma**2))
        k = k / k.sum()
        x = F.pad(x, (r, r, r, r), mode="replicate")
        x = F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
    return (x + noise * uniform(0, 0.06)).clamp(0, 1)


def mix_batch(
    x: torch.Tensor,
    targets: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    mode: str,
    alpha: float,
    generator: torch.Generator,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Mixup (blend whole images) or CutMix (paste a box of another image); every target distribution is blended
    by the same weight, and an image keeps a head's label only if both of its sources had one. The pairing is drawn
    on the device (`generator`), the scalars on the host (`rng`), so a GPU never waits for a number."""
    n, size, dev = x.shape[0], x.shape[-1], x.device
    perm = torch.randperm(n, generator=generator, device=dev)
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 0.5
    if mode == "mixup":
        x = lam * x + (1 - lam) * x[perm]
    elif mode == "cutmix":
        side = int(round(size * math.sqrt(1 - lam)))
        cy, cx = (int(v) for v in rng.integers(0, size, 2))
        y0, y1 = max(cy - side // 2, 0), min(cy + side - side // 2, size)
        x0, x1 = max(cx - side // 2, 0), min(cx + side - side // 2, size)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (size * size)  # the share of pixels that stayed
    else:
        raise ValueError(f"unknown mix mode {mode!r} (expected none, mixup or cutmix)")
    targets = {h: lam * t + (1 - lam) * t[perm] for h, t in targets.items()}
    masks = {h: m & m[perm] for h, m in masks.items()}
    return x, targets, masks


def to_input(images: np.ndarray, size: int, mean: float, std: float) -> torch.Tensor:
    """uint8 [N,48,48] -> normalised float [N,1,size,size], resized with OpenCV's INTER_AREA exactly as the server
    and `evaluate` do, so the PublicTest accuracy that picks the best epoch is the one the exported model gets."""
    if images.shape[-1] != size:
        images = resize_faces(images, size, size)
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)
    return (x - mean) / std


@torch.no_grad()
def predict(net: EmotionNet, images: np.ndarray, cfg: TrainConfig, batch: int = 512) -> dict[str, np.ndarray]:
    """Probabilities per head in fp32; flip-averaged with `cfg.val_tta`, as an exported file with in-graph TTA."""
    net.eval()
    device = next(net.parameters()).device
    outs: dict[str, list[np.ndarray]] = {h: [] for h in net.heads}
    for i in range(0, len(images), batch):
        x = to_input(images[i : i + batch], cfg.input_size, cfg.mean, cfg.std)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        logits = net(x)
        mirrored = net(torch.flip(x, dims=[3])) if cfg.val_tta else None
        for h in outs:
            probs = F.softmax(logits[h].float(), 1)
            if mirrored is not None:
                probs = 0.5 * (probs + F.softmax(mirrored[h].float(), 1))
            outs[h].append(probs.cpu().numpy())
    return {h: np.concatenate(v) for h, v in outs.items()}


def masked_mean(per_row: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the rows a head has labels for, without boolean indexing (which would make a GPU wait)."""
    if mask is None:
        return per_row.mean()
    return (per_row * mask).sum() / mask.sum().clamp_min(1)


def soft_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    smoothing: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    k = target.shape[1]
    target = target * (1 - smoothing) + smoothing / k
    per_row = -(target * F.log_softmax(logits, 1) * weight).sum(1)
    return masked_mean(per_row, mask)


def distill_loss(
    logits: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Hinton et al.: cross-entropy to the teachers' distribution, both softened by T, scaled by T^2 so the
    gradient's size does not depend on T. `teacher` holds probabilities at T = 1."""
    soft = F.softmax(teacher.clamp_min(1e-8).log() / temperature, 1)
    per_row = -(soft * F.log_softmax(logits / temperature, 1)).sum(1)
    return masked_mean(per_row, mask) * temperature**2


def train(cfg: TrainConfig, data: FaceDataset | None = None, log=print) -> dict:
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    deadline = t_start + cfg.minutes * 60 if cfg.minutes > 0 else math.inf
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"config: {json.dumps(asdict(cfg))}")
    device = pick_device(cfg.device)
    precision, why = pick_precision(cfg.precision, device)
    log(f"device: {device}, precision {precision} ({why})")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if cfg.lowres_prob > 0 and not 1 <= cfg.lowres_min < cfg.input_size:
        raise ValueError(f"--lowres-min must be from 1 to input_size - 1 ({cfg.input_size - 1}), got {cfg.lowres_min}")
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
        weights[h] = torch.tensor(w / (w * freq).sum(), dtype=torch.float32, device=device)  # mean weight 1
        log(
            f"class weights {h}: "
            + ", ".join(f"{n} {v:.2f}" for n, v in zip(ds.labels[h], weights[h].tolist(), strict=True))
        )
    # The whole training set lives on the device (74 MB as uint8): batches are gathered and augmented there.
    images = torch.from_numpy(ds.images).to(device)
    targets = {h: torch.from_numpy(ds.targets[h]).to(device) for h in heads}
    masks = {h: torch.from_numpy(ds.masks[h]).to(device) for h in heads}
    teacher = Teachers.from_config(cfg, heads, ds, device, log)

    model_cfg = ModelConfig(widths=tuple(cfg.widths), convs_per_stage=tuple(cfg.convs_per_stage), dropout=cfg.dropout)
    net = EmotionNet({h: len(ds.labels[h]) for h in heads}, model_cfg)
    log(f"model: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters")
    if cfg.init:
        net.load_state_dict(torch.load(cfg.init, weights_only=False, map_location="cpu")["model"])
        log(f"initialised from {cfg.init}")
    net = net.to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)

    best = {h: {"accuracy": -1.0, "epoch": -1} for h in heads}
    state = {"epoch": 0, "step": 0, "epochs": cfg.epochs, "history": [], "best": best}
    last = out / "last.pt"
    ckpt: dict = {}  # what is resumed from
    if last.exists():
        ckpt = torch.load(last, weights_only=False, map_location="cpu")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state.update(ckpt["state"])
        state.setdefault("step", state["epoch"] * steps_per_epoch)
        if not state.get("shortened"):  # a new --epochs extends (or cuts) the schedule; a budget's cut stays
            state["epochs"] = cfg.epochs
        torch.set_rng_state(ckpt["rng"])
        log(f"resumed from {last} after epoch {state['epoch']}")
    # With --ema the weights that are scored and saved are a moving average of the trained ones (and of the batch
    # norms' statistics), starting from the weights trained so far; the trained weights are scored too, as
    # `<head>_raw_val_acc`, to show what it gives.
    ema = None
    if cfg.ema > 0:
        swa = torch.optim.swa_utils
        ema = swa.AveragedModel(net, multi_avg_fn=swa.get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])

    if state["epoch"] < state["epochs"]:  # a longer schedule than the one a final_ checkpoint ended
        for stale in out.glob("final_*.pt"):
            stale.unlink()
    gen = torch.Generator(device=device)
    val_labels = {h: ds.hard_labels(h)[val_idx] for h in heads}
    epoch_seconds: list[float] = []
    lr = one_cycle_lr(state["step"], state["epochs"] * steps_per_epoch, cfg.lr)
    # The budget counts from the start, loading included; a run always finishes its first epoch, so it leaves a
    # checkpoint however small the budget.
    while state["epoch"] < state["epochs"] and (time.time() < deadline or state["epoch"] == 0):
        epoch = state["epoch"] + 1
        net.train()
        gen.manual_seed(cfg.seed * 1000 + epoch)
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        order = torch.from_numpy(train_idx).to(device)[torch.randperm(len(train_idx), generator=gen, device=device)]
        t0, total, seen = time.time(), torch.zeros((), device=device), 0
        for step in range(steps_per_epoch):
            if time.time() > deadline and state["epoch"] > 0:
                log(f"time budget of {cfg.minutes:g} min reached in epoch {epoch}, step {step}")
                break
            lr = one_cycle_lr(state["step"], state["epochs"] * steps_per_epoch, cfg.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = augment(
                images[idx].float().div_(255).unsqueeze(1),
                cfg.input_size,
                gen,
                cfg.erase_prob,
                cfg.lowres_prob,
                cfg.lowres_min,
                rng,
                cfg.degrade_prob,
            )
            x = ((x - cfg.mean) / cfg.std).contiguous(memory_format=torch.channels_last)
            t_batch = {h: targets[h][idx] for h in heads}
            m_batch = {h: masks[h][idx] for h in heads}
            if teacher is not None:
                t_batch.update({f"teacher/{h}": p for h, p in teacher.stored(idx).items()})
            if cfg.mix != "none" and rng.random() < cfg.mix_prob:
                x, t_batch, m_batch = mix_batch(x, t_batch, m_batch, cfg.mix, cfg.mix_alpha, gen, rng)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = net(x)
                online = teacher.online(x) if teacher is not None else {}
            loss = torch.zeros((), device=device)
            for h in heads:
                mask, out_h = m_batch[h].float(), logits[h].float()
                hard = soft_cross_entropy(out_h, t_batch[h], weights[h], cfg.label_smoothing, mask)
                soft = online.get(h, t_batch.get(f"teacher/{h}"))
                if soft is None:
                    loss = loss + hard
                else:
                    kd = distill_loss(out_h, soft.float(), cfg.distill_temperature, mask)
                    loss = loss + (1 - cfg.distill_weight) * hard + cfg.distill_weight * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(net)
            state["step"] += 1
            total += loss.detach() * len(idx)
            seen += len(idx)
            if step % 20 == 0 or step == steps_per_epoch - 1:  # .item() waits for the device: not every step
                done = (step + 1) / steps_per_epoch
                print(
                    f"\repoch {epoch}/{state['epochs']} [{'#' * int(done * 30):<30}] {done:4.0%} "
                    f"loss {total.item() / seen:.4f} {seen / (time.time() - t0):.0f} img/s",
                    end="",
                    flush=True,
                )
        print(flush=True)
        scored = net if ema is None else ema.module
        probs = predict(scored, ds.images[val_idx], cfg)
        row = {"epoch": epoch, "train_loss": total.item() / max(seen, 1), "lr": lr, "seconds": time.time() - t0}
        raw = predict(net, ds.images[val_idx], cfg) if ema is not None else {}
        for h in heads:
            ok = val_labels[h] >= 0
            target = torch.from_numpy(ds.targets[h][val_idx][ok])
            row[f"{h}_val_loss"] = float(-(target * torch.log(torch.from_numpy(probs[h][ok]) + 1e-8)).sum(1).mean())
            row[f"{h}_val_acc"] = float((probs[h][ok].argmax(1) == val_labels[h][ok]).mean())
            if h in raw:
                row[f"{h}_raw_val_acc"] = float((raw[h][ok].argmax(1) == val_labels[h][ok]).mean())
            if row[f"{h}_val_acc"] > state["best"][h]["accuracy"]:
                state["best"][h] = {"accuracy": row[f"{h}_val_acc"], "epoch": epoch}
                torch.save(_checkpoint(scored, cfg, ds, h, row), out / f"best_{h}.pt")
        state["history"].append(row)
        state["epoch"] = epoch
        epoch_seconds.append(time.time() - t0)
        _fit_budget(state, epoch_seconds, deadline, cfg.epochs, log)
        log("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if state["step"] >= state["epochs"] * steps_per_epoch:  # the schedule ran to its end, learning rate annealed
            for h in heads:  # written before last.pt: a run that stops in between writes them again when resumed
                torch.save(_checkpoint(scored, cfg, ds, h, row), out / f"final_{h}.pt")
        resume = {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "state": state,
            "rng": torch.get_rng_state(),
        }
        if ema is not None:
            resume["ema"] = ema.state_dict()
        torch.save(resume, last)
        (out / "history.json").write_text(json.dumps(state, indent=1))
    log(f"best: {json.dumps(state['best'])} ({(time.time() - t_start) / 60:.1f} min)")
    return state


def _fit_budget(state: dict, epoch_seconds: list[float], deadline: float, max_epochs: int, log) -> None:
    """Re-plan the schedule so that its last epoch (full learning-rate annealing included) ends inside the budget:
    shorten it whenever it would overrun; lengthen it (up to `max_epochs`) only while still warming up, where a
    longer curve changes little, e.g. when the first epochs were slowed by another job.

    An epoch's time is the median of the last seven: another job that slows every other epoch (tests, a review)
    must not cut the schedule for good. With the last three, one such burst (98, 57, 110 s among epochs of 55 s)
    cut a 90-minute run to 61 epochs, and it ended after 59 minutes."""
    if math.isinf(deadline) or state["epoch"] >= state["epochs"]:
        return
    per_epoch = float(np.median(epoch_seconds[-7:]))
    fits = max(state["epoch"], min(max_epochs, state["epoch"] + int((deadline - time.time()) / per_epoch)))
    warming_up = state["epoch"] < 0.2 * state["epochs"]
    if fits < state["epochs"] or (fits > state["epochs"] and warming_up):
        verb = "shortened" if fits < state["epochs"] else "lengthened"
        log(f"budget: {per_epoch:.1f} s per epoch, the schedule is {verb} to {fits} epochs")
        state["epochs"], state["shortened"] = fits, fits < max_epochs


def _checkpoint(net: EmotionNet, cfg: TrainConfig, ds: FaceDataset, head: str, row: dict) -> dict:
    """A self-contained checkpoint for one head: what `export` needs (with the epoch and its PublicTest accuracy),
    nothing of the optimiser."""
    return {
        "epoch": row["epoch"],
        "accuracy": row[f"{head}_val_acc"],
        "model": net.state_dict(),
        "train_config": asdict(cfg),
        "model_config": asdict(net.config),
        "heads": {h: ds.labels[h] for h in net.heads},
        "head": head,
        "label_source": "ferplus" if head == "ferplus" else ("fer2013" if head == "fer2013" else "folder"),
    }


def load_checkpoint(path: str | Path) -> tuple[EmotionNet, dict]:
    ckpt = torch.load(path, weights_only=False, map_location="cpu")
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
