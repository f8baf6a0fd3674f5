"""Model v2 machinery on tiny synthetic data: the lossless data pack, precision/device choice, batched augmentation,
mixing, time budgets, teacher soft targets, distillation and a whole plan, ending in a file the server accepts."""

from __future__ import annotations

import dataclasses
import json
import lzma
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training package needs torch (pip install torch==2.13.0)")
pytest.importorskip("onnx", reason="the training package needs onnx (the [train] extra)")


from server.classifier import EmotionClassifier  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.data import load_dataset, load_fer2013  # noqa: E402
from training.distill import load_soft_targets  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.pack import decode_residuals, encode_residuals, read_pack, write_pack  # noqa: E402
from training.plan import load_plan, parse_steps, run_plan  # noqa: E402
from training.quantize import quantize  # noqa: E402
from training.train import (  # noqa: E402
    TrainConfig,
    _fit_budget,
    augment,
    load_checkpoint,
    mix_batch,
    one_cycle_lr,
    pick_device,
    pick_precision,
    predict,
    train,
)

TINY = {"epochs": 2, "threads": 1, "batch_size": 16, "widths": (8, 16, 16, 16), "precision": "fp32"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def packed(tmp_path_factory, fer) -> dict:
    ds = load_fer2013(fer["csv"], fer["ferplus"])
    path = tmp_path_factory.mktemp("pack") / "fer.pack"
    manifest = write_pack(ds, path)
    return {"ds": ds, "path": path, "manifest": manifest}


# --- pack ------------------------------------------------------------------------------------------------------------


def test_residual_coding_is_exact_on_every_byte_value():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 48, 48), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    images[2] = np.arange(48 * 48).reshape(48, 48) % 256  # wrap-arounds in the prediction error
    zz = encode_residuals(images)
    assert zz.dtype == np.uint8 and zz.shape == images.shape
    np.testing.assert_array_equal(decode_residuals(zz), images)
    smooth = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (1, 48, 1))  # a gradient predicts almost exactly
    assert encode_residuals(smooth)[:, 1:, 1:].max() <= 2


def test_pack_round_trip_is_lossless(packed):
    ds, back = packed["ds"], read_pack(packed["path"])
    np.testing.assert_array_equal(back.images, ds.images)
    assert back.labels == ds.labels
    for h in ds.targets:
        np.testing.assert_array_equal(back.targets[h], ds.targets[h])
        np.testing.assert_array_equal(back.masks[h], ds.masks[h])
        np.testing.assert_array_equal(back.hard_labels(h), ds.hard_labels(h))
    for split, idx in ds.splits.items():
        np.testing.assert_array_equal(back.splits[split], idx)
    assert packed["manifest"]["splits"] == {"Training": 32, "PublicTest": 8, "PrivateTest": 8}
    # The loaders take a .pack wherever they take the CSV.
    np.testing.assert_array_equal(load_dataset("fer2013", packed["path"]).images, ds.images)


def test_damaged_pack_is_refused(packed, tmp_path):
    import io

    raw = np.load(io.BytesIO(lzma.decompress(packed["path"].read_bytes())))
    arrays = dict(raw)
    arrays["fer2013"] = arrays["fer2013"].copy()
    arrays["fer2013"][3] = (arrays["fer2013"][3] + 1) % 7  # one label changed, the manifest kept
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    bad = tmp_path / "bad.pack"
    bad.write_bytes(lzma.compress(buf.getvalue()))
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_pack(bad)
    (tmp_path / "junk.pack").write_bytes(b"not xz at all")
    with pytest.raises(ValueError, match="not a training pack"):
        read_pack(tmp_path / "junk.pack")


def test_pack_cli_reports_identical(fer, tmp_path, capsys):
    out = tmp_path / "cli.pack"
    assert main(["pack", "--data", str(fer["csv"]), "--ferplus", str(fer["ferplus"]), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "identical to the source" in text and out.exists()


# --- device, precision, schedule, augmentation -----------------------------------------------------------------------


def test_precision_choice():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu, {"avx2", "fma"})[0] == "fp32"
    assert pick_precision("auto", cpu, {"avx2", "amx_bf16", "amx_tile"}) == ("bf16", "CPU has amx_bf16")
    assert pick_precision("auto", cpu, {"avx512f", "avx512_bf16"})[0] == "bf16"
    assert pick_precision("auto", torch.device("cuda"), set()) == ("bf16", "CUDA")
    assert pick_precision("fp32", torch.device("cuda"), set()) == ("fp32", "forced")
    assert pick_precision("bf16", cpu, {"avx2"}) == ("bf16", "forced")
    with pytest.raises(ValueError, match="unknown precision"):
        pick_precision("fp16", cpu, set())
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            pick_device("cuda")
        assert pick_device("auto").type == "cpu"


def test_one_cycle_schedule_shape():
    lrs = [one_cycle_lr(s, 100, 0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1) and int(np.argmax(lrs)) == 20
    assert lrs[-1] == pytest.approx(0.1 / 1e4)
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:], strict=False))  # monotone annealing


def test_random_erasing_is_batched_and_respects_its_probability():
    x = torch.zeros(400, 1, 40, 40)
    gen = torch.Generator().manual_seed(0)
    none = augment(x.clone(), 40, gen, erase_prob=0.0)
    assert (none == 0.5).sum() == 0  # zeros stay zeros under the affine resample
    out = augment(x.clone(), 40, gen, erase_prob=0.5)
    erased = (out == 0.5).flatten(1).any(1)
    assert 150 < int(erased.sum()) < 250
    for img in out[erased][:, 0]:  # each erased region is one axis-aligned rectangle of side 8..19
        ys, xs = torch.nonzero(img == 0.5, as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert 8 <= h < 20 and 8 <= w < 20 and len(ys) == h * w


def test_low_resolution_augmentation_shrinks_and_enlarges_the_share_it_is_given():
    from torch.nn import functional as F  # noqa: N812, PLC0415

    x = torch.rand(400, 1, 40, 40)  # noise: all detail, so any blur shows

    def run(**kw):
        return augment(x.clone(), 40, torch.Generator().manual_seed(3), erase_prob=0.0, **kw)

    plain = run()
    # Off, it draws nothing: every existing recipe keeps its random stream.
    assert torch.equal(run(lowres_prob=0.0, rng=np.random.default_rng(5)), plain)
    # On for every image: exactly the affine output area-shrunk to one side in [12, 40) and enlarged back.
    side = int(np.random.default_rng(5).integers(12, 40))
    expected = F.interpolate(F.interpolate(plain, size=(side, side), mode="area"), size=(40, 40), mode="bilinear")
    torch.testing.assert_close(run(lowres_prob=1.0, lowres_min=12, rng=np.random.default_rng(5)), expected)
    # On for a share: that share of the images is blurred (less pixel-to-pixel variation), the rest untouched.
    half = run(lowres_prob=0.5, lowres_min=12, rng=np.random.default_rng(5))
    changed = (half != plain).flatten(1).any(1)
    assert 150 < int(changed.sum()) < 250
    detail = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean((1, 2, 3))  # noqa: E731
    assert bool((detail(half[changed]) < detail(plain[changed])).all())


def test_camera_fault_augmentation_changes_the_share_it_is_given_and_draws_nothing_when_off():
    x = torch.rand(400, 1, 40, 40) * 0.5 + 0.25  # mid-grey texture: exposure, contrast and noise all show

    def run(**kw):
        return augment(x.clone(), 40, torch.Generator().manual_seed(3), erase_prob=0.0, **kw)

    plain = run()
    # Off, it draws nothing: every existing recipe keeps its random stream.
    assert torch.equal(run(degrade_prob=0.0, rng=np.random.default_rng(5)), plain)
    # On for a share: about that share of the images differs, the rest are untouched, pixels stay in [0, 1].
    some = run(degrade_prob=0.5, rng=np.random.default_rng(5))
    changed = (some != plain).flatten(1).any(1)
    assert 150 < int(changed.sum()) < 250
    assert float(some.min()) >= 0 and float(some.max()) <= 1
    # On for all: exposure and contrast vary from image to image far more than the plain images' do.
    every = run(degrade_prob=1.0, rng=np.random.default_rng(5))
    assert bool((every != plain).flatten(1).any(1).all())
    assert float(every.mean((1, 2, 3)).std()) > 3 * float(plain.mean((1, 2, 3)).std())
    assert float(every.std((1, 2, 3)).std()) > 3 * float(plain.std((1, 2, 3)).std())


def test_degrade_blurs_with_the_width_the_host_draws():
    from training.train import degrade  # noqa: PLC0415

    x = torch.rand(64, 1, 40, 40)
    detail = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    # Find a seed whose blur is wide (>= 0.9 px): the images lose most of their pixel-to-pixel detail, noise or not.
    seed = next(s for s in range(100) if np.random.default_rng(s).uniform(0, 1.2) >= 0.9)
    blurred = degrade(x.clone(), torch.Generator().manual_seed(0), np.random.default_rng(seed))
    assert blurred.shape == x.shape and float(detail(blurred)) < 0.6 * float(detail(x))


@pytest.mark.parametrize("side", [0, 40])
def test_low_resolution_side_outside_the_input_is_refused(side, tmp_path):
    with pytest.raises(ValueError, match="--lowres-min must be from 1 to input_size - 1"):
        train(TrainConfig(out=str(tmp_path), lowres_prob=0.3, lowres_min=side), log=lambda _: None)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixing_blends_images_and_targets_by_the_same_weight(mode):
    n = 64
    x = torch.cat([torch.zeros(n // 2, 1, 40, 40), torch.ones(n // 2, 1, 40, 40)])
    targets = {
        "a": torch.cat([torch.tensor([[1.0, 0.0]]).repeat(n // 2, 1), torch.tensor([[0.0, 1.0]]).repeat(n // 2, 1)])
    }
    masks = {"a": torch.ones(n, dtype=torch.bool)}
    masks["a"][0] = False
    gen, rng = torch.Generator().manual_seed(1), np.random.default_rng(1)
    mx, mt, mm = mix_batch(x, targets, masks, mode, 1.0, gen, rng)
    # Images are 0 or 1 everywhere, so each mixed image's mean is its share of "ones" pixels: the target says so.
    np.testing.assert_allclose(mx.mean((1, 2, 3)).numpy(), mt["a"][:, 1].numpy(), atol=1e-5)
    np.testing.assert_allclose(mt["a"].sum(1).numpy(), 1.0, atol=1e-6)
    assert not mm["a"][0] and int((~mm["a"]).sum()) == 2  # image 0 and the one that received image 0
    with pytest.raises(ValueError, match="unknown mix mode"):
        mix_batch(x, targets, masks, "blend", 1.0, gen, rng)


# --- budgets, distillation, plans ------------------------------------------------------------------------------------


def test_time_budget_shortens_the_schedule_and_keeps_the_best(fer, tmp_path):
    ds = load_fer2013(fer["csv"], fer["ferplus"])
    cfg = TrainConfig(out=str(tmp_path / "budget"), minutes=0.02, **dict(TINY, epochs=100000))
    lines: list[str] = []
    state = train(cfg, data=ds, log=lines.append)  # 1.2 seconds: at least the first epoch runs
    assert any("the schedule is shortened to" in line for line in lines), lines
    assert state["shortened"] and state["epoch"] == state["epochs"] < 100000
    assert (tmp_path / "budget" / "best_fer2013.pt").exists() and (tmp_path / "budget" / "last.pt").exists()
    lines.clear()
    again = train(cfg, data=ds, log=lines.append)  # a finished, shortened schedule stays finished
    assert again["epoch"] == state["epoch"] and not any(line.startswith("epoch ") for line in lines)


def test_budget_fits_the_remaining_epochs_into_the_time_left():
    state = {"epoch": 2, "epochs": 100}
    _fit_budget(state, [10.0, 12.0, 10.0], time.time() + 35, 100, lambda _: None)  # 3 more epochs of ~10 s fit
    assert state == {"epoch": 2, "epochs": 5, "shortened": True}
    # Faster than feared while warming up (the first epoch shared the machine): the schedule grows back ...
    slow_start = {"epoch": 2, "epochs": 20}
    _fit_budget(slow_start, [100.0, 10.0, 10.0], time.time() + 305, 100, lambda _: None)
    assert slow_start == {"epoch": 2, "epochs": 32, "shortened": True}
    _fit_budget(slow_start, [10.0], time.time() + 3600, 100, lambda _: None)  # ... never past --epochs
    assert slow_start == {"epoch": 2, "epochs": 100, "shortened": False}
    # ... but not once it is annealing: a longer curve would raise the learning rate again.
    annealing = {"epoch": 10, "epochs": 20}
    _fit_budget(annealing, [10.0], time.time() + 3600, 100, lambda _: None)
    assert annealing == {"epoch": 10, "epochs": 20}
    # Another job slowing every other epoch for a while does not cut the schedule: the median of the last seven
    # epochs is still the run's own pace (the median of the last three was 98 s here, which cut 90 epochs to 62).
    shared = {"epoch": 20, "epochs": 90}
    _fit_budget(shared, [60.0] * 17 + [98.0, 57.0, 110.0], time.time() + 70 * 60 + 5, 110, lambda _: None)
    assert shared == {"epoch": 20, "epochs": 90}
    lrs = [one_cycle_lr(s, 5 * 10, 0.05) for s in range(20, 51)]  # after the cut: the shorter curve to its end
    assert lrs[-1] == pytest.approx(0.05 / 1e4)


def test_soft_targets_distillation_and_export(fer, tmp_path):
    """Two tiny teachers -> stored ensemble probabilities -> a student distilled from them (stored and online),
    exported to a file the server's classifier accepts."""
    ds = load_fer2013(fer["csv"], fer["ferplus"])
    runs = []
    for seed, extra in ((1, {"mix": "cutmix"}), (2, {"mix": "mixup", "input_size": 44})):
        out = tmp_path / f"teacher{seed}"
        train(TrainConfig(out=str(out), seed=seed, **TINY, **extra), data=ds, log=lambda _: None)
        runs.append(str(out))
    npz = tmp_path / "teachers.npz"
    args = ["soft-targets", *runs, "--out", str(npz), "--data", str(fer["csv"]), "--ferplus", str(fer["ferplus"])]
    assert main(args) == 0
    report = json.loads(npz.with_suffix(".json").read_text())
    assert set(report["teachers"]) == set(runs) and set(report["ensemble"]) == {"fer2013", "ferplus"}
    probs = load_soft_targets(npz, ds, ["fer2013", "ferplus"])
    assert probs["fer2013"].shape == (len(ds.images), 7) and probs["ferplus"].shape == (len(ds.images), 8)
    np.testing.assert_allclose(probs["ferplus"].sum(1), 1.0, atol=2e-3)  # stored as float16

    lines: list[str] = []
    student = tmp_path / "student"
    train(TrainConfig(out=str(student), soft_targets=str(npz), mix="cutmix", **TINY), data=ds, log=lines.append)
    assert any(f"distilling from {npz}" in line for line in lines)
    online = tmp_path / "online"
    lines.clear()
    train(TrainConfig(out=str(online), teachers=runs, **TINY), data=ds, log=lines.append)
    assert any("distilling online from 2 teacher run(s)" in line for line in lines)
    for run in (student, online):
        path = export_onnx(run / "best_ferplus.pt", tmp_path / f"{run.name}.onnx", tta=False)
        clf = EmotionClassifier(path)  # loading runs the server's contract checks
        assert clf.labels == ds.labels["ferplus"]
        out = clf.infer(np.random.default_rng(0).integers(0, 256, (3, 40, 40), dtype=np.uint8))
        assert out.shape == (3, 8) and np.allclose(out.sum(1), 1.0, atol=1e-5)

    with pytest.raises(ValueError, match="not both"):
        train(TrainConfig(out=str(tmp_path / "x"), soft_targets=str(npz), teachers=runs, **TINY), data=ds)
    wrong = load_fer2013(fer["csv"], None)
    wrong.images = wrong.images[:-1]
    with pytest.raises(ValueError, match="soft targets for 48 images"):
        load_soft_targets(npz, wrong, ["fer2013"])


def test_an_exported_file_teaches_the_head_it_was_exported_from(fer, tmp_path):
    """A shipped .onnx (its checkpoint may be gone) is a stored-targets teacher: through the server's preprocessing
    it gives the same flip-averaged probabilities as its checkpoint, for its own head only."""
    ds = load_fer2013(fer["csv"], fer["ferplus"])
    runs = []
    for seed in (1, 2):
        out = tmp_path / f"teacher{seed}"
        train(TrainConfig(out=str(out), seed=seed, val_tta=True, **TINY), data=ds, log=lambda _: None)
        runs.append(out)
    # A tiny net is nearly flat; sharpen its head so that a face and its mirror image get clearly different
    # probabilities and the test sees whether the file's predictions are flip-averaged like a checkpoint's.
    ckpt = torch.load(runs[0] / "best_ferplus.pt", weights_only=False)
    ckpt["model"]["heads.ferplus.weight"] *= 200
    torch.save(ckpt, runs[0] / "best_ferplus.pt")
    model = export_onnx(runs[0] / "best_ferplus.pt", tmp_path / "teacher1_ferplus.onnx", tta=False)
    common = ["--data", str(fer["csv"]), "--ferplus", str(fer["ferplus"])]

    alone = tmp_path / "file.npz"
    assert main(["soft-targets", str(model), "--out", str(alone), *common]) == 0
    from_file = load_soft_targets(alone, ds, ["fer2013", "ferplus"])
    assert set(from_file) == {"ferplus"}  # a FER+ file does not teach the FER2013 head
    net, ckpt = load_checkpoint(runs[0] / "best_ferplus.pt")
    cfg = TrainConfig(**{k: v for k, v in ckpt["train_config"].items() if k in TrainConfig.__dataclass_fields__})
    with torch.no_grad():
        expected = predict(net, ds.images, dataclasses.replace(cfg, val_tta=True))["ferplus"]
        one_view = predict(net, ds.images, dataclasses.replace(cfg, val_tta=False))["ferplus"]
    assert np.abs(one_view - expected).max() > 0.01  # the mirror image matters to this net (5x the tolerance)
    np.testing.assert_allclose(from_file["ferplus"], expected, atol=2e-3)  # same resize; stored as float16

    mixed = tmp_path / "mixed.npz"
    assert main(["soft-targets", str(runs[1]), str(model), "--out", str(mixed), *common]) == 0
    both = load_soft_targets(mixed, ds, ["fer2013", "ferplus"])
    report = json.loads(mixed.with_suffix(".json").read_text())
    assert set(report["teachers"][str(model)]) == {"ferplus"} and set(report["teachers"][str(runs[1])]) == {
        "fer2013",
        "ferplus",
    }
    run2 = load_soft_targets(_soft_targets_of(runs[1], tmp_path, common), ds, ["ferplus"])["ferplus"]
    np.testing.assert_allclose(both["ferplus"], (run2 + from_file["ferplus"]) / 2, atol=2e-3)


def _soft_targets_of(run, tmp_path, common):
    path = tmp_path / f"{run.name}_alone.npz"
    assert main(["soft-targets", str(run), "--out", str(path), *common]) == 0
    return path


def test_a_plan_runs_teachers_soft_targets_and_student_in_one_command(packed, tmp_path, monkeypatch):
    plan_path = tmp_path / "plan.json"
    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    plan = {
        "defaults": {"data": "ignored.csv", **tiny},
        "steps": [
            {"train": {"out": str(tmp_path / "t1"), "seed": 1, "mix": "cutmix", "minutes": 1}},
            {"train": {"out": str(tmp_path / "t2"), "seed": 2, "widths": [8, 8, 16, 16]}},
            {"soft_targets": {"runs": [str(tmp_path / "t1"), str(tmp_path / "t2")], "out": str(tmp_path / "t.npz")}},
            {"train": {"out": str(tmp_path / "student"), "soft_targets": str(tmp_path / "t.npz")}},
        ],
        "collect": [str(tmp_path / "t.npz"), str(tmp_path / "student" / "best_ferplus.pt"), str(tmp_path / "nope")],
    }
    plan_path.write_text(json.dumps(plan))
    lines: list[str] = []
    back = tmp_path / "out"
    summary = run_plan(load_plan(plan_path), data=str(packed["path"]), log=lines.append, collect_into=back)
    assert [row["step"] for row in summary] == [1, 2, 3, 4]
    assert (tmp_path / "student" / "best_ferplus.pt").exists() and (tmp_path / "t.npz").exists()
    assert "ensemble" in summary[2] and summary[3]["epochs"] == 2
    # What a machine that is given back returns: the named files, flat and byte for byte, and every run's history.
    flat = lambda p: back / "_".join(Path(p).parts[1:])  # noqa: E731  (absolute paths here: no leading "/")
    assert sorted(f.name for f in back.iterdir()) == sorted(
        ["summary.json", flat(plan["collect"][0]).name, flat(plan["collect"][1]).name]
    )
    assert flat(plan["collect"][1]).read_bytes() == (tmp_path / "student" / "best_ferplus.pt").read_bytes()
    collected = json.loads((back / "summary.json").read_text())
    assert [len(row.get("history", [])) for row in collected] == [2, 2, 0, 2]
    # Collected after every step: after step 1 the soft targets did not exist yet and were not claimed.
    assert any(line.startswith("collected into") and "npz" not in line for line in lines)
    # Run again: every step is complete, nothing is retrained.
    lines.clear()
    run_plan(load_plan(plan_path), data=str(packed["path"]), steps="3-4", log=lines.append)
    assert not any(line.startswith("epoch ") for line in lines) and any("exists: skipped" in line for line in lines)

    plan["steps"].append({"train": {"out": "x", "learning_rate": 1}})
    plan_path.write_text(json.dumps(plan))
    with pytest.raises(ValueError, match=r"step 5 \(train\) has unknown keys \['learning_rate'\]"):
        load_plan(plan_path)
    plan_path.write_text(json.dumps({"steps": [], "colect": []}))
    with pytest.raises(ValueError, match=r"unknown top-level keys \['colect'\]"):
        load_plan(plan_path)


def test_parse_steps():
    assert parse_steps(None, 3) == [1, 2, 3]
    assert parse_steps("1-2,3", 3) == [1, 2, 3]
    assert parse_steps("2", 3) == [2]
    with pytest.raises(ValueError, match="steps 1..3"):
        parse_steps("2-4", 3)


def test_shipped_plans_are_valid():
    root = Path(__file__).resolve().parents[1] / "training" / "plans"
    plans = sorted(root.glob("*.json"))
    assert plans, root
    for path in plans:
        plan = load_plan(path)
        assert plan["steps"] and plan.get("description")


# --- int8 ------------------------------------------------------------------------------------------------------------


def test_quantize_writes_an_int8_file_the_server_accepts(fer, tmp_path, capsys):
    ds = load_fer2013(fer["csv"], fer["ferplus"])
    train(TrainConfig(out=str(tmp_path / "run"), **TINY), data=ds, log=lambda _: None)
    model = export_onnx(tmp_path / "run" / "best_ferplus.pt", tmp_path / "float.onnx", tta=False, crop_margin=0.2)
    data = ["--data", str(fer["csv"]), "--ferplus", str(fer["ferplus"])]
    out = tmp_path / "int8.onnx"
    assert main(["quantize", str(model), str(out), *data, "--max-drop", "100"]) == 0
    text = capsys.readouterr().out
    assert "float: PublicTest accuracy" in text and "int8 : PublicTest accuracy" in text
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Softmax"} <= ops
    clf, ref = EmotionClassifier(out), EmotionClassifier(model)  # the server's contract checks pass
    assert clf.spec.metadata["quantization"].startswith("int8") and clf.spec.crop_margin == 0.2
    assert "99.99th-percentile" in clf.spec.metadata["quantization"]  # the default activation ranges
    assert {k: v for k, v in clf.spec.metadata.items() if k != "quantization"} == ref.spec.metadata
    faces = ds.images[ds.split("PublicTest")][:, 4:44, 4:44]
    np.testing.assert_allclose(clf.infer(faces), ref.infer(faces), atol=0.1)  # close to the float model
    minmax = tmp_path / "minmax.onnx"
    assert main(["quantize", str(model), str(minmax), *data, "--max-drop", "100", "--calibration", "minmax"]) == 0
    assert "min-max" in EmotionClassifier(minmax).spec.metadata["quantization"]
    with pytest.raises(ValueError, match="unknown calibration"):
        quantize(model, tmp_path / "x.onnx", ds, "entropy")
    # A file that loses more than allowed is not written.
    refused = tmp_path / "refused.onnx"
    assert main(["quantize", str(model), str(refused), *data, "--max-drop", "-101"]) == 1
    assert not refused.exists() and "not written" in capsys.readouterr().out
