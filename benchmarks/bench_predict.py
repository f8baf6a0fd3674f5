"""Latency of the image pipeline and of ``POST /predict`` over loopback, for a 640x480 one-face image.

    python benchmarks/bench_predict.py [--iterations 100] [--http-iterations 50] [--model PATH] [--yunet PATH]

Prints p50/p95 wall-clock milliseconds per detector (Haar, and YuNet when its file is found: --yunet,
EMOTION_YUNET_PATH, models/, or ../shared/models/), plus the CPU milliseconds the calling thread used: on a
shared machine wall time includes waiting for a core, CPU time does not. Target: pipeline p50 < 15 ms.
Without models/emotion_ferplus.onnx it uses a generated contract-honouring model (tests/conftest.py), so the
classifier share of the numbers is then not that of the shipped network.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import find_yunet, shipped_or_generated_model  # noqa: E402

from server.app import create_app  # noqa: E402
from server.config import Settings  # noqa: E402
from server.pipeline import EmotionPipeline, decode_image  # noqa: E402


def one_face_frame() -> np.ndarray:
    """The astronaut photo scaled to 480x480 on a 640x480 canvas: one face of ~85x100 px, like a webcam."""
    from skimage import data

    face = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (480, 480), interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(face, 0, 0, 80, 80, cv2.BORDER_REPLICATE)


def percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {statistics.median(values):7.2f}  p95 {q[94]:7.2f}"


def bench_pipeline(pipeline: EmotionPipeline, image: np.ndarray, iterations: int) -> None:
    faces, _ = pipeline.predict(image)
    assert len(faces) == 1, f"expected one face, got {len(faces)}"
    for _ in range(5):
        pipeline.predict(image)
    wall, cpu, stages = [], [], {"detect": [], "classify": []}
    for _ in range(iterations):
        t, c = time.perf_counter(), time.thread_time()
        _, timings = pipeline.predict(image)
        cpu.append((time.thread_time() - c) * 1e3)
        wall.append((time.perf_counter() - t) * 1e3)
        for k in stages:
            stages[k].append(timings[k])
    print(f"  pipeline.predict     wall ms  {percentiles(wall)}   (cpu ms p50 {statistics.median(cpu):.2f})")
    for k, v in stages.items():
        print(f"    {k:<18} wall ms  {percentiles(v)}")


def bench_decode(jpeg: bytes, settings: Settings, iterations: int) -> None:
    wall = []
    for _ in range(iterations):
        t = time.perf_counter()
        decode_image(jpeg, settings)
        wall.append((time.perf_counter() - t) * 1e3)
    print(f"  decode 640x480 JPEG  wall ms  {percentiles(wall)}")


def bench_http(settings: Settings, jpeg: bytes, iterations: int) -> None:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:

            def post() -> httpx.Response:
                return client.post("/predict", files={"file": ("frame.jpg", jpeg, "image/jpeg")})

            assert len(post().json()["faces"]) == 1
            for _ in range(5):
                post()
            wall = []
            for _ in range(iterations):
                t = time.perf_counter()
                r = post()
                wall.append((time.perf_counter() - t) * 1e3)
                r.raise_for_status()
        print(f"  POST /predict        wall ms  {percentiles(wall)}   (sequential, JPEG {len(jpeg) // 1024} KiB)")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--http-iterations", type=int, default=50)
    parser.add_argument("--model", type=Path, default=ROOT / "models/emotion_ferplus.onnx")
    parser.add_argument(
        "--yunet", default=None, help="YuNet .onnx (default: EMOTION_YUNET_PATH, models/, ../shared/models/)"
    )
    args = parser.parse_args()

    model = shipped_or_generated_model(args.model)
    image = one_face_frame()
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    print(
        f"cpu cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (other work on the machine inflates "
        f"wall times), opencv threads {cv2.getNumThreads()}, model {model}"
    )

    yunet = find_yunet(args.yunet)
    detectors = ["haar"] + (["yunet"] if yunet else [])
    if not yunet:
        print("YuNet model not found (pass --yunet or set EMOTION_YUNET_PATH): Haar only")
    for kind in detectors:
        settings = Settings(model_path=model, detector=kind, yunet_path=yunet or "missing.onnx")
        pipeline = EmotionPipeline.from_settings(settings)
        scale = pipeline.detection_scale(image.shape[1], image.shape[0])
        print(
            f"\n{kind}: 640x480 frame, detection on a {round(640 * scale)}x{round(480 * scale)} copy, "
            f"{args.iterations} iterations"
        )
        if kind == detectors[0]:
            bench_decode(jpeg, settings, args.iterations)
        bench_pipeline(pipeline, image, args.iterations)
        bench_http(settings, jpeg, args.http_iterations)


if __name__ == "__main__":
    main()
