"""The live page in a real headless Chromium (system package, driven by Playwright) with a fake camera.

The camera is a .y4m clip of the astronaut photo built here; the page is served by a real uvicorn on loopback and
streams frames over WS /ws. Skips, saying why, where Chromium or Playwright is missing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from y4m import astronaut_frame, write_y4m

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("EMOTION_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"Chromium is missing ({CHROMIUM}); install it with `apt-get install -y chromium`",
                allow_module_level=True)


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = astronaut_frame(640, 480)
    return write_y4m(tmp_path_factory.mktemp("camera") / "astronaut.y4m", [frame] * 25, fps=25)


def test_live_page_labels_the_face(live_server, camera_clip: Path, tmp_path: Path) -> None:
    args = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera_clip}",
    ]
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a new, empty profile
            executable_path=CHROMIUM, headless=True, args=args, viewport={"width": 1280, "height": 1000},
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(live_server.url + "/")

            # Labels come from GET /model.
            page.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')",
                                   timeout=10_000)
            labels = page.evaluate("fetch('/model').then(r => r.json()).then(m => m.labels)")
            assert "never stored" in page.inner_text(".privacy-notice")

            page.click("#camera-toggle")
            page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''",
                                   timeout=15_000)
            shown = page.get_attribute("#current-labels", "data-labels").split(",")
            assert len(shown) == 1 and shown[0] in labels, shown
            page.wait_for_function("Number(document.getElementById('timeline').dataset.points) >= 2",
                                   timeout=15_000)
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
            assert header[:4] == ["time_s", "frame_id", "face_index", "emotion"]
            assert [f"p_{label}" for label in labels] == header[-len(labels):]
            assert len(csv.splitlines()) >= 3

            page.click("#camera-toggle")
            assert page.get_attribute("#camera-toggle", "aria-pressed") == "false"
        finally:
            context.close()
    assert not problems, problems


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
        return page.evaluate("""([x, y]) => {
            const c = document.getElementById('overlay');
            const d = window.devicePixelRatio || 1;
            const p = c.getContext('2d').getImageData(Math.round(x * d) - 1, Math.round(y * d) - 1, 3, 3).data;
            let a = 0;
            for (let i = 3; i < p.length; i += 4) a = Math.max(a, p[i]);
            return a;
        }""", [px, py])

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
