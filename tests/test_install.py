"""The built wheel, installed into a fresh virtualenv, runs ``emotion`` and ``emotion-server`` from any directory.

The wheel must carry the shipped models (classifiers, YuNet, licences) and the web page. The fresh venv gets the
wheel only (``--no-deps``, no index); the dependencies come from this venv through a ``.pth`` line, so the test
runs offline and in seconds, and ``server`` can only be imported from the wheel's copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import pytest
from conftest import ASTRONAUT_FACE, ROOT, iou, wait_until_ready

from server.detector import YUNET_FILE, YUNET_SHA256

# What the wheel is built from: the repository's own files, copied so the build leaves nothing in the checkout.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "server", "training", "models", "web")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", out, src],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("emotion_service-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the wheel installed and this venv's site-packages appended for the dependencies."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Appended after the venv's own site-packages, so this venv's editable `server` can never shadow the wheel's.
    (Path(site) / "_deps_from_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty directory outside the checkout, with one real photo in it."""
    work = tmp_path_factory.mktemp("elsewhere")
    from skimage import data

    cv2.imwrite(str(work / "astronaut.jpg"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return work


def clean_env(venv: Path) -> dict[str, str]:
    """The environment a user would have: no EMOTION_* settings, no PYTHONPATH, the venv's bin first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_") and k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_wheel_carries_the_models_and_the_page(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "server/models/emotion_ferplus.onnx",
        "server/models/emotion_fer2013.onnx",
        f"server/models/{YUNET_FILE}",
        "server/models/LICENSE-yunet.txt",
        "server/models/YUNET.md",
        "server/models/MODEL_CARD.md",
        "server/web/index.html",
        "server/web/app.js",
        "server/web/style.css",
    }
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("models/", "web/")) for n in names)  # inside the package, not beside it
    # The code's MIT licence travels with it (YuNet's own is in server/models).
    licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")]
    assert licence, sorted(n for n in names if ".dist-info/" in n)
    assert "MIT License" in zipfile.ZipFile(wheel).read(licence[0]).decode()


def test_emotion_image_runs_from_another_directory(venv: Path, workdir: Path) -> None:
    result = subprocess.run(
        [venv / "bin" / "emotion", "image", "astronaut.jpg", "--json"],
        cwd=workdir,
        env=clean_env(venv),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["width"] == 512 and len(answer["faces"]) == 1
    box = answer["faces"][0]["box"]
    assert iou((box["x"], box["y"], box["w"], box["h"]), ASTRONAUT_FACE) > 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed_server(venv: Path, workdir: Path) -> Iterator[str]:
    port = free_port()
    # The log, not the API, says where the model files are (answers name files only): kept for the test below.
    with (workdir / "emotion-server.log").open("w") as log:
        proc = subprocess.Popen(
            [venv / "bin" / "emotion-server", "--port", str(port)],
            cwd=workdir,
            env=clean_env(venv),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            try:
                wait_until_ready(proc, port, "the installed emotion-server")
            except AssertionError:
                pytest.fail((workdir / "emotion-server.log").read_text())
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_installed_server_uses_the_shipped_models(installed_server: str, venv: Path, workdir: Path) -> None:
    ready = httpx.get(installed_server + "/readyz").json()
    assert ready["ready"] is True and ready["detector"] == "yunet"
    info = httpx.get(installed_server + "/model").json()
    assert info["path"] == "emotion_ferplus.onnx" and info["detector_fallback"] is None
    assert info["detector_path"] == "face_detection_yunet_2023mar.onnx"
    # Both model files are the wheel's copies inside the new venv, not the checkout's (the start-up log names them).
    log = (workdir / "emotion-server.log").read_text()
    model = Path(re.search(r"model (.+?): \d+ labels", log).group(1))
    yunet = Path(re.search(r"face detector: yunet \((.+?)\)", log).group(1))
    assert model.is_relative_to(venv) and model.name == "emotion_ferplus.onnx"
    assert yunet.is_relative_to(venv) and hashlib.sha256(yunet.read_bytes()).hexdigest() == YUNET_SHA256
    card = httpx.get(installed_server + "/model/card")  # MODEL_CARD.md travels beside the model in the wheel
    assert card.status_code == 200 and card.text.startswith("# Model card")


def test_installed_server_serves_the_page_and_predicts(installed_server: str, workdir: Path) -> None:
    page = httpx.get(installed_server + "/")
    assert page.status_code == 200 and "<script" in page.text and "app.js" in page.text
    assert httpx.get(installed_server + "/app.js").status_code == 200
    photo = (workdir / "astronaut.jpg").read_bytes()
    answer = httpx.post(installed_server + "/predict", files={"file": ("a.jpg", photo, "image/jpeg")}, timeout=30)
    assert answer.status_code == 200
    faces = answer.json()["faces"]
    assert len(faces) == 1 and abs(sum(faces[0]["probabilities"].values()) - 1) < 1e-3
    # /docs and its assets come from the installed fastapi-offline, not a CDN.
    docs = httpx.get(installed_server + "/docs").text
    assert "cdn" not in docs.lower() and "/static-offline-docs/swagger-ui-bundle.js" in docs
    bundle = httpx.get(installed_server + "/static-offline-docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000


def test_installed_package_is_not_the_checkout(venv: Path, workdir: Path) -> None:
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import server; print(server.__file__)"],
        cwd=workdir,
        env=clean_env(venv),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where
