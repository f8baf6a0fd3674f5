"""The live page in a real headless Chromium (system package, driven by Playwright) with a fake camera.

The camera is a .y4m clip of the astronaut photo built here; the page is served by a real uvicorn on loopback and
streams frames over WS /ws. Skips, saying why, where Chromium or Playwright is missing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import pytest
from conftest import LiveServer, make_settings
from y4m import astronaut_frame, jpeg, write_y4m

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("EMOTION_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"Chromium is missing ({CHROMIUM}); install it with `apt-get install -y chromium`", allow_module_level=True
    )


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = astronaut_frame(640, 480)
    return write_y4m(tmp_path_factory.mktemp("camera") / "astronaut.y4m", [frame] * 25, fps=25)


@pytest.fixture(scope="module")
def playwright() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright, camera_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Chromium with a fresh, empty profile and the clip as its camera."""
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera_clip}",
    ]
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("profile")),
        executable_path=CHROMIUM,
        headless=True,
        args=args,
        viewport={"width": 1280, "height": 1000},
    )
    try:
        yield context
    finally:
        context.close()


@contextmanager
def open_page(context, url: str) -> Iterator[object]:
    """A page of the service; fails the test if the console shows an error or a script throws."""
    problems: list[str] = []
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(url + "/")
    # Labels come from GET /model.
    page.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')", timeout=10_000)
    yield page
    page.close()
    assert not problems, problems


@pytest.fixture
def page(browser, live_server) -> Iterator[object]:
    with open_page(browser, live_server.url) as page:
        yield page


def test_live_page_labels_the_face(page) -> None:
    labels = page.evaluate("fetch('/model').then(r => r.json()).then(m => m.labels)")
    assert "never stored" in page.inner_text(".privacy-notice")

    page.click("#camera-toggle")
    page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
    shown = page.get_attribute("#current-labels", "data-labels").split(",")
    assert len(shown) == 1 and shown[0] in labels, shown
    page.wait_for_function("Number(document.getElementById('timeline').dataset.points) >= 2", timeout=15_000)
    assert page.inner_text("#stat-fps") != "–"
    assert page.inner_text("#stat-rtt").endswith("ms")
    assert page.get_attribute("#camera-toggle", "aria-pressed") == "true"
    assert "Dominant emotion" in page.inner_text("#summary-text")
    assert page.is_enabled("#csv-download")

    check_overlay_alignment(page)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "live.png"), full_page=True)

    csv = download_csv(page)
    header = csv.splitlines()[0].split(",")
    assert header[:5] == ["time_s", "timestamp", "frame_id", "face_index", "emotion"]
    assert [f"p_{label}" for label in labels] == header[-len(labels) :]
    rows = [line.split(",") for line in csv.splitlines()[1:]]
    assert len(rows) >= 2
    for row in rows:
        assert row[4] in labels and row[3] == "0"  # one face, index 0
        probabilities = [float(p) for p in row[-len(labels) :]]
        assert abs(sum(probabilities) - 1) < 0.01 and row[4] == labels[probabilities.index(max(probabilities))]

    page.click("#camera-toggle")
    assert page.get_attribute("#camera-toggle", "aria-pressed") == "false"
    assert page.get_attribute("#current-labels", "data-labels") == ""


def test_image_upload_draws_faces(page, tmp_path: Path) -> None:
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(jpeg(astronaut_frame(512, 512), 90))
    page.set_input_files("#image-file", str(photo))
    page.click("#image-form button[type=submit]")
    page.wait_for_function("document.getElementById('image-status').textContent.includes('found')", timeout=15_000)
    assert page.inner_text("#image-status").startswith("1 face found in a 512×512 image")
    assert page.is_visible("#image-canvas")
    assert page.evaluate("document.getElementById('image-canvas').width") == 512
    assert page.locator("#image-faces li").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#image-panel").screenshot(path=str(ARTIFACTS / "image-upload.png"))


def test_video_upload_streams_a_chart(page, live_server, tmp_path: Path) -> None:
    if "/predict/video" not in live_server.app.openapi()["paths"]:
        pytest.skip("this build has no POST /predict/video route")
    clip = tmp_path / "astronaut.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    frame = cv2.cvtColor(astronaut_frame(640, 480), cv2.COLOR_RGB2BGR)
    for _ in range(30):  # 3 s
        writer.write(frame)
    writer.release()
    page.set_input_files("#video-file", str(clip))
    page.click("#video-form button[type=submit]")
    page.wait_for_function("document.getElementById('video-status').textContent.startsWith('Done')", timeout=30_000)
    assert int(page.get_attribute("#video-chart", "data-points")) == 3
    assert page.inner_text("#video-summary").startswith("Dominant emotion")
    assert page.locator("#video-bars .bar").count() >= 7
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#video-panel").screenshot(path=str(ARTIFACTS / "video-upload.png"))


def check_overlay_alignment(page) -> None:
    """The box drawn on the overlay lies on the face as displayed: computed here from the frame's box, the video
    element's CSS box and the (mirrored) preview, independently of overlay.js."""
    frame = json.loads(page.get_attribute("#overlay", "data-frame"))
    layout = page.evaluate("""() => {
        const v = document.getElementById('video');
        return {w: v.clientWidth, h: v.clientHeight, vw: v.videoWidth, vh: v.videoHeight,
                mirrored: v.classList.contains('mirrored'), dpr: window.devicePixelRatio};
    }""")
    assert (layout["vw"], layout["vh"]) == (640, 480)
    assert layout["mirrored"]  # the default
    # object-fit: contain in a 4:3 stage: uniform scale, centred.
    scale = min(layout["w"] / layout["vw"], layout["h"] / layout["vh"])
    ox = (layout["w"] - layout["vw"] * scale) / 2
    oy = (layout["h"] - layout["vh"] * scale) / 2
    box = frame["boxes"][0]
    s = layout["vw"] * scale / frame["width"]
    x, y, w, h = ox + box["x"] * s, oy + box["y"] * s, box["w"] * s, box["h"] * s
    x = layout["w"] - x - w  # mirrored preview

    def alpha(px: float, py: float) -> int:
        return page.evaluate(
            """([x, y]) => {
            const c = document.getElementById('overlay');
            const d = window.devicePixelRatio || 1;
            const p = c.getContext('2d').getImageData(Math.round(x * d) - 1, Math.round(y * d) - 1, 3, 3).data;
            let a = 0;
            for (let i = 3; i < p.length; i += 4) a = Math.max(a, p[i]);
            return a;
        }""",
            [px, py],
        )

    for px, py in [(x, y + h / 2), (x + w, y + h / 2), (x + w / 2, y + h), (x + w / 2, y)]:
        assert alpha(px, py) > 0, f"no box edge drawn at ({px:.0f}, {py:.0f}) of the overlay"
    assert alpha(x + w / 2, y + h / 2) == 0, "the face centre should be left clear"
    # Where the box would be without mirroring there is no edge (the face is off-centre in the photo).
    unmirrored_left = layout["w"] - (x + w)
    if abs(unmirrored_left - x) > 10 and abs(unmirrored_left - (x + w)) > 10:
        assert alpha(unmirrored_left, y + h * 0.75) == 0


def download_csv(page) -> str:
    with page.expect_download() as info:
        page.click("#csv-download")
    return Path(info.value.path()).read_text()


def test_busy_server_is_shown_and_the_page_reconnects(browser, model_path) -> None:
    from websockets.sync.client import connect

    from server.app import create_app

    with (
        LiveServer(create_app(make_settings(model_path, "haar", ws_max_connections=1))) as server,
        open_page(browser, server.url) as page,
    ):
        with connect(server.url.replace("http://", "ws://") + "/ws"):  # takes the only place
            page.click("#camera-toggle")
            page.wait_for_function(
                "document.getElementById('live-status').textContent.includes('busy')", timeout=10_000
            )
            assert "error" in page.get_attribute("#live-status", "class")
            assert page.get_attribute("#current-labels", "data-labels") == ""
        # The place is free again: the page retries by itself and gets results.
        page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''", timeout=15_000)
        page.click("#camera-toggle")


def test_camera_denied_is_explained(playwright, live_server, tmp_path: Path) -> None:
    # No --use-fake-ui-for-media-stream and no permission granted: getUserMedia is refused.
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--use-fake-device-for-media-stream"]
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=args
    )
    try:
        with open_page(context, live_server.url) as page:
            page.click("#camera-toggle")
            page.wait_for_function("document.getElementById('live-status').classList.contains('error')", timeout=10_000)
            assert "denied" in page.inner_text("#live-status")
            assert page.get_attribute("#camera-toggle", "aria-pressed") == "false"
            assert page.is_enabled("#camera-toggle")
    finally:
        context.close()
