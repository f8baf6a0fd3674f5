"""Face detectors on real photos, their thread safety, the fallback choice, and the YuNet download step."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, iou

from server import download
from server.config import Settings, data_dir, resolve_path
from server.detector import YUNET_FILE, YUNET_SHA256, DetectorError, HaarDetector, YuNetDetector, create_detector


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


def test_a_tiny_face_crop_is_found_the_same_way_in_every_process(yunet_path: Path, astronaut_bgr: np.ndarray, tmp_path):
    """OpenCV's YuNet on a ~36x32 px image answered differently from one process to the next (a face, or a 0x0 box
    with score 1.0); YuNetDetector enlarges such images to MIN_SIDE first and scales the boxes back."""
    tiny = cv2.resize(astronaut_bgr[45:195, 160:290], (32, 37), interpolation=cv2.INTER_AREA)  # the face, filling it
    cv2.imwrite(str(tmp_path / "tiny.png"), tiny)
    probe = (
        "import sys, json, cv2; sys.path.insert(0, sys.argv[3]); from server.detector import YuNetDetector; "
        "print(json.dumps([[d.x, d.y, d.w, d.h] for d in YuNetDetector(sys.argv[1]).infer(cv2.imread(sys.argv[2]))]))"
    )
    root = str(Path(__file__).resolve().parents[1])
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", probe, str(yunet_path), str(tmp_path / "tiny.png"), root],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )
        for _ in range(3)
    ]
    assert all(len(r) == 1 for r in runs), runs
    for r in runs[1:]:
        np.testing.assert_allclose(r[0], runs[0][0], atol=1e-3)
    x, y, w, h = runs[0][0]
    assert w > 16 and h > 16 and -2 < x < 16 and -2 < y < 18  # in the tiny image's own pixels

    # the same boxes as detecting on the image enlarged by hand and scaling back
    scale = YuNetDetector.MIN_SIDE / 37
    by_hand = YuNetDetector(yunet_path).infer(
        cv2.resize(tiny, (round(32 * scale), 128), interpolation=cv2.INTER_LINEAR)
    )
    np.testing.assert_allclose(
        [v / scale for v in (by_hand[0].x, by_hand[0].y, by_hand[0].w, by_hand[0].h)], runs[0][0], atol=0.5
    )


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
    assert det.fallback_reason is not None and "not found" in det.fallback_reason


def test_auto_prefers_yunet(yunet_path: Path) -> None:
    det = create_detector("auto", yunet_path)
    assert det.name == "yunet" and det.fallback_reason is None


def test_explicit_yunet_without_file_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="python -m server.download"):
        create_detector("yunet", tmp_path / "missing.onnx")


@pytest.fixture
def tampered_yunet(yunet_path: Path, tmp_path: Path) -> Path:
    """The real YuNet file with one weight byte changed near the end: still loads in OpenCV, wrong sha256."""
    data = bytearray(yunet_path.read_bytes())
    data[-100] ^= 0x01
    path = tmp_path / YUNET_FILE
    path.write_bytes(bytes(data))
    return path


def test_yunet_with_the_wrong_sha256_is_refused(tampered_yunet: Path) -> None:
    with pytest.raises(DetectorError, match="sha256") as excinfo:
        YuNetDetector(tampered_yunet)
    message = str(excinfo.value)
    assert YUNET_SHA256 in message and "python -m server.download" in message
    with pytest.raises(DetectorError, match="sha256"):
        create_detector("yunet", tampered_yunet)
    # The check is what refuses it: without one the same file loads.
    assert YuNetDetector(tampered_yunet, sha256=None).name == "yunet"


def test_auto_falls_back_visibly_on_a_tampered_yunet(tampered_yunet: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        det = create_detector("auto", tampered_yunet)
    assert det.name == "haar"
    assert det.fallback_reason is not None and "sha256" in det.fallback_reason
    assert "sha256" in caplog.text and "falling back to the Haar cascade" in caplog.text


def test_yunet_refuses_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(DetectorError, match="sha256"):
        YuNetDetector(bad)
    with pytest.raises(cv2.error):
        YuNetDetector(bad, sha256=None)


def test_yunet_ships_in_models_and_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = data_dir("models") / YUNET_FILE
    assert shipped.is_file() and shipped.stat().st_size == 232_589
    assert download.sha256_of(shipped) == YUNET_SHA256
    assert (shipped.parent / "LICENSE-yunet.txt").read_text().count("MIT License") == 1
    # The default settings resolve to the shipped file from any working directory, and "auto" picks it.
    for name in ("EMOTION_YUNET_PATH", "EMOTION_DETECTOR", "EMOTION_YUNET_SHA256"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert resolve_path(settings.yunet_path) == shipped
    assert create_detector(settings.detector, resolve_path(settings.yunet_path)).name == "yunet"


def test_resolve_path_prefers_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_path(Path("models/emotion_ferplus.onnx")) == data_dir("models") / "emotion_ferplus.onnx"
    assert resolve_path(Path("web")) == data_dir("web")
    assert resolve_path(Path("models/nothing.onnx")) == Path("models/nothing.onnx")  # missing: reported as given
    assert resolve_path(Path("other/x.onnx")) == Path("other/x.onnx")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "emotion_ferplus.onnx").write_bytes(b"mine")
    assert resolve_path(Path("models/emotion_ferplus.onnx")) == Path("models/emotion_ferplus.onnx")


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
    assert download.sha256_of(yunet_path) == YUNET_SHA256
    assert all(download.YUNET_COMMIT in u for u in download.YUNET_URLS)
