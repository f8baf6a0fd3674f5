"""Shared fixtures: a contract-honouring ONNX model, the YuNet file, photos, pipelines and a live uvicorn server.

``model_path`` is the shipped ``models/emotion_ferplus.onnx`` when present; otherwise a tiny real ONNX graph
(Flatten -> MatMul -> Add -> Softmax, full metadata) is built here, so every test runs a real onnxruntime session.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = ROOT / "models" / "emotion_ferplus.onnx"
FERPLUS_LABELS = ["neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt"]
# Eileen Collins' face in skimage's astronaut photo (x, y, w, h), by hand: brow to chin, ear to cheek.
ASTRONAUT_FACE = (178, 64, 92, 110)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def default_yunet_path() -> Path:
    env = os.environ.get("EMOTION_YUNET_PATH")
    if env:
        return Path(env)
    local = ROOT / "models" / "face_detection_yunet_2023mar.onnx"
    return local if local.is_file() else ROOT.parent / "shared" / "models" / "face_detection_yunet_2023mar.onnx"


def build_onnx_model(
    path: Path,
    *,
    labels: list[str] | None = None,
    size: tuple[int, int] = (48, 48),
    channels: int = 1,
    outputs: int | None = None,
    metadata: dict[str, str | None] | None = None,
    graph_channels: int | None = None,
    softmax: bool = True,
    seed: int = 0,
    favour: str | None = None,
) -> Path:
    """Write a small real classifier: input [N, C, H, W] float32 (dynamic N) -> probabilities [N, K].

    ``metadata`` overrides the defaults (a value of None removes the key); ``outputs``/``graph_channels``
    make the graph disagree with the metadata, for contract tests; ``favour`` names a label the model gives every
    image (its bias outweighs the rest).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    labels = labels or FERPLUS_LABELS
    k = outputs or len(labels)
    c = graph_channels or channels
    h, w = size
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.05, (c * h * w, k)).astype(np.float32)
    bias = rng.normal(0, 0.1, (k,)).astype(np.float32)
    if favour is not None:
        bias[labels.index(favour)] += 50
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1)
        if softmax
        else helper.make_node("Identity", ["logits"], ["probs"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_emotion",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", k])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.17
    meta: dict[str, str | None] = {
        "labels": json.dumps(labels),
        "input_size": json.dumps(list(size)) if size[0] != size[1] else str(size[0]),
        "channels": str(channels),
        "mean": json.dumps([0.5] * channels),
        "std": json.dumps([0.25] * channels),
        "crop_margin": "0.1",
        "dataset": "synthetic (tests)",
        "label_source": "ferplus",
        "metrics": "{}",
        "version": "test",
        "created": "1970-01-01T00:00:00Z",
    }
    meta.update(metadata or {})
    onnx.helper.set_model_props(model, {key: value for key, value in meta.items() if value is not None})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emotion model every test uses: the shipped one if present, else a generated contract-honouring one."""
    if SHIPPED_MODEL.is_file():
        return SHIPPED_MODEL
    return build_onnx_model(tmp_path_factory.mktemp("model") / "tiny_emotion.onnx")


@pytest.fixture
def make_model(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_model(name, **build_onnx_model kwargs)`` -> path of a freshly built model."""

    def make(name: str = "model.onnx", **kwargs: object) -> Path:
        return build_onnx_model(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread in the training tests: a training job may own the other cores, and export, parity and
    attacks run torch outside `train` too."""
    torch = pytest.importorskip("torch", reason="the training package needs torch (pip install torch==2.13.0)")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fer(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny FER2013 CSV (plain and gzip) and its FER+ votes on disk, with the ground truth (tests/training_data)."""
    from training_data import write_fer_pair

    return write_fer_pair(tmp_path_factory.mktemp("fer"))


@pytest.fixture(scope="session")
def yunet_path() -> Path:
    path = default_yunet_path()
    if not path.is_file():
        pytest.skip(f"YuNet model not found at {path} (set EMOTION_YUNET_PATH or run `python -m server.download`)")
    return path


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    """scikit-image's astronaut photo (512x512, one face: Eileen Collins), BGR."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def faceless_bgr() -> np.ndarray:
    """A photo without any face (scikit-image's coffee cup)."""
    from skimage import data

    return cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def astronaut_jpeg(astronaut_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", astronaut_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def make_settings(model: Path, detector: str = "haar", yunet: Path | None = None, **overrides: object):
    from server.config import Settings

    return Settings(model_path=model, detector=detector, yunet_path=yunet or default_yunet_path(), **overrides)


@pytest.fixture(scope="session")
def haar_pipeline(model_path: Path):
    from server.pipeline import EmotionPipeline

    return EmotionPipeline.from_settings(make_settings(model_path, "haar"))


@pytest.fixture(scope="session")
def yunet_pipeline(model_path: Path, yunet_path: Path):
    from server.pipeline import EmotionPipeline

    return EmotionPipeline.from_settings(make_settings(model_path, "yunet", yunet_path))


class LiveServer:
    """A real uvicorn server on a loopback port, in a background thread, with the connection limits of
    ``python -m server`` (``server.limits.uvicorn_options`` of the app's settings) and any other uvicorn ``config``
    (e.g. ``root_path``); on a free port, or on ``port`` (a server restarted where the last one was)."""

    def __init__(self, app: object, port: int = 0, **config: object):
        import uvicorn

        from server.limits import uvicorn_options

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        options = uvicorn_options(app.state.settings) | config  # type: ignore[attr-defined]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="session")
def live_server(model_path: Path) -> Iterator[LiveServer]:
    """The app with the test model and the Haar detector, served by uvicorn on 127.0.0.1:<free port>."""
    from server.app import create_app

    with LiveServer(create_app(make_settings(model_path, "haar"))) as server:
        yield server


def wait_until_ready(proc: subprocess.Popen, port: int, what: str, timeout: float = 60) -> httpx.Response:
    """Poll /readyz of a server started as a subprocess; fail with its output if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, f"{what} did not become ready"
        time.sleep(0.2)
