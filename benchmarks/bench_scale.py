"""Throughput and p95 latency of POST /predict and WS /ws through nginx, against 1 and 2 replicas (or --replicas).

Replicas are ``python -m server`` processes behind a real nginx on loopback (``deploy/local/cluster.py``), each with
``cores / replicas`` CPU threads, YuNet and the shipped classifier. Clients send the 640x480 one-face frame of
bench_ws.py: --clients HTTP clients posting back to back, and --clients live clients that behave like the page (one
frame in flight). Also printed: each replica's resident memory after the run (for the Deployment's requests).

    python benchmarks/bench_scale.py                          # 1 and 2 replicas, 8 clients, 10 s per cell
    python benchmarks/bench_scale.py --replicas 1 2 4 --clients 16 --seconds 20

On a machine with few cores, clients, nginx and replicas share them: more replicas than cores adds processes, not
capacity. The table says how many cores there were.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import websockets
from _common import ROOT, find_yunet, shipped_or_generated_model
from bench_ws import astronaut_jpeg

sys.path.insert(0, str(ROOT / "deploy" / "local"))
from cluster import LocalCluster  # noqa: E402


async def http_load(url: str, frame: bytes, clients: int, seconds: float) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal failures
        async with httpx.AsyncClient(timeout=30) as http:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                r = await http.post(f"{url}/predict", content=frame, headers={"content-type": "image/jpeg"})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), latencies, failures


async def ws_load(url: str, frame: bytes, clients: int, seconds: float) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        async with websockets.connect(url, max_size=None) as ws:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                await ws.send(frame)
                if '"result"' in await ws.recv():
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), latencies, errors


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (load-independent: what each answer costs)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--yunet", default=None)
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    model = shipped_or_generated_model(ROOT / "models" / "emotion_ferplus.onnx")
    yunet = find_yunet(args.yunet)
    detector = "yunet" if yunet else "haar"
    frame = astronaut_jpeg()
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = []
    for n in args.replicas:
        env = {
            "EMOTION_MODEL_PATH": str(model),
            "EMOTION_DETECTOR": detector,
            "EMOTION_THREADS": str(max(1, cores // n)),
            "EMOTION_WS_MAX_CONNECTIONS": str(args.clients),
            "EMOTION_LOG_LEVEL": "warning",
        }
        if yunet:
            env["EMOTION_YUNET_PATH"] = str(yunet)
        with LocalCluster(n, env=env) as cluster:
            asyncio.run(http_load(cluster.url, frame, 2, 1.0))  # warm-up
            for route, load, url in (
                ("POST /predict", http_load, cluster.url),
                ("WS /ws", ws_load, cluster.ws_url),
            ):
                pids = [r.proc.pid for r in cluster.replicas if r.proc]
                cpu_before = cpu_seconds(pids)
                count, latencies, failures = asyncio.run(load(url, frame, args.clients, args.seconds))
                cpu_ms = (cpu_seconds(pids) - cpu_before) * 1e3 / max(count, 1)
                p50, p95 = (np.percentile(latencies, [50, 95]) * 1e3) if latencies else (float("nan"),) * 2
                rows.append((route, n, count / args.seconds, p50, p95, failures, cpu_ms))
            rss = [rss_mib(r.proc.pid) for r in cluster.replicas if r.proc]
        rows[-1] = (*rows[-1], max(rss))
        rows[-2] = (*rows[-2], max(rss))

    print(
        f"\n{cores} CPU cores here; {args.clients} clients; {args.seconds:.0f} s per cell; detector {detector}; "
        f"640x480 JPEG, one face; each replica has cores/replicas CPU threads; nginx and clients share the cores"
    )
    print(f"load average before: {load_before}; CPU ms/answer = replicas' CPU time per answer (1000 / it = answers")
    print("per second per core when nothing else runs)")
    header = f"{'route':<14} {'replicas':>8} {'per s':>8} {'p50 ms':>8} {'p95 ms':>8} {'failed':>7}"
    print(f"{header} {'CPU ms/answer':>14} {'RSS MiB':>8}")
    for route, n, rate, p50, p95, failures, cpu_ms, rss in rows:
        line = f"{route:<14} {n:>8} {rate:>8.1f} {p50:>8.1f} {p95:>8.1f} {failures:>7}"
        print(f"{line} {cpu_ms:>14.1f} {rss:>8.0f}")


if __name__ == "__main__":
    main()
