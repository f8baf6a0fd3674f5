"""POST /predict/video and server/video.py on clips written by OpenCV, through a real uvicorn on loopback."""

from __future__ import annotations

import json
import math
import os
import resource
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import ASTRONAUT_FACE, LiveServer, iou, make_settings, wait_until_ready
from videos import (
    annex_b,
    encode_video,
    face_then_no_face,
    frame_number,
    gray_jpeg,
    mjpeg_avi,
    mpeg_ts,
    nal_units,
    numbered_frame,
    truncate,
    write_video,
)

from server.pipeline import InputError
from server.schemas import Box, Face, VideoFrame
from server.video import ANIMATED_WEBP, FrameSampler, VideoSummarizer

# The astronaut photo (512x512) letterboxed into 640x480: scale 480/512, 80 px bars left and right.
SCALE = 480 / 512
FACE_IN_FRAME = (
    80 + ASTRONAUT_FACE[0] * SCALE,
    ASTRONAUT_FACE[1] * SCALE,
    ASTRONAUT_FACE[2] * SCALE,
    ASTRONAUT_FACE[3] * SCALE,
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """20 s at 25 fps, 640x480: the astronaut for 10 s, then the coffee cup; as MJPG .avi and mp4v .mp4."""
    d = tmp_path_factory.mktemp("videos")
    return {suffix: face_then_no_face(d / f"face_then_none{suffix}") for suffix in (".avi", ".mp4")}


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def server(model_path: Path, upload_dir: Path) -> Iterator[LiveServer]:
    from server.app import create_app

    settings = make_settings(model_path, "haar", video_temp_dir=upload_dir)
    with LiveServer(create_app(settings)) as live:
        yield live


def post_video(server: LiveServer, path: Path, **params: object) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(
            f"{server.url}/predict/video",
            params=params,
            files={"file": (path.name, f, "application/octet-stream")},
            timeout=120,
        )


def wait_empty(directory: Path, timeout: float = 15.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while (left := list(directory.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# --- sampling --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def numbered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 s at 25 fps whose frames show their own number, in three codecs."""
    d = tmp_path_factory.mktemp("numbered")
    return {
        s: write_video(d / f"numbered{s}", (numbered_frame(i) for i in range(300))) for s in (".avi", ".mp4", ".webm")
    }


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".webm"])
@pytest.mark.parametrize("every", [1.0, 2.5, 0.3, 7.0])
def test_sampler_returns_the_frame_nearest_each_time(numbered: dict[str, Path], suffix: str, every: float) -> None:
    # Nearest frame to k * every, a tie (2.5 s = frame 62.5) going to the earlier one.
    expected = sorted({math.floor(k * every * 25 + 0.5 - 1e-6) for k in range(int(12 / every) + 1)} - {300})
    read = {}
    for strategy in ("grab", "seek", "auto"):
        with FrameSampler(numbered[suffix], every, strategy=strategy) as sampler:
            frames = list(sampler)
            read[strategy] = sampler.frames_read
        assert [f.index for f in frames] == expected, strategy
        assert [frame_number(f.image) for f in frames] == expected, f"{strategy}: decoded pixels of other frames"
        assert [f.t for f in frames] == pytest.approx([i / 25 for i in expected], abs=1e-3)
    # Seeking really skips decoding. "auto" decodes no more than grabbing: an intra-only codec (MJPG) decodes just
    # the samples; otherwise it learns the keyframe spacing while grabbing, then seeks over gaps longer than a
    # keyframe interval plus the seek's cost (mp4v: keyframes every 12 frames, so gaps of 25 frames or more).
    assert read["grab"] > read["seek"]
    assert read["auto"] <= read["grab"]
    if suffix == ".avi":
        assert read["auto"] == len(expected)
    if suffix == ".mp4" and every >= 1.0:
        assert read["auto"] < read["grab"]


def test_every_shorter_than_a_frame_analyses_every_frame_and_says_so(tmp_path: Path) -> None:
    # 2 s at 5 fps asked for every 0.1 s: ten frames exist, each is analysed once, and `every` becomes the frame
    # interval, so the summary's seconds (and the page's time axis) count 0.2 s per analysed frame, not 0.1.
    clip = write_video(tmp_path / "slow.avi", (numbered_frame(i) for i in range(10)), fps=5)
    with FrameSampler(clip, every=0.1) as sampler:
        assert sampler.every == pytest.approx(0.2)
        frames = list(sampler)
    assert [frame_number(f.image) for f in frames] == list(range(10))
    assert [f.t for f in frames] == pytest.approx([i / 5 for i in range(10)], abs=1e-3)
    with FrameSampler(clip, every=0.5) as sampler:  # longer than a frame: as asked
        assert sampler.every == 0.5


def test_sampler_limits_and_non_videos(numbered: dict[str, Path], tmp_path: Path, astronaut_jpeg: bytes) -> None:
    with pytest.raises(InputError) as err:
        FrameSampler(numbered[".mp4"], max_seconds=5)
    assert err.value.status_code == 413 and "12.0 s long" in err.value.detail
    for suffix in (".avi", ".mp4"):
        with pytest.raises(InputError) as err:
            FrameSampler(numbered[suffix], max_pixels=160 * 120 - 1)
        assert err.value.status_code == 413 and "160x120" in err.value.detail
        with FrameSampler(numbered[suffix], max_pixels=160 * 120) as sampler:
            assert len(list(sampler)) == 12
    (tmp_path / "photo.mp4").write_bytes(astronaut_jpeg)
    with pytest.raises(InputError) as err:
        FrameSampler(tmp_path / "photo.mp4")
    assert err.value.status_code == 415 and "still image" in err.value.detail
    (tmp_path / "list.m3u8").write_text("#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n")
    with pytest.raises(InputError) as err:
        FrameSampler(tmp_path / "list.m3u8")
    assert err.value.status_code == 415 and "text" in err.value.detail
    with pytest.raises(InputError) as err:
        FrameSampler(numbered[".mp4"], every=0.0)
    assert err.value.status_code == 422


def test_analysis_decodes_ahead_and_stops_cleanly(numbered: dict[str, Path], haar_pipeline: object) -> None:
    from server.video import VideoAnalysis

    def run(prefetch: bool) -> list[tuple[float, int]]:
        with VideoAnalysis.open(numbered[".mp4"], haar_pipeline, 0.5, prefetch=prefetch) as analysis:
            return [(item.sample.t, frame_number(item.sample.image)) for item in analysis]

    indices = [math.floor(k * 12.5 + 0.5 - 1e-6) for k in range(24)]
    assert run(True) == run(False) == [(round(i / 25, 3), i) for i in indices]
    analysis = VideoAnalysis.open(numbered[".mp4"], haar_pipeline, 0.5)
    assert analysis.next_frame() is not None
    thread = analysis._prefetcher._thread  # type: ignore[union-attr]
    assert thread.is_alive()  # blocked two samples ahead, waiting for room in its queue
    analysis.close()
    assert not thread.is_alive() and analysis.next_frame() is None


def face(emotion: str, labels: tuple[str, ...] = ("neutral", "happy", "sad")) -> Face:
    probabilities = {label: (0.8 if label == emotion else 0.2 / (len(labels) - 1)) for label in labels}
    return Face(
        box=Box(x=0, y=0, w=10, h=10),
        detection_score=0.9,
        emotion=emotion,
        confidence=0.8,
        probabilities=probabilities,
        valence=0.0,
        arousal=0.0,
    )


def test_summary_counts_the_largest_face_per_frame() -> None:
    summarizer = VideoSummarizer(every=0.5)
    emotions = [["happy", "sad"], ["happy"], [], ["sad"], ["happy", "sad", "sad"], []]
    for i, names in enumerate(emotions):
        summarizer.add(VideoFrame(t=i * 0.5, faces=[face(n) for n in names]))
    summary = summarizer.result()
    assert (summary.sampled, summary.with_face, summary.without_face) == (6, 4, 2)
    assert summary.seconds_without_face == 1.0
    assert summary.emotion_share == {"neutral": 0.0, "happy": 0.75, "sad": 0.25}
    assert summary.dominant_emotion == "happy"


def test_summary_without_faces_and_ties() -> None:
    empty = VideoSummarizer(every=1.0)
    empty.add(VideoFrame(t=0.0, faces=[]))
    assert empty.result().dominant_emotion is None and empty.result().emotion_share == {}
    tie = VideoSummarizer(every=1.0)
    for i, name in enumerate(["sad", "happy"]):
        tie.add(VideoFrame(t=float(i), faces=[face(name)]))
    assert tie.result().dominant_emotion == "happy"  # the model's label order breaks ties, not frame order


# --- the route -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_json_has_faces_in_the_first_half_only(
    server: LiveServer, clips: dict[str, Path], upload_dir: Path, suffix: str
) -> None:
    r = post_video(server, clips[suffix])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["duration"], body["fps"], body["every"], body["width"], body["height"]) == (20.0, 25.0, 1.0, 640, 480)
    frames = body["frames"]
    assert len(frames) in (20, 21)
    assert [f["t"] for f in frames] == pytest.approx(list(range(len(frames))))
    with_face = [f for f in frames if f["t"] < 10]
    assert len(with_face) == 10
    for f in with_face:
        assert len(f["faces"]) == 1, f
        b = f["faces"][0]["box"]
        assert iou((b["x"], b["y"], b["w"], b["h"]), FACE_IN_FRAME) > 0.4  # pixels of the video frame
    assert all(f["faces"] == [] for f in frames if f["t"] >= 10)
    summary = body["summary"]
    assert (summary["sampled"], summary["with_face"], summary["without_face"]) == (len(frames), 10, len(frames) - 10)
    assert summary["seconds_without_face"] == float(len(frames) - 10)
    assert sum(summary["emotion_share"].values()) == pytest.approx(1.0, abs=1e-3)
    counts = {e: sum(f["faces"][0]["emotion"] == e for f in with_face) for e in summary["emotion_share"]}
    assert summary["dominant_emotion"] == max(counts, key=counts.get)
    assert wait_empty(upload_dir, timeout=0.5) == []  # deleted before the answer was sent


def test_every_and_raw_body(server: LiveServer, clips: dict[str, Path], upload_dir: Path) -> None:
    r = httpx.post(
        f"{server.url}/predict/video",
        params={"every": 2.5},
        content=clips[".mp4"].read_bytes(),
        headers={"Content-Type": "video/mp4"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert [f["t"] for f in r.json()["frames"]] == pytest.approx([0, 2.48, 5, 7.48, 10, 12.48, 15, 17.48])
    for params in ({"every": 0}, {"every": 601}, {"every": "x"}, {"format": "xml"}):
        r = post_video(server, clips[".mp4"], **params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["detail"]
    for params in ({"every": "nan"}, {"smoothing": "nan"}, {"smoothing": "inf"}):  # said "<= 60" before
        r = post_video(server, clips[".mp4"], **params)
        assert r.status_code == 422 and "finite number" in r.json()["detail"], (params, r.text)
    assert wait_empty(upload_dir) == []


def test_ndjson_streams_lines_while_analysing(server: LiveServer, clips: dict[str, Path], upload_dir: Path) -> None:
    with (
        open(clips[".avi"], "rb") as f,
        httpx.stream(
            "POST",
            f"{server.url}/predict/video",
            params={"format": "ndjson", "every": 0.25},
            files={"file": ("clip.avi", f, "video/x-msvideo")},
            timeout=120,
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = r.iter_lines()
        first = json.loads(next(lines))
        # The first line is here while the rest is still being computed: the upload is still on disk, under a
        # random name, readable by the server's user only.
        during = [(p.name, stat.S_IMODE(p.stat().st_mode)) for p in upload_dir.iterdir()]
        rest = [json.loads(line) for line in lines if line]
    assert first["t"] == 0.0 and len(first["faces"]) == 1
    assert len(during) == 1 and during[0][0].startswith("emotion-video-") and during[0][1] == 0o600
    frames, end = [first, *rest[:-1]], rest[-1]
    assert len(frames) == 80 and all("t" in f and "faces" in f for f in frames)
    assert [bool(f["faces"]) for f in frames] == [f["t"] < 10 for f in frames]
    assert end["summary"]["sampled"] == 80 and end["summary"]["with_face"] == 40 and end["duration"] == 20.0
    assert list(upload_dir.iterdir()) == []


def test_ndjson_client_disconnect_deletes_the_upload(
    server: LiveServer, clips: dict[str, Path], upload_dir: Path
) -> None:
    with (
        open(clips[".mp4"], "rb") as f,
        httpx.stream(
            "POST",
            f"{server.url}/predict/video",
            params={"format": "ndjson", "every": 0.1},
            files={"file": ("clip.mp4", f, "video/mp4")},
            timeout=120,
        ) as r,
    ):
        assert r.status_code == 200
        # Keep the line iterator: dropping it would close the connection already (httpx closes a response whose
        # byte stream is abandoned).
        lines = r.iter_lines()
        first = json.loads(next(lines))
        assert first["t"] == 0.0, first
        assert len(list(upload_dir.iterdir())) == 1
    # Leaving the block closed the connection after one of 200 lines.
    assert wait_empty(upload_dir) == []
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_client_gone_during_upload_deletes_the_partial_file(
    server: LiveServer, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import socket

    caplog.set_level(logging.INFO, logger="server")

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /predict/video HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
            b"Content-Length: 5000000\r\n\r\n" + b"\0" * 200_000
        )
        deadline = time.monotonic() + 10
        while not list(upload_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(list(upload_dir.iterdir())) == 1  # the upload was being written
    assert wait_empty(upload_dir) == []
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    messages = [r.getMessage() for r in caplog.records if r.name == "server"]
    assert "client disconnected before its upload was complete" in messages
    assert not any("unhandled" in m for m in messages)  # not logged as a server error


def test_client_gone_while_the_video_opens_closes_the_decoder(
    server: LiveServer, clips: dict[str, Path], upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import threading

    from server.video import VideoAnalysis

    # Opening (probe, first frame, decode thread started) runs in a thread; the client hangs up meanwhile.
    opened: list[VideoAnalysis] = []
    client_left = threading.Event()
    real_open = VideoAnalysis.open.__func__  # type: ignore[attr-defined]

    def open_while_the_client_leaves(cls: type[VideoAnalysis], *args: object, **kwargs: object) -> VideoAnalysis:
        analysis = real_open(cls, *args, **kwargs)
        opened.append(analysis)
        client_left.wait(10)
        time.sleep(0.3)  # the route sees the disconnect while this job still runs
        return analysis

    monkeypatch.setattr(VideoAnalysis, "open", classmethod(open_while_the_client_leaves))
    data = clips[".mp4"].read_bytes()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /predict/video HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data) + data
        )
        deadline = time.monotonic() + 30
        while not opened and time.monotonic() < deadline:
            time.sleep(0.02)
        assert opened, "the video was not opened"
    client_left.set()
    analysis = opened[0]
    assert analysis._prefetcher is not None
    analysis._prefetcher._thread.join(10)  # before: it waited forever to hand over its frames, holding the decoder
    assert not analysis._prefetcher._thread.is_alive() and analysis._closed
    assert wait_empty(upload_dir) == []
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.fixture(scope="module")
def bad_files(
    tmp_path_factory: pytest.TempPathFactory, clips: dict[str, Path], astronaut_jpeg: bytes
) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(200_000))
    (d / "notes.txt").write_text("not a video\n" * 100)
    (d / "photo.jpg").write_bytes(astronaut_jpeg)
    (d / "empty.mp4").write_bytes(b"")
    return {
        "random": d / "random.mp4",
        "text": d / "notes.txt",
        "image": d / "photo.jpg",
        "empty": d / "empty.mp4",
        "half_mp4": truncate(clips[".mp4"], d / "half.mp4"),
        "half_avi": truncate(clips[".avi"], d / "half.avi"),
    }


@pytest.mark.parametrize(
    ("name", "status", "words"),
    [
        ("random", 415, "could not open"),
        ("half_mp4", 415, "could not open"),  # the index (moov) is at the end of an MP4: cut, it cannot be opened
        ("half_avi", 422, "truncated"),  # an AVI reads up to the cut: refused once frames stop before its header's end
        ("text", 415, "text"),
        ("image", 415, "still image"),
        ("empty", 400, "empty"),
    ],
)
def test_bad_files_get_a_4xx_that_says_why(
    server: LiveServer, bad_files: dict[str, Path], upload_dir: Path, name: str, status: int, words: str
) -> None:
    r = post_video(server, bad_files[name])
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert wait_empty(upload_dir, timeout=0.5) == []


def test_truncated_video_in_ndjson_ends_with_an_error_line(
    server: LiveServer, bad_files: dict[str, Path], upload_dir: Path
) -> None:
    r = post_video(server, bad_files["half_avi"], format="ndjson")
    assert r.status_code == 200  # sent before the cut was reached
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert 1 <= len(lines) - 1 < 20 and all("faces" in line for line in lines[:-1])
    assert lines[-1]["status_code"] == 422 and "truncated" in lines[-1]["detail"]
    assert list(upload_dir.iterdir()) == []


def test_wrong_content_and_missing_field(server: LiveServer, upload_dir: Path) -> None:
    url = f"{server.url}/predict/video"
    r = httpx.post(url, content=b"\x89PNG....", headers={"Content-Type": "image/png"})
    assert r.status_code == 415 and "video/*" in r.json()["detail"]
    r = httpx.post(url, files={"video": ("a.mp4", b"1234", "video/mp4")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = httpx.post(url, files={"file": ("a.png", b"1234", "image/png")})
    assert r.status_code == 415
    assert wait_empty(upload_dir) == []


@pytest.fixture(scope="module")
def strict(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    """A server with a 300 kB, 5 s and 100,000 pixel limit."""
    from server.app import create_app

    uploads = tmp_path_factory.mktemp("strict_uploads")
    settings = make_settings(
        model_path, "haar", video_temp_dir=uploads, max_video_bytes=300_000, max_video_seconds=5, max_pixels=100_000
    )
    with LiveServer(create_app(settings)) as live:
        yield live, uploads


def test_byte_limit_while_streaming(strict: tuple[LiveServer, Path]) -> None:
    server, uploads = strict
    url = f"{server.url}/predict/video"
    # Declared too large: refused on the header.
    r = httpx.post(url, content=b"\0" * 400_000, headers={"Content-Type": "video/mp4"})
    assert r.status_code == 413 and "300000" in r.json()["detail"]

    # Chunked (no Content-Length): refused while the bytes arrive.
    def body() -> Iterator[bytes]:
        for _ in range(10):
            yield b"\0" * 64_000

    r = httpx.post(url, content=body(), headers={"Content-Type": "video/mp4"})
    assert r.status_code == 413 and "over the video limit" in r.json()["detail"]
    assert wait_empty(uploads) == []


def test_a_full_video_temp_folder_is_503_with_retry_after(model_path: Path, tmp_path: Path) -> None:
    """Uploads that fill the temporary folder (ENOSPC) were a 500 with the OSError in the log. Here a real
    `python -m server` under a 1 MB file size limit (RLIMIT_FSIZE: the same OSError, EFBIG, from the same write)."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "EMOTION_MODEL_PATH": str(model_path),
        "EMOTION_DETECTOR": "haar",
        "EMOTION_VIDEO_TEMP_DIR": str(uploads),
        "OMP_NUM_THREADS": "1",
    }

    def small_files() -> None:  # Python ignores SIGXFSZ: a write past the limit raises instead of killing the server
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))

    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=small_files,
    )
    try:
        wait_until_ready(proc, port, "server")
        url = f"http://127.0.0.1:{port}/predict/video"
        r = httpx.post(url, content=b"\0" * 2_000_000, headers={"Content-Type": "video/mp4"}, timeout=60)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1" and "no room left to store the video" in r.json()["detail"]
        assert wait_empty(uploads) == []
        clip = write_video(tmp_path / "small.avi", [numbered_frame(i) for i in range(10)], fps=10)
        r = httpx.post(url, files={"file": ("small.avi", clip.read_bytes(), "video/x-msvideo")}, timeout=60)
        assert r.status_code == 200 and len(r.json()["frames"]) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_mjpeg_frame_of_too_many_scans_is_422_not_decoded(server: LiveServer, tmp_path: Path) -> None:
    """A JPEG frame is decoded one pass over the frame per scan, and a scan can be 14 bytes: 3000 copies of the last
    one in a 2000x2000 frame (42 kB) took 0.9 s to decode, and a 512 MiB AVI of them would take days."""
    image = cv2.imencode(".jpg", np.full((2000, 2000, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    progressive = image.tobytes()
    last_scan = progressive[progressive.rindex(b"\xff\xda") : -2]  # up to the end-of-image marker
    bomb = progressive[:-2] + last_scan * 300 + b"\xff\xd9"
    clip = mjpeg_avi(tmp_path / "scans.avi", [progressive, bomb, progressive], 2000, 2000)
    r = post_video(server, clip, every=0.1)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["detail"] == "the frame at 0.10 s is a JPEG of 310 scans, over the limit of 100"
    clip = mjpeg_avi(tmp_path / "first.avi", [bomb, progressive], 2000, 2000)
    r = post_video(server, clip)
    assert r.status_code == 422 and "310 scans" in r.json()["detail"]
    clip = mjpeg_avi(tmp_path / "fine.avi", [progressive] * 3, 2000, 2000)  # its own 10 scans
    assert post_video(server, clip, every=0.1).status_code == 200


def test_duration_limit(strict: tuple[LiveServer, Path], tmp_path: Path) -> None:
    server, uploads = strict
    clip = face_then_no_face(tmp_path / "long.mp4", 4, 4, width=160, height=120)
    assert clip.stat().st_size < 300_000
    r = post_video(server, clip)
    assert r.status_code == 413 and "8.0 s long" in r.json()["detail"] and "5 s" in r.json()["detail"]
    assert wait_empty(uploads) == []


@pytest.fixture(scope="module")
def hurried(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    """A server that gives each video 0.1 s of decoding."""
    from server.app import create_app

    uploads = tmp_path_factory.mktemp("hurried_uploads")
    settings = make_settings(model_path, "haar", video_temp_dir=uploads, max_video_analysis_seconds=0.1)
    with LiveServer(create_app(settings)) as live:
        yield live, uploads


def wait_idle(server: LiveServer, timeout: float = 15.0) -> None:
    """No job of the work pool pending and no video decoding thread left."""
    pool = server.app.state.pool  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while pool.pending or any(t.name == "video-decode" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the video's work slot or decoding thread was not freed"
        time.sleep(0.05)


def test_a_video_over_the_analysis_time_limit_is_413(
    hurried: tuple[LiveServer, Path], server: LiveServer, clips: dict[str, Path]
) -> None:
    """Every other limit let a very compressible H.264 of large frames at a high frame rate decode for hours. Here
    the 20 s clip at every=0.1 (500 frames decoded, ~0.5 s) on a server that allows 0.1 s; its first sample, decoded
    when the video opens, takes a few ms."""
    live, uploads = hurried
    r = post_video(live, clips[".mp4"], every=0.1)
    assert r.status_code == 413, r.text[:300]
    detail = r.json()["detail"]
    assert "took longer than the limit of 0.1 s" in detail and "a larger `every`" in detail, detail
    assert wait_empty(uploads) == []
    wait_idle(live)

    r = post_video(live, clips[".mp4"], every=0.1, format="ndjson")
    assert r.status_code == 200  # the stream had started: its last line says why it stopped
    lines = [json.loads(line) for line in r.text.splitlines()]
    frames, error = lines[:-1], lines[-1]
    assert 1 <= len(frames) < 200 and all("faces" in line for line in frames)
    nearest = [math.floor(k * 0.1 * 25 + 0.5 - 1e-6) / 25 for k in range(len(frames))]  # 25 fps: 0.1 s -> 0.08 s
    assert [line["t"] for line in frames] == pytest.approx(nearest, abs=1e-3)
    assert error["status_code"] == 413 and "took longer than the limit of 0.1 s" in error["detail"], error
    stopped = float(error["detail"].split("stopped ")[1].split(" s into the video")[0])
    assert frames[-1]["t"] - 0.05 <= stopped < 20
    assert wait_empty(uploads) == []
    wait_idle(live)

    # Under the default limit the same video is analysed to its end.
    r = post_video(server, clips[".mp4"], every=0.1)
    assert r.status_code == 200 and len(r.json()["frames"]) == 200


def test_time_waiting_with_a_frame_in_hand_is_not_charged(numbered: dict[str, Path]) -> None:
    # 24 samples whose consumer takes 0.05 s each (the classifier, a thread of the work queue): 1.2 s in all, while
    # decoding the 160x120 clip takes a few ms.
    with FrameSampler(numbered[".mp4"], 0.5, max_analysis_seconds=0.5) as sampler:
        for _ in sampler:
            time.sleep(0.05)
    assert sampler.frames_read > 24
    with pytest.raises(InputError) as err, FrameSampler(numbered[".mp4"], 0.5, max_analysis_seconds=1e-9) as sampler:
        list(sampler)
    assert err.value.status_code == 413 and "stopped 0.0 s into the video" in err.value.detail


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_an_h264_or_hevc_frame_over_the_pixel_limit_is_413_over_http(
    strict: tuple[LiveServer, Path], tmp_path: Path, codec: str
) -> None:
    # The JSON answer was a 200 without the large frames; the stream's last line was its summary.
    server, uploads = strict
    clip = mpeg_ts(tmp_path / "switch.ts", annex_b(SWITCH, codec), codec)
    r = post_video(server, clip, every=0.2)
    assert r.status_code == 413, r.text
    assert "at 1.00 s is over the limit of 100000 pixels (1280x1024)" in r.json()["detail"]
    r = post_video(server, clip, every=0.2, format="ndjson")
    assert r.status_code == 200  # the stream had started: its last line says why it stopped
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [line["t"] for line in lines[:-1]] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert lines[-1]["status_code"] == 413 and "over the limit of 100000 pixels" in lines[-1]["detail"], lines[-1]
    assert wait_empty(uploads) == []


def test_openapi_documents_the_route(server: LiveServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    op = spec["paths"]["/predict/video"]["post"]
    assert "multipart/form-data" in op["requestBody"]["content"]
    assert {"200", "413", "415", "422"} <= set(op["responses"])
    assert {p["name"] for p in op["parameters"]} == {"every", "format", "smoothing", "raw"}


def test_frames_match_the_pipeline_on_the_same_frames(
    server: LiveServer, clips: dict[str, Path], haar_pipeline: object
) -> None:
    # The route adds nothing to the pipeline but the track: without smoothing, its answer for t is the pipeline's
    # answer for that frame, with a track id.
    body = post_video(server, clips[".mp4"], smoothing=0).json()
    cap = cv2.VideoCapture(str(clips[".mp4"]))
    for f in body["frames"][::5]:
        cap.set(cv2.CAP_PROP_POS_FRAMES, round(f["t"] * 25))
        ok, image = cap.read()
        assert ok
        faces, _ = haar_pipeline.predict(image)  # type: ignore[attr-defined]
        assert all(face.pop("track_id") == 1 for face in f["faces"])
        assert [x.model_dump(exclude={"track_id"}) for x in faces] == f["faces"]
    cap.release()


def test_the_pages_every_field_has_the_apis_limits() -> None:
    """The page clamps `every` to its input's min/max: they must be the limits POST /predict/video enforces."""
    from html.parser import HTMLParser

    from conftest import ROOT

    from server.video import EVERY_MAX, EVERY_MIN

    found: dict[str, str | None] = {}

    class FindEvery(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if dict(attrs).get("id") == "video-every":
                found.update(attrs)

    FindEvery().feed((ROOT / "web" / "index.html").read_text())
    assert float(found["min"] or "nan") == EVERY_MIN and float(found["max"] or "nan") == EVERY_MAX


# --- what a video's header does not say ------------------------------------------------------------------------


def test_a_frame_larger_than_the_header_says_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    # Header and first frame 64x48, second frame 2000x2000 (4 megapixels), a limit of 100,000: FFmpeg is told the
    # limit and refuses the frame before allocating it (OpenCV decoded it at full size, then scaled it down).
    clip = mjpeg_avi(tmp_path / "liar.avi", [gray_jpeg(64, 48), gray_jpeg(2000, 2000), gray_jpeg(64, 48)], 64, 48)
    with FrameSampler(clip, every=0.1, max_pixels=100_000) as sampler:
        assert (sampler.info.width, sampler.info.height) == (64, 48)
        frames = iter(sampler)
        assert next(frames).image.shape == (48, 64, 3)
        with pytest.raises(InputError) as err:
            next(frames)
    assert err.value.status_code == 413
    assert "at 0.10 s is over the limit of 100000 pixels" in err.value.detail and "64x48" in err.value.detail
    # The same clip as its first frame: refused while FFmpeg probes the stream.
    first = mjpeg_avi(tmp_path / "first.avi", [gray_jpeg(2000, 2000), gray_jpeg(64, 48)], 64, 48)
    with pytest.raises(InputError) as err:
        FrameSampler(first, max_pixels=100_000)
    assert err.value.status_code == 413 and "over the limit of 100000 pixels" in err.value.detail


# 64x48 for 1 s, then five frames of 1280x1024 (1.3 megapixels), then 64x48 again: one stream whose size changes.
SWITCH = [(64, 48, 25), (1280, 1024, 5), (64, 48, 25)]


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_an_h264_or_hevc_frame_over_the_limit_is_refused_before_it_is_decoded(tmp_path: Path, codec: str) -> None:
    # In an MPEG-TS, as a broadcast that switches resolution sends it. FFmpeg refuses the large frames before
    # allocating them, but the H.264 and HEVC decoders report that as corrupt data (HEVC: as no memory), and they were
    # skipped like corrupt frames: the answer went on without them (or ended as "truncated" in an MP4).
    clip = mpeg_ts(tmp_path / "switch.ts", annex_b(SWITCH, codec), codec)
    with FrameSampler(clip, every=0.2) as sampler:  # without a limit: all of them, at the header's size
        assert [(f.image.shape, frame_number(f.image)) for f in sampler] == [((48, 64, 3), i) for i in range(0, 55, 5)]
    with FrameSampler(clip, every=0.2, max_pixels=100_000) as sampler:
        assert (sampler.info.width, sampler.info.height) == (64, 48)
        frames = iter(sampler)
        assert [frame_number(next(frames).image) for _ in range(5)] == [0, 5, 10, 15, 20]
        with pytest.raises(InputError) as err:
            next(frames)
    assert err.value.status_code == 413
    assert "a frame at 1.00 s is over the limit of 100000 pixels (1280x1024)" in err.value.detail
    assert "the video says its frames are 64x48" in err.value.detail


@pytest.mark.parametrize(("codec", "broken"), [("libx264", 5), ("libx265", 33)])
def test_corrupt_h264_or_hevc_within_the_limit_is_skipped_not_413(tmp_path: Path, codec: str, broken: int) -> None:
    # What tells a frame over the limit from corrupt data is the size the decoder took from the parameter sets: here
    # the limit is the video's own size, and the keyframes of its second half are zeroed (H.264: their slices; HEVC:
    # the SPS x265 writes before each; a broken H.264 SPS is ignored without an error).
    import av

    data = bytearray(annex_b([(160, 120, 100)], codec, g="25"))
    for kind, start, end in nal_units(bytes(data), codec):
        if kind == broken and start > len(data) // 2:
            data[start:end] = bytes(end - start)
    clip = mpeg_ts(tmp_path / "corrupt.ts", bytes(data), codec)
    errors = 0
    with av.open(str(clip)) as container:
        for packet in container.demux(video=0):
            try:
                packet.decode()
            except av.FFmpegError:
                errors += 1
    assert errors > 0  # FFmpeg does fail on these packets
    with FrameSampler(clip, every=0.2, max_pixels=160 * 120) as sampler:
        frames = [frame_number(f.image) for f in sampler]
    assert frames[:10] == list(range(0, 50, 5))  # the first half, then what decodes of the rest; no 413


def test_corrupt_hevc_after_frames_a_little_over_the_limit_is_skipped_not_413(tmp_path: Path) -> None:
    # FFmpeg refuses a frame only past decoder_pixel_limit (the limit x 1.25 + 256 K pixels, its alignment margin):
    # a 400x300 part (120,000 pixels) under a limit of 100,000 decodes and is scaled to the header's size. The next
    # part's parameter sets zeroed, the decoder fails on its frames with 400x300 still in its context: corrupt data,
    # which a check against the limit itself took for a frame over it (413).
    import av

    data = bytearray(annex_b([(64, 48, 25), (400, 300, 25), (64, 48, 25)], "libx265", g="25"))
    sps = [(start, end) for kind, start, end in nal_units(bytes(data), "libx265") if kind == 33]
    start, end = sps[2]  # the last part's
    data[start:end] = bytes(end - start)
    clip = mpeg_ts(tmp_path / "corrupt.ts", bytes(data), "libx265")
    with av.open(str(clip)) as container:
        errors = 0
        for packet in container.demux(video=0):
            try:
                packet.decode()
            except av.FFmpegError:
                errors += 1
    assert errors > 0  # FFmpeg does fail on these packets
    with FrameSampler(clip, every=0.2, max_pixels=100_000) as sampler:
        frames = [(frame_number(f.image), f.image.shape) for f in sampler]
    assert frames[:10] == [(i, (48, 64, 3)) for i in range(0, 50, 5)]  # both parts that decode; no 413


def test_a_frame_of_another_size_within_the_limit_comes_at_the_header_size(tmp_path: Path) -> None:
    clip = mjpeg_avi(tmp_path / "sizes.avi", [gray_jpeg(64, 48, 50), gray_jpeg(128, 96, 200)], 64, 48)
    with FrameSampler(clip, every=0.1) as sampler:
        frames = list(sampler)
    assert [f.image.shape for f in frames] == [(48, 64, 3), (48, 64, 3)]  # face boxes stay in the header's pixels
    assert frames[1].image.mean() == pytest.approx(200, abs=3)


def test_a_phone_video_comes_upright(tmp_path: Path) -> None:
    # Recorded 160x120 with a display rotation of 90 degrees counter-clockwise, as a phone held upright writes it:
    # the frames come 120 wide and 160 tall, the white corner of the stored frame (top left) at the bottom left.
    stored = np.zeros((120, 160, 3), np.uint8)
    stored[:20, :40] = 255
    clip = encode_video(tmp_path / "phone.mp4", [stored] * 10, "mpeg4", rotation=90)
    with FrameSampler(clip, every=0.2) as sampler:
        assert (sampler.info.width, sampler.info.height) == (120, 160)
        image = next(iter(sampler)).image
    assert image.shape == (160, 120, 3)
    white = np.argwhere(image[..., 0] > 128)
    assert white.min(0) == pytest.approx([120, 0], abs=2) and white.max(0) == pytest.approx([159, 19], abs=2)


def test_long_keyframe_intervals_are_grabbed_through_not_sought(tmp_path: Path) -> None:
    # H.264 with a keyframe every 100 frames: a sample every 2 s (50 frames) is nearer by decoding on than by
    # seeking back to the last keyframe, so "auto" decodes no more than grabbing; every 8 s it seeks.
    clip = encode_video(
        tmp_path / "gop100.mp4", (numbered_frame(i) for i in range(300)), "libx264", g="100", preset="ultrafast"
    )
    for every, expected_auto in ((2.0, "grab"), (8.0, "less")):
        read = {}
        for strategy in ("grab", "auto"):
            with FrameSampler(clip, every, strategy=strategy) as sampler:
                frames = list(sampler)
                read[strategy] = sampler.frames_read
            assert [frame_number(f.image) for f in frames] == [f.index for f in frames]
            assert [f.index for f in frames] == list(range(0, 300, int(every * 25)))
        assert read["auto"] == read["grab"] if expected_auto == "grab" else read["auto"] < read["grab"], (every, read)


@pytest.mark.parametrize(("codec", "options"), [("libx264", {"preset": "ultrafast"}), ("mpeg2video", {})])
def test_mpeg_ts_is_read_through_not_sought(tmp_path: Path, codec: str, options: dict[str, str]) -> None:
    # FFmpeg seeks MPEG-TS by searching its timestamps and often lands on the keyframe after the target: with a
    # keyframe every second, the sample for 7.5 s was the frame at 8 s.
    clip = encode_video(tmp_path / "gop25.ts", (numbered_frame(i) for i in range(200)), codec, g="25", **options)
    for strategy in ("auto", "seek"):  # "seek" (benchmarks/bench_video.py --video x.ts) ended in a false 422
        with FrameSampler(clip, 2.5, strategy=strategy) as sampler:
            frames = list(sampler)
        assert [f.index for f in frames] == [0, 62, 125, 187], strategy
        assert [frame_number(f.image) for f in frames] == [0, 62, 125, 187], strategy


@pytest.mark.parametrize(
    ("codec", "options", "runs"),
    [
        ("libx264", {"preset": "veryfast", "bf": "3"}, [(0.2, "grab"), (1.0, "auto")]),  # auto seeks by the index
        # Seeking lands a frame late here (the keyframe is stored before two B-frames shown before it, an open GOP):
        # "auto" sees it and reads on from the start instead.
        ("mpeg4", {"bf": "2"}, [(0.2, "grab"), (1.0, "auto"), (2.0, "auto")]),
    ],
)
def test_b_frames_in_avi_come_at_their_own_times(
    tmp_path: Path, codec: str, options: dict[str, str], runs: list[tuple[float, str]]
) -> None:
    # AVI stores no presentation times and FFmpeg's guesses are wrong with B-frames: H.264 came out of order and three
    # frames late (the sample for 1 s showed frame 22), MPEG-4 as Xvid writes it one frame late.
    clip = encode_video(tmp_path / "bframes.avi", (numbered_frame(i) for i in range(100)), codec, g="25", **options)
    for every, strategy in runs:
        with FrameSampler(clip, every, strategy=strategy) as sampler:
            frames = list(sampler)
        expected = list(range(0, 100, round(every * 25)))
        assert [f.index for f in frames] == expected, strategy
        assert [frame_number(f.image) for f in frames] == expected, strategy


def test_raw_dv_has_its_frame_rate(tmp_path: Path) -> None:
    # A camcorder's .dv file reports an average rate of 60000 fps (its time base): it was refused with a 422.
    frames = (numbered_frame(i, 720, 576) for i in range(2))
    clip = encode_video(tmp_path / "tape.dv", frames, "dvvideo")
    with FrameSampler(clip) as sampler:
        assert (sampler.info.fps, sampler.info.frame_count) == (25.0, 2)
        assert [(f.t, frame_number(f.image)) for f in sampler] == [(0.0, 0)]


def test_audio_with_a_cover_picture_is_not_a_video(tmp_path: Path) -> None:
    # An MP3's cover art is a one-frame "video" stream: it was refused as a video with no usable frame rate (422).
    import av

    path = tmp_path / "song.mp3"
    cover = cv2.imencode(".jpg", np.full((32, 32, 3), 90, np.uint8))[1].tobytes()
    with av.open(str(path), "w") as container:
        audio = container.add_stream("libmp3lame", rate=44100, layout="mono")
        picture = container.add_stream("mjpeg", rate=1)
        picture.width, picture.height, picture.pix_fmt = 32, 32, "yuvj420p"
        picture.disposition = av.stream.Disposition.attached_pic
        packet = av.Packet(cover)
        packet.stream, packet.pts, packet.dts = picture, 0, 0
        container.mux(packet)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1152
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    with pytest.raises(InputError) as err:
        FrameSampler(path)
    assert err.value.status_code == 415 and "no video stream" in err.value.detail


def test_a_frame_count_estimated_from_the_duration_does_not_end_the_video(tmp_path: Path) -> None:
    # MPEG-PS states no frame count; the one estimated from its duration said 38 for these 50 frames, and the last
    # 0.5 s were never analysed.
    clip = encode_video(tmp_path / "program.mpg", (numbered_frame(i) for i in range(50)), "mpeg2video", g="12")
    with FrameSampler(clip, 0.2) as sampler:
        estimated = sampler.info.frame_count
        frames = list(sampler)
    assert estimated is not None and estimated < 50  # what the header's duration says
    assert [frame_number(f.image) for f in frames] == list(range(0, 50, 5))
    assert sampler.duration == pytest.approx(2.0, abs=0.05)  # what was read, not the estimate's 1.5 s


def test_a_longer_audio_track_is_no_truncation(tmp_path: Path) -> None:
    # A WebM of 1 s of video and 3 s of audio: its duration is the audio's, and the frame count estimated from it
    # made the video "truncated or corrupt" (422).
    import av

    path = tmp_path / "talk.webm"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx-vp9", rate=25)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        audio = container.add_stream("libopus", rate=48000)
        for i in range(25):
            container.mux(video.encode(av.VideoFrame.from_ndarray(numbered_frame(i), format="bgr24")))
        container.mux(video.encode())
        for i in range(150):  # 3 s of 20 ms silence
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 960
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    with FrameSampler(path, 0.5) as sampler:
        assert [frame_number(f.image) for f in sampler] == [0, 12]


@pytest.mark.parametrize(
    ("name", "codec", "content_type"),
    [
        ("clip.ts", "mpeg2video", "text/vnd.trolltech.linguist"),  # Linux's MIME table (and so httpx's) for .ts
        ("clip.3gp", "h263", "audio/3gpp"),
        ("clip.asf", "wmv2", "application/vnd.ms-asf"),
    ],
)
def test_a_video_file_under_its_own_names_label_is_analysed(
    server: LiveServer, tmp_path: Path, name: str, codec: str, content_type: str
) -> None:
    # A client labels a file by its extension; these labels were refused with 415 "expected video/*" before the
    # bytes were looked at. The bytes decide now; only an image's label is refused.
    clip = encode_video(tmp_path / name, (numbered_frame(i, 176, 144) for i in range(50)), codec)
    r = httpx.post(f"{server.url}/predict/video", files={"file": (name, clip.read_bytes(), content_type)}, timeout=60)
    assert r.status_code == 200, r.text
    assert [f["t"] for f in r.json()["frames"]] == [0.0, 1.0]


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_an_animated_gif_or_png_is_a_video_and_one_frame_is_a_still_image(tmp_path: Path, suffix: str) -> None:
    # Ten frames of 100 ms: an animation FFmpeg decodes like any video (it was refused as a still image); the same
    # file with one frame is still refused, as an image.
    from PIL import Image

    frames = [Image.fromarray(cv2.cvtColor(numbered_frame(i), cv2.COLOR_BGR2RGB)) for i in range(10)]
    animation = tmp_path / f"animation{suffix}"
    frames[0].save(animation, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with FrameSampler(animation, every=0.5) as sampler:
        assert [(f.t, frame_number(f.image)) for f in sampler] == [(0.0, 0), (0.5, 5)]
    still = tmp_path / f"still{suffix}"
    frames[0].save(still)
    with pytest.raises(InputError) as err:
        FrameSampler(still)
    assert err.value.status_code == 415 and "still image" in err.value.detail


def test_an_animated_gif_is_a_video_over_http(server: LiveServer, tmp_path: Path) -> None:
    # Under the label every client gives a .gif (image/gif), which the route refused before the bytes were read.
    from PIL import Image

    frames = [Image.fromarray(cv2.cvtColor(numbered_frame(i), cv2.COLOR_BGR2RGB)) for i in range(20)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    r = post_video(server, tmp_path / "a.gif")  # application/octet-stream
    r2 = httpx.post(
        f"{server.url}/predict/video", files={"file": ("a.gif", (tmp_path / "a.gif").read_bytes(), "image/gif")}
    )
    assert r.status_code == r2.status_code == 200, (r.text, r2.text)
    assert [f["t"] for f in r2.json()["frames"]] == [0.0, 1.0] and r2.json()["duration"] == pytest.approx(2.0)
    frames[0].save(tmp_path / "still.gif")
    r = httpx.post(
        f"{server.url}/predict/video", files={"file": ("still.gif", (tmp_path / "still.gif").read_bytes(), "image/gif")}
    )
    assert r.status_code == 415 and "still image" in r.json()["detail"]
    r = httpx.post(f"{server.url}/predict/video", files={"file": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")})
    assert r.status_code == 415 and "send images to POST /predict" in r.json()["detail"]


def animated_webp(path: Path, count: int = 10) -> Path:
    """``count`` numbered frames of 100 ms as an animated WebP (Pillow: VP8X with its animation flag, ANMF frames)."""
    from PIL import Image

    frames = [Image.fromarray(cv2.cvtColor(numbered_frame(i), cv2.COLOR_BGR2RGB)) for i in range(count)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert path.read_bytes()[12:16] == b"VP8X" and b"ANMF" in path.read_bytes()
    return path


def ffmpeg_decodes_animated_webp(path: Path) -> bool:
    """Whether the bundled FFmpeg decodes the frames of an animated WebP (8.1's WebP decoder reads stills only)."""
    import av

    try:
        with av.open(str(path)) as container:
            return sum(1 for _ in container.decode(video=0)) > 1
    except av.FFmpegError:
        return False


def test_an_animated_webp_is_a_video_or_refused_as_one_ffmpeg_cannot_decode(tmp_path: Path) -> None:
    # It was refused as "a still image; send images to POST /predict": not what it is, and POST /predict analyses
    # its first frame only. Let through to FFmpeg as a GIF is, it would be a 413 under the route's pixel limit (the
    # stream's size is 0x0: FFmpeg finds no picture in it), a 422 without one.
    from PIL import Image

    animation = animated_webp(tmp_path / "animation.webp")
    for max_pixels in (None, 40_000_000):
        if ffmpeg_decodes_animated_webp(animation):  # analysed as an animated GIF is
            with FrameSampler(animation, every=0.5, max_pixels=max_pixels) as sampler:
                assert [(f.t, frame_number(f.image)) for f in sampler] == [(0.0, 0), (0.5, 5)]
        else:
            with pytest.raises(InputError) as err:
                FrameSampler(animation, every=0.5, max_pixels=max_pixels)
            assert err.value.status_code == 415 and err.value.detail == ANIMATED_WEBP
    # A still WebP, simple or extended (VP8X, here for its alpha channel), is still an image.
    still = Image.fromarray(cv2.cvtColor(numbered_frame(0), cv2.COLOR_BGR2RGB))
    still.save(tmp_path / "still.webp")
    alpha = still.convert("RGBA")
    alpha.putpixel((0, 0), (0, 0, 0, 0))
    alpha.save(tmp_path / "alpha.webp")
    assert (tmp_path / "alpha.webp").read_bytes()[12:16] == b"VP8X"
    for name in ("still.webp", "alpha.webp"):
        with pytest.raises(InputError) as err:
            FrameSampler(tmp_path / name)
        assert err.value.status_code == 415 and "still image" in err.value.detail, name


def test_an_animated_webp_over_http(server: LiveServer, tmp_path: Path) -> None:
    # Under its label (image/webp) the route refused it before reading the bytes, unlike a GIF; as a file of unknown
    # type it was "a still image". Both answer alike now; POST /predict analyses its first frame, as for an APNG.
    data = animated_webp(tmp_path / "a.webp").read_bytes()
    url = f"{server.url}/predict/video"
    for label in ("image/webp", "application/octet-stream"):
        r = httpx.post(url, files={"file": ("a.webp", data, label)})
        if ffmpeg_decodes_animated_webp(tmp_path / "a.webp"):
            assert r.status_code == 200 and [f["t"] for f in r.json()["frames"]] == [0.0], r.text
        else:
            assert r.status_code == 415 and r.json()["detail"].startswith("animated WebP is not supported"), r.text
    r = httpx.post(f"{server.url}/predict", files={"file": ("a.webp", data, "image/webp")})
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (160, 120), r.text
    still = cv2.imencode(".webp", numbered_frame(0))[1].tobytes()
    r = httpx.post(url, files={"file": ("still.webp", still, "image/webp")})
    assert r.status_code == 415 and "still image; send images to POST /predict" in r.json()["detail"], r.text
