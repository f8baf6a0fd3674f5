"""`python -m training calibrate IN OUT`: temperature scaling (Guo et al., ICML 2017) inside an exported file, so
that a face's `confidence` says how often such a label is right.

A network trained on soft targets (FER+ vote distributions, teachers' probabilities, label smoothing) learns how
annotators split their votes, not how likely its answer is to be correct: the FER+ v1.2 file answers right 84% of
the time on PublicTest with a mean confidence of 57%. One scalar T, fitted by minimising the negative
log-likelihood of the PublicTest labels, divides the logits before the graph's softmax (a `Mul` by 1/T). Labels do
not change for a single view; with in-graph flip averaging the two views are averaged after their softmax, so a
near tie can turn, and the report gives the accuracy before and after. The fit and both calibration errors are
recorded in the file's `calibration` metadata.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from training.data import FaceDataset, add_data_arguments, ferplus_path, load_dataset
from training.evaluate import calibration_error, infer_batched, split_faces
from training.metadata import update_metadata


def softmax_nodes(model) -> list:
    nodes = [n for n in model.graph.node if n.op_type == "Softmax"]
    if not nodes:
        raise ValueError("the graph has no Softmax node")
    return nodes


def with_temperature(model, temperature: float):
    """A copy of `model` whose every softmax input is multiplied by 1 / temperature."""
    import onnx  # noqa: PLC0415

    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(np.array(1.0 / temperature, np.float32), "calibration/inverse_temperature")
    )
    for softmax in softmax_nodes(model):
        logits, scaled = softmax.input[0], f"{softmax.input[0]}/calibrated"
        mul = onnx.helper.make_node("Mul", [logits, "calibration/inverse_temperature"], [scaled], name=f"{scaled}/mul")
        softmax.input[0] = scaled
        model.graph.node.insert(list(model.graph.node).index(softmax), mul)
    return model


def softmax_inputs(classifier, faces: np.ndarray) -> np.ndarray:
    """The logits that reach the graph's softmax for these uint8 faces, through the server's preprocessing (the
    server's `EmotionClassifier` of the file), as
    [views, N, K]: one view without flip averaging, two with it (one softmax over the faces and their mirrors
    stacked on the batch, or one softmax per view, as `export` writes it). The graph's output is their mean."""
    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    model = onnx.load(str(classifier.path))
    names = [n.input[0] for n in softmax_nodes(model)]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    views = []
    for i in range(0, len(faces), 256):
        batch = faces[i : i + 256]
        outputs = session.run(names, {name: classifier.preprocess(batch)})
        views.append(np.concatenate([z.reshape(-1, len(batch), z.shape[-1]) for z in outputs]))
    return np.concatenate(views, axis=1)


def probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = np.exp(z - z.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).mean(0)


def fit_temperature(logits: np.ndarray, truth: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """T minimising the mean negative log-likelihood of `truth`: golden-section search on log T."""

    def nll(log_t: float) -> float:
        p = probabilities(logits, float(np.exp(log_t)))
        return float(-np.log(p[np.arange(len(truth)), truth] + 1e-12).mean())

    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(np.exp((a + b) / 2))


def calibrate(path: str | Path, out: str | Path, ds: FaceDataset, split: str = "PublicTest") -> dict:
    """Fit T on `split`, write the calibrated file to `out` and return the report (also stored in its metadata)."""
    import onnx  # noqa: PLC0415

    from server.classifier import EmotionClassifier  # noqa: PLC0415

    classifier = EmotionClassifier(path)
    spec = classifier.spec
    if "calibration" in spec.metadata:
        raise ValueError(f"{path}: already calibrated ({spec.metadata['calibration']})")
    head, faces, truth, _ = split_faces(spec, ds, split)
    logits = softmax_inputs(classifier, faces)
    temperature = fit_temperature(logits, truth)
    raw, fitted = probabilities(logits, 1.0), probabilities(logits, temperature)
    before, after = calibration_error(raw, truth), calibration_error(fitted, truth)  # both rounded to 4 places
    report = {
        "temperature": round(temperature, 4),
        "fitted_on": f"{split} ({len(truth)} faces, {head} labels)",
        "ece": [before["ece"], after["ece"]],
        "mean_confidence": [before["mean_confidence"], after["mean_confidence"]],
        "accuracy": [round(float((p.argmax(1) == truth).mean()), 4) for p in (raw, fitted)],
    }
    model = update_metadata(with_temperature(onnx.load(str(path)), temperature), calibration=json.dumps(report))
    onnx.checker.check_model(model)
    with tempfile.TemporaryDirectory() as tmp:  # check the written graph against the fit before replacing `out`
        candidate = Path(tmp) / "calibrated.onnx"
        onnx.save(model, str(candidate))
        written = EmotionClassifier(candidate)  # one session for every batch
        served = infer_batched(written, faces)
        gap = float(np.abs(served - fitted).max())
        if gap > 1e-3:
            raise RuntimeError(f"the calibrated graph differs from the fitted probabilities by {gap:.2e}")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(candidate.read_bytes())
    return report


def describe(report: dict) -> str:
    """One line on a `calibrate` report: the temperature and what it changed."""
    return (
        f"temperature {report['temperature']:g} fitted on {report['fitted_on']}: calibration error "
        f"{report['ece'][0]:.3f} -> {report['ece'][1]:.3f}, mean confidence {report['mean_confidence'][0]:.3f} -> "
        f"{report['mean_confidence'][1]:.3f}, accuracy {report['accuracy'][0]:.4f} -> {report['accuracy'][1]:.4f}"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="temperature scaling in an exported file, fitted on PublicTest, so confidences mean what they say",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="exported .onnx file (float or int8, with or without flip averaging)")
    p.add_argument("out", help="output .onnx (may be the same path)")
    add_data_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ds = load_dataset("fer2013", args.data, ferplus_path(args.ferplus))
    print(describe(calibrate(args.model, args.out, ds)))
    print(f"wrote {args.out}")
    return 0
