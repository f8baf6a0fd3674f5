"""Regenerates the page's screenshots in docs/img/ (README): the live page at desktop (1280x800) and phone
(390x844) sizes, and a session report saved with the page's "Save report" button.

A real service (``python -m server``) runs on a free loopback port, and a real headless Chromium (Playwright) gets a
fake camera: a looping clip of photos from faces-in-the-wild (two faces, then one, then none), so the boxes, the
numbering, the timeline with its "no face" stretch and the summary all show. Run from the repository root:

    python docs/screenshots.py [--photos ../shared/datasets/faces-in-the-wild] [--seconds 25]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from y4m import write_y4m  # noqa: E402  (the test suite's fake-camera writer)

CHROMIUM = os.environ.get("EMOTION_CHROMIUM", "/usr/bin/chromium")
MAX_BYTES = 300_000
# A smiling face and a surprised one (labels.csv: happy, surprise); each photo is about 350x350, the face filling it.
FACE_A = "Carrie-Anne_Moss_0003.jpg"
FACE_B = "Beyonce_Knowles_0001.jpg"
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def photo(path: Path, side: int) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def camera_frames(photos: Path, fps: int) -> list[np.ndarray]:
    """5 s of two faces (the larger is face 1), 3 s of the second face alone, 2 s of an empty room."""
    background = np.full((480, 640, 3), (92, 96, 104), np.uint8)
    a, b = photo(photos / "images" / FACE_A, 300), photo(photos / "images" / FACE_B, 220)
    both = background.copy()
    both[90:390, 20:320] = a
    both[170:390, 390:610] = b
    alone = background.copy()
    alone[90:390, 170:470] = photo(photos / "images" / FACE_B, 300)
    return [both] * (5 * fps) + [alone] * (3 * fps) + [background] * (2 * fps)


def default_photos() -> Path:
    """../shared/datasets/faces-in-the-wild beside the checkout (or beside the folder of a git worktree)."""
    candidates = [base / "shared" / "datasets" / "faces-in-the-wild" for base in (ROOT.parent, ROOT.parent.parent)]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("the service did not become ready in 60 s")


def save_small_png(data: bytes, path: Path) -> None:
    """The PNG as is when it is under MAX_BYTES, else reduced to a 256-colour palette (screenshots stay sharp)."""
    if len(data) > MAX_BYTES:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
            buffer, "PNG", optimize=True
        )
        data = buffer.getvalue()
    if len(data) > MAX_BYTES:
        raise SystemExit(f"{path.name} is {len(data)} bytes even with a palette (limit {MAX_BYTES})")
    path.write_bytes(data)
    print(f"{path.relative_to(ROOT)}: {Image.open(path).size[0]}x{Image.open(path).size[1]}, {len(data)} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=default_photos(), help="faces-in-the-wild (labels.csv, images/)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--seconds", type=float, default=25, help="how long the camera streams before the shots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    port = free_port()
    server = start_server(port)
    try:
        with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
            clip = write_y4m(Path(tmp) / "camera.y4m", camera_frames(args.photos, fps=10), fps=10)
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-video-capture={clip}",
                ],
            )
            for name, (width, height) in SIZES.items():
                mobile = name == "phone"
                page = browser.new_page(
                    viewport={"width": width, "height": height},
                    device_scale_factor=1,
                    is_mobile=mobile,
                    has_touch=mobile,
                    accept_downloads=True,
                )
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')")
                page.click("#camera-toggle")
                page.wait_for_function("document.getElementById('current-labels').dataset.labels !== ''")
                page.wait_for_timeout(args.seconds * 1000)
                # Shoot 1.5 s into the two-face part of the loop, away from a cut (boxes lag the picture by a frame).
                faces = "document.getElementById('current-labels').dataset.labels.split(',').filter(Boolean).length"
                page.wait_for_function(f"{faces} !== 2", timeout=15_000)
                page.wait_for_function(f"{faces} === 2", timeout=15_000)
                page.wait_for_timeout(1500)
                # The camera panel at the top (below the header and the notes): boxes, gauges, timeline, summary.
                page.evaluate("window.scrollTo(0, document.getElementById('live').offsetTop - 8)")
                save_small_png(page.screenshot(), args.out / f"page-{name}.png")
                if not mobile:
                    with page.expect_download() as download:
                        page.click("#report-download")
                    save_small_png(Path(download.value.path()).read_bytes(), args.out / "session-report.png")
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
