"""Test videos written with OpenCV: a face for a while then none, and clips whose frames carry their number."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from y4m import astronaut_frame

FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".webm": "VP90"}


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 25.0) -> Path:
    """BGR frames (all one size) -> a video; the codec follows the suffix (MJPG .avi, mp4v .mp4, VP9 .webm)."""
    writer = None
    for frame in frames:
        if writer is None:
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), fps, (w, h))
            if not writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write {path}")
        writer.write(frame)
    if writer is None:
        raise ValueError("no frames")
    writer.release()
    return path


def faceless_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """scikit-image's coffee cup, no face, BGR."""
    from skimage import data

    return cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), (width, height), interpolation=cv2.INTER_AREA)


def face_then_no_face(
    path: Path,
    face_seconds: float = 10,
    empty_seconds: float = 10,
    fps: float = 25.0,
    width: int = 640,
    height: int = 480,
) -> Path:
    """The astronaut photo for ``face_seconds``, then the coffee cup for ``empty_seconds``."""
    face = cv2.cvtColor(astronaut_frame(width, height), cv2.COLOR_RGB2BGR)
    empty = faceless_frame(width, height)
    n_face, n_empty = round(face_seconds * fps), round(empty_seconds * fps)
    return write_video(path, (face if i < n_face else empty for i in range(n_face + n_empty)), fps)


def numbered_frame(i: int, width: int = 160, height: int = 120) -> np.ndarray:
    """Frame ``i``: its number in binary as ten black/white cells along the top, big enough to survive codecs."""
    frame = np.full((height, width, 3), 64, np.uint8)
    cell = width // 10
    for bit in range(10):
        if i >> bit & 1:
            frame[:cell, bit * cell : (bit + 1) * cell] = 255
        else:
            frame[:cell, bit * cell : (bit + 1) * cell] = 0
    return frame


def frame_number(image: np.ndarray) -> int:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    cell = gray.shape[1] // 10
    q = cell // 4
    return sum(1 << bit for bit in range(10) if gray[q : cell - q, bit * cell + q : (bit + 1) * cell - q].mean() > 128)


def truncate(path: Path, out: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


# --- clips for tracking: real photos moved around a plain background, with camera-like noise --------------------

_ROOT = Path(__file__).resolve().parent.parent
# shared/ lies beside the checkout (CI's clone), or beside the folder of worktrees (a developer's worktree).
WILD = next(
    (
        p
        for p in (d / "shared/datasets/faces-in-the-wild/images" for d in (_ROOT.parent, _ROOT.parent.parent))
        if p.is_dir()
    ),
    _ROOT.parent / "shared/datasets/faces-in-the-wild/images",
)


def wild_face(name: str, side: int = 120) -> np.ndarray:
    """A faces-in-the-wild photo (most are tight face crops) as a ``side`` x ``side`` BGR patch."""
    photo = cv2.imread(str(WILD / name))
    if photo is None:
        raise FileNotFoundError(WILD / name)
    return cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)


def scene(
    patches: Iterable[tuple[np.ndarray, float, float]], width: int = 640, height: int = 480, grey: int = 110
) -> np.ndarray:
    """A grey frame with each (patch, x, y) pasted at its top-left corner (clipped at the border; later ones on top)."""
    frame = np.full((height, width, 3), grey, np.uint8)
    for patch, x, y in patches:
        x, y = round(x), round(y)
        ph, pw = patch.shape[:2]
        x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + pw), min(height, y + ph)
        if x1 > x0 and y1 > y0:
            frame[y0:y1, x0:x1] = patch[y0 - y : y1 - y, x0 - x : x1 - x]
    return frame


def camera_noise(frame: np.ndarray, rng: np.random.Generator, sigma: float = 6.0, shift: float = 1.5) -> np.ndarray:
    """What a webcam adds to a still scene: sensor noise, a sub-pixel wobble, JPEG compression."""
    dx, dy = rng.uniform(-shift, shift, 2)
    moved = cv2.warpAffine(
        frame, np.float32([[1, 0, dx], [0, 1, dy]]), frame.shape[1::-1], borderMode=cv2.BORDER_REFLECT
    )
    noisy = np.clip(moved.astype(np.float32) + rng.normal(0, sigma, moved.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


# --- clips OpenCV cannot write: muxed packet by packet, or encoded, with PyAV ------------------------------------


def mjpeg_avi(path: Path, jpegs: list[bytes], width: int, height: int, fps: int = 10) -> Path:
    """An MJPG AVI of the given JPEG files, one per frame, whose header says ``width`` x ``height`` whatever the
    JPEGs hold (a video that lies about its frame size)."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        stream.time_base = Fraction(1, fps)
        for i, data in enumerate(jpegs):
            packet = av.Packet(data)
            packet.stream, packet.pts, packet.dts = stream, i, i
            container.mux(packet)
    return path


def gray_jpeg(width: int, height: int, value: int = 128) -> bytes:
    """A flat grey JPEG: a few kB even at tens of megapixels."""
    return cv2.imencode(".jpg", np.full((height, width), value, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 10])[1].tobytes()


def encode_video(
    path: Path, frames: Iterable[np.ndarray], codec: str, fps: int = 25, rotation: int = 0, **options: str
) -> Path:
    """BGR frames -> a video encoded by PyAV's FFmpeg (``codec`` e.g. libx264), with codec ``options`` (``g``: the
    keyframe interval) and a display rotation in degrees counter-clockwise, as phones record."""
    import av

    with av.open(str(path), "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps, options=options)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                if rotation:
                    stream.set_display_rotation(rotation)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        if stream is None:
            raise ValueError("no frames")
        container.mux(stream.encode())
    return path


def annex_b(parts: Iterable[tuple[int, int, int]], codec: str, fps: int = 25, **options: str) -> bytes:
    """An H.264 or HEVC elementary stream (Annex B, ``codec`` libx264 or libx265) of numbered frames, in parts of
    (width, height, frames) encoded one after the other and joined: the frame size changes from part to part, as in
    a broadcast that switches resolution. No B-frames: frames come in the order they are shown."""
    import io

    import av

    fmt = {"libx264": "h264", "libx265": "hevc"}[codec]
    options = {"preset": "ultrafast", "bf": "0", **options}
    if codec == "libx265":
        options.setdefault("x265-params", "log-level=error")
    data, start = b"", 0
    for width, height, count in parts:
        buffer = io.BytesIO()
        with av.open(buffer, "w", format=fmt) as container:
            stream = container.add_stream(codec, rate=fps, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(start, start + count):
                frame = av.VideoFrame.from_ndarray(numbered_frame(i, width, height), format="bgr24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        data, start = data + buffer.getvalue(), start + count
    return data


def nal_units(elementary: bytes, codec: str) -> list[tuple[int, int, int]]:
    """(type, start, end) of each NAL unit of an Annex-B stream of ``codec`` (libx264 or libx265): its payload, after
    the unit's header, is ``elementary[start:end]``."""
    starts = [m.end() for m in re.finditer(b"\x00\x00\x01", elementary)]
    ends = [s - 3 for s in starts[1:]] + [len(elementary)]
    if codec == "libx264":
        return [(elementary[s] & 0x1F, s + 1, e) for s, e in zip(starts, ends, strict=True)]
    return [(elementary[s] >> 1 & 0x3F, s + 2, e) for s, e in zip(starts, ends, strict=True)]


def mpeg_ts(path: Path, elementary: bytes, codec: str, fps: int = 25) -> Path:
    """An elementary stream from ``annex_b`` (perhaps altered) as one video stream of an MPEG-TS, a frame every
    1 / ``fps`` s; its header gives the first frame's size."""
    import io
    from fractions import Fraction

    import av

    fmt = {"libx264": "h264", "libx265": "hevc"}[codec]
    with av.open(io.BytesIO(elementary), format=fmt) as source, av.open(str(path), "w", format="mpegts") as out:
        video = source.streams.video[0]
        stream = out.add_stream_from_template(video)
        for i, packet in enumerate(p for p in source.demux(video) if p.size):
            packet.stream, packet.time_base, packet.pts, packet.dts = stream, Fraction(1, fps), i, i
            out.mux(packet)
    return path
