"""Adversarial examples against the shipped classifier: change a photo by a few grey levels, change the emotion.

    python -m training attack PHOTO --target sad --out DIR      one photo: input.png, hacked.png, difference.png,
                                                                figure.png, result.json
    python -m training attack --eval --limit 500 --out DIR      PublicTest accuracy versus budget (JSON + plot)

How it works (docs/attack.md says it for users):

- Gradients come from the ``.onnx`` file itself, run by ``training.onnx_torch`` and checked against onnxruntime.
- The face is found by the server's own detector and cropped by the server's own rule (``crop_region``); the
  perturbation lives on the full-resolution pixels of the photo around that crop, and the server's conversion to the
  model input (BGR -> gray, INTER_AREA / linear resize, uint8 rounding, mean/std) is rebuilt as a differentiable
  graph: both colour conversion and resize are linear maps, and the resize matrices are read off cv2 itself by
  resizing unit images, so the graph computes what ``crop_face`` computes. Rounding uses a straight-through
  estimator, so the forward pass sees the same uint8 values the server sees.
- The attack is targeted PGD (sign-gradient steps, cosine step schedule, L-infinity ball of ``k`` grey levels, i.e.
  ``k/255`` of the photo's 0..255 scale) on a margin loss, over a few crop boxes shifted by a pixel, because the
  detector re-run on the changed photo may place its box a pixel away; boxes the real detector does report are
  added as they are seen. The smallest budget is searched by doubling then bisection.
- A budget counts as flipped only when the server's own pipeline (detect -> crop -> onnxruntime) says the target on
  the uint8 photo; the saved ``hacked.png`` is then read back from disk and checked once more the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from server.classifier import EmotionClassifier
from server.detector import Detection
from server.pipeline import MAX_ALIGN_DEGREES, EmotionPipeline, crop_for, crop_region, decode_image, eye_angle
from training.data import add_data_arguments, resize_faces
from training.onnx_torch import QUANTIZED_ATOL, OnnxModule, parity_check

GRAY_FROM_BGR = (0.114, 0.587, 0.299)  # cv2.COLOR_BGR2GRAY
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), as server.pipeline.crop_region returns


class AttackError(RuntimeError):
    """The attack cannot run on this input (no face, unknown label); the message says why."""


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass (the server works on uint8), identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def server_interpolation(h: int, w: int, out_h: int, out_w: int) -> int:
    # The rule of server.pipeline.crop_face: area averaging when shrinking, linear when a tiny face is enlarged.
    return cv2.INTER_AREA if h >= out_h and w >= out_w else cv2.INTER_LINEAR


def resize_matrix(n_in: int, n_out: int, interpolation: int) -> np.ndarray:
    """[n_out, n_in]: cv2.resize along one axis as a matrix, read off cv2 by resizing the unit images.

    cv2's area and linear resizes are separable, so resize(I) == Ay @ I @ Ax.T exactly (in float; the server's uint8
    path differs only by its rounding).
    """
    return cv2.resize(np.eye(n_in, dtype=np.float32), (n_out, n_in), interpolation=interpolation).T.copy()


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x, y, w, h) boxes."""
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / max(a[2] * a[3] + b[2] * b[3] - inter, 1e-9)


# --- the model and the server's preprocessing, differentiable ------------------------------------------------------


class DifferentiableClassifier:
    """The ``.onnx`` file as torch: uint8-valued float crops [N, C, H, W] -> probabilities [N, K].

    ``classifier`` is the server's ``EmotionClassifier`` on the same file (metadata checks, onnxruntime session);
    the torch graph is compared with it on random crops before use.
    """

    def __init__(self, path: str | Path, atol: float | None = None, log: Callable[[str], None] = print):
        self.path = Path(path)
        self.classifier = EmotionClassifier(self.path)
        self.spec = self.classifier.spec
        self.net = OnnxModule(self.path)
        h, w = self.spec.input_size
        shape = (16, h, w) if self.spec.channels == 1 else (16, h, w, 3)
        crops = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        if atol is None:
            atol = QUANTIZED_ATOL if self.net.quantized else 1e-4
        self.parity = parity_check(self.net, self.path, self.classifier.preprocess(crops), atol)
        log(f"parity: max |torch - onnxruntime| = {self.parity:.2e} on 16 random crops ({self.path.name})")
        c = self.spec.channels
        self._mean = torch.tensor(self.spec.mean, dtype=torch.float32).reshape(1, c, 1, 1)
        self._std = torch.tensor(self.spec.std, dtype=torch.float32).reshape(1, c, 1, 1)

    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net((crops / 255.0 - self._mean) / self._std)


class CropGraph(torch.nn.Module):
    """``crop_face`` of several crop boxes of one photo window, differentiable: window BGR [h, w, 3] (float, 0..255)
    -> model input [B, C, H, W] (uint8-valued floats, one per box)."""

    def __init__(self, window: Box, boxes: Sequence[Box], input_size: tuple[int, int], channels: int):
        super().__init__()
        wx0, wy0, wx1, wy1 = window
        out_h, out_w = input_size
        ay = np.zeros((len(boxes), out_h, wy1 - wy0), np.float32)
        ax = np.zeros((len(boxes), out_w, wx1 - wx0), np.float32)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            if x0 < wx0 or y0 < wy0 or x1 > wx1 or y1 > wy1:
                raise ValueError(f"crop box {(x0, y0, x1, y1)} is outside the window {window}")
            interp = server_interpolation(y1 - y0, x1 - x0, out_h, out_w)
            ay[i, :, y0 - wy0 : y1 - wy0] = resize_matrix(y1 - y0, out_h, interp)
            ax[i, :, x0 - wx0 : x1 - wx0] = resize_matrix(x1 - x0, out_w, interp)
        self.ay, self.ax = torch.from_numpy(ay)[:, None], torch.from_numpy(ax)[:, None].transpose(-1, -2)
        self.channels = channels

    def forward(self, window_bgr: torch.Tensor) -> torch.Tensor:
        if self.channels == 1:
            gray = window_bgr @ torch.tensor(GRAY_FROM_BGR, dtype=window_bgr.dtype)
            planes = round_ste(gray)[None]  # cv2 converts to uint8 gray before resizing
        else:
            planes = window_bgr.flip(-1).permute(2, 0, 1)  # BGR -> RGB planes
        return self.resize(planes[None])

    def resize(self, planes: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] planes of the window -> [N * B, C, H, W] (N = 1 or B = 1); the resize writes uint8 too."""
        return round_ste(self.ay @ planes @ self.ax)


# --- one photo -----------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """What the server's pipeline says about the attacked face (found=False: no detection overlaps it)."""

    found: bool
    emotion: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    box: tuple[float, float, float, float] | None = None  # x, y, w, h of the detection


def predict_face(pipeline: EmotionPipeline, image_bgr: np.ndarray, face_box: Sequence[float]) -> Prediction:
    """Run the server's pipeline (detect, crop, ONNX classify) and return the face that overlaps ``face_box``."""
    faces, _ = pipeline.predict(image_bgr)
    best = max(faces, key=lambda f: iou((f.box.x, f.box.y, f.box.w, f.box.h), face_box), default=None)
    if best is None or iou((best.box.x, best.box.y, best.box.w, best.box.h), face_box) < 0.5:
        return Prediction(found=False)
    return Prediction(
        True,
        best.emotion,
        round(best.confidence, 4),
        {k: round(v, 4) for k, v in best.probabilities.items()},
        (best.box.x, best.box.y, best.box.w, best.box.h),
    )


@dataclass
class BudgetTry:
    budget: int
    flipped: bool
    steps: int
    boxes: int
    seconds: float


@dataclass
class PhotoAttack:
    """The outcome on one photo. ``budget`` is in grey levels of the photo (k means k/255); None if none flipped."""

    target: str
    face: tuple[float, float, float, float]
    crop_box: Box
    before: Prediction
    budget: int | None
    after: Prediction  # the pipeline on the hacked photo in memory (the search's own criterion)
    hacked: np.ndarray  # BGR uint8, the whole photo (the unchanged photo when no budget flipped it)
    tries: list[BudgetTry]
    linf: int  # max |hacked - input| actually applied, in grey levels
    changed_pixels: int  # pixels (any channel) that differ


class PhotoAttacker:
    """Targeted PGD on one face of one photo, through the server's own detection and crop."""

    def __init__(
        self,
        model: DifferentiableClassifier,
        pipeline: EmotionPipeline,
        *,
        steps: int = 100,
        jitter: int = 1,
        kappa: float = 0.3,
        log: Callable[[str], None] = print,
    ):
        self.model, self.pipeline = model, pipeline
        self.steps, self.jitter, self.kappa, self.log = steps, jitter, kappa, log
        if pipeline.classifier.spec.labels != model.labels:
            raise AttackError("the pipeline's classifier and the attacked model have different labels")

    def attack(self, image_bgr: np.ndarray, target: str, *, max_budget: int = 16, face_index: int = 0) -> PhotoAttack:
        labels = self.model.labels
        if target not in labels:
            raise AttackError(f"unknown target {target!r}; the model's labels are {', '.join(labels)}")
        faces = self.pipeline.detect(image_bgr)
        if len(faces) <= face_index:
            raise AttackError(f"the detector found {len(faces)} face(s); cannot attack face {face_index + 1}")
        d = faces[face_index]
        face = (d.x, d.y, d.w, d.h)
        spec = self.model.spec
        eyes = d.eyes() if getattr(spec, "align", "none") == "eyes" else None
        if eyes is not None and 0.5 <= abs(eye_angle(eyes)) <= MAX_ALIGN_DEGREES:
            # crop_face turns this crop (warpAffine) so the eyes are level; the graph here rebuilds the plain square.
            raise AttackError(
                f"the model asks for eye-aligned crops (align: eyes) and this face would be turned by "
                f"{eye_angle(eyes):.1f} degrees; the attack reproduces only the unturned crop so far"
            )
        h, w = image_bgr.shape[:2]
        crop_box = crop_region(d, spec, w, h)
        self._check_crop(image_bgr, d, crop_box)
        before = predict_face(self.pipeline, image_bgr, face)
        result = PhotoAttack(target, face, crop_box, before, None, before, image_bgr.copy(), [], 0, 0)
        if before.emotion == target:
            self.log(f"the face is already {target} ({before.confidence:.0%}): nothing to do")
            result.budget = 0
            return result

        found: dict[int, tuple[np.ndarray, Prediction]] = {}

        def run(k: int) -> bool:
            t0 = time.perf_counter()
            hacked, pred, steps, boxes = self._pgd(image_bgr, face, crop_box, target, k)
            flipped = pred.found and pred.emotion == target
            result.tries.append(BudgetTry(k, flipped, steps, boxes, round(time.perf_counter() - t0, 2)))
            what = f"{pred.emotion} {pred.confidence:.0%}" if pred.found else "no face found"
            self.log(f"budget {k:>3}/255: {'flipped' if flipped else 'not flipped'} after {steps} steps ({what})")
            if flipped:
                found[k] = (hacked, pred)
            return flipped

        smallest = search_smallest(run, max_budget)
        if smallest is not None:
            result.budget = smallest
            result.hacked, result.after = found[smallest]
        else:
            result.after = before
        diff = np.abs(result.hacked.astype(np.int16) - image_bgr.astype(np.int16))
        result.linf, result.changed_pixels = int(diff.max()), int((diff.max(axis=2) > 0).sum())
        return result

    def _check_crop(self, image_bgr: np.ndarray, d: Detection, crop_box: Box) -> None:
        """The torch crop must reproduce the server's ``crop_face`` before its gradients mean anything."""
        spec = self.model.spec
        graph = CropGraph(crop_box, [crop_box], spec.input_size, spec.channels)
        x0, y0, x1, y1 = crop_box
        with torch.no_grad():
            ours = graph(torch.from_numpy(image_bgr[y0:y1, x0:x1].astype(np.float32)))[0].numpy()
        theirs = crop_for(image_bgr, d, spec)
        theirs = theirs.astype(np.float32)
        theirs = theirs[None] if theirs.ndim == 2 else theirs.transpose(2, 0, 1)
        err = float(np.abs(ours - theirs).max())
        if err > 2:  # uint8 rounding of cv2's fixed-point paths moves a few pixels by one level, never more
            raise AttackError(
                f"the differentiable crop differs from the server's crop_face by {err:.0f} grey levels; "
                "the server's crop has changed and training/attack.py must follow it"
            )

    def _boxes(self, crop_box: Box, width: int, height: int) -> list[Box]:
        x0, y0, x1, y1 = crop_box
        boxes = [crop_box]
        j = self.jitter
        for dx, dy in ((j, 0), (-j, 0), (0, j), (0, -j)) if j else ():
            b = (max(0, x0 + dx), max(0, y0 + dy), min(width, x1 + dx), min(height, y1 + dy))
            if b not in boxes:
                boxes.append(b)
        return boxes

    def _pgd(
        self, image_bgr: np.ndarray, face: Sequence[float], crop_box: Box, target: str, k: int
    ) -> tuple[np.ndarray, Prediction, int, int]:
        """PGD at budget ``k`` grey levels; stops as soon as the server's pipeline gives ``target``."""
        h, w = image_bgr.shape[:2]
        spec = self.model.spec
        t = self.model.labels.index(target)
        boxes = self._boxes(crop_box, w, h)
        window = _union(boxes)
        graph = CropGraph(window, boxes, spec.input_size, spec.channels)
        original = torch.from_numpy(_cut(image_bgr, window).astype(np.float32))
        delta = torch.zeros_like(original, requires_grad=True)
        hacked, pred = image_bgr, Prediction(False)
        for step in range(1, self.steps + 1):
            x = round_ste((original + delta).clamp(0, 255))
            logp = torch.log(self.model(graph(x)).clamp_min(1e-30))
            margin = logp[:, t] - _max_other(logp, t)
            loss = (self.kappa - margin).clamp_min(0).sum()
            if bool((margin > 0).all()):
                hacked = _paste(image_bgr, window, x.detach())
                pred = predict_face(self.pipeline, hacked, face)
                if pred.found and pred.emotion == target:
                    return hacked, pred, step, len(boxes)
                redetected = self._redetected_box(hacked, face)
                if redetected is not None and redetected not in boxes:
                    # The detector moved on the changed photo: attack that crop too from now on.
                    boxes.append(redetected)
                    new_window = _union(boxes)
                    delta = _regrow(delta.detach(), window, new_window).requires_grad_()
                    original = torch.from_numpy(_cut(image_bgr, new_window).astype(np.float32))
                    window, graph = new_window, CropGraph(new_window, boxes, spec.input_size, spec.channels)
                    continue
            (grad,) = torch.autograd.grad(loss, delta)
            alpha = k * (0.05 + 0.45 * 0.5 * (1 + math.cos(math.pi * (step - 1) / self.steps)))
            with torch.no_grad():
                delta -= alpha * grad.sign()
                delta.clamp_(-k, k)
                delta.copy_((original + delta).clamp(0, 255) - original)
        x = round_ste((original + delta.detach()).clamp(0, 255))
        hacked = _paste(image_bgr, window, x)
        return hacked, predict_face(self.pipeline, hacked, face), self.steps, len(boxes)

    def _redetected_box(self, hacked: np.ndarray, face: Sequence[float]) -> Box | None:
        """The crop box the server cuts for this face from the changed photo (None if it finds no such face)."""
        # predict() reports boxes rounded to pixels; detect() gives the float box the crop is computed from.
        best = max(self.pipeline.detect(hacked), key=lambda d: iou((d.x, d.y, d.w, d.h), face), default=None)
        if best is None or iou((best.x, best.y, best.w, best.h), face) < 0.5:
            return None
        h, w = hacked.shape[:2]
        return crop_region(best, self.model.spec, w, h)


def search_smallest(run: Callable[[int], bool], max_budget: int) -> int | None:
    """Smallest k in 1..max_budget with run(k) true, assuming (roughly) monotone: doubling, then bisection."""
    lo, hi, k = 0, None, 1
    while hi is None and lo < max_budget:
        k = min(k, max_budget)
        if run(k):
            hi = k
        else:
            lo, k = k, k * 2
    if hi is None:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _union(boxes: Sequence[Box]) -> Box:
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _cut(image: np.ndarray, window: Box) -> np.ndarray:
    x0, y0, x1, y1 = window
    return image[y0:y1, x0:x1]


def _paste(image_bgr: np.ndarray, window: Box, x: torch.Tensor) -> np.ndarray:
    out = image_bgr.copy()
    x0, y0, x1, y1 = window
    out[y0:y1, x0:x1] = x.numpy().round().clip(0, 255).astype(np.uint8)
    return out


def _regrow(delta: torch.Tensor, old: Box, new: Box) -> torch.Tensor:
    grown = torch.zeros((new[3] - new[1], new[2] - new[0], delta.shape[2]), dtype=delta.dtype)
    grown[old[1] - new[1] : old[3] - new[1], old[0] - new[0] : old[2] - new[0]] = delta
    return grown


def _max_other(logp: torch.Tensor, t: int) -> torch.Tensor:
    others = logp.clone()
    others[:, t] = -math.inf
    return others.max(dim=1).values


# --- outputs -------------------------------------------------------------------------------------------------------


def difference_image(before: np.ndarray, after: np.ndarray, budget: int) -> tuple[np.ndarray, float]:
    """Mid-grey plus the change, stretched so the budget reaches full contrast; returns (image, amplification)."""
    gain = 127.0 / max(budget, 1)
    diff = after.astype(np.float32) - before.astype(np.float32)
    return np.clip(128 + gain * diff, 0, 255).round().astype(np.uint8), gain


def save_outputs(result: PhotoAttack, image_bgr: np.ndarray, out: Path, labels: list[str]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.png" for name in ("input", "hacked", "difference", "figure")}
    cv2.imwrite(str(paths["input"]), image_bgr)
    cv2.imwrite(str(paths["hacked"]), result.hacked)
    diff, gain = difference_image(image_bgr, result.hacked, result.budget or 1)
    cv2.imwrite(str(paths["difference"]), diff)
    save_figure(result, image_bgr, diff, gain, paths["figure"], labels)
    return paths


def save_figure(
    result: PhotoAttack, image_bgr: np.ndarray, diff: np.ndarray, gain: float, path: Path, labels: list[str]
) -> None:
    """Input | amplified difference | hacked (the face region, with each one's prediction) and both distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image_bgr.shape[:2]
    x0, y0, x1, y1 = result.crop_box
    pad = (x1 - x0) // 4  # some context around the crop the model sees
    view = (max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad))

    def show(ax: plt.Axes, img: np.ndarray, title: str, box: bool = True) -> None:
        ax.imshow(cv2.cvtColor(_cut(img, view), cv2.COLOR_BGR2RGB), interpolation="nearest")
        if box:
            ax.add_patch(plt.Rectangle((x0 - view[0] - 0.5, y0 - view[1] - 0.5), x1 - x0, y1 - y0, fill=False,
                                       ec="#ffd400", lw=1.2))  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.axis("off")

    def said(p: Prediction) -> str:
        return f"{p.emotion} {p.confidence:.0%}" if p.found else "no face found"

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8), gridspec_kw={"width_ratios": [1, 1, 1, 1.25]})
    show(axes[0], image_bgr, f"input.png: {said(result.before)}")
    budget = f"{result.budget}/255" if result.budget else "none found"
    show(axes[1], diff, f"difference x{gain:.0f} (budget {budget})", box=False)
    verdict = "target reached" if result.after.found and result.after.emotion == result.target else "target missed"
    show(axes[2], result.hacked, f"hacked.png: {said(result.after)} ({verdict})")
    ax = axes[3]
    xs = np.arange(len(labels))
    before = [result.before.probabilities.get(k, 0.0) for k in labels]
    after = [result.after.probabilities.get(k, 0.0) for k in labels]
    ax.bar(xs - 0.2, before, 0.4, label="input", color="#8c8c8c")
    ax.bar(xs + 0.2, after, 0.4, label="hacked", color="#d62728")
    ax.set_xticks(xs, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("probabilities (server pipeline)", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(
        f"target {result.target}: every pixel moved by at most {result.linf}/255; the server's own detector, crop "
        "and ONNX model on both files",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- PublicTest accuracy versus budget -----------------------------------------------------------------------------


class FaceBatchAttack:
    """PGD on 48x48 dataset faces exactly as ``training.evaluate`` feeds them to the server's classifier
    (cv2 INTER_AREA to the model input, uint8, then the classifier's own preprocessing)."""

    def __init__(self, model: DifferentiableClassifier, image_size: int = 48, steps: int = 20, kappa: float = 0.3):
        self.model, self.steps, self.kappa = model, steps, kappa
        h, w = model.spec.input_size
        full = (0, 0, image_size, image_size)
        self.graph = CropGraph(full, [full], (h, w), model.spec.channels)
        self.channels = model.spec.channels

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, S, S] gray, uint8-valued; a 3-channel model gets it repeated, as training.evaluate does.
        return self.graph.resize(x[:, None].expand(-1, self.channels, -1, -1))

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Argmax of the server's onnxruntime classifier on uint8 faces [N, S, S], through the evaluate path."""
        h, w = self.model.spec.input_size
        crops = resize_faces(faces, h, w)
        if self.channels == 3:
            crops = np.repeat(crops[..., None], 3, axis=3)
        return self.model.classifier.infer(crops).argmax(1)

    def attack(self, faces: np.ndarray, labels: np.ndarray, k: int, targeted: bool) -> np.ndarray:
        """uint8 faces moved by at most k levels: towards ``labels`` (targeted) or away from them."""
        original = torch.from_numpy(faces.astype(np.float32))
        if k == 0:
            return faces.copy()
        idx = torch.from_numpy(labels.astype(np.int64))
        delta = torch.zeros_like(original, requires_grad=True)
        rows = torch.arange(len(faces))
        for step in range(1, self.steps + 1):
            x = round_ste((original + delta).clamp(0, 255))
            logp = torch.log(self.model(self._inputs(x)).clamp_min(1e-30))
            others = logp.clone()
            others[rows, idx] = -math.inf
            margin = logp[rows, idx] - others.max(dim=1).values
            # targeted: push the target's margin up to kappa; untargeted: push the true label's margin below -kappa.
            loss = (self.kappa - margin).clamp_min(0).sum() if targeted else (margin + self.kappa).clamp_min(0).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            alpha = k * (0.05 + 0.45 * 0.5 * (1 + math.cos(math.pi * (step - 1) / self.steps)))
            with torch.no_grad():
                delta -= alpha * grad.sign()
                delta.clamp_(-k, k)
                delta.copy_((original + delta).clamp(0, 255) - original)
        return (original + delta.detach()).clamp(0, 255).round().numpy().astype(np.uint8)


def random_sign_noise(faces: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Every pixel moved by exactly +k or -k levels at random (then clipped): the same L-infinity size as the attack."""
    noise = rng.choice(np.array([-k, k], np.int16), size=faces.shape)
    return np.clip(faces.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def evaluate_budgets(
    model: DifferentiableClassifier,
    faces: np.ndarray,
    truth: np.ndarray,
    budgets: Sequence[int],
    *,
    steps: int = 20,
    batch: int = 128,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Accuracy (server's onnxruntime classifier) versus budget: untargeted PGD, targeted PGD towards a random other
    label per face, and random sign noise of the same size."""
    rng = np.random.default_rng(seed)
    k_labels = len(model.labels)
    targets = (truth + rng.integers(1, k_labels, len(truth))) % k_labels  # a random label other than the truth
    attacker = FaceBatchAttack(model, faces.shape[1], steps)
    rows: list[dict] = []
    for k in budgets:
        t0 = time.perf_counter()
        pred_u, pred_t, pred_n = [], [], []
        for i in range(0, len(faces), batch):
            f, y, tg = faces[i : i + batch], truth[i : i + batch], targets[i : i + batch]
            pred_u.append(attacker.predict(attacker.attack(f, y, k, targeted=False)))
            pred_t.append(attacker.predict(attacker.attack(f, tg, k, targeted=True)))
            pred_n.append(attacker.predict(random_sign_noise(f, k, rng)))
        pu, pt, pn = (np.concatenate(p) for p in (pred_u, pred_t, pred_n))
        row = {
            "budget": k,
            "untargeted_accuracy": round(float((pu == truth).mean()), 4),
            "targeted_accuracy": round(float((pt == truth).mean()), 4),
            "targeted_success": round(float((pt == targets).mean()), 4),
            "random_noise_accuracy": round(float((pn == truth).mean()), 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        log(
            f"budget {k}/255: accuracy untargeted {row['untargeted_accuracy']:.3f}, targeted "
            f"{row['targeted_accuracy']:.3f} (target hit {row['targeted_success']:.3f}), random sign noise "
            f"{row['random_noise_accuracy']:.3f}  [{row['seconds']} s]"
        )
    return {"images": len(faces), "steps": steps, "seed": seed, "budgets": list(budgets), "results": rows}


def plot_budgets(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    ks = [r["budget"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(ks, [r["random_noise_accuracy"] for r in rows], "o-", color="#8c8c8c", label="random sign noise")
    ax.plot(ks, [r["untargeted_accuracy"] for r in rows], "o-", color="#d62728", label="untargeted PGD")
    ax.plot(ks, [r["targeted_accuracy"] for r in rows], "s-", color="#1f77b4", label="targeted PGD (random target)")
    ax.plot(ks, [r["targeted_success"] for r in rows], "s--", color="#1f77b4", alpha=0.6, label="targeted: target hit")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(ks, [f"{k}/255" for k in ks])
    ax.set_ylim(0, 1)
    ax.set_xlabel("L-infinity budget (grey levels of 255)")
    ax.set_ylabel("share of faces")
    ax.set_title(f"{report['model']} on {report['split']} ({report['images']} faces, {report['steps']} PGD steps)",
                 fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- CLI -----------------------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack",
        help="adversarial example: change a photo slightly so the shipped model says --target",
        description="White-box targeted PGD on the .onnx classifier (gradients from a torch rebuild of the file, "
        "checked against onnxruntime), through the server's own detector and crop. Writes input.png, hacked.png, "
        "difference.png, figure.png and result.json to --out, then checks hacked.png through the server's pipeline. "
        "With --eval: PublicTest accuracy versus budget for targeted / untargeted PGD and random noise.",
    )
    p.add_argument("photo", nargs="?", help="the photo to attack (JPEG, PNG, WebP, BMP)")
    p.add_argument("--target", default="sad", help="the label the model should say (default: sad)")
    p.add_argument("--out", default="attack", help="output folder (default: ./attack)")
    p.add_argument("--model", default=None, help="the .onnx classifier (default: EMOTION_MODEL_PATH or the shipped)")
    p.add_argument("--yunet", default=None, help="YuNet file (default: EMOTION_YUNET_PATH or models/)")
    p.add_argument("--detector", default=None, choices=["auto", "yunet", "haar"], help="default: EMOTION_DETECTOR")
    p.add_argument("--max-budget", type=int, default=16, help="largest budget tried, in grey levels (default 16)")
    p.add_argument("--steps", type=int, default=None, help="PGD steps per budget (default 100; 20 with --eval)")
    p.add_argument("--jitter", type=int, default=1, help="also attack crops shifted by this many pixels (default 1)")
    p.add_argument("--face", type=int, default=1, help="which face, largest first (default 1)")
    p.add_argument("--eval", action="store_true", help="accuracy versus budget on a FER split instead of a photo")
    add_data_arguments(p, "--eval: ")
    p.add_argument("--split", default="PublicTest", help="--eval: split (default PublicTest)")
    p.add_argument("--limit", type=int, default=None, help="--eval: only the first N faces of the split")
    p.add_argument("--budgets", type=int, nargs="+", default=[0, 1, 2, 4, 8], help="--eval: budgets (grey levels)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace):  # noqa: ANN202  (server.config.Settings, imported late)
    from server.config import Settings

    overrides: dict[str, object] = {}
    if args.model:
        overrides["model_path"] = Path(args.model)
    if args.yunet:
        overrides["yunet_path"] = Path(args.yunet)
    if args.detector:
        overrides["detector"] = args.detector
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    from server.config import resolve_path

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = _settings(args)
    model = DifferentiableClassifier(resolve_path(Path(settings.model_path)))
    out = Path(args.out)
    if args.eval:
        return run_eval(args, model, out)
    if not args.photo:
        raise SystemExit("attack: give a PHOTO, or --eval")
    pipeline = EmotionPipeline.from_settings(settings)
    photo = Path(args.photo)
    image = decode_image(photo.read_bytes(), max_pixels=settings.max_pixels)
    print(f"detector: {pipeline.detector.name}; model: {model.path.name} ({', '.join(model.labels)})")
    attacker = PhotoAttacker(model, pipeline, steps=args.steps or 100, jitter=args.jitter)
    try:
        result = attacker.attack(image, args.target, max_budget=args.max_budget, face_index=args.face - 1)
    except AttackError as exc:
        raise SystemExit(f"attack: error: {exc}") from None
    paths = save_outputs(result, image, out, model.labels)
    # The check a user would make: the saved file, from disk, through the server's own pipeline.
    check = predict_face(pipeline, decode_image(paths["hacked"].read_bytes()), result.face)
    survived = check.found and check.emotion == args.target
    summary = {
        "photo": str(photo),
        "model": str(model.path),
        "detector": pipeline.detector.name,
        "parity_max_abs_diff": model.parity,
        "target": args.target,
        "budget": result.budget,
        "budget_text": f"{result.budget}/255" if result.budget is not None else None,
        "linf_applied": result.linf,
        "changed_pixels": result.changed_pixels,
        "face": result.face,
        "crop_box": result.crop_box,
        "before": asdict(result.before),
        "after_from_file": asdict(check),
        "target_reached_from_file": survived,
        "tries": [asdict(t) for t in result.tries],
    }
    (out / "result.json").write_text(json.dumps(summary, indent=1))
    b = result.before
    print(f"input: {b.emotion} {b.confidence:.0%}" if b.found else "input: no face")
    if result.budget is None:
        print(f"no budget up to {args.max_budget}/255 made the pipeline say {args.target}")
    else:
        print(f"smallest budget found: {result.budget}/255 (max change applied {result.linf}/255, "
              f"{result.changed_pixels} pixels changed)")  # fmt: skip
    said = f"{check.emotion} {check.confidence:.0%}" if check.found else "no face found"
    if survived:
        print(f"pipeline check: {paths['hacked']} read from disk -> decode, detect, crop, ONNX: {said}. "
              f"The target label {args.target} came out: the attack survived the server's pipeline.")  # fmt: skip
    else:
        print(f"pipeline check: {paths['hacked']} read from disk -> decode, detect, crop, ONNX: {said}. "
              f"The target label {args.target} did NOT come out: the attack did not survive the pipeline.")  # fmt: skip
    print(f"wrote {', '.join(str(p) for p in paths.values())}, {out / 'result.json'}")
    return 0 if survived else 1


def run_eval(args: argparse.Namespace, model: DifferentiableClassifier, out: Path) -> int:
    from training.data import ferplus_path, load_dataset

    ds = load_dataset("fer2013", args.data, ferplus_path(args.ferplus, missing_ok=True))
    head = model.spec.metadata.get("label_source", "fer2013")
    if head not in ds.targets or ds.labels[head] != model.labels:
        raise SystemExit(f"attack: error: the data has no {head} labels matching the model's {model.labels}")
    idx = ds.split(args.split)
    truth = ds.hard_labels(head)[idx]
    keep = truth >= 0  # FER+ majority protocol, as in training.evaluate
    faces, truth = ds.images[idx][keep], truth[keep]
    if args.limit:
        faces, truth = faces[: args.limit], truth[: args.limit]
    print(f"{len(faces)} faces of {args.split}; budgets {args.budgets}; {args.steps or 20} PGD steps")
    report = evaluate_budgets(model, faces, truth, args.budgets, steps=args.steps or 20)
    report.update(model=model.path.name, split=args.split, label_source=head, parity_max_abs_diff=model.parity)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attack_eval.json").write_text(json.dumps(report, indent=1))
    plot_budgets(report, out / "attack_eval.png")
    print(f"wrote {out / 'attack_eval.json'}, {out / 'attack_eval.png'}")
    return 0
