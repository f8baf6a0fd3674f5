"""``python -m server`` / ``emotion-server``: run the service with uvicorn, in one or several worker processes."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn
from uvicorn.config import LOG_LEVELS as UVICORN_LOG_LEVELS

from server.config import LOG_LEVELS, Settings, SettingsError, read_settings
from server.limits import uvicorn_options
from server.metrics import MULTIPROC_ENV


def prepare_metrics_dir() -> Path | None:
    """Several workers share their metrics through files in ``$PROMETHEUS_MULTIPROC_DIR``. Empties a given directory
    (files left by an earlier run would be counted again); creates a private one when none is given, returned so the
    caller removes it at exit."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    path = Path(tempfile.mkdtemp(prefix="emotion-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def startup_problem(settings: Settings) -> str | None:
    """What would stop the app's start-up, as ``EMOTION_<NAME>: why``; None when nothing would.

    The app loads its models when uvicorn starts it, where a failure is a traceback and exit status 3; checked here
    first, a missing or unusable model file or video folder is one line naming its setting.
    """
    from server.classifier import EmotionClassifier, ModelError
    from server.config import resolve_path
    from server.detector import DetectorError, YuNetDetector
    from server.video import check_temp_dir

    try:
        check_temp_dir(settings.video_temp_dir)  # its message names EMOTION_VIDEO_TEMP_DIR
    except RuntimeError as exc:
        return str(exc)
    try:
        # On the CPU whatever EMOTION_PROVIDERS says: a check in the supervisor process holds no GPU context.
        EmotionClassifier(resolve_path(settings.model_path), settings.intra_op_threads, ["CPUExecutionProvider"])
    except ModelError as exc:
        return f"EMOTION_MODEL_PATH: {exc}"
    if settings.detector == "yunet":  # "auto" falls back to the Haar cascade (with a warning) instead of failing
        try:
            YuNetDetector(resolve_path(settings.yunet_path), sha256=settings.yunet_sha256 or None)
        except DetectorError as exc:
            return f"EMOTION_YUNET_PATH: {exc}"
    return None


def main(argv: list[str] | None = None, *, check: bool = True) -> None:
    """``check=False``: the caller has run ``startup_problem`` on these settings already (``emotion serve``, which
    says what it finds in its own words)."""
    parser = argparse.ArgumentParser(prog="emotion-server", description="Run the facial-emotion service.")
    try:
        defaults = read_settings()
    except SettingsError as exc:  # a bad EMOTION_* value: one line naming it, not a traceback
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    parser.add_argument("--host", default=defaults.host, help="bind address (env EMOTION_HOST, default %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="port (env EMOTION_PORT, default %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="worker processes sharing the port, each with its own models and CPU threads "
        "(env EMOTION_WORKERS, default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=defaults.log_level,
        help="(env EMOTION_LOG_LEVEL, default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not 0 <= args.port <= 65535:  # the socket layer would bind the port modulo 65536
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    if check and (problem := startup_problem(defaults)):
        parser.exit(2, f"{parser.prog}: error: {problem}\n")
    logging.basicConfig(level=UVICORN_LOG_LEVELS[args.log_level], format="%(levelname)s:     %(name)s: %(message)s")
    # The workers read their settings from the environment: they need the count to share out the CPUs.
    os.environ["EMOTION_WORKERS"] = str(args.workers)
    own_metrics_dir = prepare_metrics_dir() if args.workers > 1 else None
    try:
        # Deadlines, keep-alive, connection and WebSocket message limits: server/limits.py.
        uvicorn.run(
            "server.app:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            timeout_graceful_shutdown=defaults.shutdown_timeout,
            **uvicorn_options(defaults),
        )
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
