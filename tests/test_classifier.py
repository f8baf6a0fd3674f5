"""The ONNX classifier: a real onnxruntime session, preprocessing from metadata, refusal of contract breakers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from server.classifier import EmotionClassifier, ModelError


@pytest.fixture(scope="module")
def classifier(model_path: Path) -> EmotionClassifier:
    return EmotionClassifier(model_path)


def test_reads_labels_and_preprocessing_from_metadata(classifier: EmotionClassifier) -> None:
    spec = classifier.spec
    meta = classifier.session.get_modelmeta().custom_metadata_map
    assert spec.labels == json.loads(meta["labels"])
    assert spec.channels == int(meta["channels"])
    assert len(spec.mean) == len(spec.std) == spec.channels
    assert 0.0 <= spec.crop_margin <= 1.0
    assert spec.metadata == meta


def test_batched_probabilities(classifier: EmotionClassifier) -> None:
    h, w = classifier.spec.input_size
    shape = (5, h, w) if classifier.spec.channels == 1 else (5, h, w, 3)
    crops = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    probs = classifier.infer(crops)
    assert probs.shape == (5, len(classifier.labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()
    # One batched call gives the same answer as one call per crop.
    singles = np.concatenate([classifier.infer(crops[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(probs, singles, atol=1e-5)
    assert classifier.infer(crops[:0]).shape == (0, len(classifier.labels))


def test_preprocessing_applies_mean_and_std(make_model: Callable[..., Path]) -> None:
    clf = EmotionClassifier(make_model(metadata={"mean": "[0.25]", "std": "[0.5]"}))
    x = clf.preprocess(np.array([[[0, 255], [51, 102]]], np.uint8))
    np.testing.assert_allclose(x[0, 0], (np.array([[0, 255], [51, 102]]) / 255 - 0.25) / 0.5, atol=1e-6)


def test_rectangular_rgb_model(make_model: Callable[..., Path]) -> None:
    clf = EmotionClassifier(make_model(size=(40, 32), channels=3, labels=["a", "b", "c"]))
    assert clf.spec.input_size == (40, 32) and clf.spec.channels == 3
    probs = clf.infer(np.zeros((2, 40, 32, 3), np.uint8))
    assert probs.shape == (2, 3)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"metadata": {"labels": None}}, "labels"),
        ({"metadata": {"labels": "happy,sad"}}, "labels"),
        ({"metadata": {"labels": '["happy", "happy"]'}}, "labels"),
        ({"outputs": 7}, "labels"),  # 8 labels, 7 outputs
        ({"metadata": {"input_size": None}}, "input_size"),
        ({"metadata": {"input_size": "40"}}, "input_size"),  # the graph takes 48x48
        ({"metadata": {"input_size": "[48]"}}, "input_size"),
        ({"metadata": {"channels": "3"}}, "channels"),  # the graph takes 1 channel
        ({"metadata": {"channels": "gray"}}, "channels"),
        ({"metadata": {"mean": None}}, "mean"),
        ({"metadata": {"mean": "[0.5, 0.5, 0.5]"}}, "mean"),
        ({"metadata": {"std": "[0]"}}, "std"),
        ({"metadata": {"std": '["x"]'}}, "std"),
        ({"metadata": {"crop_margin": None}}, "crop_margin"),
        ({"metadata": {"crop_margin": "wide"}}, "crop_margin"),
        ({"metadata": {"crop_margin": "-0.2"}}, "crop_margin"),
    ],
)
def test_refuses_contract_breakers_naming_the_key(make_model: Callable[..., Path], kwargs: dict, key: str) -> None:
    path = make_model(**kwargs)
    with pytest.raises(ModelError, match=f"'{key}'"):
        EmotionClassifier(path)


def test_refuses_output_without_softmax(make_model: Callable[..., Path]) -> None:
    with pytest.raises(ModelError, match="softmax"):
        EmotionClassifier(make_model(softmax=False))


def test_refuses_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        EmotionClassifier(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="cannot load"):
        EmotionClassifier(junk)
