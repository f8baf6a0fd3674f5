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
    box: Box
    detection_score: float = Field(description="Detector confidence in [0, 1].")
    emotion: str = Field(description="Most probable label.")
    confidence: float = Field(description="Probability of `emotion`.")
    probabilities: dict[str, float] = Field(description="Label -> probability, in the model's label order; sums to 1.")
    valence: float = Field(description="Probability-weighted circumplex valence in [-1, 1] (unpleasant -> pleasant).")
    arousal: float = Field(description="Probability-weighted circumplex arousal in [-1, 1] (calm -> excited).")


class PredictResponse(BaseModel):
    width: int
    height: int
    faces: list[Face] = Field(description="Largest face first.")
    timings_ms: dict[str, float] = Field(description="Stage -> milliseconds (decode, detect, classify, total).")


class VideoFrame(BaseModel):
    """One analysed frame of a video (a line of the ndjson stream)."""

    t: float = Field(description="Seconds from the start of the video to the analysed frame.")
    faces: list[Face] = Field(description="Largest face first.")


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
    crop_margin: float
    metadata: dict[str, str] = Field(description="All metadata_props of the ONNX file.")
    detector: str = Field(description="Face detector in use: 'yunet' or 'haar'.")
    detector_path: str | None = Field(None, description="File name of the detector's model (None: Haar).")
    detector_fallback: str | None = Field(
        None, description="Why the Haar cascade stands in for YuNet (its file missing or failing its sha256 check)."
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
