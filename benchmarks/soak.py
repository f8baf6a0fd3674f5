"""Soak / fuzz run of any length against a real server: valid and hostile traffic mixed, for --seconds.

Clients pick at random: a valid 640x480 JPEG to POST /predict, a mutated image (raw or multipart), a broken
multipart body, a short video (valid or mutated) to POST /predict/video, a request abandoned before its answer, and
a WebSocket session of frames and hostile control messages. At the end it prints status counts per kind,
p50/p95/p99 latency (all answers, and valid /predict alone), the server's resident memory before (after a warm-up)
and after, and whether /healthz still answers. Exit status 1 on any 5xx or a dead server.

    python benchmarks/soak.py                         # 30 s, 8 clients, a server started here (python -m server)
    python benchmarks/soak.py --seconds 600 --clients 32
    python benchmarks/soak.py --url http://127.0.0.1:8000 --pid 1234   # a running server (pid: for its memory)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import httpx
import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, find_yunet  # noqa: E402


def astronaut(width: int, height: int) -> np.ndarray:
    from skimage import data

    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    scale = min(width / photo.shape[1], height / photo.shape[0])
    resized = cv2.resize(
        photo, (int(photo.shape[1] * scale), int(photo.shape[0] * scale)), interpolation=cv2.INTER_AREA
    )
    frame = np.zeros((height, width, 3), np.uint8)
    y, x = (height - resized.shape[0]) // 2, (width - resized.shape[1]) // 2
    frame[y : y + resized.shape[0], x : x + resized.shape[1]] = resized
    return frame


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def small_video(path: Path) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    frame = astronaut(160, 120)
    for _ in range(30):
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def mutate(rng: random.Random, data: bytes) -> bytes:
    """1-4 random edits, favouring the header: bit flips, extreme integers, truncation, insertion, repetition."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        pos = rng.randrange(min(64, len(out))) if rng.random() < 0.5 else rng.randrange(len(out))
        kind = rng.choice(["flip", "int", "truncate", "insert", "repeat"])
        if kind == "flip":
            out[pos] ^= 1 << rng.randrange(8)
        elif kind == "int":
            value = rng.choice([0, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 20, 1 << 24])
            out[pos : pos + 4] = (value & 0xFFFFFFFF).to_bytes(4, rng.choice(["little", "big"]))
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = rng.randbytes(rng.randint(1, 64))
        else:
            out[pos:pos] = bytes(out[pos : pos + rng.randint(1, 256)]) * rng.randint(1, 8)
    return bytes(out)


def broken_multipart(rng: random.Random, image: bytes) -> tuple[bytes, str]:
    boundary = "".join(rng.choice("abcdefghij0123456789-_") for _ in range(rng.choice([1, 16, 70, 300])))
    name = rng.choice(["file", "junk", ""])
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x"\r\n\r\n'.encode()
    body += image + (f"\r\n--{boundary}--\r\n".encode() if rng.random() < 0.5 else b"")
    return mutate(rng, body) if rng.random() < 0.5 else body, f"multipart/form-data; boundary={boundary}"


class Tally:
    def __init__(self) -> None:
        self.status: dict[str, Counter[str]] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)

    def add(self, kind: str, status: str, seconds: float | None = None) -> None:
        self.status[kind][status] += 1
        if seconds is not None:
            self.latency[kind].append(seconds)


async def http_client(url: str, rng: random.Random, tally: Tally, stop: float, inputs: dict[str, bytes]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < stop:
            kind = rng.choices(
                ["valid", "mutated image", "broken multipart", "video", "mutated video", "abandoned"],
                weights=[4, 4, 2, 1, 1, 1],
            )[0]
            start = time.perf_counter()
            try:
                if kind == "valid":
                    r = await client.post("/predict", content=inputs["jpeg"], headers={"content-type": "image/jpeg"})
                elif kind == "mutated image":
                    data = mutate(rng, inputs[rng.choice(["jpeg", "png", "webp", "bmp"])])
                    if rng.random() < 0.5:
                        r = await client.post("/predict", files={"file": ("x", data, "application/octet-stream")})
                    else:
                        r = await client.post("/predict", content=data, headers={"content-type": "image/jpeg"})
                elif kind == "broken multipart":
                    body, content_type = broken_multipart(rng, inputs["png"])
                    route = rng.choice(["/predict", "/predict/video"])
                    r = await client.post(route, content=body, headers={"content-type": content_type})
                elif kind in ("video", "mutated video"):
                    video = inputs["video"] if kind == "video" else mutate(rng, inputs["video"])
                    params = {"every": rng.choice([0.5, 1, 5]), "format": rng.choice(["json", "ndjson"])}
                    r = await client.post("/predict/video", params=params, files={"file": ("v.avi", video)})
                else:  # sent in full, then the client gives up before the answer
                    with contextlib.suppress(httpx.TimeoutException):
                        await client.post(
                            "/predict", content=inputs["big"], headers={"content-type": "image/jpeg"}, timeout=0.05
                        )
                    tally.add(kind, "given up")
                    continue
                tally.add(kind, str(r.status_code), time.perf_counter() - start)
            except httpx.HTTPError as exc:
                tally.add(kind, type(exc).__name__)


async def ws_client(url: str, rng: random.Random, tally: Tally, stop: float, inputs: dict[str, bytes]) -> None:
    hostile = ["[" * 50_000, '{"max_faces": "x"}', '{"' + "k" * 10_000 + '": 1}', '{"type": "ping"}', "{" * 900]
    while time.monotonic() < stop:
        try:
            async with websockets.connect(url.replace("http", "ws", 1) + "/ws", max_size=None) as ws:
                for _ in range(rng.randint(5, 50)):
                    if time.monotonic() >= stop:
                        break
                    message: str | bytes
                    if rng.random() < 0.6:
                        message = inputs["jpeg"] if rng.random() < 0.5 else mutate(rng, inputs["jpeg"])
                    else:
                        message = rng.choice(hostile)
                    start = time.perf_counter()
                    await ws.send(message)
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    detail = reply.get("error", "")
                    kind = "internal error" if "internal" in detail else reply["type"]
                    tally.add("ws", kind, time.perf_counter() - start)
        except (websockets.ConnectionClosed, OSError, TimeoutError) as exc:
            tally.add("ws", f"closed: {type(exc).__name__}")


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def start_server(port: int) -> subprocess.Popen:
    # OpenCV's and FFmpeg's own logs would print a line per broken input: the statuses say it all here.
    env = dict(os.environ, EMOTION_PORT=str(port), EMOTION_LOG_LEVEL="warning", OPENCV_LOG_LEVEL="OFF")
    env.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    yunet = find_yunet(None)
    if yunet is not None and "EMOTION_YUNET_PATH" not in env:
        env["EMOTION_YUNET_PATH"] = str(yunet)
    proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        if proc.poll() is not None:
            raise SystemExit("the server exited during start-up")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {q[49] * 1e3:.0f} ms, p95 {q[94] * 1e3:.0f} ms, p99 {q[98] * 1e3:.0f} ms (n={len(values)})"


async def soak(url: str, seconds: float, clients: int, seed: int, inputs: dict[str, bytes], tally: Tally) -> None:
    stop = time.monotonic() + seconds
    rng = random.Random(seed)
    tasks = [http_client(url, random.Random(rng.random()), tally, stop, inputs) for _ in range(clients)]
    tasks += [ws_client(url, random.Random(rng.random()), tally, stop, inputs) for _ in range(max(1, clients // 4))]
    await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=8, help="HTTP clients (plus a quarter as many WebSockets)")
    parser.add_argument("--url", help="a running server (default: start python -m server here)")
    parser.add_argument("--pid", type=int, help="pid of the --url server, to read its memory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    frame = astronaut(640, 480)
    inputs = {
        "jpeg": encode(frame, ".jpg"),
        "png": encode(astronaut(96, 72), ".png"),
        "webp": encode(astronaut(96, 72), ".webp"),
        "bmp": encode(astronaut(96, 72), ".bmp"),
        "big": encode(np.zeros((6000, 6000), np.uint8), ".jpg"),  # ~0.5 s of work, for abandoned requests
        "video": small_video(tmp / "clip.avi"),
    }
    proc = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start_server(port)
        url, pid = f"http://127.0.0.1:{port}", proc.pid
    try:
        for _ in range(20):  # warm-up, so that "before" is the memory of a server that has served
            httpx.post(f"{url}/predict", content=inputs["jpeg"], headers={"content-type": "image/jpeg"}, timeout=60)
        before = rss_mib(pid)
        tally = Tally()
        start = time.monotonic()
        asyncio.run(soak(url, args.seconds, args.clients, args.seed, inputs, tally))
        elapsed = time.monotonic() - start
        time.sleep(1.0)
        after = rss_mib(pid)
        try:
            alive = httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        except httpx.HTTPError:
            alive = False
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    total = sum(sum(c.values()) for c in tally.status.values())
    print(f"soak: {elapsed:.0f} s, {args.clients} HTTP + {max(1, args.clients // 4)} WS clients, {total} exchanges")
    for kind in sorted(tally.status):
        counts = ", ".join(f"{status}: {n}" for status, n in sorted(tally.status[kind].items()))
        print(f"  {kind:18s} {counts}")
    print(f"latency, all answers: {percentiles([v for vs in tally.latency.values() for v in vs])}")
    print(f"latency, valid /predict: {percentiles(tally.latency['valid'])}")
    if before is not None and after is not None:
        print(f"server RSS: {before:.0f} MiB before, {after:.0f} MiB after ({after - before:+.0f} MiB)")
    print(f"server alive at the end: {alive}")
    errors = sum(n for c in tally.status.values() for s, n in c.items() if s.startswith("5") or s == "internal error")
    print(f"5xx answers / internal errors: {errors}")
    sys.exit(0 if alive and errors == 0 else 1)


if __name__ == "__main__":
    main()
