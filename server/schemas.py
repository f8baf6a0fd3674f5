"""Response models of the HTTP / WebSocket API (DESIGN.md, Contract 2)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Box(BaseModel):
    """Face box in pixels of the image that was sent."""

    x: int
    y: int
    w: int
    h: int


class Face(BaseModel):
    """One face. In a stream (``/ws``, a video, the CLI's video and webcam) it belongs to a track, and
    ``probabilities`` and everything derived from them (``emotion``, ``confidence``, ``valence``, ``arousal``) are the
    track's smoothed values; an image's faces have no track and carry the image's own values."""

    box: Box
    detection_score: float = Field(description="Detector confidence in [0, 1].")
    emotion: str = Field(description="Most probable label of `probabilities` (smoothed over the track in a stream).")
    confidence: float = Field(description="Probability of `emotion` in `probabilities`.")
    probabilities: dict[str, float] = Field(
        description="Label -> probability, in the model's label order; sums to 1. In a stream: the track's "
        "exponential moving average over time (time constant `smoothing` seconds; 0 = this frame alone)."
    )
    valence: float = Field(description="Probability-weighted circumplex valence in [-1, 1] (unpleasant -> pleasant).")
    arousal: float = Field(description="Probability-weighted circumplex arousal in [-1, 1] (calm -> excited).")
    track_id: int | None = Field(
        None, description="The face's identity within one stream (from 1, never reused); null for an image."
    )
    raw_probabilities: dict[str, float] | None = Field(
        None, description="This frame's own probabilities, before smoothing; only when asked for (`raw`), else null."
    )


class PredictResponse(BaseModel):
    width: int
    height: int
    faces: list[Face] = Field(description="Largest face first.")
    timings_ms: dict[str, float] = Field(description="Stage -> milliseconds (decode, detect, classify, total).")


class VideoFrame(BaseModel):
    """One analysed frame of a video (a line of the ndjson stream)."""

    t: float = Field(description="Seconds from the start of the video to the analysed frame.")
    faces: list[Face] = Field(description="Largest face first.")


class TrackSummary(BaseModel):
    """One face identity of a video: how long it was seen and what it showed."""

    track_id: int
    first_seen: float = Field(description="Time (s) of the first analysed frame with this face.")
    last_seen: float = Field(description="Time (s) of the last analysed frame with this face.")
    samples: int = Field(description="Analysed frames in which this face was detected.")
    seconds_seen: float = Field(description="`samples * every`: video time this face was seen.")
    emotion_share: dict[str, float] = Field(
        description="Label -> share of this face's frames with that (smoothed) emotion."
    )
    dominant_emotion: str = Field(description="Label with the largest share (ties: the model's first).")
    mean_valence: float
    mean_arousal: float


class VideoSummary(BaseModel):
    sampled: int = Field(description="Frames analysed (one per `every` seconds).")
    with_face: int
    without_face: int
    seconds_without_face: float = Field(description="`without_face * every`: video time with no face seen.")
    emotion_share: dict[str, float] = Field(
        description="Label -> share of the frames with a face where it was the largest face's emotion; "
        "empty when no frame had a face."
    )
    dominant_emotion: str | None = Field(description="Label with the largest share; null when no face was seen.")
    tracks: list[TrackSummary] = Field(
        default_factory=list, description="One entry per face identity (`track_id`), in order of first appearance."
    )


class VideoStreamEnd(BaseModel):
    """The last line of a `format=ndjson` answer."""

    duration: float = Field(description="Seconds, from the container's header (or what could be read).")
    fps: float
    every: float = Field(description="Seconds between analysed frames.")
    width: int
    height: int
    summary: VideoSummary


class VideoResponse(VideoStreamEnd):
    frames: list[VideoFrame] = Field(description="One entry per analysed frame, in time order.")


class VideoStreamError(BaseModel):
    """The last line of a `format=ndjson` answer that failed after streaming had started."""

    detail: str
    status_code: int


class ModelInfo(BaseModel):
    path: str = Field(description="File name of the classifier (no directory: the server's paths stay private).")
    labels: list[str]
    input_size: list[int] = Field(description="[H, W] of the classifier input.")
    channels: int
    mean: list[float]
    std: list[float]
    crop_margin: float = Field(description="Margin around the face box (each side, times its longer side) of the crop.")
    align: str = Field(
        "none",
        description="How each face is cropped: 'none' (box plus crop_margin), 'eyes' (turned so the eyes are level) "
        "or 'landmarks' (the square that puts the five YuNet landmarks at face_template; the box plus crop_margin "
        "for faces without landmarks).",
    )
    face_template: list[list[float]] | None = Field(
        None, description="For align 'landmarks': where the crop puts right eye, left eye, nose tip, mouth corners."
    )
    metadata: dict[str, str] = Field(description="All metadata_props of the ONNX file.")
    detector: str = Field(description="Face detector in use: 'yunet' or 'haar'.")
    detector_path: str | None = Field(None, description="File name of the detector's model (None: Haar).")
    detector_fallback: str | None = Field(
        None, description="Why the Haar cascade stands in for YuNet (its file missing or failing its sha256 check)."
    )
    max_faces: int = Field(
        description="The most faces kept per image or frame (EMOTION_MAX_FACES): the largest `max_faces` a `/ws` "
        "config message may ask for (a larger one is refused) and a `/predict` query is held to."
    )


class HealthResponse(BaseModel):
    status: str = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    model: str | None = Field(None, description="File name of the loaded classifier.")
    detector: str | None = None
    draining: bool = Field(False, description="True once the server is shutting down (it answers 503 then).")


class ErrorResponse(BaseModel):
    detail: str
