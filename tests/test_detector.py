"""Face detectors on real photos, their thread safety, the fallback choice, and the YuNet download step."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, iou

from server import download
from server.detector import HaarDetector, YuNetDetector, create_detector


@pytest.fixture(scope="module")
def haar() -> HaarDetector:
    return HaarDetector()


@pytest.fixture(scope="module")
def yunet(yunet_path: Path) -> YuNetDetector:
    return YuNetDetector(yunet_path)


@pytest.fixture(params=["haar", "yunet"])
def detector(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def test_astronaut_has_one_face_in_the_right_place(detector, astronaut_bgr: np.ndarray) -> None:
    faces = detector.infer(astronaut_bgr)
    assert len(faces) == 1
    face = faces[0]
    assert iou((face.x, face.y, face.w, face.h), ASTRONAUT_FACE) > 0.6
    assert 0.5 < face.score <= 1.0


def test_faceless_photos_have_no_face(detector) -> None:
    from skimage import data

    for photo in (data.coffee(), data.rocket(), data.chelsea()):  # a cup, a launch pad, a cat
        assert detector.infer(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)) == []


def test_min_size_drops_small_faces(detector, astronaut_bgr: np.ndarray) -> None:
    assert len(detector.infer(astronaut_bgr, min_size=20)) == 1
    assert detector.infer(astronaut_bgr, min_size=200) == []


def test_concurrent_calls_with_different_sizes_do_not_interfere(detector, astronaut_bgr: np.ndarray) -> None:
    """YuNet's input size and the cascade's evaluator are per-call state; per-thread instances keep them apart."""
    tiled = np.vstack([np.hstack([astronaut_bgr] * 2)] * 2)
    small = cv2.resize(tiled, (640, 640), interpolation=cv2.INTER_AREA)
    jobs = [astronaut_bgr if i % 2 else small for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda im: len(detector.infer(im)), jobs))
    assert counts == [1 if i % 2 else 4 for i in range(12)]


def test_auto_falls_back_to_haar_when_yunet_is_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        det = create_detector("auto", tmp_path / "missing.onnx")
    assert det.name == "haar"
    assert "falling back to the Haar cascade" in caplog.text


def test_auto_prefers_yunet(yunet_path: Path) -> None:
    assert create_detector("auto", yunet_path).name == "yunet"


def test_explicit_yunet_without_file_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m server.download"):
        create_detector("yunet", tmp_path / "missing.onnx")


def test_yunet_refuses_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(cv2.error):
        YuNetDetector(bad)


# --- download step (file:// URLs: the same code path as https, without a network) ----------------------------


@pytest.fixture
def source(tmp_path: Path) -> tuple[str, str, bytes]:
    payload = os.urandom(5000)
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    src.write_bytes(payload)
    return src.as_uri(), hashlib.sha256(payload).hexdigest(), payload


def test_fetch_downloads_and_verifies(tmp_path: Path, source: tuple[str, str, bytes]) -> None:
    url, sha, payload = source
    dest = tmp_path / "models" / "yunet.onnx"
    assert download.fetch(dest, [url], sha) is True
    assert dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == ["yunet.onnx"]  # no temp file left behind


def test_fetch_skips_a_verified_file(tmp_path: Path, source: tuple[str, str, bytes]) -> None:
    url, sha, payload = source
    dest = tmp_path / "yunet.onnx"
    dest.write_bytes(payload)
    # The URL is unreachable: if fetch tried to download, it would fail.
    assert download.fetch(dest, [(tmp_path / "nowhere").as_uri()], sha) is False
    assert dest.read_bytes() == payload


def test_fetch_replaces_a_corrupt_file(tmp_path: Path, source: tuple[str, str, bytes]) -> None:
    url, sha, payload = source
    dest = tmp_path / "yunet.onnx"
    dest.write_bytes(b"truncated")
    assert download.fetch(dest, [url], sha) is True
    assert dest.read_bytes() == payload


def test_fetch_rejects_wrong_bytes_and_keeps_nothing(tmp_path: Path, source: tuple[str, str, bytes]) -> None:
    url, _, _ = source
    dest = tmp_path / "out" / "yunet.onnx"
    with pytest.raises(download.DownloadError, match="sha256"):
        download.fetch(dest, [url], "0" * 64)
    assert list(dest.parent.iterdir()) == []


def test_fetch_tries_the_next_url(tmp_path: Path, source: tuple[str, str, bytes]) -> None:
    url, sha, payload = source
    dest = tmp_path / "yunet.onnx"
    assert download.fetch(dest, [(tmp_path / "missing").as_uri(), url], sha) is True
    assert dest.read_bytes() == payload


def test_pinned_yunet_hash_matches_the_reference_copy(yunet_path: Path) -> None:
    assert download.sha256_of(yunet_path) == download.YUNET_SHA256
    assert all(download.YUNET_COMMIT in u for u in download.YUNET_URLS)
