"""Service settings, read from the environment with the prefix ``EMOTION_`` (e.g. ``EMOTION_PORT=9000``)."""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.detector import YUNET_SHA256

# models/ and web/ sit at the top of the repository and travel inside the wheel as server/models and server/web
# (pyproject.toml maps them there). Installed from a wheel they are package data; in a checkout or an editable
# install they are the repository's own folders.
DATA_DIRS = ("models", "web")
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """The shipped ``models`` or ``web`` folder: the package's data in an installed wheel, else the checkout's."""
    if name not in DATA_DIRS:
        raise ValueError(f"unknown data folder {name!r}; expected one of {DATA_DIRS}")
    packaged = Path(str(resources.files("server") / name))
    return packaged if packaged.is_dir() else REPO_ROOT / name


# uvicorn's log levels (its --log-level); "trace" is below debug.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

# The page sends the API key as a WebSocket subprotocol, which allows only these characters.
API_KEY_PATTERN = re.compile(r"[A-Za-z0-9._~-]{8,}")


def resolve_path(path: Path) -> Path:
    """``path`` as given if it exists (or is absolute); else, for ``models/...`` and ``web``, the shipped copy.

    So the defaults (``models/emotion_ferplus.onnx``, ``web``) and ``EMOTION_MODEL_PATH=models/emotion_fer2013.onnx``
    work from any directory, while a file or folder of that name in the working directory still wins (the web page's
    default does not come here: server/app.py).
    """
    path = Path(path)
    if path.is_absolute() or path.exists() or not path.parts or path.parts[0] not in DATA_DIRS:
        return path
    candidate = data_dir(path.parts[0]).joinpath(*path.parts[1:])
    return candidate if candidate.exists() else path


class Settings(BaseSettings):
    # protected_namespaces=() because "model_path" would otherwise clash with pydantic's "model_" namespace.
    model_config = SettingsConfigDict(env_prefix="EMOTION_", protected_namespaces=(), extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"  # one of LOG_LEVELS, any case

    # Models.
    model_path: Path = Path("models/emotion_ferplus.onnx")
    yunet_path: Path = Path("models/face_detection_yunet_2023mar.onnx")
    # The YuNet file must have this sha256 (the shipped, pinned release); empty: accept any file (your own YuNet).
    yunet_sha256: str = YUNET_SHA256
    # auto: YuNet when its file is present and passes the check, else the Haar cascade (with a warning).
    detector: Literal["auto", "yunet", "haar"] = "auto"

    # Detection runs on a copy whose longer side is at most this; crops come from the full-resolution image.
    # YuNet finds faces down to ~10 px, so at 320 it keeps faces over ~3% of the image's longer side (~6 ms).
    detect_max_side: int = Field(320, ge=64)
    # Haar's cost grows with (copy side / smallest face)^2. Its copy is only as large as needed for a face of
    # haar_min_face_size pixels (in the sent image) to fill the cascade's 20 px window, with its longer side
    # between haar_min_side and haar_max_side: a 640x480 frame is searched at 160x120 for faces >= 80 px.
    haar_max_side: int = Field(320, ge=64)
    haar_min_side: int = Field(160, ge=32)
    haar_min_face_size: int = Field(80, ge=1)
    min_face_size: int = Field(20, ge=1)  # pixels of the sent image; smaller detections are dropped
    max_faces: int = Field(32, ge=1)  # largest faces kept per image
    yunet_score_threshold: float = Field(0.7, ge=0.0, le=1.0)
    yunet_nms_threshold: float = Field(0.3, ge=0.0, le=1.0)
    haar_scale_factor: float = Field(1.1, gt=1.0)
    haar_min_neighbors: int = Field(4, ge=0)

    # Processes: uvicorn workers sharing the port (python -m server --workers N); each loads its own models.
    workers: int = Field(1, ge=1)
    # CPU: requests run in parallel in a thread pool per process, so each onnxruntime call stays on few threads.
    # None: the CPUs this process may use, shared out among the workers.
    threads: int | None = Field(None, ge=1)
    intra_op_threads: int = Field(1, ge=1)
    # onnxruntime execution providers for the classifier, in order of preference, e.g.
    # "CUDAExecutionProvider,CPUExecutionProvider" with the onnxruntime-gpu wheel; ones not installed are skipped.
    providers: str = "CPUExecutionProvider"

    # Shutdown (SIGTERM/SIGINT): /readyz answers 503 and live streams are closed with 1001 (going away) at once;
    # new HTTP requests are still served for drain_seconds (time for a load balancer to stop sending any), then
    # the port closes and in-flight requests get up to shutdown_timeout seconds to finish.
    drain_seconds: float = Field(0.0, ge=0)
    shutdown_timeout: float = Field(20.0, gt=0)

    # Input limits: bytes are checked while reading, pixels from the image header before decoding.
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)

    # Video (POST /predict/video): the upload streams to a temporary file (random name, mode 0600) that is deleted
    # when the request ends; bytes are checked while it streams, the duration from the header once it is open.
    max_video_bytes: int = Field(512 * 1024 * 1024, ge=1)
    max_video_seconds: float = Field(600.0, gt=0)
    # Seconds of decoding one video may take (server/video.py: opening, demuxing, decoding, seeking, converting; not
    # waits for the work queue or the classifier). Within the limits above, 600 s of 4K at 60 fps (~7 Mbit/s) decodes
    # through in ~3.5 min on one core (~5 ms a frame, 36,000 frames, +7 ms per sample converted at every=0.1) and
    # 1080p at 30 fps in under one; a still 4K scene in H.264 at 1000 fps (~250 bytes a frame) would take an hour.
    max_video_analysis_seconds: float = Field(600.0, gt=0)
    video_temp_dir: Path | None = None  # None: the system's temporary directory

    # Live stream (WS /ws): past the cap a client is told to retry later (close 1013); a bigger frame closes the
    # connection (1009). The page sends frames of at most 640 px, a few tens of KB.
    ws_max_connections: int = Field(16, ge=1)
    ws_max_frame_bytes: int = Field(2 * 1024 * 1024, ge=1)
    ws_default_max_faces: int = Field(10, ge=1)  # per connection until the client sends {"max_faces": n}
    ws_idle_timeout: float = Field(60.0, gt=0)  # a connection without any message for this long is closed (1001)
    ws_max_age: float = Field(3600.0, gt=0)  # and any connection after this long (1001; the page reconnects)

    # Deadlines (server/limits.py). uvicorn has none for reading a request: without them a client that sends its
    # headers or body a byte at a time holds a connection forever.
    header_timeout: float = Field(10.0, gt=0)  # connection open (or last answer sent) -> end of the next headers
    body_timeout: float = Field(300.0, gt=0)  # whole body; 300 s is 512 MiB at ~14 Mbit/s
    body_idle_timeout: float = Field(30.0, gt=0)  # longest pause between two chunks of a body
    keep_alive_timeout: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    max_connections: int = Field(512, ge=1)  # connections served at once (open ones, requests in flight); 503 past it

    # Admission control (server/admission.py): CPU jobs waiting for a thread beyond the running ones; past the
    # queue a request is answered 503 with Retry-After at once instead of waiting behind work it cannot overtake.
    queue_size: int = Field(64, ge=0)
    retry_after: int = Field(1, ge=1)  # seconds, the Retry-After of a 503

    # Access (server/access.py). All off by default: a service on 127.0.0.1 for its own page.
    api_key: SecretStr | None = None  # required on /predict*, /ws and /metrics when set
    allowed_origins: Annotated[list[str], NoDecode] = []  # other origins whose pages may call the API and /ws
    trusted_hosts: Annotated[list[str], NoDecode] = []  # Host headers accepted (e.g. "emotion.example.org")

    # Streams (WS /ws, videos, the CLI's video and webcam): faces keep a track id; their probabilities are averaged
    # over time with this time constant (0: no smoothing). A track outlives a missed detection for the grace time
    # (and at least two frames). Live frames between full detections only search around the tracked faces; a full
    # detection runs at least every track_full_detect_seconds, so a new face appears within that time.
    smoothing_seconds: float = Field(0.5, ge=0.0, le=60.0)
    track_grace_seconds: float = Field(0.5, ge=0.0, le=60.0)
    track_full_detect_seconds: float = Field(0.5, ge=0.0, le=60.0)

    web_dir: Path = Path("web")

    @property
    def cpu_threads(self) -> int:
        """Threads of the CPU pool: ``threads``, or the usable CPUs divided among the worker processes."""
        if self.threads is not None:
            return self.threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cpus // self.workers)

    @property
    def provider_list(self) -> list[str]:
        return [p.strip() for p in self.providers.split(",") if p.strip()]

    @field_validator("allowed_origins", "trusted_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """``EMOTION_ALLOWED_ORIGINS=https://a.example,https://b.example`` (or a JSON list)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"the log level must be one of {', '.join(LOG_LEVELS)}")
        return value.lower()

    @field_validator("api_key")
    @classmethod
    def _token_characters(cls, value: SecretStr | None) -> SecretStr | None:
        # The page sends the key as a WebSocket subprotocol, which allows only these characters.
        if value is None or not value.get_secret_value():
            return None  # EMOTION_API_KEY= (empty) is "no key"
        if not API_KEY_PATTERN.fullmatch(value.get_secret_value()):
            raise ValueError("the API key must be 8 or more letters, digits or - . _ ~ characters")
        return value


class SettingsError(ValueError):
    """Settings refused, said in one line: ``EMOTION_<NAME>: why`` per setting (``settings_problems``)."""


def settings_problems(exc: ValidationError) -> str:
    """What a ``Settings`` refused, one ``EMOTION_<NAME>: why`` per setting (never the value: it may be the key)."""
    problems = []
    for error in exc.errors():
        name = f"EMOTION_{str(error['loc'][0]).upper()}" if error["loc"] else "settings"
        problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def read_settings(**overrides: object) -> Settings:
    """The settings of the ``EMOTION_*`` environment, read now; ``overrides`` (a command's flags) win over it. Without
    overrides: the environment alone, what the server reads. A refused value raises ``SettingsError``."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(settings_problems(exc)) from exc


@lru_cache
def get_settings() -> Settings:
    return Settings()
