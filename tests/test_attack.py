"""`python -m training attack`: the ONNX->torch interpreter against onnxruntime, the differentiable crop against the
server's crop_face, the budget search, a real attack on a real photo through the server's own pipeline (shipped
model and a tiny one), and `--eval` on the synthetic FER files the training tests use."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the attack needs torch (pip install torch==2.13.0)")
onnx = pytest.importorskip("onnx", reason="the attack needs onnx (the [train] extra)")

from conftest import SHIPPED_MODEL, build_onnx_model, make_settings  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from training_data import write_fer_pair  # noqa: E402

from server.pipeline import EmotionPipeline, crop_face, decode_image, square_box  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.attack import (  # noqa: E402
    AttackError,
    CropGraph,
    DifferentiableClassifier,
    PhotoAttacker,
    difference_image,
    predict_face,
    resize_matrix,
    search_smallest,
    server_interpolation,
)
from training.evaluate import evaluate_onnx  # noqa: E402
from training.model import EmotionNet, ExportWrapper, ModelConfig  # noqa: E402
from training.onnx_torch import QUANTIZED_ATOL, OnnxModule, UnsupportedModelError, parity_check  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """conftest's contract-honouring linear model (Flatten -> MatMul -> Add -> Softmax, 48x48 gray, FER+ labels)."""
    return build_onnx_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx", seed=3)


def _quiet(_: str) -> None:
    pass


# --- the interpreter ---------------------------------------------------------------------------------------------


def _random_inputs(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, c, h, w)).astype(np.float32)


@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="the shipped model is not in models/")
@pytest.mark.parametrize("name", ["emotion_ferplus.onnx", "emotion_fer2013.onnx"])
def test_interpreter_matches_onnxruntime_on_the_shipped_models(name):
    path = SHIPPED_MODEL.parent / name
    module = OnnxModule(path)
    atol = QUANTIZED_ATOL if module.quantized else 1e-4  # int8 files: fake quantisation vs integer kernels
    diff = parity_check(module, path, _random_inputs(8, 1, 40, 40), atol=atol)
    assert diff < atol
    # and it has input gradients, the point of the exercise
    x = torch.from_numpy(_random_inputs(2, 1, 40, 40)).requires_grad_()
    module(x)[:, 0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_interpreter_matches_onnxruntime_on_an_exported_flip_tta_graph(tmp_path):
    """The training package's own export with in-graph flip TTA (Slice with step -1, Add, Mul, Constant)."""
    torch.manual_seed(0)
    net = EmotionNet({"ferplus": 8}, ModelConfig(widths=(8, 16, 16, 16))).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so folding them into Conv is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    buf = io.BytesIO()
    torch.onnx.export(
        ExportWrapper(net, "ferplus", tta=True).eval(),
        torch.zeros(1, 1, 40, 40),
        buf,
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    path = tmp_path / "tta.onnx"
    path.write_bytes(buf.getvalue())
    assert "Slice" in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert parity_check(OnnxModule(path), path, _random_inputs(6, 1, 40, 40)) < 1e-5


def _residual_graph(path: Path, extra_op: str | None = None) -> Path:
    """A hand-made residual block: Conv (asymmetric pads) -> BatchNormalization -> Relu -> Add(skip) -> Mul -> Concat
    -> AveragePool -> ReduceMean -> Reshape -> Gemm -> Softmax, what a new architecture could bring."""
    rng = np.random.default_rng(1)

    def init(name: str, shape: tuple[int, ...], lo: float = -0.5, hi: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(lo, hi, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 0, 1, 2]),
        helper.make_node("Conv", ["input", "w2"], ["c2"], kernel_shape=[1, 2], pads=[0, 0, 0, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mu", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Add", ["r", "c2"], ["res"]),
        helper.make_node("Mul", ["res", "scale"], ["m"]),
        helper.make_node("Concat", ["m", "res"], ["cat"], axis=1),
        helper.make_node("AveragePool", ["cat"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMean", ["ap"], ["rm"], axes=[2, 3], keepdims=1),
        helper.make_node("Reshape", ["rm", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    inits = [
        init("w1", (4, 1, 3, 3)),
        init("b1", (4,)),
        init("w2", (4, 1, 1, 2)),
        init("g", (4,), 0.5, 1.5),
        init("beta", (4,)),
        init("mu", (4,)),
        init("var", (4,), 0.5, 2.0),
        init("scale", (1, 4, 1, 1)),
        numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
        init("fc", (8, 8)),
        init("fcb", (8,)),
    ]
    if extra_op:
        nodes.insert(-1, helper.make_node(extra_op, ["logits"], ["logits2"]))
        nodes[-1] = helper.make_node("Softmax", ["logits2"], ["probs"], axis=1)
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 12, 12])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_interpreter_runs_residual_and_batchnorm_graphs(tmp_path):
    path = _residual_graph(tmp_path / "res.onnx")
    assert parity_check(OnnxModule(path), path, _random_inputs(5, 1, 12, 12)) < 1e-5


def test_interpreter_names_an_unsupported_op(tmp_path):
    path = _residual_graph(tmp_path / "lrn.onnx", extra_op="Hardmax")
    with pytest.raises(UnsupportedModelError, match="Hardmax"):
        OnnxModule(path)


def test_parity_check_refuses_a_different_model(tmp_path, tiny_model):
    other = build_onnx_model(tmp_path / "other.onnx", seed=7)
    with pytest.raises(RuntimeError, match="differs from onnxruntime"):
        parity_check(OnnxModule(tiny_model), other, _random_inputs(4, 1, 48, 48))


# --- the server's crop, differentiable -----------------------------------------------------------------------------


@pytest.mark.parametrize(("n_in", "n_out"), [(160, 40), (157, 40), (48, 40), (30, 40)])
def test_resize_matrix_is_cv2_resize(n_in, n_out):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (n_in, n_in + 3)).astype(np.float32)
    interp = server_interpolation(n_in, n_in + 3, n_out, n_out)
    expected = cv2.resize(image, (n_out, n_out), interpolation=interp)
    got = resize_matrix(n_in, n_out, interp) @ image @ resize_matrix(n_in + 3, n_out, interp).T
    np.testing.assert_allclose(got, expected, atol=1e-3)


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_graph_reproduces_crop_face(astronaut_bgr, channels):
    face = (178.0, 64.0, 92.0, 110.0)
    h, w = astronaut_bgr.shape[:2]
    box = square_box(face, 0.15, w, h)
    graph = CropGraph(box, [box], (40, 40), channels)
    x0, y0, x1, y1 = box
    with torch.no_grad():
        ours = graph(torch.from_numpy(astronaut_bgr[y0:y1, x0:x1].astype(np.float32)))[0].numpy()
    theirs = crop_face(astronaut_bgr, face, 0.15, 40, channels).astype(np.float32)
    theirs = theirs[None] if channels == 1 else theirs.transpose(2, 0, 1)
    assert np.abs(ours - theirs).max() <= 1  # cv2's fixed-point uint8 paths round a few pixels the other way
    assert (ours != theirs).mean() < 0.02


def test_search_smallest_finds_the_threshold_with_few_tries():
    for threshold in range(1, 20):
        calls: list[int] = []

        def run(k: int, t: int = threshold, seen: list[int] = calls) -> bool:
            seen.append(k)
            return k >= t

        found = search_smallest(run, 16)
        assert found == (threshold if threshold <= 16 else None), threshold
        assert len(calls) <= 8 and all(1 <= k <= 16 for k in calls)


def test_difference_image_stretches_the_budget_to_full_contrast():
    before = np.full((2, 2, 3), 100, np.uint8)
    after = before.copy()
    after[0, 0] = 102
    after[1, 1] = 98
    diff, gain = difference_image(before, after, 2)
    assert gain == pytest.approx(63.5)
    assert diff[0, 0, 0] == 255 and diff[1, 1, 0] == 1 and diff[0, 1, 0] == 128


# --- attacking a photo -------------------------------------------------------------------------------------------


def test_attack_flips_the_tiny_model_within_its_budget(tiny_model, yunet_path, astronaut_bgr):
    pipeline = EmotionPipeline.from_settings(make_settings(tiny_model, "yunet", yunet_path))
    model = DifferentiableClassifier(tiny_model, log=_quiet)
    before = predict_face(pipeline, astronaut_bgr, (178, 64, 92, 110))
    assert before.found
    target = next(label for label in model.labels if label != before.emotion)
    result = PhotoAttacker(model, pipeline, steps=30, log=_quiet).attack(astronaut_bgr, target, max_budget=8)
    assert result.budget is not None and 1 <= result.budget <= 8
    assert 0 < result.linf <= result.budget
    assert result.after.found and result.after.emotion == target
    # Only the pixels around the face changed.
    changed = np.argwhere(np.abs(result.hacked.astype(int) - astronaut_bgr.astype(int)).max(axis=2) > 0)
    x0, y0, x1, y1 = result.crop_box
    assert changed[:, 0].min() >= y0 - 2 and changed[:, 0].max() < y1 + 2
    assert changed[:, 1].min() >= x0 - 2 and changed[:, 1].max() < x1 + 2
    # A smaller budget was tried and failed, or the budget is already the smallest possible.
    assert result.budget == 1 or any(not t.flipped and t.budget == result.budget - 1 for t in result.tries)


def test_attack_refuses_a_photo_without_a_face_and_an_unknown_label(
    tiny_model, yunet_path, faceless_bgr, astronaut_bgr
):
    pipeline = EmotionPipeline.from_settings(make_settings(tiny_model, "yunet", yunet_path))
    attacker = PhotoAttacker(DifferentiableClassifier(tiny_model, log=_quiet), pipeline, log=_quiet)
    with pytest.raises(AttackError, match="found 0 face"):
        attacker.attack(faceless_bgr, "sad")
    with pytest.raises(AttackError, match="unknown target 'bored'"):
        attacker.attack(astronaut_bgr, "bored")


@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="the shipped model is not in models/")
def test_cli_hacks_a_real_photo_and_checks_it_through_the_pipeline(tmp_path, yunet_path, astronaut_bgr, capsys):
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), astronaut_bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = tmp_path / "out"
    argv = ["attack", str(photo), "--target", "sad", "--out", str(out), "--model", str(SHIPPED_MODEL)]
    code = main([*argv, "--yunet", str(yunet_path), "--detector", "yunet", "--steps", "20"])
    text = capsys.readouterr().out
    assert "parity: max |torch - onnxruntime|" in text
    summary = json.loads((out / "result.json").read_text())
    assert summary["before"]["emotion"] != "sad"
    assert summary["budget"] is not None and summary["budget"] <= 16, text
    assert summary["linf_applied"] <= summary["budget"]
    # The saved files decode; hacked.png differs from input.png by at most the budget, and the pipeline read it back.
    original = decode_image((out / "input.png").read_bytes())
    hacked = decode_image((out / "hacked.png").read_bytes())
    np.testing.assert_array_equal(original, cv2.imread(str(photo)))
    assert 0 < np.abs(hacked.astype(int) - original.astype(int)).max() <= summary["budget"]
    for name in ("difference.png", "figure.png"):
        assert cv2.imread(str(out / name)) is not None
    pipeline = EmotionPipeline.from_settings(make_settings(SHIPPED_MODEL, "yunet", yunet_path))
    again = predict_face(pipeline, hacked, summary["face"])
    assert again.emotion == summary["after_from_file"]["emotion"]
    assert summary["target_reached_from_file"] == (again.emotion == "sad")
    assert code == (0 if again.emotion == "sad" else 1)
    assert ("The target label sad came out" if code == 0 else "did NOT come out") in text


# --- accuracy versus budget ----------------------------------------------------------------------------------------


def test_eval_cli_on_synthetic_fer_files(tmp_path, tiny_model, capsys):
    fer = write_fer_pair(tmp_path / "fer")
    out = tmp_path / "eval"
    argv = ["attack", "--eval", "--model", str(tiny_model), "--data", str(fer["csv"]), "--ferplus", str(fer["ferplus"])]
    assert main([*argv, "--budgets", "0", "1", "8", "--steps", "10", "--out", str(out)]) == 0
    report = json.loads((out / "attack_eval.json").read_text())
    assert cv2.imread(str(out / "attack_eval.png")) is not None
    from training.data import load_fer2013

    ds = load_fer2013(fer["csv"], fer["ferplus"])
    clean = evaluate_onnx(tiny_model, ds)["accuracy"]
    rows = {r["budget"]: r for r in report["results"]}
    assert report["images"] == int((ds.hard_labels("ferplus")[ds.split("PublicTest")] >= 0).sum())  # FER+ majority
    zero = rows[0]
    assert zero["untargeted_accuracy"] == zero["targeted_accuracy"] == zero["random_noise_accuracy"] == clean
    # 8/255 moves a linear model's logits by far more than its margins: nothing stays right, every target is hit.
    assert rows[8]["untargeted_accuracy"] == 0.0 and rows[8]["targeted_success"] == 1.0
    assert rows[1]["untargeted_accuracy"] <= clean
    assert "random sign noise" in capsys.readouterr().out


def test_attack_refuses_eye_aligned_crops_it_cannot_rebuild(tmp_path, yunet_path, astronaut_bgr):
    """crop_face turns the crop when the model says `align: eyes`; the attack must not pretend to reproduce that."""
    aligned = build_onnx_model(tmp_path / "aligned.onnx", metadata={"align": "eyes"})
    pipeline = EmotionPipeline.from_settings(make_settings(aligned, "yunet", yunet_path))
    tilted = cv2.warpAffine(astronaut_bgr, cv2.getRotationMatrix2D((224, 120), 12, 1.0), (512, 512))
    attacker = PhotoAttacker(DifferentiableClassifier(aligned, log=_quiet), pipeline, log=_quiet)
    with pytest.raises(AttackError, match="eye-aligned"):
        attacker.attack(tilted, "sad")
