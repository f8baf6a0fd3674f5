"""Live-stream throughput and latency over loopback: processed frames per second and round-trip p50/p95.

Each client behaves like the web page: it sends a 640x480 JPEG, waits for the answer, sends the next (one frame
in flight). The server runs as its own process (uvicorn), so client and server do not share an interpreter.

    python benchmarks/bench_ws.py                    # 1 and 8 clients, 10 s each, default model and detector
    python benchmarks/bench_ws.py --clients 1 4 16 --seconds 20
    python benchmarks/bench_ws.py --url ws://127.0.0.1:8000/ws   # an already running server

Target (issue 4): >= 25 processed frames per second for one client, p95 round trip < 100 ms, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import websockets

ROOT = Path(__file__).resolve().parent.parent


def astronaut_jpeg(width: int = 640, height: int = 480, quality: int = 80) -> bytes:
    """The astronaut photo letterboxed into a width x height frame, as JPEG (what the page sends)."""
    from skimage import data

    photo = data.astronaut()
    scale = min(width / photo.shape[1], height / photo.shape[0])
    w, h = round(photo.shape[1] * scale), round(photo.shape[0] * scale)
    frame = np.full((height, width, 3), 96, np.uint8)
    x, y = (width - w) // 2, (height - h) // 2
    frame[y : y + h, x : x + w] = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model(tmp: Path) -> Path:
    shipped = ROOT / "models" / "emotion_ferplus.onnx"
    if shipped.is_file():
        return shipped
    # No trained model yet: the tests' tiny contract-honouring graph (classifier cost is then near zero).
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_onnx_model

    print(f"note: {shipped} not found; using a tiny generated model (classifier time not representative)")
    return build_onnx_model(tmp / "tiny_emotion.onnx")


def start_server(model: Path, detector: str, port: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        EMOTION_MODEL_PATH=str(model),
        EMOTION_DETECTOR=detector,
        EMOTION_LOG_LEVEL="warning",
        EMOTION_WS_MAX_CONNECTIONS="64",
    )
    yunet = ROOT.parent / "shared" / "models" / "face_detection_yunet_2023mar.onnx"
    if "EMOTION_YUNET_PATH" not in env and not (ROOT / "models" / yunet.name).is_file() and yunet.is_file():
        env["EMOTION_YUNET_PATH"] = str(yunet)
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "server.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with code {proc.returncode}") from None
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server did not become ready in 60 s")


async def client(
    url: str,
    frame: bytes,
    stop_at: float,
    warmup_until: float,
    rtts: list[float],
    server_ms: list[float],
    faces: list[int],
) -> int:
    processed = 0
    async with websockets.connect(url, max_size=None) as ws:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await ws.send(frame)
            message = json.loads(await ws.recv())
            end = time.perf_counter()
            if message.get("type") != "result":
                raise RuntimeError(f"unexpected answer: {message}")
            if start >= warmup_until:
                processed += 1
                rtts.append((end - start) * 1e3)
                server_ms.append(message["server_ms"])
                faces.append(len(message["faces"]))
    return processed


async def scenario(url: str, frame: bytes, clients: int, seconds: float, warmup: float) -> dict[str, float]:
    rtts: list[float] = []
    server_ms: list[float] = []
    faces: list[int] = []
    t0 = time.perf_counter()
    warmup_until = t0 + warmup
    stop_at = warmup_until + seconds
    counts = await asyncio.gather(
        *(client(url, frame, stop_at, warmup_until, rtts, server_ms, faces) for _ in range(clients))
    )
    measured = time.perf_counter() - warmup_until
    q = statistics.quantiles(rtts, n=100, method="inclusive")
    return {
        "clients": clients,
        "fps": sum(counts) / measured,
        "fps_per_client": sum(counts) / measured / clients,
        "rtt_p50": q[49],
        "rtt_p95": q[94],
        "server_p50": statistics.median(server_ms),
        "faces_mean": statistics.fmean(faces),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--url", help="ws:// URL of a running server (else one is started)")
    parser.add_argument("--model", type=Path, help="emotion model (default: models/emotion_ferplus.onnx)")
    parser.add_argument("--detector", default="auto", choices=["auto", "yunet", "haar"])
    args = parser.parse_args()

    frame = astronaut_jpeg()
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url
        if url is None:
            port = free_port()
            proc = start_server(args.model or default_model(Path(tmp)), args.detector, port)
            url = f"ws://127.0.0.1:{port}/ws"
        try:
            http = url.replace("ws://", "http://").replace("wss://", "https://").rsplit("/ws", 1)[0]
            with urllib.request.urlopen(f"{http}/model", timeout=5) as r:
                info = json.load(r)
            print(f"server {http}: detector {info['detector']}, model {info['path']} ({len(info['labels'])} labels)")
            print(
                f"frame: 640x480 JPEG, {len(frame)} bytes; {os.cpu_count()} CPU cores; "
                f"{args.seconds:g} s per scenario after {args.warmup:g} s warm-up"
            )
            print(
                f"{'clients':>7} {'fps total':>9} {'fps/client':>10} {'rtt p50 ms':>10} {'rtt p95 ms':>10} "
                f"{'server p50 ms':>13} {'faces':>5}"
            )
            for n in args.clients:
                r = asyncio.run(scenario(url, frame, n, args.seconds, args.warmup))
                print(
                    f"{r['clients']:>7} {r['fps']:>9.1f} {r['fps_per_client']:>10.1f} {r['rtt_p50']:>10.1f} "
                    f"{r['rtt_p95']:>10.1f} {r['server_p50']:>13.1f} {r['faces_mean']:>5.2f}"
                )
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
