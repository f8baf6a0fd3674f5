"""``emotion``: the pipeline from a terminal, in-process (no server needed).

    emotion image PATH|DIR...                               each face of each image (of a folder's images)
    emotion video PATH [--every S] [--crops DIR] [--json]   one line per analysed second: 00:00:03  happy  73%,
                                                            then a summary line (and one per face track)
    emotion webcam [--device N|PATH|URL] [--every S] [--crops DIR]   one line per second until Ctrl-C
    emotion serve [--host H] [--port P] [--workers N]       the HTTP service (like ``python -m server``)

Videos and the webcam are streams: each face keeps a track id (``#2``) and its label is smoothed over time
(``--smoothing S``, default ``EMOTION_SMOOTHING_SECONDS``; 0 for each frame's own values).

``--model``, ``--detector`` and ``--yunet`` (or the ``EMOTION_*`` environment variables) pick the models. Exit
status: 0 done, 1 a file could not be read or analysed or a setting was refused, 2 bad usage, 130 interrupted,
141 the output pipe was closed (``| head``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import numpy as np

    from server.classifier import ModelSpec
    from server.config import Settings
    from server.detector import Detection
    from server.pipeline import EmotionPipeline
    from server.schemas import Face, VideoFrame, VideoSummary

CROP_SIZE = 48  # crops are saved as the FER-style 48x48 grayscale the classifier family is trained on
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # what `emotion image DIR` picks up (what /predict takes)
PROGRESS_MIN_SECONDS = 30.0  # shorter videos finish before a bar is worth drawing


class CliError(Exception):
    """A problem to report as ``emotion: error: ...`` with exit status 1."""


# --- formatting (shared with the tests, which check the CLI against the API's answer) -------------------------


def format_timestamp(t: float, every: float = 1.0) -> str:
    """``HH:MM:SS`` for whole-second sampling, ``HH:MM:SS.mmm`` when ``every`` has a fraction."""
    fractional = not math.isclose(every, round(every))
    total = round(t, 3) if fractional else round(t)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if fractional:
        return f"{int(hours):02d}:{int(minutes):02d}:{seconds:06.3f}"
    return f"{int(hours):02d}:{int(minutes):02d}:{int(seconds):02d}"


def describe_faces(faces: list[Face]) -> str:
    """``happy  73%`` for the largest face, ``no face`` without one; other faces follow as ``  #2 sad  40%`` (by
    track id) or, without track ids, ``  (+N faces)``."""
    if not faces:
        return "no face"
    face = faces[0]
    text = f"{face.emotion}  {round(face.confidence * 100)}%"
    if len(faces) > 1:
        if all(f.track_id is not None for f in faces):
            head = f"#{face.track_id} "
            rest = "".join(f"  #{f.track_id} {f.emotion}  {round(f.confidence * 100)}%" for f in faces[1:])
            return head + text + rest
        others = len(faces) - 1
        text += f"  (+{others} face{'s' if others > 1 else ''})"
    return text


def format_line(frame: VideoFrame, every: float = 1.0) -> str:
    return f"{format_timestamp(frame.t, every)}  {describe_faces(frame.faces)}"


def format_summary(summary: VideoSummary) -> str:
    """``summary  20 frames  10 with a face  10 s without  happy 80%, neutral 20%``: the API's summary in a line."""
    shares = sorted(summary.emotion_share.items(), key=lambda kv: -kv[1])
    emotions = ", ".join(f"{label} {round(share * 100)}%" for label, share in shares if share > 0) or "no face seen"
    return (
        f"summary  {summary.sampled} frames  {summary.with_face} with a face  "
        f"{summary.seconds_without_face:g} s without  {emotions}"
    )


def format_tracks(summary: VideoSummary, every: float = 1.0) -> list[str]:
    """One line per face track when the video had more than one (one track is the summary line already):
    ``#2  00:00:01-00:00:03  6 frames  happy 67%, neutral 33%`` (shares of that track's own frames)."""
    if len(summary.tracks) < 2:
        return []
    lines = []
    for track in summary.tracks:
        shares = sorted(track.emotion_share.items(), key=lambda kv: -kv[1])
        emotions = ", ".join(f"{label} {round(share * 100)}%" for label, share in shares if share > 0)
        seen = f"{format_timestamp(track.first_seen, every)}-{format_timestamp(track.last_seen, every)}"
        lines.append(f"#{track.track_id}  {seen}  {track.samples} frames  {emotions}")
    return lines


class ProgressBar:
    """``[#######-------]  42%  25/60 s`` on one line of a terminal; cleared before other output is printed."""

    def __init__(self, total: float, stream: TextIO, width: int = 30):
        self.total = max(total, 1e-9)
        self.stream = stream
        self.width = width
        self.done = 0.0

    def update(self, done: float) -> None:
        self.done = min(done, self.total)
        filled = round(self.width * self.done / self.total)
        percent = round(100 * self.done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {percent:3d}%  {self.done:.0f}/{self.total:.0f} s")
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\033[K")
        self.stream.flush()


# --- commands ------------------------------------------------------------------------------------------------


def load_settings(args: argparse.Namespace) -> Settings:
    """The environment's settings with the models the command's flags name."""
    overrides: dict[str, object] = {}
    if args.model is not None:
        overrides["model_path"] = args.model
    if args.detector is not None:
        overrides["detector"] = args.detector
    if args.yunet is not None:
        overrides["yunet_path"] = args.yunet
        # Naming a YuNet file means using it: a missing or wrong file is an error, not a quiet fall back to Haar.
        overrides.setdefault("detector", "yunet")
    return env_settings(**overrides)


def env_settings(**overrides: object) -> Settings:
    """The settings of the EMOTION_* environment (``overrides`` on top); a bad value is a CliError: one line naming it,
    not a traceback."""
    from server.config import SettingsError, read_settings

    try:
        return read_settings(**overrides)
    except SettingsError as exc:
        raise CliError(str(exc)) from exc


def load_tracker(args: argparse.Namespace, settings: Settings):  # -> FaceTracker
    from server.tracker import FaceTracker

    tracker = FaceTracker.from_settings(settings, raw=getattr(args, "raw", False))
    if args.smoothing is not None:
        if not 0 <= args.smoothing <= 60:
            raise CliError("--smoothing must be between 0 and 60 seconds")
        tracker.smoothing_seconds = args.smoothing
    return tracker


def load_pipeline(settings: Settings) -> EmotionPipeline:
    from server.classifier import ModelError
    from server.detector import DetectorError
    from server.pipeline import EmotionPipeline

    # A fall back to Haar is said once, below; the detector's own warning would print it a second time, bare.
    detector_log = logging.getLogger("server.detector")
    level = detector_log.level
    detector_log.setLevel(logging.ERROR)
    try:
        pipeline = EmotionPipeline.from_settings(settings)
    except (ModelError, DetectorError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        detector_log.setLevel(level)
    if pipeline.detector.fallback_reason:
        print(f"emotion: warning: {pipeline.detector.fallback_reason}; using the Haar cascade", file=sys.stderr)
    return pipeline


def existing_file(path: Path) -> Path:
    if not path.exists():
        raise CliError(f"{path}: no such file")
    if not path.is_file():
        raise CliError(f"{path}: not a file")
    return path


def image_paths(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The files to classify: each file as given, each folder's images (sorted by name); and the problems found."""
    files: list[Path] = []
    problems: list[str] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{path}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.exists():  # a file, or a pipe: /dev/stdin, <(curl -s URL)
            files.append(path)
        else:
            problems.append(f"{path}: no such file")
    return files, problems


def read_upload(path: Path, limit: int) -> bytes:
    """The file's bytes, as the server would take them: at most ``limit`` (EMOTION_MAX_UPLOAD_BYTES), so that a pipe
    that never ends (/dev/zero) is refused instead of filling memory."""
    from server.pipeline import InputError

    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(413, f"over the upload limit of {limit} bytes (EMOTION_MAX_UPLOAD_BYTES)")
    return data


def cmd_image(args: argparse.Namespace) -> int:
    from server.pipeline import InputError, decode_image

    settings = load_settings(args)
    files, problems = image_paths(args.paths)
    for problem in problems:
        print(f"emotion: error: {problem}", file=sys.stderr)
    if not files:
        return 1
    pipeline = load_pipeline(settings)
    status = 1 if problems else 0
    for path in files:
        try:
            image = decode_image(read_upload(path, settings.max_upload_bytes), settings)
        except InputError as exc:
            print(f"emotion: error: {path}: {exc.detail}", file=sys.stderr)
            status = 1
            continue
        except OSError as exc:
            print(f"emotion: error: {path}: cannot read it ({exc.strerror or exc})", file=sys.stderr)
            status = 1
            continue
        faces, _ = pipeline.predict(image)
        if args.json:
            print(
                json.dumps(
                    {
                        "path": str(path),
                        "width": image.shape[1],
                        "height": image.shape[0],
                        "faces": [f.model_dump() for f in faces],
                    }
                )
            )
            continue
        if not faces:
            print(f"{path}  no face")
        for i, face in enumerate(faces, 1):
            b = face.box
            print(f"{path}  face {i}  {b.x},{b.y} {b.w}x{b.h}  {face.emotion}  {round(face.confidence * 100)}%")
    return status


def save_crop(
    directory: Path, t: float, face: Face, detection: Detection, image: np.ndarray, every: float, spec: ModelSpec
) -> Path:
    """The face as the model was shown it (its crop: box, margin or landmarks, from its ``detection``), as a 48x48
    gray PNG named ``HH-MM-SS_<emotion>.png`` after its time (``--crops``)."""
    import dataclasses

    import cv2

    from server.pipeline import crop_for

    crop = crop_for(image, detection, dataclasses.replace(spec, input_size=(CROP_SIZE, CROP_SIZE), channels=1))
    stamp = format_timestamp(t, every).replace(":", "-")
    path = directory / f"{stamp}_{face.emotion}.png"
    if not cv2.imwrite(str(path), crop):
        raise CliError(f"could not write {path}")
    return path


def make_crops_dir(directory: Path | None) -> None:
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{directory}: cannot create the crops folder ({exc.strerror})") from exc


def still_image_hint(path: Path) -> str | None:
    """A hint when ``emotion video`` is given a photo (the API answers 415 for one)."""
    from server.pipeline import image_format_and_size

    with path.open("rb") as f:
        head = f.read(1 << 16)
    found = image_format_and_size(head)
    if found is None:
        return None
    return f"{path} is a still image ({found[0]}), not a video; for a photo run: emotion image {path}"


def cmd_video(args: argparse.Namespace) -> int:
    from server.pipeline import InputError
    from server.video import EVERY_MAX, EVERY_MIN, VideoAnalysis

    path = existing_file(args.path)
    if not EVERY_MIN <= args.every <= EVERY_MAX:
        raise CliError(f"--every must be between {EVERY_MIN} and {EVERY_MAX} seconds")
    if hint := still_image_hint(path):
        raise CliError(hint)
    settings = load_settings(args)
    tracker = load_tracker(args, settings)
    pipeline = load_pipeline(settings)
    make_crops_dir(args.crops)
    spec = pipeline.classifier.spec
    try:
        analysis = VideoAnalysis.open(path, pipeline, args.every, tracker=tracker)  # local files: no upload limits
    except InputError as exc:
        raise CliError(f"{path}: {exc.detail}") from exc
    duration = analysis.info.duration
    show_progress = (
        args.progress
        if args.progress is not None
        else (sys.stderr.isatty() and (duration is None or duration >= PROGRESS_MIN_SECONDS))
    )
    bar = ProgressBar(duration, sys.stderr) if show_progress and duration else None
    frames: list[VideoFrame] = []
    try:
        with analysis:
            for item in analysis:
                frame = item.result
                if args.crops is not None and frame.faces:
                    save_crop(
                        args.crops, frame.t, frame.faces[0], item.detections[0], item.sample.image, args.every, spec
                    )
                if args.json:
                    frames.append(frame)
                else:
                    if bar is not None:
                        bar.clear()
                    print(format_line(frame, args.every), flush=True)
                if bar is not None:
                    bar.update(frame.t + args.every)
            if bar is not None:
                bar.update(duration)
                bar.clear()
            if args.json:
                print(analysis.response(frames).model_dump_json(indent=2))
            else:
                summary = analysis.end().summary
                print(format_summary(summary), flush=True)
                for line in format_tracks(summary, args.every):
                    print(line, flush=True)
    except InputError as exc:
        if bar is not None:
            bar.clear()
        raise CliError(f"{path}: {exc.detail}") from exc
    return 0


def open_camera(device: str):  # -> cv2.VideoCapture
    import cv2

    source: int | str = int(device) if device.isdigit() else device
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        what = f"camera {device}" if isinstance(source, int) else device
        raise CliError(f"could not open {what}")
    return cap


def cmd_webcam(args: argparse.Namespace) -> int:
    import cv2

    if not (math.isfinite(args.every) and args.every > 0):  # nan or inf would end in a traceback at the first line
        raise CliError("--every must be a positive number of seconds")
    settings = load_settings(args)
    tracker = load_tracker(args, settings)
    pipeline = load_pipeline(settings)
    make_crops_dir(args.crops)
    spec = pipeline.classifier.spec
    cap = open_camera(args.device)
    # A file stands in for a camera at its own frame rate, so it gives one line per second too.
    fps = cap.get(cv2.CAP_PROP_FPS) if Path(args.device).is_file() else 0.0
    frame_time = 1.0 / fps if math.isfinite(fps) and 0 < fps <= 1000 else 0.0
    start = time.monotonic()
    next_at = 0.0
    frames_read = 0
    try:
        while True:
            # Read every frame, also between predictions: a camera queues frames, and an unread queue makes the
            # next prediction run on a stale picture.
            ok, image = cap.read()
            if not ok:
                print(f"emotion: {args.device}: no more frames", file=sys.stderr)
                return 0 if frames_read else 1
            if frame_time:
                delay = start + frames_read * frame_time - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            frames_read += 1
            elapsed = time.monotonic() - start
            if elapsed >= next_at:
                # The line (and crop) stands for the latest whole step of `every` reached: 00:00:01, 00:00:02 ...
                # even when a prediction starts a little late, so each second has its own name.
                slot = next_at + args.every * math.floor((elapsed - next_at) / args.every)
                detections = pipeline.detect(image)
                faces, _ = pipeline.predict(image, detections=detections)
                faces = tracker.update(faces, elapsed)  # keeps the faces' order: faces[0] is detections[0]
                if args.crops is not None and faces:
                    save_crop(args.crops, slot, faces[0], detections[0], image, args.every, spec)
                print(f"{format_timestamp(slot, args.every)}  {describe_faces(faces)}", flush=True)
                next_at = slot + args.every
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how this command is meant to end
    finally:
        cap.release()


def cmd_serve(args: argparse.Namespace) -> int:
    from server.__main__ import main as serve
    from server.__main__ import startup_problem

    # The app reads its settings from the environment when uvicorn imports it.
    if args.model is not None:
        os.environ["EMOTION_MODEL_PATH"] = str(args.model)
    if args.detector is not None:
        os.environ["EMOTION_DETECTOR"] = args.detector
    if args.yunet is not None:
        os.environ["EMOTION_YUNET_PATH"] = str(args.yunet)
        os.environ.setdefault("EMOTION_DETECTOR", "yunet")
    # What would stop the server (the settings it will read: the environment alone, the flags in it now) is said the
    # way every command says it (emotion: error: ..., status 1), naming the flag where one set it; the server does
    # not check again.
    if problem := startup_problem(env_settings()):
        for flag, name in (("--model", "EMOTION_MODEL_PATH"), ("--yunet", "EMOTION_YUNET_PATH")):
            if getattr(args, flag[2:]) is not None:
                problem = problem.replace(f"{name}:", f"{flag}:", 1)
        raise CliError(problem)
    argv = []
    for flag, value in (
        ("--host", args.host),
        ("--port", args.port),
        ("--workers", args.workers),
        ("--log-level", args.log_level),
    ):
        if value is not None:
            argv += [flag, str(value)]
    serve(argv, check=False)
    return 0


# --- entry point ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        type=Path,
        default=None,
        help="emotion model (.onnx; env EMOTION_MODEL_PATH, default models/emotion_ferplus.onnx)",
    )
    common.add_argument(
        "--detector",
        choices=["auto", "yunet", "haar"],
        default=None,
        help="face detector (env EMOTION_DETECTOR; default auto: the shipped YuNet, Haar if it cannot be loaded)",
    )
    common.add_argument(
        "--yunet",
        type=Path,
        default=None,
        metavar="PATH",
        help="YuNet model file (env EMOTION_YUNET_PATH; default the shipped one); implies --detector yunet",
    )

    parser = argparse.ArgumentParser(prog="emotion", description="Facial-emotion recognition from the terminal.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    image = commands.add_parser("image", parents=[common], help="classify every face in images (or folders of them)")
    image.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="an image, or a folder of images")
    image.add_argument("--json", action="store_true", help="one JSON object per image, as POST /predict answers")
    image.set_defaults(func=cmd_image)

    stream = argparse.ArgumentParser(add_help=False)
    stream.add_argument(
        "--smoothing",
        type=float,
        default=None,
        metavar="S",
        help="time constant (s) of each face's label smoothing; 0: each frame alone (env EMOTION_SMOOTHING_SECONDS)",
    )

    video = commands.add_parser(
        "video", parents=[common, stream], help="one line per analysed second of a video, then a summary line"
    )
    video.add_argument("path", type=Path, metavar="PATH")
    video.add_argument(
        "--every", type=float, default=1.0, metavar="S", help="seconds between analysed frames (default %(default)s)"
    )
    video.add_argument(
        "--crops",
        type=Path,
        default=None,
        metavar="DIR",
        help="save the classified face of each analysed frame as a 48x48 grayscale PNG named TIME_EMOTION.png",
    )
    video.add_argument("--json", action="store_true", help="print the JSON that POST /predict/video answers")
    video.add_argument(
        "--raw", action="store_true", help="with --json: also each frame's own probabilities (raw_probabilities)"
    )
    video.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress bar on stderr (default: on a terminal, for videos of {PROGRESS_MIN_SECONDS:.0f} s or more)",
    )
    video.set_defaults(func=cmd_video)

    webcam = commands.add_parser("webcam", parents=[common, stream], help="one line per second from a camera (Ctrl-C)")
    webcam.add_argument(
        "--device", default="0", metavar="N", help="camera index, or a video file / stream URL (default %(default)s)"
    )
    webcam.add_argument("--every", type=float, default=1.0, metavar="S", help="seconds between predictions")
    webcam.add_argument(
        "--crops",
        type=Path,
        default=None,
        metavar="DIR",
        help="save the largest face of each prediction as a 48x48 grayscale PNG named TIME_EMOTION.png",
    )
    webcam.set_defaults(func=cmd_webcam)

    serve = commands.add_parser("serve", parents=[common], help="run the HTTP service (like python -m server)")
    serve.add_argument("--host", default=None, help="bind address (env EMOTION_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (env EMOTION_PORT)")
    serve.add_argument("--workers", type=int, default=None, help="worker processes (env EMOTION_WORKERS)")
    serve.add_argument("--log-level", default=None, help="(env EMOTION_LOG_LEVEL)")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe ends below rather than in the interpreter's last flush
        return status
    except CliError as exc:
        print(f"emotion: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of the output is gone (`emotion image photos/ | head -1`): stop quietly, with the status of a
        # command ended by SIGPIPE; what is still buffered goes nowhere instead of failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
