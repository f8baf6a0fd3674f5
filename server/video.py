"""Video -> one prediction per ``every`` seconds: upload to a temporary file, sample frames, summarise.

No web framework here (the CLI uses this module in-process); the route in ``server/app.py`` glues it to HTTP.

Reaching the sampled frames: every frame of an inter-coded video has to be decoded anyway to decode the next one,
so the default is sequential ``grab()`` (decode, no colour conversion) with one ``retrieve()`` per sample. Seeking
(``CAP_PROP_POS_FRAMES``) makes OpenCV jump to the keyframe before ``target - 16`` and decode forward from there,
so it only pays when the gap between samples is longer than that: the sampler switches to seeking for a gap of
more than ``SEEK_BACKOFF + keyframe interval / 2 + SEEK_OVERHEAD`` frames, once it has seen the keyframe interval
while grabbing. Measured on 60 s of 1280x720 (benchmarks/bench_video.py): mp4v (keyframe every 12 frames) at
every=1 grab 1.4 s vs seek 1.8 s, at every=2 grab 1.7 s vs seek 0.9 s; MJPG (every frame a keyframe) at every=1
grab 5.7 s vs seek 3.9 s. A long-GOP H.264 file (keyframe every 250 frames) would lose with seeking at every=1.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from server.pipeline import InputError
from server.schemas import TrackSummary, VideoFrame, VideoResponse, VideoStreamEnd, VideoStreamError, VideoSummary
from server.tracker import FaceTracker
from server.uploads import receive_upload

if TYPE_CHECKING:
    from server.config import Settings
    from server.detector import Detection
    from server.pipeline import EmotionPipeline

log = logging.getLogger(__name__)

EVERY_MIN = 0.1  # seconds between analysed frames; below this a clip turns into a per-frame job
EVERY_MAX = 600.0
SEEK_BACKOFF = 16  # OpenCV's FFmpeg seek lands on the keyframe before ``target - 16`` and decodes forward
SEEK_OVERHEAD = 8  # demuxer seek + decoder flush, in frame decodes (measured: 4 for MJPG to 16 for mp4v)
MAX_FPS = 1000.0  # a larger reported rate is a container time base, not a frame rate
Strategy = Literal["auto", "grab", "seek"]


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frame_count: int | None  # None when the container does not say
    width: int
    height: int
    codec: str

    @property
    def duration(self) -> float | None:
        return self.frame_count / self.fps if self.frame_count is not None else None


@dataclass
class SampledFrame:
    index: int  # frame number from 0
    t: float  # seconds from the start
    image: np.ndarray  # BGR


def _fourcc(value: float) -> str:
    code = int(value)
    text = "".join(chr((code >> 8 * i) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else "unknown"


def _looks_like_text(head: bytes) -> bool:
    """Playlists, SDP files and concat scripts are text; FFmpeg would follow the paths and URLs inside them."""
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the sniffed block is still text.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\r\n\t\f" for c in text)


class FrameSampler:
    """Frames of a video file at 0, every, 2 * every, ... seconds; constructor opens and validates, ``__iter__``
    yields ``SampledFrame``s. Raises ``InputError``: 415 for a file that is not a video, 413 over the duration or
    pixel limit, 422 for a video without decodable frames or one that stops before its header says it ends.
    """

    def __init__(
        self,
        path: str | Path,
        every: float = 1.0,
        *,
        max_seconds: float | None = None,
        max_pixels: int | None = None,
        strategy: Strategy = "auto",
    ):
        if not EVERY_MIN <= every <= EVERY_MAX:
            raise InputError(422, f"every must be between {EVERY_MIN} and {EVERY_MAX} seconds, got {every}")
        self.path = Path(path)
        self.every = float(every)
        self.max_seconds = max_seconds
        self.strategy: Strategy = strategy
        with open(self.path, "rb") as f:
            head = f.read(4096)
        if not head:
            raise InputError(422, "the video file is empty")
        if _looks_like_text(head):
            raise InputError(415, "not a video: the upload is text (playlists and stream descriptions are refused)")
        if cv2.haveImageReader(str(self.path)):
            raise InputError(415, "not a video: the upload is a still image; send images to POST /predict")
        # CAP_FFMPEG only: other backends would read image sequences or devices from a path.
        self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            raise InputError(
                415,
                "could not open the upload as a video: unsupported container or codec, "
                "or a corrupt file (an MP4 cut short loses its index and cannot be opened)",
            )
        try:
            self.info = self._read_info(max_pixels)
        except BaseException:
            self.close()
            raise
        # No video holds more than one frame per frame interval: asked for less (every=0.1 on a 5 fps clip), every
        # frame is analysed, and `every` says so, since the summary's seconds and a chart's time axis are counted in it.
        self.every = max(self.every, round(1 / self.info.fps, 6))
        self._index = -1  # last grabbed frame
        self._last_t = -1.0
        self._last_key: int | None = None
        self._key_interval: int | None = None  # widest keyframe spacing seen while grabbing
        self.frames_read = 0

    def _read_info(self, max_pixels: int | None) -> VideoInfo:
        cap = self._cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
            raise InputError(422, f"the video reports no usable frame rate ({fps:g} fps)")
        if width <= 0 or height <= 0:
            raise InputError(422, f"the video reports a frame size of {width}x{height}")
        if max_pixels is not None and width * height > max_pixels:
            raise InputError(
                413,
                f"video frames are {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels",
            )
        frame_count = int(count) if math.isfinite(count) and 0 < count < 2**40 else None
        info = VideoInfo(
            fps=fps, frame_count=frame_count, width=width, height=height, codec=_fourcc(cap.get(cv2.CAP_PROP_FOURCC))
        )
        if self.max_seconds is not None and info.duration is not None and info.duration > self.max_seconds:
            raise InputError(413, f"video is {info.duration:.1f} s long, over the limit of {self.max_seconds:g} s")
        return info

    # -- reading ---------------------------------------------------------------------------------------------

    def _grab(self) -> bool:
        if not self._cap.grab():
            return False
        self._index += 1
        self.frames_read += 1
        # Keyframe flags come with each grabbed packet; their spacing prices a seek (see the module docstring).
        if self._cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME):
            if self._last_key is not None:
                self._key_interval = max(self._key_interval or 0, self._index - self._last_key)
            self._last_key = self._index
        return True

    def _frame_time(self) -> float:
        # Presentation time of the grabbed frame (right for variable frame rates); frame number / fps when the
        # stream has no timestamps (OpenCV then reports 0).
        t = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if not math.isfinite(t) or t <= self._last_t:
            t = max(self._index / self.info.fps, self._last_t + 1e-3)
        return t

    def _use_seek(self, target_index: int) -> bool:
        if self.strategy != "auto":
            return self.strategy == "seek" and self.info.frame_count is not None
        if self.info.frame_count is None or self._key_interval is None:
            return False
        gap = target_index - self._index - 1
        return gap > SEEK_BACKOFF + self._key_interval / 2 + SEEK_OVERHEAD

    def _seek(self, target_index: int) -> bool:
        if not self._cap.set(cv2.CAP_PROP_POS_FRAMES, target_index):
            return False
        self._index = target_index - 1
        self._last_t = -1.0
        if not self._cap.grab():
            return False
        self._index += 1
        self.frames_read += 1
        return True

    def _check_truncated(self, t: float) -> None:
        count = self.info.frame_count
        # Containers round their frame counts: only a gap of more than half a second is a truncation.
        if count is not None and t * self.info.fps < count - max(2.0, self.info.fps / 2):
            raise InputError(
                422,
                f"the video is truncated or corrupt: frames stop at {t:.1f} s, its header says "
                f"{self.info.duration:.1f} s",
            )

    def __iter__(self) -> Iterator[SampledFrame]:
        fps = self.info.fps
        tolerance = 0.5 / fps  # a frame within half a frame of the target time is the target
        k = 0
        while True:
            target = k * self.every
            # The frame nearest to the target time; a tie goes to the earlier frame (as in the grab loop below).
            target_index = math.floor(target * fps + 0.5 - 1e-6)
            if self.info.frame_count is not None and target_index >= self.info.frame_count:
                return
            if self._use_seek(target_index):
                ok = self._seek(target_index)
                t = self._frame_time() if ok else target
            else:
                ok, t = True, self._last_t
                while t < target - tolerance - 1e-6 or self._index < 0:
                    ok = self._grab()
                    if not ok:
                        break
                    t = self._frame_time()
                    self._last_t = t
                    # Only a frame that exists past the limit makes a video too long (a header without a
                    # duration was let through at open); a short video with a large `every` just ends.
                    if self.max_seconds is not None and t > self.max_seconds + tolerance:
                        raise InputError(413, f"video is longer than the limit of {self.max_seconds:g} s")
            if not ok:
                if self.frames_read == 0:
                    raise InputError(422, "no frame of the video could be decoded: the file is corrupt or truncated")
                self._check_truncated(target)
                return
            self._last_t = t
            ok, image = self._cap.retrieve()
            if not ok or image is None:
                raise InputError(422, f"the frame at {t:.2f} s could not be decoded: the video is corrupt")
            yield SampledFrame(index=self._index, t=round(t, 3), image=image)
            # The next target after this frame (several when `every` is shorter than a frame).
            k = max(k + 1, math.floor((t + tolerance) / self.every) + 1)

    @property
    def duration(self) -> float:
        """The header's duration, or (for containers that do not say) what was read so far."""
        return self.info.duration if self.info.duration is not None else (self._index + 1) / self.info.fps

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> FrameSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- analysis ----------------------------------------------------------------------------------------------------


@dataclass
class TrackTally:
    first_seen: float
    last_seen: float
    samples: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    valence: float = 0.0
    arousal: float = 0.0


class VideoSummarizer:
    """Running summary: the emotion of the largest face per sampled frame, counted over frames with a face; and per
    track, the frames it was seen in, its emotions and its mean valence / arousal."""

    def __init__(self, every: float):
        self.every = every
        self.sampled = 0
        self.without_face = 0
        self.labels: list[str] = []
        self.counts: Counter[str] = Counter()
        self.tracks: dict[int, TrackTally] = {}  # insertion order = order of first appearance

    def add(self, frame: VideoFrame) -> None:
        self.sampled += 1
        if not frame.faces:
            self.without_face += 1
            return
        face = frame.faces[0]  # the pipeline sorts faces largest first
        if not self.labels:
            self.labels = list(face.probabilities)
        self.counts[face.emotion] += 1
        for face in frame.faces:
            if face.track_id is None:
                continue
            tally = self.tracks.setdefault(face.track_id, TrackTally(frame.t, frame.t))
            tally.last_seen = frame.t
            tally.samples += 1
            tally.counts[face.emotion] += 1
            tally.valence += face.valence
            tally.arousal += face.arousal

    def track_summaries(self) -> list[TrackSummary]:
        return [
            TrackSummary(
                track_id=track_id,
                first_seen=tally.first_seen,
                last_seen=tally.last_seen,
                samples=tally.samples,
                seconds_seen=round(tally.samples * self.every, 3),
                emotion_share={label: round(tally.counts[label] / tally.samples, 4) for label in self.labels},
                dominant_emotion=max(self.labels, key=lambda label: tally.counts[label]),
                mean_valence=round(tally.valence / tally.samples, 4),
                mean_arousal=round(tally.arousal / tally.samples, 4),
            )
            for track_id, tally in self.tracks.items()
        ]

    def result(self) -> VideoSummary:
        with_face = self.sampled - self.without_face
        share = {label: round(self.counts[label] / with_face, 4) for label in self.labels} if with_face else {}
        # Ties go to the label the model lists first, so the answer does not depend on frame order.
        dominant = max(self.labels, key=lambda label: self.counts[label]) if with_face else None
        return VideoSummary(
            sampled=self.sampled,
            with_face=with_face,
            without_face=self.without_face,
            seconds_without_face=round(self.without_face * self.every, 3),
            emotion_share=share,
            dominant_emotion=dominant,
            tracks=self.track_summaries(),
        )


@dataclass
class AnalysedFrame:
    sample: SampledFrame
    result: VideoFrame
    detections: list[Detection]  # the faces found in the sample, in the order of result.faces (for --crops)


_END = object()


class FramePrefetcher:
    """Runs a sampler's iterator in its own thread, ``depth`` samples ahead, so decoding the next sample overlaps
    detecting and classifying this one (on 2 cores: wall time ~ max of the two instead of their sum). The thread
    is the only user of the capture until ``close()`` has joined it."""

    def __init__(self, frames: Iterator[SampledFrame], depth: int = 2):
        self._frames = frames
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="video-decode", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for sample in self._frames:
                if not self._put(sample):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def next(self) -> SampledFrame | None:
        if self._done:
            return None
        item = self._queue.get()
        if item is _END:
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class VideoAnalysis:
    """Sampled frames through the pipeline, one at a time; the next sample is decoded meanwhile in a thread.

    ``next_frame()`` is blocking (run it in a thread pool); ``close()`` may be called from any thread, also while
    ``next_frame()`` runs in another: it waits for that frame, then stops the decoding thread and releases the
    decoder.
    """

    def __init__(
        self,
        sampler: FrameSampler,
        pipeline: EmotionPipeline,
        *,
        prefetch: bool = True,
        tracker: FaceTracker | None = None,
    ):
        self.sampler = sampler
        self.pipeline = pipeline
        # Every sample gets a full detection (samples are far apart); the tracker gives ids and smoothed labels.
        self.tracker = tracker if tracker is not None else FaceTracker()
        self.summarizer = VideoSummarizer(sampler.every)
        frames = iter(sampler)
        self._lock = threading.Lock()
        self._closed = False
        self._prefetcher: FramePrefetcher | None = None
        # Decode the first frame now, so a video without decodable frames fails before any answer has started.
        try:
            self._pending: SampledFrame | None = next(frames, None)
            if self._pending is None:
                raise InputError(422, "no frame of the video could be decoded: the file is corrupt or truncated")
        except BaseException:
            self.close()
            raise
        self._next: Callable[[], SampledFrame | None]
        if prefetch:
            self._prefetcher = FramePrefetcher(frames)
            self._next = self._prefetcher.next
        else:
            self._next = partial(next, frames, None)

    @classmethod
    def open(
        cls,
        path: str | Path,
        pipeline: EmotionPipeline,
        every: float,
        settings: Settings | None = None,
        strategy: Strategy = "auto",
        prefetch: bool = True,
        tracker: FaceTracker | None = None,
    ) -> VideoAnalysis:
        """``tracker`` defaults to one made from ``settings`` (or the defaults without them)."""
        sampler = FrameSampler(
            path,
            every,
            strategy=strategy,
            max_seconds=settings.max_video_seconds if settings is not None else None,
            max_pixels=settings.max_pixels if settings is not None else None,
        )
        if tracker is None and settings is not None:
            tracker = FaceTracker.from_settings(settings)
        return cls(sampler, pipeline, prefetch=prefetch, tracker=tracker)  # closes the sampler if it fails

    @property
    def info(self) -> VideoInfo:
        return self.sampler.info

    def next_analysed(self) -> AnalysedFrame | None:
        """The next sample with its faces; None at the end."""
        with self._lock:
            if self._closed:
                return None
            sample, self._pending = self._pending, None
            if sample is None:
                sample = self._next()
            if sample is None:
                return None
            detections = self.pipeline.detect(sample.image)
            faces, _ = self.pipeline.predict(sample.image, detections=detections)
            frame = VideoFrame(t=sample.t, faces=self.tracker.update(faces, sample.t))  # keeps the faces' order
            self.summarizer.add(frame)
            return AnalysedFrame(sample, frame, detections)

    def next_frame(self) -> VideoFrame | None:
        item = self.next_analysed()
        return item.result if item is not None else None

    def __iter__(self) -> Iterator[AnalysedFrame]:
        while (item := self.next_analysed()) is not None:
            yield item

    def end(self) -> VideoStreamEnd:
        info = self.info
        return VideoStreamEnd(
            duration=round(self.sampler.duration, 3),
            fps=round(info.fps, 3),
            every=self.sampler.every,
            width=info.width,
            height=info.height,
            summary=self.summarizer.result(),
        )

    def response(self, frames: list[VideoFrame]) -> VideoResponse:
        return VideoResponse(**self.end().model_dump(), frames=frames)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._prefetcher is not None:
                    self._prefetcher.close()
                self.sampler.close()

    def __enter__(self) -> VideoAnalysis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- HTTP glue without the framework ------------------------------------------------------------------------------

RunBlocking = Callable[..., Awaitable[Any]]


def check_temp_dir(temp_dir: str | Path | None) -> None:
    """At start-up: ``temp_dir`` (``EMOTION_VIDEO_TEMP_DIR``; None: the system's) is created when missing and takes a
    file; ``RuntimeError`` naming it otherwise. An unusable folder (a file, read-only, not creatable) would otherwise
    turn every video upload into a 500 while the service looked ready."""
    if temp_dir is None:
        return
    try:
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(prefix="emotion-video-", dir=temp_dir):
            pass
    except OSError as exc:
        raise RuntimeError(
            f"EMOTION_VIDEO_TEMP_DIR {temp_dir}: video uploads cannot be written there ({exc.strerror or exc})"
        ) from exc


async def receive_video(
    headers: Mapping[str, str],
    chunks: AsyncIterable[bytes],
    *,
    max_bytes: int,
    temp_dir: str | Path | None = None,
    field: str = "file",
) -> Path:
    """Write an uploaded video to a new temporary file as it arrives; the caller deletes it.

    The body is a multipart form with ``field`` or a raw ``video/*`` / ``application/octet-stream`` body. The file
    (random name, mode 0600, in ``temp_dir``) is removed here on any error. ``InputError``: 413 past ``max_bytes``
    (on Content-Length, then while streaming), 415 for another content type, 400/422 for a broken or empty form.
    """
    if temp_dir is not None:
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="emotion-video-", dir=temp_dir)  # O_EXCL, mode 0600
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            await receive_upload(
                headers, chunks, out.write, max_bytes=max_bytes, kind="video", field=field, raw_octet_stream=True
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def discard(
    analysis: VideoAnalysis | None, path: Path, submit: Callable[[Callable[[], None]], Any] | None = None
) -> None:
    """Delete the upload now and release the decoder (through ``submit``, e.g. a pool, so the event loop never
    waits for a frame in progress). Deleting first is safe: an open file stays readable after its name is gone."""
    path.unlink(missing_ok=True)
    if analysis is None:
        return
    if submit is not None:
        try:
            submit(analysis.close)
            return
        except RuntimeError:  # the pool is shut down
            pass
    analysis.close()


async def ndjson_lines(
    analysis: VideoAnalysis, path: Path, run: RunBlocking, submit: Callable[[Callable[[], None]], Any] | None = None
) -> AsyncIterator[bytes]:
    """One JSON line per sampled frame as soon as it is computed, then the summary line
    ``{duration, fps, every, width, height, summary}``. An error after the first line can no longer change the
    status code: it becomes a last line ``{"detail": ..., "status_code": ...}``. The upload is deleted when the
    stream ends, fails or the client goes away (the generator is closed then)."""
    try:
        while (frame := await run(analysis.next_frame)) is not None:
            yield frame.model_dump_json().encode() + b"\n"
        yield analysis.end().model_dump_json().encode() + b"\n"
    except InputError as exc:
        yield VideoStreamError(detail=exc.detail, status_code=exc.status_code).model_dump_json().encode() + b"\n"
    finally:
        discard(analysis, path, submit)
