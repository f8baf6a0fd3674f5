"""The training package end to end on tiny data made here: load every format, reject malformed files with file, row
and reason, train both heads a couple of epochs and resume, export an ONNX file the server's own classifier accepts,
check torch/onnxruntime parity, evaluate, and search the crop margin on a real photo.

Everything runs on one thread with a network of a few thousand weights, so the whole file takes seconds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training package needs torch (pip install torch==2.13.0)")
onnx = pytest.importorskip("onnx", reason="the training package needs onnx (the [train] extra)")

from training_data import (  # noqa: E402
    FERPLUS_HEADER,
    write_csv,
    write_image_folder,
)

from server.classifier import FER2013_LANDMARKS, EmotionClassifier  # noqa: E402
from server.pipeline import crop_face  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.data import (  # noqa: E402
    FER2013_LABELS,
    FERPLUS_LABELS,
    DataError,
    ferplus_path,
    load_dataset,
    load_fer2013,
    load_image_folder,
    resize_faces,
)
from training.evaluate import (  # noqa: E402
    camera_fault,
    classification_report,
    evaluate_onnx,
    plot_learning_curves,
    split_faces,
)
from training.export import (  # noqa: E402
    FRAME,
    MARGINS,
    ZOOMS,
    choose_crop,
    export_onnx,
    measure_crops,
    parity_check,
    zoom_template,
)
from training.metadata import read_metadata, set_metadata  # noqa: E402
from training.model import EmotionNet, ExportWrapper, ModelConfig  # noqa: E402
from training.train import TrainConfig, load_checkpoint, predict, train  # noqa: E402

# export.py uses the TorchScript exporter on purpose (dynamo=False); torch 2.9+ warns about it on every export.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]
ROOT = Path(__file__).resolve().parent.parent
CONTRACT_KEYS = (
    "labels",
    "input_size",
    "channels",
    "mean",
    "std",
    "crop_margin",
    "dataset",
    "label_source",
    "metrics",
    "version",
    "created",
)
TINY = {"epochs": 2, "threads": 1, "batch_size": 16, "widths": (8, 16, 16, 16)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fer) -> dict:
    """Both heads (FER2013 labels and FER+ votes) on one backbone, two epochs."""
    out = tmp_path_factory.mktemp("run") / "joint"
    ds = load_fer2013(fer["csv"], fer["ferplus"])
    lines: list[str] = []
    cfg = TrainConfig(data=str(fer["csv"]), ferplus=str(fer["ferplus"]), out=str(out), **TINY)
    state = train(cfg, data=ds, log=lines.append)
    return {"out": out, "state": state, "log": lines, "ds": ds, "cfg": cfg}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained) -> dict[str, Path]:
    models = tmp_path_factory.mktemp("models")
    return {
        head: export_onnx(
            trained["out"] / f"best_{head}.pt",
            models / f"emotion_{head}.onnx",
            crop_margin=0.15,
            metrics={"PublicTest": {"accuracy": 0.5}},
        )
        for head in ("ferplus", "fer2013")
    }


# --- loading ---------------------------------------------------------------------------------------------------------


def test_fer2013_csv_plain_and_gzip_read_the_same(fer):
    plain, gz = load_fer2013(fer["csv"]), load_fer2013(fer["gz"])
    for ds in (plain, gz):
        np.testing.assert_array_equal(ds.images, fer["images"])
        assert ds.images.dtype == np.uint8 and ds.images.shape == (48, 48, 48)
        assert ds.labels["fer2013"] == FER2013_LABELS
        np.testing.assert_array_equal(ds.hard_labels("fer2013"), fer["labels"])
        # One-hot targets: FER2013 labels are hard.
        np.testing.assert_array_equal(ds.targets["fer2013"].sum(1), 1.0)
        assert ds.masks["fer2013"].all()
        for split in ("Training", "PublicTest", "PrivateTest"):
            np.testing.assert_array_equal(ds.split(split), np.flatnonzero(fer["usages"] == split))
        assert "ferplus" not in ds.targets
    assert [len(plain.split(s)) for s in ("Training", "PublicTest", "PrivateTest")] == [32, 8, 8]


def test_ferplus_votes_join_by_row(fer):
    ds = load_fer2013(fer["gz"], fer["ferplus"])
    assert (
        ds.labels["ferplus"]
        == FERPLUS_LABELS
        == ["neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt"]
    )
    targets, masks, hard = ds.targets["ferplus"], ds.masks["ferplus"], ds.hard_labels("ferplus")
    assert targets.shape == (48, 8) and targets.dtype == np.float32
    for i, (votes, usable, majority) in enumerate(fer["votes"]):
        assert masks[i] == usable, f"row {i + 2}: votes {votes}"
        assert hard[i] == majority, f"row {i + 2}: votes {votes}"
        emotion_votes = np.array(votes[:8], float)
        if emotion_votes.sum() > 0:
            # The distribution is over the eight emotions only: "unknown" and "NF" votes do not dilute it.
            np.testing.assert_allclose(targets[i], emotion_votes / emotion_votes.sum(), atol=1e-6)
    np.testing.assert_allclose(targets[1], [0.75, 0.25, 0, 0, 0, 0, 0, 0])
    # The FER2013 head keeps its own labels on the same rows.
    np.testing.assert_array_equal(ds.hard_labels("fer2013"), fer["labels"])
    assert ds.masks["fer2013"].all()


def test_image_folder_layout(tmp_path):
    written = write_image_folder(
        tmp_path / "faces",
        {"train": {"happy": 4, "sad": 3, "angry": 2}, "val": {"happy": 2, "sad": 1, "angry": 1}, "test": {"sad": 2}},
    )
    (tmp_path / "faces" / "train" / "happy" / "notes.txt").write_text("not an image, and not named like one")
    ds = load_image_folder(tmp_path / "faces")
    assert ds.labels["folder"] == ["angry", "happy", "sad"]  # sorted: the class order is reproducible
    assert ds.images.shape == (9 + 4 + 2, 48, 48)  # 64 px PNG and JPEG files, resized
    assert [len(ds.split(s)) for s in ("Training", "PublicTest", "PrivateTest")] == [9, 4, 2]
    assert {p.suffix for p in written["train"]} == {".png", ".jpg"}
    counts = np.bincount(ds.hard_labels("folder")[ds.split("Training")], minlength=3)
    assert counts.tolist() == [2, 4, 3]
    assert (ds.hard_labels("folder")[ds.split("PrivateTest")] == 2).all()
    # Same loader through the generic entry point the CLI uses.
    assert load_dataset("folder", tmp_path / "faces").labels == ds.labels


# --- malformed input: file, row, reason ------------------------------------------------------------------------------


def _fer_variant(tmp_path: Path, fer: dict, row: int, column: int, value: str) -> Path:
    """fer2013.csv with one cell replaced; `row` counts file lines (header = row 1)."""
    rows = [list(r) for r in fer["rows"]]
    rows[row - 2][column] = value
    return write_csv(tmp_path / "bad_fer2013.csv", ["emotion", "pixels", "Usage"], rows)


@pytest.mark.parametrize(
    ("row", "column", "value", "reason"),
    [
        (5, 1, " ".join(["7"] * 2303), "wrong pixel count 2303"),
        (9, 1, " ".join(["300"] * 2304), "outside 0..255"),
        (4, 1, " ".join(["x"] * 2304), "not integers"),
        (7, 0, "7", "unknown label 7"),
        (3, 0, "happy", "unknown label 'happy'"),
        (12, 2, "Validation", "unknown Usage 'Validation'"),
    ],
)
def test_fer2013_bad_row_names_file_row_and_reason(tmp_path, fer, row, column, value, reason):
    path = _fer_variant(tmp_path, fer, row, column, value)
    with pytest.raises(DataError) as err:
        load_fer2013(path)
    message = str(err.value)
    assert "bad_fer2013.csv" in message and f"row {row}:" in message and reason in message, message


def test_fer2013_wrong_columns(tmp_path, fer):
    missing = write_csv(tmp_path / "no_usage.csv", ["emotion", "pixels", "usage"], fer["rows"])
    with pytest.raises(DataError, match=r"no_usage\.csv, row 1: missing column 'Usage'"):
        load_fer2013(missing)
    rows = [list(r) for r in fer["rows"]]
    rows[20] = rows[20][:2]  # row 22 lost its Usage cell
    short = write_csv(tmp_path / "short_row.csv", ["emotion", "pixels", "Usage"], rows)
    with pytest.raises(DataError, match=r"short_row\.csv, row 22: expected 3 columns, found 2"):
        load_fer2013(short)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv, row 1: file is empty"):
        load_fer2013(empty)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_fer2013(tmp_path / "nowhere.csv")


def test_ferplus_header_wrong(tmp_path, fer):
    no_nf = write_csv(tmp_path / "plus_no_nf.csv", FERPLUS_HEADER[:-1], [r[:-1] for r in fer["plus_rows"]])
    with pytest.raises(DataError, match=r"plus_no_nf\.csv, row 1: missing column 'NF'"):
        load_fer2013(fer["csv"], no_nf)
    swapped = FERPLUS_HEADER.copy()
    # happiness before neutral: every vote would land on the wrong class
    swapped[2], swapped[3] = swapped[3], swapped[2]
    reordered = write_csv(tmp_path / "plus_order.csv", swapped, fer["plus_rows"])
    with pytest.raises(DataError, match=r"plus_order\.csv, row 1: columns .* are not in the order"):
        load_fer2013(fer["csv"], reordered)


def test_ferplus_bad_rows(tmp_path, fer):
    rows = [list(r) for r in fer["plus_rows"]]
    rows[4][5] = "many"
    bad_votes = write_csv(tmp_path / "plus_votes.csv", FERPLUS_HEADER, rows)
    with pytest.raises(DataError, match=r"plus_votes\.csv, row 6: vote counts are not numbers"):
        load_fer2013(fer["csv"], bad_votes)

    rows = [list(r) for r in fer["plus_rows"]]
    rows[40][0] = "Training"  # a PrivateTest row claims to be training data: the files do not describe the same images
    usage = write_csv(tmp_path / "plus_usage.csv", FERPLUS_HEADER, rows)
    message = r"plus_usage\.csv, row 42: Usage .Training. differs from .PrivateTest. in .*fer2013\.csv"
    with pytest.raises(DataError, match=message):
        load_fer2013(fer["csv"], usage)


def test_ferplus_row_count_mismatch(tmp_path, fer):
    short = write_csv(tmp_path / "plus_short.csv", FERPLUS_HEADER, fer["plus_rows"][:-3])
    with pytest.raises(DataError) as err:
        load_fer2013(fer["csv"], short)
    message = str(err.value)
    assert "plus_short.csv" in message and "fer2013.csv" in message, message
    assert "row-count mismatch" in message and "45 rows" in message and "48" in message, message
    assert "row 47" in message, message  # the first row one file has and the other lacks


def test_image_folder_errors(tmp_path):
    write_image_folder(tmp_path / "a", {"train": {"happy": 2, "sad": 2}, "val": {"happy": 1, "sad": 1}})
    fake = tmp_path / "a" / "val" / "sad" / "fake.png"
    fake.write_text("this is text, not a PNG")
    with pytest.raises(DataError) as err:
        load_image_folder(tmp_path / "a")
    assert "fake.png" in str(err.value) and "not a readable image" in str(err.value)

    write_image_folder(tmp_path / "b", {"train": {"happy": 2, "sad": 2}, "holdout": {"happy": 1}})
    with pytest.raises(DataError) as err:
        load_image_folder(tmp_path / "b")
    assert "holdout" in str(err.value) and "unknown split folder" in str(err.value) and "val" in str(err.value)

    write_image_folder(tmp_path / "c", {"val": {"happy": 2, "sad": 2}})
    with pytest.raises(DataError, match="no train/ folder"):
        load_image_folder(tmp_path / "c")

    write_image_folder(tmp_path / "d", {"train": {"happy": 2}})
    with pytest.raises(DataError, match="at least two emotion folders"):
        load_image_folder(tmp_path / "d")


# --- training and resume ---------------------------------------------------------------------------------------------


def test_train_writes_checkpoints_and_history(trained):
    out, state = trained["out"], trained["state"]
    assert {p.name for p in out.iterdir()} >= {"last.pt", "best_fer2013.pt", "best_ferplus.pt", "history.json"}
    assert {p.name for p in out.iterdir()} >= {"final_fer2013.pt", "final_ferplus.pt"}
    history = json.loads((out / "history.json").read_text())
    assert history == json.loads(json.dumps(state))
    assert history["epoch"] == 2 and [r["epoch"] for r in history["history"]] == [1, 2]
    for row in history["history"]:
        assert np.isfinite(row["train_loss"]) and row["train_loss"] > 0
        for head in ("fer2013", "ferplus"):
            assert 0.0 <= row[f"{head}_val_acc"] <= 1.0 and np.isfinite(row[f"{head}_val_loss"])
    for head in ("fer2013", "ferplus"):
        best = history["best"][head]
        assert best["epoch"] in (1, 2)
        assert best["accuracy"] == max(r[f"{head}_val_acc"] for r in history["history"])
        net, ckpt = load_checkpoint(out / f"best_{head}.pt")
        assert ckpt["head"] == head and ckpt["label_source"] == head
        assert ckpt["heads"] == {"fer2013": FER2013_LABELS, "ferplus": FERPLUS_LABELS}
        assert tuple(net.config.widths) == (8, 16, 16, 16)
        assert ckpt["epoch"] == best["epoch"] and ckpt["accuracy"] == best["accuracy"]
        # The schedule's end, as exportable as the best epoch: last.pt's weights, the last epoch's accuracy.
        _, final = load_checkpoint(out / f"final_{head}.pt")
        assert final["epoch"] == 2 and final["accuracy"] == history["history"][-1][f"{head}_val_acc"]
        last = torch.load(out / "last.pt", weights_only=False)["model"]
        assert all(torch.equal(final["model"][k], last[k]) for k in last)
    log = "\n".join(trained["log"])
    assert "data: 32 training, 8 PublicTest images; heads ['fer2013', 'ferplus']" in log
    assert "class weights ferplus" in log and "resumed" not in log


def test_compare_puts_runs_side_by_side_from_their_histories(tmp_path, trained, capsys):
    # The fixture's real run beside a made-up one whose FER+ head peaks early and ends lower: the best epoch and the
    # end of the schedule are told apart, per head.
    other = tmp_path / "other"
    other.mkdir()
    accs = [0.5, 0.9, 0.6, 0.7, 0.8]
    rows = [
        {"epoch": i + 1, "ferplus_val_acc": a, "ferplus_val_loss": 1.0, "train_loss": 1.0} for i, a in enumerate(accs)
    ]
    (other / "history.json").write_text(json.dumps({"epochs": 8, "history": rows}))  # 5 of 8 run so far
    assert main(["compare", str(trained["out"]), str(other), "--tail", "2", "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert (
        f"{other}: 5 epochs of 8 (unfinished: not annealed yet)  ferplus best 90.00% (epoch 2), last 2 mean 75.00%"
        in out
    )
    real = json.loads((trained["out"] / "history.json").read_text())["history"]
    mean = sum(r["fer2013_val_acc"] for r in real[-2:]) / 2
    assert f"fer2013 best {max(r['fer2013_val_acc'] for r in real):.2%}" in out and f"last 2 mean {mean:.2%}" in out
    assert _is_png(tmp_path / "c.png")
    assert f"{trained['out']}: 2 epochs  fer2013" in out  # finished: no mark
    with pytest.raises(ValueError, match="--tail must be at least 1"):
        main(["compare", str(other), "--tail", "0"])


def test_resume_continues_after_the_last_epoch(tmp_path, trained):
    out = tmp_path / "joint"
    shutil.copytree(trained["out"], out)
    before = json.loads((out / "history.json").read_text())
    lines: list[str] = []
    cfg = dataclasses.replace(trained["cfg"], out=str(out), epochs=3)
    state = train(cfg, data=trained["ds"], log=lines.append)
    log = "\n".join(lines)
    assert f"resumed from {out / 'last.pt'} after epoch 2" in log
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 1 and epoch_lines[0].startswith("epoch 3 "), log  # epochs 1-2 were not trained again
    assert [r["epoch"] for r in state["history"]] == [1, 2, 3]
    assert state["history"][:2] == before["history"]
    assert json.loads((out / "history.json").read_text())["epoch"] == 3


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, trained, ema):
    """A run killed during epoch 2 and restarted ends exactly where an uninterrupted run does (seeds, RNG state, and
    the moving average of the weights with --ema)."""
    ds, cfg = trained["ds"], dataclasses.replace(trained["cfg"], ema=ema)
    whole = train(dataclasses.replace(cfg, out=str(tmp_path / "whole")), data=ds, log=lambda _: None)

    class Interrupted(Exception):
        pass

    def die_in_epoch_2(line: str) -> None:
        if line.startswith("epoch 2 "):  # logged before epoch 2's checkpoint is written
            raise Interrupted

    with pytest.raises(Interrupted):
        train(dataclasses.replace(cfg, out=str(tmp_path / "cut")), data=ds, log=die_in_epoch_2)
    lines: list[str] = []
    resumed = train(dataclasses.replace(cfg, out=str(tmp_path / "cut")), data=ds, log=lines.append)
    assert any("after epoch 1" in line for line in lines)
    for a, b in zip(whole["history"], resumed["history"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key != "seconds":
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_ema_scores_and_saves_the_moving_average_of_the_weights(tmp_path, trained):
    """With --ema the checkpoints hold the moving average (batch-norm statistics included), which is what the
    history's val_acc scores; the trained weights are scored beside it and kept in last.pt to resume from."""
    ds = trained["ds"]
    cfg = dataclasses.replace(trained["cfg"], out=str(tmp_path / "ema"), ema=0.9, epochs=2)
    state = train(cfg, data=ds, log=lambda _: None)
    last = torch.load(tmp_path / "ema" / "last.pt", weights_only=False)
    final = torch.load(tmp_path / "ema" / "final_ferplus.pt", weights_only=False)
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert final["model"].keys() == averaged.keys() == last["model"].keys()
    for key, value in final["model"].items():
        torch.testing.assert_close(value, averaged[key])
    differs = [
        k for k in averaged if averaged[k].is_floating_point() and not torch.equal(averaged[k], last["model"][k])
    ]
    assert any(k.endswith("weight") for k in differs) and any(k.endswith("running_mean") for k in differs)

    row = state["history"][-1]
    assert {"ferplus_raw_val_acc", "fer2013_raw_val_acc"} <= row.keys()
    net, _ = load_checkpoint(tmp_path / "ema" / "final_ferplus.pt")
    probs = predict(net, ds.images[ds.split("PublicTest")], cfg)["ferplus"]
    truth = ds.hard_labels("ferplus")[ds.split("PublicTest")]
    assert float((probs.argmax(1) == truth)[truth >= 0].mean()) == pytest.approx(row["ferplus_val_acc"])
    # The learning curves draw such a run, after one without --ema (which has no raw accuracies), end to end.
    plain = json.loads((trained["out"] / "history.json").read_text())
    ema_history = json.loads((tmp_path / "ema" / "history.json").read_text())
    plot_learning_curves([plain, ema_history], tmp_path / "curves.png")
    assert cv2.imread(str(tmp_path / "curves.png")) is not None


# --- export -----------------------------------------------------------------------------------------------------------


def test_export_honours_the_model_contract(exported, trained):
    for head, path in exported.items():
        model = onnx.load(str(path))
        meta = {p.key: p.value for p in model.metadata_props}
        assert set(CONTRACT_KEYS) <= meta.keys(), set(CONTRACT_KEYS) - meta.keys()
        labels = FERPLUS_LABELS if head == "ferplus" else FER2013_LABELS
        assert json.loads(meta["labels"]) == labels
        assert meta["input_size"] == "40" and meta["channels"] == "1"
        assert json.loads(meta["mean"]) == [0.5] and json.loads(meta["std"]) == [0.25]
        assert float(meta["crop_margin"]) == 0.15
        assert meta["label_source"] == head
        assert meta["dataset"] == ("fer2013.csv + fer2013new.csv" if head == "ferplus" else "fer2013.csv")
        assert json.loads(meta["metrics"]) == {"PublicTest": {"accuracy": 0.5}}
        assert meta["version"] == "1"
        assert dt.datetime.fromisoformat(meta["created"]).tzinfo is not None

        # The real contract check: the server's classifier loads it (it validates every key against the graph and
        # runs a batch of two) and its preprocessing gives the same answer as the PyTorch model.
        classifier = EmotionClassifier(path)
        assert classifier.labels == labels and classifier.spec.input_size == (40, 40)
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.dim_value, "batch dimension must be dynamic"
        faces = np.random.default_rng(1).integers(0, 256, (5, 40, 40), dtype=np.uint8)
        probs = classifier.infer(faces)
        assert probs.shape == (5, len(labels))
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        net, _ = load_checkpoint(trained["out"] / f"best_{head}.pt")
        x = (torch.from_numpy(faces).float().unsqueeze(1) / 255 - 0.5) / 0.25
        with torch.no_grad():
            expected = ExportWrapper(net, head).eval()(x).numpy()
        np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_parity_check_catches_a_different_model(exported, trained):
    path = exported["ferplus"]
    net, _ = load_checkpoint(trained["out"] / "best_ferplus.pt")
    assert parity_check(ExportWrapper(net, "ferplus").eval(), path, 40) < 1e-4

    torch.manual_seed(123)
    heads = {"fer2013": 7, "ferplus": 8}
    other = EmotionNet(heads, ModelConfig(widths=(8, 16, 16, 16))).eval()
    with pytest.raises(RuntimeError, match="parity check failed"):
        parity_check(ExportWrapper(other, "ferplus").eval(), path, 40)
    # Without flip averaging the graph differs from the file too.
    with pytest.raises(RuntimeError, match="parity check failed"):
        parity_check(ExportWrapper(net, "ferplus", tta=False).eval(), path, 40)


# --- evaluation -------------------------------------------------------------------------------------------------------


def test_classification_report_known_values():
    truth = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    report = classification_report(truth, pred, ["a", "b", "c", "d"])
    assert report["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    pc = report["per_class"]
    assert pc["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert pc["b"] == {"precision": round(2 / 3, 4), "recall": 1.0, "f1": 0.8, "support": 2}
    assert pc["c"] == {"precision": 1.0, "recall": 0.5, "f1": round(2 / 3, 4), "support": 2}
    assert pc["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Macro-F1 averages the classes the split has ("d" has no images, so it is not counted as a zero).
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert report["images"] == 6


def _assert_consistent(report: dict, labels: list[str], truth: np.ndarray) -> None:
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (len(labels), len(labels)) and report["labels"] == labels
    assert cm.sum() == report["images"] == len(truth)
    assert [report["per_class"][name]["support"] for name in labels] == cm.sum(1).tolist()
    assert cm.sum(1).tolist() == np.bincount(truth, minlength=len(labels)).tolist()
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert 0.0 <= report["macro_f1"] <= 1.0


def test_evaluate_onnx_follows_the_ferplus_majority_protocol(exported, trained):
    ds = trained["ds"]
    report = evaluate_onnx(exported["ferplus"], ds, "PublicTest")
    truth = ds.hard_labels("ferplus")[ds.split("PublicTest")]
    # PublicTest is rows 34-41: unknown-wins, NF-wins and tied rows have no majority label and are dropped.
    assert (truth < 0).sum() == 3 and report["dropped_rows"] == 3
    _assert_consistent(report, FERPLUS_LABELS, truth[truth >= 0])
    assert report["label_source"] == "ferplus" and report["split"] == "PublicTest"

    report = evaluate_onnx(exported["fer2013"], ds, "PrivateTest")
    _assert_consistent(report, FER2013_LABELS, ds.hard_labels("fer2013")[ds.split("PrivateTest")])
    assert report["dropped_rows"] == 0


def _is_png(path: Path) -> bool:
    image = cv2.imread(str(path))
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image is not None and min(image.shape[:2]) > 100


def test_evaluate_cli_writes_metrics_and_plots(tmp_path, exported, trained, fer, capsys):
    out = tmp_path / "ferplus"
    rc = main(
        [
            "evaluate",
            str(exported["ferplus"]),
            "--data",
            str(fer["gz"]),
            "--ferplus",
            str(fer["ferplus"]),
            "--history",  # a run and a fine-tune of it: drawn one after the other
            str(trained["out"] / "history.json"),
            str(trained["out"] / "history.json"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "images", "dropped_rows"} <= metrics.keys()
    ds = trained["ds"]
    truth = ds.hard_labels("ferplus")[ds.split("PublicTest")]
    _assert_consistent(metrics, FERPLUS_LABELS, truth[truth >= 0])
    assert _is_png(out / "confusion_matrix.png") and _is_png(out / "learning_curves.png")
    assert _is_png(out / "reliability.png")
    cal = metrics["calibration"]
    assert sum(b["faces"] for b in cal["bins"]) == metrics["images"]  # every face in one confidence bin
    assert sum(b["faces"] * b["accuracy"] for b in cal["bins"]) == pytest.approx(
        metrics["accuracy"] * metrics["images"]
    )
    # The same faces made small: a share right per side, printed too.
    assert set(metrics["small_faces"]) == {"32", "24", "16"}
    assert all(0 <= v <= 1 for v in metrics["small_faces"].values())
    # The same faces as a poor camera gives them: a share right per fault, printed too.
    assert set(metrics["camera_faults"]) == {"dark", "low_contrast", "noise", "blur", "jpeg"}
    assert all(0 <= v <= 1 for v in metrics["camera_faults"].values())
    text = capsys.readouterr().out
    assert f"accuracy {metrics['accuracy']:.4f}" in text
    assert f"16 px {metrics['small_faces']['16']:.1%}" in text
    assert f"jpeg {metrics['camera_faults']['jpeg']:.1%}" in text


def test_robustness_benchmark_prints_and_draws_what_evaluate_measures(tmp_path, exported, trained, fer):
    reports = {head: evaluate_onnx(exported[head], trained["ds"], "PublicTest") for head in ("ferplus", "fer2013")}
    bench = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/bench_robustness.py"),
            str(exported["ferplus"]),
            str(exported["fer2013"]),
        ]
        + ["--data", str(fer["gz"]), "--ferplus", str(fer["ferplus"]), "--plot", str(tmp_path / "robustness.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bench.returncode == 0, bench.stderr
    assert "clean | 32 px | 24 px | 16 px | dark | low_contrast | noise | blur | jpeg" in bench.stdout
    for head, r in reports.items():
        row = [r["accuracy"], *r["small_faces"].values(), *r["camera_faults"].values()]
        assert f"{exported[head]}: " + " | ".join(f"{100 * v:.1f}" for v in row) in bench.stdout
    assert _is_png(tmp_path / "robustness.png") and (tmp_path / "robustness.png").stat().st_size > 10_000


def test_small_faces_are_shrunk_then_enlarged_as_the_server_enlarges_a_small_crop(exported, trained):
    spec = EmotionClassifier(exported["ferplus"]).spec
    ds = trained["ds"]
    _, faces, truth, _ = split_faces(spec, ds, "PublicTest", side=16)
    _, full, _, _ = split_faces(spec, ds, "PublicTest")
    assert faces.shape == full.shape == (len(truth), 40, 40)
    source = ds.images[ds.split("PublicTest")][ds.hard_labels("ferplus")[ds.split("PublicTest")] >= 0][0]
    small = cv2.resize(source, (16, 16), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(faces[0], cv2.resize(small, (40, 40), interpolation=cv2.INTER_LINEAR))
    # What the server does with a 16 px face in a photo: the same input.
    photo = np.full((100, 100), 128, np.uint8)
    photo[30:46, 40:56] = small
    np.testing.assert_array_equal(crop_face(photo, (40, 30, 16, 16), 0.0, 40, 1), faces[0])


def test_camera_faults_darken_flatten_add_noise_blur_and_compress_each_face():
    rng = np.random.default_rng(1)
    # Faces with structure: a gradient with a bright blob, plus texture, so each fault shows in its own statistic.
    yy, xx = np.mgrid[:48, :48]
    base = 40 + 3 * xx + 80 * np.exp(-((yy - 20) ** 2 + (xx - 24) ** 2) / 60.0)
    faces = np.clip(base[None] + rng.normal(0, 4, (6, 48, 48)), 0, 255).astype(np.uint8)
    detail = lambda f: np.abs(np.diff(f - base, axis=2)).mean()  # noqa: E731  (the texture, not the gradient)
    dark, flat = camera_fault(faces, "dark"), camera_fault(faces, "low_contrast")
    assert dark.dtype == np.uint8 and dark.shape == faces.shape
    assert dark.mean() < 0.6 * faces.mean()
    assert flat.std((1, 2)).mean() == pytest.approx(0.4 * faces.std((1, 2)).mean(), rel=0.05)
    assert abs(flat.mean() - faces.mean()) < 1
    noisy = camera_fault(faces, "noise")
    assert np.array_equal(noisy, camera_fault(faces, "noise"))  # seeded: every evaluation sees the same noise
    assert (noisy.astype(float) - faces).std() == pytest.approx(15, rel=0.1)
    assert detail(camera_fault(faces, "blur")) < 0.5 * detail(faces)
    jpeg = camera_fault(faces, "jpeg")
    assert jpeg.shape == faces.shape and 0 < np.abs(jpeg.astype(float) - faces).mean() < 20
    with pytest.raises(ValueError, match="unknown camera fault 'fog'"):
        camera_fault(faces, "fog")


def test_metadata_is_updated_in_place_and_the_data_arguments_read_the_same_everywhere(exported, tmp_path):
    path = tmp_path / "copy.onnx"
    shutil.copy(exported["ferplus"], path)
    before = read_metadata(onnx.load(str(path)))
    set_metadata(path, version="9.9", note="x")
    after = read_metadata(onnx.load(str(path)))
    assert after == before | {"version": "9.9", "note": "x"}
    EmotionClassifier(path)  # still honours the contract
    assert ferplus_path("none") is None and ferplus_path("") is None and ferplus_path("a.csv") == "a.csv"
    assert ferplus_path(str(tmp_path / "missing.csv"), missing_ok=True) is None
    assert ferplus_path(str(path), missing_ok=True) == str(path)


def test_calibration_error_on_known_cases():
    from training.evaluate import calibration_error

    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    sure = np.tile([0.9, 0.1], (10, 1))  # always class 0 at 90%: right 4 times in 10
    r = calibration_error(sure, truth)
    assert r["ece"] == pytest.approx(0.5) and r["mean_confidence"] == pytest.approx(0.9)
    assert r["bins"] == [{"faces": 10, "confidence": 0.9, "accuracy": 0.4}]
    honest = np.array([[0.55, 0.45]] * 4 + [[0.45, 0.55]] * 6)  # right every time at 55%: underconfident by 0.45
    assert calibration_error(honest, truth)["ece"] == pytest.approx(0.45)
    mixed = np.array([[1.0, 0.0]] * 4 + [[0.5, 0.5]] * 2 + [[0.0, 1.0]] * 4)  # ties go to class 0: wrong at 50%
    r = calibration_error(mixed, truth)
    assert r["ece"] == pytest.approx(0.2 * 0.5) and len(r["bins"]) == 2


def test_calibrate_puts_a_fitted_temperature_in_the_graph(tmp_path, trained, fer):
    """`training calibrate` fits one temperature on PublicTest and divides the logits by it before the graph's
    softmax: a single-view file then gives exactly softmax(log p / T), labels unchanged; the two ways a graph can
    average with the mirror image (one softmax per view from `export`, one over both from `tta`) fit the same T."""
    from training.calibrate import softmax_inputs

    checkpoint = trained["out"] / "best_ferplus.pt"
    plain = export_onnx(checkpoint, tmp_path / "plain.onnx", tta=False)
    exported = export_onnx(checkpoint, tmp_path / "exported_tta.onnx", tta=True)
    added = tmp_path / "added_tta.onnx"
    assert main(["tta", str(plain), str(added)]) == 0
    data = ["--data", str(fer["csv"]), "--ferplus", str(fer["ferplus"])]
    reports = {}
    for path in (plain, exported, added):
        out = tmp_path / f"calibrated_{path.name}"
        assert main(["calibrate", str(path), str(out), *data]) == 0
        reports[path.name] = json.loads(EmotionClassifier(out).spec.metadata["calibration"])
    t = reports["plain.onnx"]["temperature"]
    assert t != 1 and 0.05 <= t <= 20
    assert reports["exported_tta.onnx"]["temperature"] == pytest.approx(
        reports["added_tta.onnx"]["temperature"], rel=1e-3
    )
    assert reports["plain.onnx"]["accuracy"][0] == reports["plain.onnx"]["accuracy"][1]  # one view: same labels

    faces = np.random.default_rng(0).integers(0, 256, (16, 40, 40), dtype=np.uint8)
    old, new = EmotionClassifier(plain).infer(faces), EmotionClassifier(tmp_path / "calibrated_plain.onnx").infer(faces)
    expected = np.exp(np.log(old) / t)
    np.testing.assert_allclose(new, expected / expected.sum(1, keepdims=True), atol=1e-5)
    assert (new.argmax(1) == old.argmax(1)).all()
    views = [softmax_inputs(EmotionClassifier(p), faces).shape for p in (exported, added)]
    assert views[0] == views[1] == (2, 16, 8)

    # The fit minimises the negative log-likelihood on PublicTest: no worse than leaving T at 1.
    ds = trained["ds"]
    truth = ds.hard_labels("ferplus")[ds.split("PublicTest")]
    images = ds.images[ds.split("PublicTest")][truth >= 0]
    truth = truth[truth >= 0]
    nll = {
        name: -np.log(EmotionClassifier(path).infer(resize_faces(images, 40, 40))[np.arange(len(truth)), truth]).mean()
        for name, path in (("before", plain), ("after", tmp_path / "calibrated_plain.onnx"))
    }
    assert nll["after"] <= nll["before"] + 1e-6
    with pytest.raises(ValueError, match="already calibrated"):
        main(["calibrate", str(tmp_path / "calibrated_plain.onnx"), str(tmp_path / "twice.onnx"), *data])


def test_ship_runs_every_step_from_checkpoint_to_served_file(tmp_path, trained, fer, yunet_path, astronaut_bgr, capsys):
    """`training ship` is export -> int8 -> crop search on photos -> calibrate -> evaluate --record in one command:
    the file it writes is int8, flip-averaging, framed by the crop the search chose, calibrated, and carries the
    PublicTest score `evaluate` gives it; its report lands beside it, named by its labels. A step that fails leaves
    OUT unwritten."""
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    cv2.imwrite(str(photos / "images" / "astronaut.jpg"), astronaut_bgr)
    cv2.imwrite(str(photos / "images" / "mirrored.png"), astronaut_bgr[:, ::-1])
    (photos / "labels.csv").write_text("file,emotion\nastronaut.jpg,happy\nmirrored.png,happy\n")
    data = ["--data", str(fer["csv"]), "--ferplus", str(fer["ferplus"])]
    checkpoint = str(trained["out"] / "best_ferplus.pt")
    out = tmp_path / "models" / "emotion_ferplus.onnx"
    args = [
        "ship",
        checkpoint,
        str(out),
        "--version",
        "9.1",
        *data,
        "--photos",
        str(photos),
        "--yunet",
        str(yunet_path),
    ]
    assert main([*args, "--max-drop", "100"]) == 0
    text = capsys.readouterr().out
    assert [f"{i}/5" in text for i in range(1, 6)] == [True] * 5 and "chosen: align" in text

    spec = EmotionClassifier(out).spec  # the server's contract checks pass
    meta = spec.metadata
    assert meta["version"] == "9.1" and meta["tta"] == "flip" and meta["label_source"] == "ferplus"
    assert meta["quantization"].startswith("int8")
    assert meta["align"] in ("none", "eyes", "landmarks") and len(json.loads(meta["margin_search"])) > len(MARGINS)
    assert 0.05 <= json.loads(meta["calibration"])["temperature"] <= 20
    report = evaluate_onnx(out, trained["ds"])
    assert json.loads(meta["metrics"])["PublicTest"]["accuracy"] == round(report["accuracy"], 4)
    written = json.loads((out.parent / "ferplus" / "metrics.json").read_text())
    assert written["accuracy"] == report["accuracy"] and written["model"] == str(out)
    for picture in ("confusion_matrix.png", "reliability.png", "learning_curves.png"):  # the run's history.json too
        assert (out.parent / "ferplus" / picture).stat().st_size > 1000

    # int8 refused (it may lose no points, and must gain 101): the float file goes on; no photos: the margin stays.
    floated = tmp_path / "float_shipped.onnx"
    assert (
        main(["ship", checkpoint, str(floated), "--version", "9.2", *data, "--photos", "none", "--max-drop", "-101"])
        == 0
    )
    assert "the float file goes on" in capsys.readouterr().out
    meta = EmotionClassifier(floated).spec.metadata
    assert "quantization" not in meta and "margin_search" not in meta and "calibration" in meta

    # A step that fails (the crop search's detector file is missing) writes nothing.
    failed = tmp_path / "failed.onnx"
    with pytest.raises(FileNotFoundError, match="no such YuNet file"):
        main(
            [
                "ship",
                checkpoint,
                str(failed),
                "--version",
                "9.3",
                *data,
                "--photos",
                str(photos),
                "--yunet",
                "nope.onnx",
            ]
        )
    assert not failed.exists()
    with pytest.raises(FileNotFoundError, match="no labels.csv"):
        main(["ship", checkpoint, str(failed), "--version", "9.3", *data, "--photos", str(tmp_path)])


# --- crop margin on a real photo --------------------------------------------------------------------------------------


def test_flip_averaging_added_to_an_exported_file_matches_the_exported_one(tmp_path, trained):
    """`training tta` turns a file exported without flip averaging into one that averages in the graph, equal to
    exporting with it, and the attack interpreter still reproduces the graph."""
    from training.onnx_torch import OnnxModule
    from training.onnx_torch import parity_check as interpreter_parity

    checkpoint = trained["out"] / "best_ferplus.pt"
    plain = export_onnx(checkpoint, tmp_path / "plain.onnx", tta=False)
    with_tta = export_onnx(checkpoint, tmp_path / "with_tta.onnx", tta=True)
    out = tmp_path / "added.onnx"
    assert main(["tta", str(plain), str(out)]) == 0
    faces = np.random.default_rng(0).integers(0, 256, (5, 40, 40), dtype=np.uint8)
    added, exported, one_view = (EmotionClassifier(p) for p in (out, with_tta, plain))
    assert added.spec.metadata["tta"] == "flip" and added.spec.labels == one_view.spec.labels
    np.testing.assert_allclose(added.infer(faces), exported.infer(faces), atol=1e-5)
    assert np.abs(added.infer(faces) - one_view.infer(faces)).max() > 1e-4  # it changed the output, 10x the tolerance
    np.testing.assert_allclose(added.infer(faces[:1]), exported.infer(faces[:1]), atol=1e-5)  # batch of one
    x = np.random.default_rng(1).normal(0, 1, (4, 1, 40, 40)).astype(np.float32)
    assert interpreter_parity(OnnxModule(out), out, x) < 1e-5
    with pytest.raises(ValueError, match="already averages"):
        main(["tta", str(out), str(tmp_path / "twice.onnx")])

    # from opset 18 on, ReduceMean takes its axes as an input
    import onnx
    from onnx import version_converter

    newer = tmp_path / "opset18.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(plain)), 18), str(newer))
    assert main(["tta", str(newer), str(newer)]) == 0
    np.testing.assert_allclose(EmotionClassifier(newer).infer(faces), exported.infer(faces), atol=1e-5)


def test_margin_search_on_labelled_photos(tmp_path, exported, trained, yunet_path):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the astronaut photo")
    astronaut = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    cv2.imwrite(str(photos / "images" / "astronaut.jpg"), astronaut)
    cv2.imwrite(str(photos / "images" / "mirrored.png"), astronaut[:, ::-1])
    cv2.imwrite(str(photos / "images" / "small.jpg"), cv2.resize(astronaut, (320, 320), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(photos / "images" / "blank.png"), np.full((200, 200, 3), 127, np.uint8))  # no face to find
    (photos / "labels.csv").write_text(
        "file,emotion\nastronaut.jpg,happy\nmirrored.png,happy\nsmall.jpg,neutral\nblank.png,sad\n"
        "astronaut.jpg,contempt\n"  # not a FER2013 label: skipped by the 7-class model
    )
    margins = (0.0, 0.1, 0.25)
    results = measure_crops(exported["fer2013"], photos, yunet=None, margins=margins)
    assert list(results) == [("none", m) for m in margins]
    for r in results.values():
        assert r["photos"] == 4 and r["faces"] == 3  # Haar finds the astronaut three times, nothing in the blank
        assert r["accuracy_detected"] in (0.0, 1 / 3, 2 / 3, 1.0)
        assert r["accuracy"] == pytest.approx(r["accuracy_detected"] * 3 / 4)  # the blank photo counts as wrong
        assert set(r["recall"]) == {"happy", "neutral"}
        cm = np.array(r["confusion_matrix"])
        assert cm.shape == (7, 7) and cm.sum() == 3 and np.trace(cm) == round(r["accuracy_detected"] * 3)
        assert cm[r["labels"].index("happy")].sum() == 2 and cm[r["labels"].index("neutral")].sum() == 1

    # The benchmark script prints the same numbers for the file's own margin, and draws the confusion matrix.
    at = measure_crops(exported["fer2013"], photos, yunet=None, margins=(0.15,))[("none", 0.15)]  # its own margin
    bench = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "benchmarks/bench_photos.py"), str(exported["fer2013"])]
        + ["--photos", str(photos), "--yunet", "none", "--plot", str(tmp_path / "plots")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bench.returncode == 0, bench.stderr
    assert f"accuracy {at['accuracy']:.1%} of 4 photos (3 with a face)" in bench.stdout
    # ... and on the photos in a grey frame (where Haar, on a copy shrunk to its limit, finds fewer of the faces).
    framed = measure_crops(exported["fer2013"], photos, yunet=None, own_crop=True, frame=FRAME)[("own", 0.0)]
    assert framed["photos"] == 4 and 1 <= framed["faces"] <= 3
    assert f"in a grey frame ({FRAME:g} of the longer side each way): accuracy {framed['accuracy']:.1%}" in bench.stdout
    # ... and per image size: the two 512x512 photos, the 320x320 one, the blank 200x200 one (no face: wrong).
    files = [f for f, *_ in at["per_photo"]]
    assert files == ["astronaut.jpg", "mirrored.png", "small.jpg", "blank.png"] and at["per_photo"][3][2:] == (None, 0)
    hits = [pred == label for _, label, pred, _ in at["per_photo"]]
    confidence = [c for *_, c in at["per_photo"]]
    assert all(0 < c <= 1 for c in confidence[:3])
    assert f"512x512: accuracy {sum(hits[:2]) / 2:.1%} of 2 photos, mean confidence {sum(confidence[:2]) / 2:.1%}" in (
        bench.stdout
    )
    assert f"320x320: accuracy {hits[2]:.1%} of 1 photos, mean confidence {confidence[2]:.1%}" in bench.stdout
    assert "200x200: accuracy 0.0% of 1 photos, mean confidence 0.0%; recall sad 0.00 (1)" in bench.stdout
    assert (tmp_path / "plots" / f"{exported['fer2013'].stem}_photos.png").stat().st_size > 5000

    # Through the CLI: the best margin is written into the file, with the whole search for the record.
    out = tmp_path / "emotion_fer2013.onnx"
    assert main(["export", str(trained["out"] / "best_fer2013.pt"), str(out), "--photos", str(photos)]) == 0
    meta = EmotionClassifier(out).spec.metadata
    search = json.loads(meta["margin_search"])  # "align/margin": [accuracy as given, accuracy framed]
    assert set(search) == {f"none/{m:g}" for m in MARGINS} and meta["align"] == "none"  # Haar: no landmarks
    assert all(len(v) == 2 and 0 <= min(v) <= max(v) <= 1 for v in search.values())
    assert sum(search[f"none/{meta['crop_margin']}"]) == max(sum(v) for v in search.values())
    # With YuNet, landmark-framed crops are measured at every zoom beside the plain ones, and the file says which
    # won; a landmarks file keeps the best plain margin for faces without landmarks. Without YuNet: refused.
    choose_crop(out, photos, str(yunet_path), align="landmarks")
    spec = EmotionClassifier(out).spec
    search = {tuple(k.split("/")): sum(v) for k, v in json.loads(spec.metadata["margin_search"]).items()}
    assert set(search) == {("none", f"{m:g}") for m in MARGINS} | {("landmarks", f"{z:g}") for z in ZOOMS}
    zoom = max((k for k in search if k[0] == "landmarks"), key=search.get)[1]
    assert spec.align == "landmarks" and np.allclose(spec.face_template, zoom_template(FER2013_LANDMARKS, float(zoom)))
    assert search[("none", f"{spec.crop_margin:g}")] == max(v for k, v in search.items() if k[0] == "none")
    choose_crop(out, photos, str(yunet_path), align="none")  # chosen again: the template goes with the alignment
    assert "face_template" not in EmotionClassifier(out).spec.metadata
    with pytest.raises(ValueError, match="needs YuNet"):
        choose_crop(out, photos, None, align="landmarks")
    with pytest.raises(FileNotFoundError):
        choose_crop(out, photos, str(tmp_path / "no-yunet.onnx"))
    # The file records the PublicTest accuracy of the epoch it was exported from, best_ or final_.
    for name in ("best_fer2013.pt", "final_fer2013.pt"):
        assert main(["export", str(trained["out"] / name), str(out), "--no-tta"]) == 0
        recorded = json.loads(EmotionClassifier(out).spec.metadata["metrics"])["PublicTest"]["accuracy"]
        assert recorded == round(torch.load(trained["out"] / name, weights_only=False)["accuracy"], 4)


# --- command line -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("train", ["resumes from OUT/last.pt", "--source folder", "'none' to skip", "--epochs", "--widths"]),
        ("export", ["ONNX", "parity", "--photos", "--yunet", "--margin", "checkpoint"]),
        ("evaluate", ["server's classifier", "metrics.json", "confusion_matrix.png", "--history", "--split"]),
    ],
)
def test_subcommand_help(command, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    for word in words:
        assert word in text, f"{command} --help does not mention {word!r}"


def test_command_line_reports_a_bad_input_in_one_line(tmp_path):
    missing = tmp_path / "no.csv"
    result = subprocess.run(
        [sys.executable, "-m", "training", "evaluate", "models/emotion_ferplus.onnx", "--data", str(missing)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"python -m training: error: {missing}: no such file"]


def test_command_line_without_torch_says_how_to_install_it():
    """`emotion-train` is installed with the service, whose install has no torch: it says what to install."""
    block_torch = "import sys; sys.modules['torch'] = None; sys.argv = ['emotion-train', 'train', '--help']; "
    result = subprocess.run(
        [sys.executable, "-c", block_torch + "from training.__main__ import cli; sys.exit(cli())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("emotion-train: error: the training package needs torch") and "[train]" in line


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "training", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in ("train", "export", "evaluate"))


def test_cli_trains_exports_and_evaluates_an_image_folder(tmp_path, capsys):
    """The documented path for users' own data: --source folder --data ROOT --ferplus none."""
    write_image_folder(
        tmp_path / "faces",
        {"train": {"happy": 8, "neutral": 8, "sad": 8}, "val": {"happy": 3, "neutral": 3, "sad": 2}},
    )
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--source",
                "folder",
                "--data",
                str(tmp_path / "faces"),
                "--ferplus",
                "none",
                "--out",
                str(run),
                "--epochs",
                "1",
                "--threads",
                "1",
                "--batch-size",
                "16",
                "--widths",
                "8",
                "16",
                "16",
                "16",
            ]
        )
        == 0
    )
    assert (run / "best_folder.pt").is_file()
    model = tmp_path / "emotion_folder.onnx"
    assert main(["export", str(run / "best_folder.pt"), str(model), "--no-tta", "--margin", "0.2"]) == 0
    spec = EmotionClassifier(model).spec
    assert spec.labels == ["happy", "neutral", "sad"] and spec.crop_margin == 0.2
    assert spec.metadata["label_source"] == "folder" and spec.metadata["tta"] == "none"
    # The history beside the checkpoint becomes the file's PublicTest metric.
    best = json.loads((run / "history.json").read_text())["best"]["folder"]["accuracy"]
    assert json.loads(spec.metadata["metrics"]) == {"PublicTest": {"accuracy": round(best, 4)}}
    assert (
        main(
            [
                "evaluate",
                str(model),
                "--source",
                "folder",
                "--data",
                str(tmp_path / "faces"),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    _assert_consistent(metrics, ["happy", "neutral", "sad"], np.array([0] * 3 + [1] * 3 + [2] * 2))
    assert not (tmp_path / "eval" / "learning_curves.png").exists()  # only with --history


def test_checkpoint_selection_scores_what_the_exported_file_computes():
    # Without --val-tta the PublicTest probabilities are the plain forward pass (as a --no-tta file's); with it,
    # the mean of the face and its mirror image (as in-graph TTA).
    import numpy as np
    import torch
    from torch.nn import functional as F

    from training.model import EmotionNet
    from training.train import TrainConfig, predict, to_input

    torch.manual_seed(0)
    net = EmotionNet({"fer2013": 7}).eval()
    images = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    x = to_input(images, 40, 0.5, 0.25)
    with torch.no_grad():
        plain = F.softmax(net(x)["fer2013"], 1).numpy()
        mirrored = F.softmax(net(torch.flip(x, dims=[3]))["fer2013"], 1).numpy()
    np.testing.assert_allclose(predict(net, images, TrainConfig())["fer2013"], plain, atol=1e-6)
    tta = predict(net, images, TrainConfig(val_tta=True))["fer2013"]
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-6)
    assert np.abs(tta - plain).max() > 1e-6  # the mirror image does change the answer (an untrained net: barely)
