"""The HTTP API through a real uvicorn server on loopback, with httpx."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import LiveServer, make_settings, wait_until_ready
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from server.app import create_app, lifespan
from server.classifier import ModelError


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def strict_server(model_path: Path) -> Iterator[LiveServer]:
    """Tight limits: 50 kB per upload, 100k pixels per image."""
    settings = make_settings(model_path, "haar", max_upload_bytes=50_000, max_pixels=100_000)
    with LiveServer(create_app(settings)) as server:
        yield server


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def test_predict_multipart(client: httpx.Client, astronaut_jpeg: bytes) -> None:
    r = client.post("/predict", files={"file": ("astronaut.jpg", astronaut_jpeg, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (512, 512)
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert set(face) == {
        "box",
        "detection_score",
        "emotion",
        "confidence",
        "probabilities",
        "valence",
        "arousal",
        "track_id",
        "raw_probabilities",
    }
    assert face["track_id"] is None and face["raw_probabilities"] is None  # an image has no track
    labels = client.get("/model").json()["labels"]
    assert list(face["probabilities"]) == labels
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert face["emotion"] in labels
    assert {"decode", "detect", "classify", "total"} <= set(body["timings_ms"])


def test_predict_raw_body_and_octet_stream_part(client: httpx.Client, astronaut_bgr: np.ndarray) -> None:
    data = png(astronaut_bgr)
    r = client.post("/predict", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200 and len(r.json()["faces"]) == 1
    # Clients that do not know the type label the part application/octet-stream: the bytes decide.
    r = client.post("/predict", files={"file": ("blob", data, "application/octet-stream")})
    assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_predict_faceless_and_max_faces(
    client: httpx.Client, faceless_bgr: np.ndarray, astronaut_bgr: np.ndarray
) -> None:
    r = client.post("/predict", files={"file": ("coffee.png", png(faceless_bgr), "image/png")})
    assert r.status_code == 200 and r.json()["faces"] == []
    tiled = np.vstack([np.hstack([astronaut_bgr] * 2)] * 2)
    r = client.post("/predict?max_faces=3", files={"file": ("group.png", png(tiled), "image/png")})
    assert r.status_code == 200 and len(r.json()["faces"]) == 3


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty"),
        ({"content": b"definitely not an image", "headers": {"content-type": "image/jpeg"}}, 400, "decode"),
        (
            {"content": b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 40, "headers": {"content-type": "image/jpeg"}},
            400,
            "decode",
        ),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "content type"),
        ({"json": {"image": "base64?"}}, 415, "content type"),
        ({"content": b"\x00" * 10}, 415, "content type"),  # no content type at all
        ({"files": {"file": ("notes.txt", b"hello", "text/plain")}}, 415, "content type"),
        ({"files": {"image": ("a.jpg", b"\xff\xd8", "image/jpeg")}}, 422, "'file'"),
        ({"data": {"name": "x"}, "files": {"other": ("x", b"1")}}, 422, "'file'"),
        ({"files": {"file": ("empty.jpg", b"", "image/jpeg")}}, 400, "empty"),
        ({"content": b"--xyz\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400, "boundary"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client: httpx.Client, kwargs: dict, status: int, words: str) -> None:
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert words in r.json()["detail"]


def test_invalid_query_parameter_is_readable(client: httpx.Client, astronaut_jpeg: bytes) -> None:
    r = client.post("/predict?max_faces=zero", content=astronaut_jpeg, headers={"content-type": "image/jpeg"})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("query.max_faces:")


def test_limits(strict_server: LiveServer, astronaut_bgr: np.ndarray) -> None:
    big = cv2.imencode(".bmp", astronaut_bgr)[1].tobytes()  # 786 kB
    small_but_many_pixels = cv2.imencode(".jpg", astronaut_bgr, [cv2.IMWRITE_JPEG_QUALITY, 30])[1].tobytes()
    assert len(small_but_many_pixels) < 50_000
    with httpx.Client(base_url=strict_server.url, timeout=30) as c:
        r = c.post("/predict", content=big, headers={"content-type": "image/bmp"})
        assert r.status_code == 413 and "bytes" in r.json()["detail"]
        r = c.post("/predict", files={"file": ("a.bmp", big, "image/bmp")})
        assert r.status_code == 413 and "bytes" in r.json()["detail"]
        # Without Content-Length (chunked), the limit is enforced while streaming.
        r = c.post(
            "/predict",
            content=iter([big[i : i + 8192] for i in range(0, len(big), 8192)]),
            headers={"content-type": "image/bmp"},
        )
        assert r.status_code == 413 and "bytes" in r.json()["detail"]
        r = c.post("/predict", content=small_but_many_pixels, headers={"content-type": "image/jpeg"})
        assert r.status_code == 413 and "pixels" in r.json()["detail"]
        ok = cv2.imencode(".jpg", cv2.resize(astronaut_bgr, (256, 256)))[1].tobytes()
        assert c.post("/predict", content=ok, headers={"content-type": "image/jpeg"}).status_code == 200


def test_decompression_bomb_is_refused_and_server_stays_up(client: httpx.Client, astronaut_jpeg: bytes) -> None:
    from test_pipeline import png_claiming

    r = client.post("/predict", files={"file": ("bomb.png", png_claiming(200_000, 200_000), "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.post("/predict", content=astronaut_jpeg, headers={"content-type": "image/jpeg"}).status_code == 200


def test_jpeg_hiding_its_size_is_refused(client: httpx.Client, astronaut_bgr: np.ndarray) -> None:
    # 400x400 = 160,000 pixels, over this server's 100,000, in a JPEG whose marker walk found a 1x1 frame header:
    # it was answered 200 with width 400, decoded at full size past the pixel limit.
    from test_pipeline import jpeg_hiding_its_size

    gray = cv2.cvtColor(cv2.resize(astronaut_bgr, (400, 400)), cv2.COLOR_BGR2GRAY)
    hidden = jpeg_hiding_its_size(cv2.imencode(".jpg", gray)[1].tobytes())
    r = client.post("/predict", content=hidden, headers={"content-type": "image/jpeg"})
    assert r.status_code == 400 and "could not decode" in r.json()["detail"], r.text


def test_twenty_concurrent_requests(live_server: LiveServer, astronaut_jpeg: bytes) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as c:
            return await asyncio.gather(
                *(c.post("/predict", files={"file": (f"{i}.jpg", astronaut_jpeg, "image/jpeg")}) for i in range(20))
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 20
    boxes = {tuple(r.json()["faces"][0]["box"].values()) for r in responses}
    assert len(boxes) == 1  # same image, same answer, whatever thread served it


def test_model_health_ready(client: httpx.Client, model_path: Path, live_server: LiveServer) -> None:
    info = client.get("/model").json()
    assert info["detector"] == "haar" and info["detector_path"] is None
    assert info["max_faces"] == live_server.app.state.settings.max_faces
    assert info["path"] == model_path.name  # the file name only: no absolute path leaves the server
    assert len(info["labels"]) >= 2 and len(info["input_size"]) == 2
    assert "labels" in info["metadata"]
    # How faces are cropped, from the file: the shipped files frame faces by their landmarks.
    assert info["align"] == info["metadata"].get("align", "none")
    if info["align"] == "landmarks":
        assert info["face_template"] == json.loads(info["metadata"].get("face_template", "null")) or (
            "face_template" not in info["metadata"] and len(info["face_template"]) == 5  # the default template
        )
    else:
        assert info["face_template"] is None
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["detector"] == "haar" and ready["model"] == model_path.name
    for route in ("/model", "/readyz", "/metrics"):
        text = client.get(route).text
        assert str(model_path.parent) not in text and str(Path.cwd()) not in text, route


def test_model_card_is_the_one_beside_the_model(client: httpx.Client, model_path: Path, tmp_path: Path) -> None:
    card = model_path.parent / "MODEL_CARD.md"
    r = client.get("/model/card")
    if card.is_file():
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert r.text == card.read_text(encoding="utf-8")
    else:
        assert r.status_code == 404
    # A model of one's own, with no card beside it: 404 naming what is missing, not the shipped models' card.
    own = tmp_path / "emotion_mine.onnx"
    own.write_bytes(model_path.read_bytes())
    with LiveServer(create_app(make_settings(own, "haar"))) as server:
        r = httpx.get(f"{server.url}/model/card", timeout=30)
    assert r.status_code == 404 and "MODEL_CARD.md" in r.json()["detail"]


def test_index_page_and_docs(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/predict", "/model", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]
    # The page reads the server's limit on faces from GET /model (its "Max faces" input offers up to it).
    model_info = spec["components"]["schemas"]["ModelInfo"]
    assert (
        "max_faces" in model_info["required"]
        and "EMOTION_MAX_FACES" in model_info["properties"]["max_faces"]["description"]
    )


def test_wrong_method_on_an_api_path_is_405_not_the_pages_404(client: httpx.Client) -> None:
    for method, path, allowed in [
        ("GET", "/predict", "POST"),
        ("GET", "/predict/video", "POST"),
        ("PUT", "/model", "GET, HEAD"),
        ("POST", "/app.js", "GET, HEAD"),  # a page file: was StaticFiles' 405 without an Allow header
        ("DELETE", "/no-such-page", "GET, HEAD"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 405, (method, path, r.status_code)
        assert r.headers["allow"] == allowed
        assert f"use {allowed}" in r.json()["detail"]
    assert client.get("/no-such-page").status_code == 404
    assert client.get("/app.js").status_code == 200  # the page's files are still served from the same mount
    r = client.get("/ws")  # the live route, asked without the WebSocket upgrade
    assert r.status_code == 426 and r.headers["upgrade"] == "websocket" and "WebSocket client" in r.json()["detail"]


def test_trailing_slash_or_a_websocket_on_another_path_is_a_404_naming_the_route(
    client: httpx.Client, live_server: LiveServer
) -> None:
    """`POST /predict/` answered 405 "use GET, HEAD" (the page mount's rule for its files), and a WebSocket handshake
    on any path but /ws a bare 403, which reads as a refused API key."""
    for method, path, route in [
        ("POST", "/predict/", "/predict"),
        ("POST", "/predict/video/", "/predict/video"),
        ("GET", "/model/", "/model"),
        ("GET", "/ws/", "/ws"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert f"the route is {route}, without the trailing slash" in r.json()["detail"]
    assert client.post("/app.js/").status_code == 405  # a page path keeps the page's rule
    for path in ("/ws/", "/predict", "/"):
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(live_server.url.replace("http://", "ws://") + path)
        assert refused.value.response.status_code == 404, path
        assert "/ws" in json.loads(refused.value.response.body)["detail"]


def test_head_is_answered_wherever_get_is(client: httpx.Client) -> None:
    """Uptime checks ask with HEAD: the same status and headers as GET, no body."""
    for path in ("/healthz", "/model", "/", "/app.js", "/metrics"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
    assert client.head("/model").headers["content-length"] == client.get("/model").headers["content-length"]
    assert client.head("/no-such-page").status_code == 404
    assert client.head("/predict").status_code == 405  # a POST route stays a POST route
    # Counted under their route and their own method, not as unmatched paths.
    metrics = client.get("/metrics").text
    assert 'emotion_http_requests_total{method="HEAD",route="/healthz",status="200"} 1.0' in metrics
    assert 'emotion_http_requests_total{method="HEAD",route="static",status="200"} 1.0' in metrics  # /app.js
    assert 'emotion_http_requests_total{method="HEAD",route="unmatched",status="404"} 1.0' in metrics
    assert 'method="HEAD",route="unmatched",status="200"' not in metrics


def test_placeholder_page_without_web_dir(model_path: Path, tmp_path: Path) -> None:
    with LiveServer(create_app(make_settings(model_path, "haar", web_dir=tmp_path / "no-web"))) as server:
        r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "/docs" in r.text


def test_default_page_is_the_shipped_one_from_any_directory(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `web` folder in the working directory (a user's own project) does not replace the page unless
    EMOTION_WEB_DIR says so."""
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("<p>someone else's page</p>")
    monkeypatch.chdir(tmp_path)
    with LiveServer(create_app(make_settings(model_path, "haar"))) as server:
        page = httpx.get(server.url + "/")
        script = httpx.get(server.url + "/app.js")
    assert page.status_code == 200 and "app.js" in page.text and script.status_code == 200
    monkeypatch.setenv("EMOTION_WEB_DIR", "web")
    with LiveServer(create_app(make_settings(model_path, "haar"))) as server:
        assert "someone else's page" in httpx.get(server.url + "/").text


def test_startup_refuses_a_contract_breaking_model(make_model) -> None:
    broken = make_model(metadata={"crop_margin": None})
    app = create_app(make_settings(broken, "haar"))

    async def start() -> None:
        async with lifespan(app):
            pass

    with pytest.raises(ModelError, match="'crop_margin'"):
        asyncio.run(start())


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_startup_refuses_a_video_temp_dir_it_cannot_write(model_path: Path, tmp_path: Path, kind: str) -> None:
    # Was: the service started and answered every video upload 500 (FileExistsError / NotADirectoryError).
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    temp_dir = a_file if kind == "a file" else a_file / "videos"
    app = create_app(make_settings(model_path, "haar", video_temp_dir=temp_dir))

    async def start() -> None:
        async with lifespan(app):
            pass

    with pytest.raises(RuntimeError, match=f"EMOTION_VIDEO_TEMP_DIR {temp_dir}: video uploads cannot be written"):
        asyncio.run(start())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_m_server_starts_with_env_and_flags(model_path: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "EMOTION_MODEL_PATH": str(model_path), "EMOTION_DETECTOR": "haar", "EMOTION_PORT": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_ready(proc, port, "server")
        assert httpx.get(f"http://127.0.0.1:{port}/model").json()["detector"] == "haar"
        # Started outside the checkout, it still finds web/ through the project root.
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "face detector: haar" in out


def test_model_says_why_haar_stands_in_for_yunet(model_path: Path, tmp_path: Path) -> None:
    settings = make_settings(model_path, "auto", tmp_path / "no-yunet.onnx")
    with LiveServer(create_app(settings)) as server:
        info = httpx.get(server.url + "/model").json()
    assert info["detector"] == "haar" and info["detector_path"] is None
    assert "YuNet model not found: no-yunet.onnx" in info["detector_fallback"]
    assert str(tmp_path) not in info["detector_fallback"]  # the file's name, not where the server keeps it
