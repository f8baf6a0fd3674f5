"""Seconds of video analysed per second of wall time, for a 60 s 1280x720 30 fps clip with a face.

    python benchmarks/bench_video.py [--video PATH] [--every 1.0] [--model PATH] [--yunet PATH] [--detector D]

Without --video it writes the clip (mp4v, keyframe every 12 frames, as OpenCV writes it) into a temporary
directory: the astronaut photo at 720x720 (a ~140 px face, a talking head's size) drifting across a grey
1280x720 frame with a frame counter, so no two frames are equal. It prints wall seconds, CPU seconds and the
speed-up over real time for the frame sampler alone (decode only, each strategy) and for the whole analysis
(decode + detect + classify, ``VideoAnalysis`` as the route and the CLI run it). Target: >= 20x real time with
every=1 on 2 cores. On a shared machine wall time includes waiting for a core; the load average printed first
says how busy it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import find_yunet, shipped_or_generated_model  # noqa: E402

from server.config import Settings  # noqa: E402
from server.pipeline import EmotionPipeline  # noqa: E402
from server.video import FrameSampler, VideoAnalysis  # noqa: E402


def write_clip(path: Path, seconds: int = 60, fps: int = 30, width: int = 1280, height: int = 720) -> Path:
    from skimage import data

    side = min(width, height)
    face = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (side, side), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for i in range(seconds * fps):
        frame = np.full((height, width, 3), 110, np.uint8)
        x = int((width - side) * (0.5 + 0.4 * np.sin(i / 90)))  # drifts left and right every ~19 s
        frame[(height - side) // 2 : (height + side) // 2, x : x + side] = face
        cv2.putText(frame, f"{i:05d}", (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
        writer.write(frame)
    writer.release()
    return path


def timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def report(name: str, duration: float, wall: float, cpu: float, extra: str = "") -> None:
    print(f"  {name:<34} wall {wall:6.2f} s  cpu {cpu:6.2f} s  {duration / wall:6.1f}x real time{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=None, help="a clip to use instead of the generated one")
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--model", type=Path, default=ROOT / "models/emotion_ferplus.onnx")
    parser.add_argument(
        "--yunet", default=None, help="YuNet .onnx (default: EMOTION_YUNET_PATH, models/, ../shared/models/)"
    )
    parser.add_argument("--detector", choices=["yunet", "haar", "both"], default="both")
    args = parser.parse_args()

    model = shipped_or_generated_model(args.model)
    video = args.video
    if video is None:
        video = Path(tempfile.mkdtemp()) / "bench_60s_720p30.mp4"
        wall, _, _ = timed(lambda: write_clip(video))
        print(f"wrote {video} ({video.stat().st_size / 1e6:.1f} MB) in {wall:.1f} s")

    with FrameSampler(video, args.every) as sampler:
        info = sampler.info
    duration = info.duration or 0.0
    print(
        f"clip: {info.width}x{info.height}, {info.fps:g} fps, {duration:.1f} s, codec {info.codec}; "
        f"every={args.every:g} s; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
        f"(other jobs share the cores)"
    )

    print("frame sampling only (decode, no pipeline):")
    for strategy in ("grab", "seek", "auto"):

        def sample(strategy: str = strategy) -> tuple[int, int]:
            with FrameSampler(video, args.every, strategy=strategy) as s:
                return sum(1 for _ in s), s.frames_read

        wall, cpu, (n, decoded) = timed(sample)
        report(strategy, duration, wall, cpu, f"  ({n} samples, {decoded} frames decoded)")

    yunet = find_yunet(args.yunet)
    detectors = ["yunet", "haar"] if args.detector == "both" else [args.detector]
    if "yunet" in detectors and yunet is None:
        print("YuNet model not found (pass --yunet or set EMOTION_YUNET_PATH): Haar only")
        detectors = ["haar"]
    print("whole analysis (VideoAnalysis: sample + detect + classify, as POST /predict/video and `emotion video`):")
    for kind in detectors:
        settings = Settings(model_path=model, detector=kind, yunet_path=yunet or "missing.onnx")
        pipeline = EmotionPipeline.from_settings(settings)

        for prefetch in (True, False):

            def analyse(pipeline: EmotionPipeline = pipeline, prefetch: bool = prefetch) -> tuple[int, int]:
                with VideoAnalysis.open(video, pipeline, args.every, prefetch=prefetch) as analysis:
                    frames = [item.result for item in analysis]
                return len(frames), sum(bool(f.faces) for f in frames)

            wall, cpu, (n, with_face) = timed(analyse)
            name = f"{kind}, {'decoding ahead in a thread' if prefetch else 'decode then classify'}"
            report(name, duration, wall, cpu, f"  ({n} samples, {with_face} with a face)")
    print("target: >= 20x real time with every=1")


if __name__ == "__main__":
    main()
