"""The ``emotion`` command, run as a real subprocess on clips written by OpenCV, checked against the HTTP API."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import ROOT, LiveServer, make_settings, wait_until_ready
from videos import face_then_no_face, faceless_frame, truncate

from server.cli import format_line, format_summary, format_timestamp
from server.schemas import VideoFrame, VideoSummary

LINE = re.compile(r"^\d\d:\d\d:\d\d  (no face|[a-z]+  \d{1,3}%)$")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s at 25 fps, 640x480, MJPG: the astronaut for 10 s, then the coffee cup."""
    return face_then_no_face(tmp_path_factory.mktemp("cli") / "face_then_none.avi")


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[LiveServer]:
    from server.app import create_app

    with LiveServer(create_app(make_settings(model_path, "haar"))) as live:
        yield live


def emotion(model_path: Path, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``emotion COMMAND ... --model M --detector haar`` (the same models as the test server)."""
    command, *rest = args
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            str(command),
            *map(str, rest),
            "--model",
            str(model_path),
            "--detector",
            "haar",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def api_video(server: LiveServer, path: Path, **params: object) -> dict:
    with open(path, "rb") as f:
        r = httpx.post(f"{server.url}/predict/video", params=params, files={"file": (path.name, f)}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_video_lines_and_crops(model_path: Path, clip: Path, tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    result = emotion(model_path, "video", clip, "--crops", crops)
    assert result.returncode == 0, result.stderr
    *lines, summary = result.stdout.splitlines()
    assert summary.startswith("summary  20 frames  10 with a face  10 s without  ")
    assert len(lines) in (20, 21)
    assert all(LINE.match(line) for line in lines), lines
    assert lines[0].startswith("00:00:00  ") and lines[19].startswith("00:00:19  ")
    assert all("%" in line for line in lines[:10]) and all(line.endswith("no face") for line in lines[10:])
    # One 48x48 grayscale crop per second with a face, named by time and emotion.
    files = sorted(crops.iterdir())
    assert [f.name[:8] for f in files] == [f"00-00-{s:02d}" for s in range(10)]
    for f, line in zip(files, lines, strict=False):
        assert f.stem.split("_", 1)[1] == line.split()[1]
        crop = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        assert crop.shape == (48, 48) and crop.dtype == np.uint8
        assert crop.std() > 20  # a face, not a flat patch


def test_cli_lines_match_the_api(model_path: Path, clip: Path, server: LiveServer) -> None:
    body = api_video(server, clip)
    expected = [format_line(VideoFrame.model_validate(f)) for f in body["frames"]]
    expected.append(format_summary(VideoSummary.model_validate(body["summary"])))
    result = emotion(model_path, "video", clip)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def test_cli_json_matches_the_api(model_path: Path, clip: Path, server: LiveServer) -> None:
    body = api_video(server, clip, every=2.5)
    result = emotion(model_path, "video", clip, "--json", "--every", "2.5")
    assert result.returncode == 0, result.stderr
    cli = json.loads(result.stdout)
    assert cli["summary"] == body["summary"]
    assert {k: v for k, v in cli.items() if k != "frames"} == {k: v for k, v in body.items() if k != "frames"}
    assert len(cli["frames"]) == len(body["frames"]) == 8
    for mine, theirs in zip(cli["frames"], body["frames"], strict=True):
        assert mine["t"] == theirs["t"]
        assert [f["box"] for f in mine["faces"]] == [f["box"] for f in theirs["faces"]]
        assert [f["emotion"] for f in mine["faces"]] == [f["emotion"] for f in theirs["faces"]]
        for a, b in zip(mine["faces"], theirs["faces"], strict=True):
            assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)


def test_fractional_every_shows_milliseconds(model_path: Path, clip: Path) -> None:
    result = emotion(model_path, "video", clip, "--every", "7.5")
    assert result.returncode == 0, result.stderr
    assert [line.split("  ")[0] for line in result.stdout.splitlines()] == [
        "00:00:00.000",
        "00:00:07.480",
        "00:00:15.000",
        "summary",
    ]


def test_progress_bar_on_stderr(model_path: Path, clip: Path) -> None:
    result = emotion(model_path, "video", clip, "--every", "5", "--progress")
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr and "20/20 s" in result.stderr
    assert len(result.stdout.splitlines()) == 4 + 1  # the bar never lands on stdout (4 lines and the summary)
    quiet = emotion(model_path, "video", clip, "--every", "5")
    assert quiet.stderr.strip() == ""  # not a terminal: no bar unless asked


def test_missing_and_unreadable_files(model_path: Path, clip: Path, tmp_path: Path) -> None:
    result = emotion(model_path, "video", tmp_path / "nope.mp4")
    assert result.returncode == 1 and "nope.mp4: no such file" in result.stderr and result.stdout == ""
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(1).bytes(100_000))
    result = emotion(model_path, "video", junk)
    assert result.returncode == 1 and "could not open" in result.stderr
    assert "Traceback" not in result.stderr
    half = truncate(clip, tmp_path / "half.avi")
    result = emotion(model_path, "video", half)
    assert result.returncode == 1 and "truncated" in result.stderr
    assert 1 <= len(result.stdout.splitlines()) < 20  # what could be read was printed first
    result = emotion(model_path, "video", clip, "--every", "0")
    assert result.returncode == 1 and "--every" in result.stderr
    result = emotion(tmp_path / "missing.onnx", "video", clip)
    assert result.returncode == 1 and "missing.onnx" in result.stderr and "Traceback" not in result.stderr


def test_image_command(model_path: Path, astronaut_jpeg: bytes, tmp_path: Path, server: LiveServer) -> None:
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(astronaut_jpeg)
    empty = tmp_path / "coffee.png"
    cv2.imwrite(str(empty), faceless_frame())
    result = emotion(model_path, "image", photo, empty)
    assert result.returncode == 0, result.stderr
    api = httpx.post(f"{server.url}/predict", files={"file": ("a.jpg", astronaut_jpeg, "image/jpeg")}).json()
    face = api["faces"][0]
    b = face["box"]
    assert result.stdout.splitlines() == [
        f"{photo}  face 1  {b['x']},{b['y']} {b['w']}x{b['h']}  {face['emotion']}  {round(face['confidence'] * 100)}%",
        f"{empty}  no face",
    ]
    as_json = emotion(model_path, "image", photo, "--json")
    assert json.loads(as_json.stdout)["faces"][0]["box"] == b
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    result = emotion(model_path, "image", photo, bad, tmp_path / "gone.png")
    assert result.returncode == 1
    assert "gone.png: no such file" in result.stderr and "bad.jpg: could not decode" in result.stderr
    assert result.stdout.startswith(f"{photo}  face 1")  # the good file is still done


def test_webcam_reads_a_device_until_it_ends(model_path: Path, tmp_path: Path) -> None:
    # A file stands in for the camera and plays at its own frame rate: 3 s -> a line at 0, 1 and 2 s.
    clip = face_then_no_face(tmp_path / "cam.avi", 2, 1)
    crops = tmp_path / "crops"
    result = emotion(model_path, "webcam", "--device", clip, "--crops", crops, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Wall-clock pacing: a slow machine may add a line at the very end (frame 74 of 75 shown at 2.96 s).
    assert [line[:8] for line in lines[:3]] == ["00:00:00", "00:00:01", "00:00:02"] and len(lines) <= 4, lines
    assert "%" in lines[0] and lines[-1].endswith("no face")
    # --crops: one 48x48 face per line with a face, named after the line's time and emotion.
    with_face = [line for line in lines if "%" in line]
    expected = [f"{line[:8].replace(':', '-')}_{line.split()[1]}.png" for line in with_face]
    assert sorted(f.name for f in crops.iterdir()) == expected
    assert all(cv2.imread(str(f), cv2.IMREAD_UNCHANGED).shape == (48, 48) for f in crops.iterdir())
    missing = emotion(model_path, "webcam", "--device", tmp_path / "no_camera.avi")
    assert missing.returncode == 1 and "could not open" in missing.stderr


def test_serve_starts_the_service(model_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--port",
            str(port),
            "--model",
            str(model_path),
            "--detector",
            "haar",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        r = wait_until_ready(proc, port, "emotion serve")
        assert r.json()["detector"] == "haar" and r.json()["model"] == model_path.name
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize("every", ["nan", "inf", "0"])
def test_webcam_every_must_be_a_positive_number(model_path: Path, tmp_path: Path, every: str) -> None:
    # nan and inf passed the check and ended in a traceback (ValueError, OverflowError) at the first line.
    clip = face_then_no_face(tmp_path / "cam.avi", 1, 0)
    result = emotion(model_path, "webcam", "--device", clip, "--every", every, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "emotion: error: --every must be a positive number of seconds\n"


def run_with_env(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **env}
    )


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"EMOTION_PORT": "abc"}, [], "EMOTION_PORT: Input should be a valid integer"),
        ({"EMOTION_LOG_LEVEL": "verbose"}, [], "EMOTION_LOG_LEVEL: the log level must be one of critical, error"),
        ({"EMOTION_API_KEY": "secret!"}, [], "EMOTION_API_KEY: the API key must be 8 or more"),
        ({}, ["--port", "70000"], "--port must be from 0 to 65535, got 70000"),
        ({}, ["--log-level", "verbose"], "argument --log-level: invalid choice: 'verbose'"),
        ({"EMOTION_MODEL_PATH": "no-such.onnx"}, [], "EMOTION_MODEL_PATH: model file not found: no-such.onnx"),
        ({"EMOTION_MODEL_PATH": "README.md"}, [], "EMOTION_MODEL_PATH: cannot load ONNX model README.md: "),
        (
            {"EMOTION_DETECTOR": "yunet", "EMOTION_YUNET_PATH": "no-such.onnx"},
            [],
            "EMOTION_YUNET_PATH: YuNet model not found: no-such.onnx",
        ),
        ({"EMOTION_VIDEO_TEMP_DIR": "README.md/videos"}, [], "EMOTION_VIDEO_TEMP_DIR README.md/videos: video uploads"),
    ],
)
def test_server_refuses_bad_settings_in_one_line(env: dict[str, str], args: list[str], message: str) -> None:
    # Were: a pydantic or logging traceback; an unknown log level passed the settings; --port 70000 served on 4464
    # (the socket layer takes the port modulo 65536) while the log said 70000. A model file or video folder that
    # cannot be used was uvicorn's lifespan traceback and exit status 3.
    result = run_with_env(env, "-m", "server", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"emotion-server: error: {message}" in result.stderr.splitlines()[-1]
    assert "secret!" not in result.stderr  # a refused key is not echoed


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, ["--model", "no-such.onnx"], "--model: model file not found: no-such.onnx"),
        ({"EMOTION_MODEL_PATH": "no-such.onnx"}, [], "EMOTION_MODEL_PATH: model file not found: no-such.onnx"),
        (
            {},
            ["--yunet", "no-such.onnx"],
            "--yunet: YuNet model not found: no-such.onnx (run `python -m server.download`)",
        ),
        ({"EMOTION_MAX_FACES": "0"}, [], "EMOTION_MAX_FACES: Input should be greater than or equal to 1"),
    ],
)
def test_emotion_serve_refuses_bad_settings_as_every_command_does(
    env: dict[str, str], args: list[str], message: str
) -> None:
    # Were emotion-server's own line and status 2, naming EMOTION_MODEL_PATH for a --model flag.
    result = run_with_env(env, "-m", "server.cli", "serve", "--port", "0", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == f"emotion: error: {message}\n"


def test_cli_refuses_a_bad_setting_in_one_line(astronaut_jpeg: bytes, tmp_path: Path) -> None:
    photo = tmp_path / "me.jpg"
    photo.write_bytes(astronaut_jpeg)
    result = run_with_env({"EMOTION_MAX_FACES": "0"}, "-m", "server.cli", "image", str(photo))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "emotion: error: EMOTION_MAX_FACES: Input should be greater than or equal to 1\n"


def test_every_setting_is_documented() -> None:
    # The README sends users to docs/configuration.md for "every EMOTION_* setting" (and it to security.md for the
    # limits): EMOTION_YUNET_NMS_THRESHOLD was in neither.
    from server.config import Settings

    docs = (ROOT / "docs" / "configuration.md").read_text() + (ROOT / "docs" / "security.md").read_text()
    missing = [f"EMOTION_{name.upper()}" for name in Settings.model_fields if f"`EMOTION_{name.upper()}`" not in docs]
    assert missing == []


def test_yunet_fallback_is_said_once(model_path: Path, astronaut_jpeg: bytes, tmp_path: Path) -> None:
    # Was twice: the detector's log record (printed bare by logging's last-resort handler), then emotion's own line.
    photo = tmp_path / "me.jpg"
    photo.write_bytes(astronaut_jpeg)
    missing = tmp_path / "no-yunet.onnx"
    env = {"EMOTION_YUNET_PATH": str(missing), "EMOTION_MODEL_PATH": str(model_path), "EMOTION_DETECTOR": "auto"}
    result = run_with_env(env, "-m", "server.cli", "image", str(photo))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"emotion: warning: YuNet model not found: {missing} (run `python -m server.download`); using the Haar cascade"
    ]


def test_serve_takes_uvicorns_trace_log_level(model_path: Path) -> None:
    # uvicorn's own "trace" level, which the standard logging module does not know: was a ValueError traceback.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EMOTION_MODEL_PATH": str(model_path), "EMOTION_DETECTOR": "haar"}
    command = [sys.executable, "-m", "server", "--port", str(port), "--log-level", "TRACE"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until_ready(proc, port, "python -m server --log-level TRACE").json()["ready"] is True
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert "TRACE:" in output and "Traceback" not in output


def test_timestamps() -> None:
    assert format_timestamp(3.0) == "00:00:03"
    assert format_timestamp(3.001) == "00:00:03"  # 29.97 fps: frame 90 is at 3.003 s
    assert format_timestamp(3725.0) == "01:02:05"
    assert format_timestamp(2.48, every=2.5) == "00:00:02.480"
    assert format_timestamp(61.5, every=0.5) == "00:01:01.500"


def test_console_script_is_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'emotion = "server.cli:main"' in text
    result = subprocess.run([sys.executable, "-m", "server.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    assert all(cmd in result.stdout for cmd in ("image", "video", "webcam", "serve"))


@pytest.mark.parametrize("command", ["image", "video"])
def test_a_closed_output_pipe_ends_quietly(
    model_path: Path, astronaut_jpeg: bytes, clip: Path, tmp_path: Path, command: str
) -> None:
    # `emotion image photos/ | head -1`, `emotion video talk.mp4 --json | head`: was a BrokenPipeError traceback.
    photo = tmp_path / "me.jpg"
    photo.write_bytes(astronaut_jpeg)
    args = [photo, photo] if command == "image" else [clip, "--json"]
    models = ["--model", str(model_path), "--detector", "haar"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", command, *map(str, args), *models],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before the first line is written
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 141 and stderr == "", stderr


def test_image_command_takes_a_folder(model_path: Path, astronaut_jpeg: bytes, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "b_astronaut.JPG").write_bytes(astronaut_jpeg)
    cv2.imwrite(str(photos / "a_coffee.png"), faceless_frame())
    (photos / "notes.txt").write_text("not an image")
    (photos / "sub").mkdir()
    result = emotion(model_path, "image", photos)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{photos / 'a_coffee.png'}  no face"
    assert lines[1].startswith(f"{photos / 'b_astronaut.JPG'}  face 1  ") and len(lines) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    result = emotion(model_path, "image", empty)
    assert result.returncode == 1 and "no images in this folder" in result.stderr


def test_image_command_reads_a_pipe(model_path: Path, astronaut_jpeg: bytes) -> None:
    # `curl -s URL | emotion image /dev/stdin`, `emotion image <(curl -s URL)`: was "/dev/stdin: no such file".
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "image", "/dev/stdin", "--model", str(model_path), "--detector", "haar"],
        input=astronaut_jpeg,  # through a pipe
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("/dev/stdin  face 1  ")


def test_image_command_refuses_an_endless_pipe(model_path: Path) -> None:
    # `emotion image /dev/zero` read until memory ran out; it stops at the server's upload limit, as the server does.
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "image", "/dev/zero", "--model", str(model_path), "--detector", "haar"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMOTION_MAX_UPLOAD_BYTES": "1000000"},
    )
    assert result.returncode == 1, result.stderr
    limit = "over the upload limit of 1000000 bytes (EMOTION_MAX_UPLOAD_BYTES)"
    assert result.stderr == f"emotion: error: /dev/zero: {limit}\n"


def test_video_given_a_photo_suggests_emotion_image(model_path: Path, astronaut_jpeg: bytes, tmp_path: Path) -> None:
    photo = tmp_path / "me.jpg"
    photo.write_bytes(astronaut_jpeg)
    result = emotion(model_path, "video", photo)
    assert result.returncode == 1 and result.stdout == ""
    assert "still image" in result.stderr and f"emotion image {photo}" in result.stderr


def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_yunet_flag(
    model_path: Path, yunet_path: Path, astronaut_jpeg: bytes, tmp_path: Path, yunet_pipeline, haar_pipeline
) -> None:
    from server.pipeline import decode_image

    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(astronaut_jpeg)
    good = run_cli("image", photo, "--json", "--model", model_path, "--yunet", yunet_path)
    assert good.returncode == 0, good.stderr
    faces = json.loads(good.stdout)["faces"]
    # The flag picked YuNet: the same box and score as YuNet in-process, not Haar's.
    image = decode_image(astronaut_jpeg)
    (yunet_face,), _ = yunet_pipeline.predict(image)
    (haar_face,), _ = haar_pipeline.predict(image)
    assert haar_face.detection_score != yunet_face.detection_score
    assert len(faces) == 1 and faces[0]["box"] == yunet_face.box.model_dump()
    assert faces[0]["detection_score"] == pytest.approx(yunet_face.detection_score, abs=1e-4)
    tampered = tmp_path / "yunet.onnx"
    data = bytearray(yunet_path.read_bytes())
    data[-100] ^= 1
    tampered.write_bytes(bytes(data))
    bad = run_cli("image", photo, "--model", model_path, "--yunet", tampered)
    assert bad.returncode == 1 and "sha256" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("image", photo, "--model", model_path, "--yunet", tmp_path / "none.onnx")
    assert missing.returncode == 1 and "YuNet model not found" in missing.stderr


def test_saved_crop_is_the_crop_the_model_was_shown(
    yunet_path: Path, astronaut_bgr: np.ndarray, tmp_path: Path
) -> None:
    """--crops saves what the classifier saw: with the shipped (landmark-framed) model, the landmark square."""
    import dataclasses

    from server.cli import CROP_SIZE, save_crop
    from server.pipeline import EmotionPipeline, crop_for

    pipeline = EmotionPipeline.from_settings(make_settings(ROOT / "models/emotion_ferplus.onnx", "yunet", yunet_path))
    assert pipeline.classifier.spec.align == "landmarks"
    detections = pipeline.detect(astronaut_bgr)
    [face], _ = pipeline.predict(astronaut_bgr, detections=detections)
    spec = pipeline.classifier.spec
    path = save_crop(tmp_path, 3.0, face, detections[0], astronaut_bgr, 1.0, spec)
    saved = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    expected = crop_for(astronaut_bgr, detections[0], dataclasses.replace(spec, input_size=(CROP_SIZE, CROP_SIZE)))
    np.testing.assert_array_equal(saved, expected)
