"""Video -> one prediction per ``every`` seconds: upload to a temporary file, sample frames, summarise.

No web framework here (the CLI uses this module in-process); the route in ``server/app.py`` glues it to HTTP.

Decoding is PyAV's FFmpeg, for what OpenCV's VideoCapture cannot do: tell the decoder the pixel limit
(``max_pixels``), so that a frame larger than the header says is refused before it is allocated (OpenCV decoded a
12000x12000 JPEG in an AVI that said 64x48 at full size, +210 MB, then scaled it down), and see packets before
decoding them. Reaching the sampled frames (``strategy="auto"``):

- intra-only codecs (MJPG): every frame decodes alone, so only the sampled packets are decoded;
- otherwise every frame is decoded in order (each needs the one before), except that the sampler seeks to the last
  keyframe before the next sample when that keyframe is more than ``SEEK_OVERHEAD`` frames ahead; the container's
  index says where the keyframes are (MP4, AVI), else the widest keyframe spacing seen so far (Matroska reads its
  cues only when it first seeks); MPEG-TS, MPEG-PS and Ogg, whose seeks land after the target as often as before
  it, are decoded through, and so is a video whose seek once landed past its target (an open GOP).

Measured on 60 s of 1280x720 30 fps (benchmarks/bench_video.py; decoded frames and CPU seconds, every=1, with
OpenCV's before): mp4v (keyframe every 12) 588 frames, 0.8 s (OpenCV 1771, 1.9 s); MJPG 60 frames, 0.25 s
(OpenCV 89, 2.2 s); H.264 with a keyframe every 250 frames 1706 frames, 2.5 s (OpenCV 1771, 2.5 s).

Every other limit still lets a client send an hour of decoding (a still 4K scene in H.264 at 1000 fps: 600 s in
150 MiB), so the time the sampler spends reaching frames is bounded too (``max_analysis_seconds``): the clock runs
while the sampler opens the file, demuxes, decodes, seeks and converts, and stops while it waits with a frame in hand
(for the classifier, a thread of the work queue, a slow client). It is checked between packets; one frame's cost is
bounded by the pixel limit.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import queue
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import av
import cv2
import numpy as np

from server.pipeline import MAX_JPEG_SCANS, InputError
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
SEEK_OVERHEAD = 8  # demuxer seek + decoder flush, counted in frame decodes
MAX_INDEX_ENTRIES = 1_000_000  # a container index longer than this is not read for keyframes (~0.4 s)
MAX_FPS = 1000.0  # a larger reported rate is a container time base, not a frame rate
AVFMT_TS_DISCONT = 0x200  # FFmpeg's flag for containers whose timestamps may jump (MPEG-TS, MPEG-PS, Ogg)
Strategy = Literal["auto", "grab", "seek"]
STILL_IMAGE = "not a video: the upload is a still image; send images to POST /predict"
# FFmpeg's WebP decoder (8.1) reads still images only: it skips an animation's ANIM and ANMF chunks and finds no
# picture. One that reads animations sizes the stream while probing it, and the file is then analysed as a GIF is.
ANIMATED_WEBP = (
    "animated WebP is not supported: this server's FFmpeg cannot decode its frames; send the animation as MP4, WebM "
    "or GIF, or its first frame as an image to POST /predict"
)


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
    index: int  # frame number from 0 (its time x fps: for a variable frame rate, the nearest constant-rate one)
    t: float  # seconds from the start
    image: np.ndarray  # BGR


def decoder_pixel_limit(max_pixels: int) -> int:
    """FFmpeg's ``max_pixels`` for a limit of ``max_pixels``: it counts a frame's width rounded up to its SIMD
    alignment (64), so it gets a quarter more and 64 x 4096 pixels of slack; the limit itself is checked on the
    size the video reports."""
    return min(max_pixels + max_pixels // 4 + 64 * 4096, 2**31 - 1)


def _is_animated_webp(head: bytes) -> bool:
    """A WebP with the extended header (VP8X) whose animation flag is set: its frames are in ANMF chunks."""
    return head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and len(head) > 20 and bool(head[20] & 0x02)


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
    yields ``SampledFrame``s, upright (a phone video's rotation applied) and at the header's size. Raises
    ``InputError``: 415 for a file that is not a video, 413 over the duration or pixel limit (also for a later frame
    larger than the header says: the decoder refuses it before allocating it) or past ``max_analysis_seconds`` of
    decoding (see the module's docstring), 422 for a video without decodable frames or one that stops before its
    header says it ends.
    """

    def __init__(
        self,
        path: str | Path,
        every: float = 1.0,
        *,
        max_seconds: float | None = None,
        max_pixels: int | None = None,
        max_analysis_seconds: float | None = None,
        strategy: Strategy = "auto",
    ):
        if not EVERY_MIN <= every <= EVERY_MAX:
            raise InputError(422, f"every must be between {EVERY_MIN} and {EVERY_MAX} seconds, got {every}")
        self.path = Path(path)
        self.every = float(every)
        self.max_seconds = max_seconds
        self.max_pixels = max_pixels
        self.strategy: Strategy = strategy
        self.max_analysis_seconds = max_analysis_seconds
        # Moved on by the time the sampler waits with a frame in hand (__iter__): only its own work is charged.
        self._deadline = time.monotonic() + max_analysis_seconds if max_analysis_seconds is not None else math.inf
        self._reached = 0.0  # time of the latest frame decoded, for the message when the deadline passes
        with open(self.path, "rb") as f:
            head = f.read(4096)
        if not head:
            raise InputError(422, "the video file is empty")
        if _looks_like_text(head):
            raise InputError(415, "not a video: the upload is text (playlists and stream descriptions are refused)")
        # An image is no video, unless it is a GIF or PNG with more than one frame (an animation, which FFmpeg
        # decodes; checked below, once its first frames are decoded) or an animated WebP.
        image = cv2.haveImageReader(str(self.path))
        animated_webp = _is_animated_webp(head)
        if image and not (head.startswith((b"GIF87a", b"GIF89a", b"\x89PNG\r\n\x1a\n")) or animated_webp):
            raise InputError(415, STILL_IMAGE)
        # Local files only (no URL a container might name), and the pixel limit for the frames FFmpeg decodes
        # while probing the streams (containers that list their streams up front: AVI, MP4, Matroska).
        options = {"protocol_whitelist": "file"}
        if max_pixels is not None:
            options["max_pixels"] = str(decoder_pixel_limit(max_pixels))
        try:
            self._container = av.open(str(self.path), options=options)
        except (av.FFmpegError, UnicodeDecodeError, ValueError):
            raise InputError(
                415,
                "could not open the upload as a video: unsupported container or codec, "
                "or a corrupt file (an MP4 cut short loses its index and cannot be opened)",
            ) from None
        self._pending: list[av.VideoFrame] = []  # decoded, not yet handed out
        self._packets: Iterator[av.Packet] | None = None
        self._index = -1  # frame number of the last frame handed out
        self._last_t = -1.0
        self._last_key: int | None = None
        self._packets_seen = 0
        self._key_interval: int | None = None  # widest keyframe spacing seen, in packets
        self.frames_read = 0  # frames decoded
        try:
            # An audio file's cover picture (MP3, M4A, FLAC) is a "video" stream of one frame: not a video.
            streams = [
                s for s in self._container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
            ]
            if not streams or streams[0].codec_context is None:
                raise InputError(415, "could not open the upload as a video: no video stream FFmpeg can decode")
            self._stream = streams[0]
            if animated_webp and self._stream.codec_context.width <= 0:
                raise InputError(415, ANIMATED_WEBP)  # else a "frame size of 0x0" (422), or a 413 under a pixel limit
            self._start = self._stream.start_time or 0
            self.info = self._read_info(max_pixels)
            self._stream.codec_context.options = options  # every later frame: refused over the limit, never allocated
            self._intra_only = self._stream.codec_context.codec.intra_only  # MJPEG: any frame decodes alone
            self._jpeg_frames = self._stream.codec_context.codec.name == "mjpeg"  # scans counted, as for images
            # FFmpeg seeks these by searching their timestamps, and lands on the keyframe after the target as often
            # as on the one before it (MPEG-TS: the sample for 7.5 s was the frame at 8 s): they are read through.
            self._seekable = not self._container.format.flags & AVFMT_TS_DISCONT
            # AVI stores no presentation times, and FFmpeg's guesses are wrong with B-frames (H.264 came out of
            # order, MPEG-4 one frame late): there a frame's time is the decoding time of the packet that brought it
            # out, counted from the first frame's (which the decoder's delay puts a few frames in).
            self._by_dts = self._container.format.name == "avi"
            first = self._next_frame(-math.inf)
            if first is None:
                raise InputError(422, "no frame of the video could be decoded: the file is corrupt or truncated")
            if self._by_dts and first.dts is not None:
                self._start = first.dts
            self._keyframes = self._read_keyframes() if strategy == "auto" else []
            if image:
                second = self._next_frame(-math.inf)
                if second is None:
                    raise InputError(415, STILL_IMAGE)
                self._pending.insert(0, second)
            self._pending.insert(0, first)
            self._upright = first.rotation % 360 // 90  # quarter turns counter-clockwise, as the player shows it
            if self._upright % 2:
                self.info = replace(self.info, width=self.info.height, height=self.info.width)
        except BaseException:
            self.close()
            raise
        # No video holds more than one frame per frame interval: asked for less (every=0.1 on a 5 fps clip), every
        # frame is analysed, and `every` says so, since the summary's seconds and a chart's time axis are counted in it.
        self.every = max(self.every, round(1 / self.info.fps, 6))

    def _read_info(self, max_pixels: int | None) -> VideoInfo:
        stream, ctx = self._stream, self._stream.codec_context
        # The average rate, else FFmpeg's guess (raw DV reports an average of 60000 fps, its time base).
        rates = [float(r) for r in (stream.average_rate, stream.guessed_rate) if r]
        fps = next((r for r in rates if 0 < r <= MAX_FPS), rates[0] if rates else 0.0)
        width, height = ctx.width, ctx.height
        if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
            raise InputError(422, f"the video reports no usable frame rate ({fps:g} fps)")
        if (width <= 0 or height <= 0) and max_pixels is not None:
            # FFmpeg forgets a size it refused (and some codecs give their size only in the frames).
            raise InputError(
                413, f"the video's first frame is over the limit of {max_pixels} pixels, or could not be decoded"
            )
        if width <= 0 or height <= 0:
            raise InputError(422, f"the video reports a frame size of {width}x{height}")
        if max_pixels is not None and width * height > max_pixels:
            raise InputError(
                413,
                f"video frames are {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels",
            )
        # The stream's frame count, else its duration (or the container's) times the rate, as players estimate it.
        count: float | None = stream.frames or None
        if count is None and stream.duration and stream.time_base:
            count = round(float(stream.duration * stream.time_base) * fps)
        if count is None and self._container.duration:
            count = round(self._container.duration / av.time_base * fps)
        frame_count = int(count) if count is not None and 0 < count < 2**40 else None
        info = VideoInfo(fps=fps, frame_count=frame_count, width=width, height=height, codec=ctx.codec.name)
        if self.max_seconds is not None and info.duration is not None and info.duration > self.max_seconds:
            raise InputError(413, f"video is {info.duration:.1f} s long, over the limit of {self.max_seconds:g} s")
        return info

    # -- reading ---------------------------------------------------------------------------------------------

    def _time(self, pts: int | None, time_base: Fraction | None) -> float | None:
        if pts is None or not time_base:
            return None
        return float((pts - self._start) * time_base)

    def _decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        # A JPEG frame is decoded one pass over the frame per scan, as an image is (server.pipeline.MAX_JPEG_SCANS).
        if self._jpeg_frames and (scans := bytes(packet).count(b"\xff\xda")) > MAX_JPEG_SCANS:
            t = self._time(packet.pts, packet.time_base)
            at = f" at {t:.2f} s" if t is not None else ""
            raise InputError(422, f"the frame{at} is a JPEG of {scans} scans, over the limit of {MAX_JPEG_SCANS}")
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            # A frame over max_pixels is refused before its buffer is allocated. MJPEG and VP9 decoders answer EINVAL;
            # H.264 and HEVC answer as for corrupt data (or ENOMEM), but have taken the new size from the parameter
            # sets that brought it: that size, past what FFmpeg was told to refuse (decoder_pixel_limit, not the limit
            # itself: frames in between decode and are scaled), tells the refusal from a corrupt packet.
            ctx = self._stream.codec_context
            refused = self.max_pixels is not None and ctx.width * ctx.height > decoder_pixel_limit(self.max_pixels)
            if self.max_pixels is None or not (isinstance(exc, av.ArgumentError) or refused):
                return []  # a corrupt packet is skipped, as players do; the next keyframe decodes again
            t = self._time(packet.pts, packet.time_base)
            at = f" at {t:.2f} s" if t is not None else ""
            actual = f" ({ctx.width}x{ctx.height})" if refused else ""
            raise InputError(
                413,
                f"a frame{at} is over the limit of {self.max_pixels} pixels{actual}, though the video says its frames "
                f"are {self.info.width}x{self.info.height}",
            ) from None
        self.frames_read += len(frames)
        return frames  # type: ignore[return-value]

    def _next_frame(self, not_before: float) -> av.VideoFrame | None:
        """The next decoded frame, in presentation order; with an intra-only codec, packets before ``not_before``
        seconds are skipped without decoding them (no later frame needs them). None at the end of the stream."""
        if self._pending:
            return self._pending.pop(0)
        if self._packets is None:
            self._packets = self._container.demux(self._stream)
        while True:
            if time.monotonic() > self._deadline:
                raise InputError(
                    413,
                    f"analysing the video took longer than the limit of {self.max_analysis_seconds:g} s; it was "
                    f"stopped {self._reached:.1f} s into the video: ask for a larger `every`, or send a shorter or "
                    "smaller video",
                )
            try:
                packet = next(self._packets)
            except StopIteration:
                return None
            except av.FFmpegError:
                return None  # a damaged container ends where it can no longer be read
            if packet.size:  # the empty packets at the end flush the decoder
                self._packets_seen += 1
                if packet.is_keyframe:
                    if self._last_key is not None:
                        self._key_interval = max(self._key_interval or 0, self._packets_seen - self._last_key)
                    self._last_key = self._packets_seen
                t = self._time(packet.pts, packet.time_base)
                skip = self._intra_only and self.strategy == "auto" and t is not None and t < not_before
                if skip and packet.is_keyframe:
                    continue
            self._pending.extend(self._decode(packet))
            if self._pending:
                return self._pending.pop(0)

    def _frame_time(self, frame: av.VideoFrame) -> float:
        # Presentation time (right for variable frame rates); frame number / fps when the stream has none.
        t = self._time(frame.dts if self._by_dts else frame.pts, frame.time_base)
        if t is None or not math.isfinite(t) or t <= self._last_t:
            t = max((self._index + 1) / self.info.fps, self._last_t + 1e-3)
        return t

    def _read_keyframes(self) -> list[float]:
        """Times of the keyframes the container's index lists at open (MP4, AVI); empty without one, and where the
        sampler never seeks by it (intra-only codecs, MPEG-TS/PS, Ogg)."""
        entries = self._stream.index_entries
        if self._intra_only or not self._seekable or not 1 < len(entries) <= MAX_INDEX_ENTRIES:
            return []  # unused, or not read yet (Matroska reads its cues on the first seek)
        tb, start = float(self._stream.time_base), self._start
        keys = sorted((e.timestamp - start) * tb for e in entries if e.is_keyframe)
        # Index times are decoding times; with B-frames they run a few frames behind the presentation times that
        # seeking compares (H.264 in MP4: the first keyframe at -2 frames). The first keyframe is the first frame.
        return [t - keys[0] for t in keys] if keys and keys[0] < 0 else keys

    def _use_seek(self, target: float, target_index: int) -> bool:
        if not self._seekable:
            return False  # also for strategy="seek": its frames would be other frames, or none at the end
        if self.info.frame_count is not None and target_index >= self.info.frame_count:
            return False  # past an estimated end: read on to the real one
        if self.strategy != "auto":
            return self.strategy == "seek" and self.info.frame_count is not None
        if self._intra_only or self.info.frame_count is None:
            return False  # an intra-only stream skips the frames between samples without decoding them
        if len(self._keyframes) > 1 and target <= self._keyframes[-1] + (self._keyframes[-1] - self._keyframes[-2]):
            # A seek lands on the last keyframe at or before the target: it pays when that keyframe is further ahead
            # than the seek costs.
            i = bisect.bisect_right(self._keyframes, target) - 1
            return i >= 0 and (self._keyframes[i] - self._last_t) * self.info.fps > SEEK_OVERHEAD
        if self._key_interval is None:
            return False
        # Without an index: that keyframe is at most one keyframe interval (the widest seen) before the target.
        gap = target_index - self._index - 1
        return gap > self._key_interval + SEEK_OVERHEAD

    def _seek(self, target: float) -> None:
        """Jump to the keyframe at or before ``target`` seconds; the decoder is flushed by PyAV."""
        pts = self._start + int(target / self._stream.time_base)
        try:
            self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        except av.FFmpegError:
            return  # keep reading forward from where we are
        self._pending.clear()
        self._packets = None
        self._last_t = -1.0
        self._last_key = None  # keyframe spacing is measured between packets read in a row

    def _image(self, frame: av.VideoFrame) -> np.ndarray:
        """BGR, upright, at the header's size (a frame of another size, within the pixel limit, is scaled to it)."""
        w, h = (self.info.height, self.info.width) if self._upright % 2 else (self.info.width, self.info.height)
        image = frame.to_ndarray(format="bgr24", width=w, height=h)
        return np.ascontiguousarray(np.rot90(image, self._upright)) if self._upright else image

    def _check_truncated(self, t: float) -> None:
        count = self._stream.frames or None  # a count estimated from the duration may include a longer audio track
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
            # The frame nearest to the target time; a tie goes to the earlier frame.
            target_index = math.floor(target * fps + 0.5 - 1e-6)
            # A count the container states (MP4, AVI) ends the video; an estimate from its duration (MPEG-PS: 38 for
            # 50 frames) does not: the frames are read to their real end.
            if self._stream.frames and target_index >= self._stream.frames:
                return
            sought = self._index >= 0 and self._use_seek(target - tolerance, target_index)
            if sought:
                self._seek(target - tolerance)
            frame, t = None, self._last_t
            while t < target - tolerance - 1e-6 or frame is None:
                frame = self._next_frame(target - tolerance - 1e-6)
                if frame is None:
                    break
                t = self._frame_time(frame)
                if sought and t > target + tolerance:
                    # The seek landed past the target: this stream shows frames decoded after a keyframe before it
                    # (an open GOP: MPEG-4 or MPEG-2 with B-frames), which a seek drops. Read it from the start, and
                    # through from now on.
                    self._seekable = False
                    self._seek(0.0)
                    frame, t = None, self._last_t
                    continue
                sought = False
                self._index, self._last_t = round(t * fps), t
                self._reached = max(self._reached, t)
                # Only a frame that exists past the limit makes a video too long (a header without a
                # duration was let through at open); a short video with a large `every` just ends.
                if self.max_seconds is not None and t > self.max_seconds + tolerance:
                    raise InputError(413, f"video is longer than the limit of {self.max_seconds:g} s")
            if frame is None:
                self._check_truncated(target)
                return
            sample = SampledFrame(index=self._index, t=round(t, 3), image=self._image(frame))
            paused = time.monotonic()
            yield sample
            self._deadline += time.monotonic() - paused
            # The next target after this frame (several when `every` is shorter than a frame).
            k = max(k + 1, math.floor((t + tolerance) / self.every) + 1)

    @property
    def duration(self) -> float:
        """The header's duration, or what was read so far when that is longer (a duration estimated from the
        header's may be short: MPEG-PS) or the container does not say."""
        read = max(self._last_t, 0.0) + 1 / self.info.fps
        return max(self.info.duration, read) if self.info.duration is not None else read

    def close(self) -> None:
        self._pending = []
        self._packets = None
        self._container.close()

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
    is the only user of the decoder until ``close()`` has joined it."""

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
            max_analysis_seconds=settings.max_video_analysis_seconds if settings is not None else None,
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
    (on Content-Length, then while streaming), 415 for a raw body of another content type or a form field labelled
    as an image (not GIF, PNG or WebP: those may be animations), 400/422 for a broken or empty form.
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
