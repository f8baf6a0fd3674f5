"""Faces that keep their identity across the frames of one stream: track ids, grace for missed detections, smoothed
probabilities, and the cheaper live path that looks for tracked faces only around their last box.

One ``FaceTracker`` per stream: a ``/ws`` connection, a video request, the CLI's ``video`` and ``webcam`` runs.
Images have no tracks. docs/tracking.md explains the choices and their measurements.

Association is greedy (best overlap first), not the Hungarian algorithm: with the handful of faces a frame has, the
greedy match only differs from the optimal one when two faces are equally good candidates for two tracks, and then
the motion prediction has already broken the tie. A face is matched to a track when its box overlaps the track's
predicted or last box (IoU >= ``min_iou``) or its centre lies within ``max_distance`` face sides of them, and its
size is within ``max_size_change`` of the track's; anything else starts a new track.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from server.pipeline import valence_arousal
from server.schemas import Face

if TYPE_CHECKING:
    from server.config import Settings
    from server.detector import Detection
    from server.pipeline import EmotionPipeline

BoxArray = np.ndarray  # float [x, y, w, h]


def box_iou(a: BoxArray, b: BoxArray) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / (a[2] * a[3] + b[2] * b[3] - inter))


def _centre(box: BoxArray) -> np.ndarray:
    return np.array([box[0] + box[2] / 2.0, box[1] + box[3] / 2.0])


@dataclass
class Track:
    track_id: int
    box: BoxArray  # the last detected box
    t: float  # when it was last detected (seconds, the stream's clock)
    probabilities: np.ndarray  # smoothed, in the model's label order
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # centre, pixels per second
    misses: int = 0  # frames since the last detection
    hits: int = 1  # frames it was detected in

    def predicted(self, t: float) -> BoxArray:
        """The box moved on at the track's velocity to time ``t`` (constant-velocity guess for the next frame)."""
        shift = self.velocity * max(0.0, t - self.t)
        return np.array([self.box[0] + shift[0], self.box[1] + shift[1], self.box[2], self.box[3]])


class FaceTracker:
    """Track ids and smoothed probabilities for the faces of one stream.

    ``update(faces, t)`` takes the faces of one frame (as the pipeline returns them, with this frame's own
    probabilities) and the frame's time in seconds, and returns them with ``track_id`` set and ``probabilities``,
    ``emotion``, ``confidence``, ``valence`` and ``arousal`` taken from the track's exponential moving average of
    the probabilities. The average is time-aware: a frame ``dt`` seconds after the last one gets the weight
    ``1 - exp(-dt / smoothing_seconds)``, so the result does not depend on the frame rate; ``smoothing_seconds=0``
    turns smoothing off. ``raw=True`` keeps each frame's own values in ``raw_probabilities``.

    A track that is not matched stays for ``grace_seconds`` and at least ``grace_frames`` frames (so sparse video
    samples get grace too), then it is dropped; ids are never reused within a stream.
    """

    def __init__(
        self,
        *,
        smoothing_seconds: float = 0.5,
        raw: bool = False,
        grace_seconds: float = 0.5,
        grace_frames: int = 2,
        min_iou: float = 0.2,
        max_distance: float = 1.0,
        max_size_change: float = 1.5,
    ):
        self.smoothing_seconds = smoothing_seconds
        self.raw = raw
        self.grace_seconds = grace_seconds
        self.grace_frames = grace_frames
        self.min_iou = min_iou
        self.max_distance = max_distance
        self.max_size_change = max_size_change
        self.tracks: list[Track] = []
        self._next_id = 1

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> FaceTracker:
        options: dict[str, object] = {
            "smoothing_seconds": settings.smoothing_seconds,
            "grace_seconds": settings.track_grace_seconds,
        }
        options.update(overrides)
        return cls(**options)  # type: ignore[arg-type]

    def predicted_boxes(self, t: float) -> list[BoxArray]:
        """Where the tracked faces are expected at time ``t`` (for the windowed search between full detections)."""
        return [track.predicted(t) for track in self.tracks]

    # -- association -------------------------------------------------------------------------------------------

    def _match(self, boxes: list[BoxArray], t: float) -> dict[int, int]:
        """Detection index -> track index, greedily by (highest IoU, then nearest centre)."""
        candidates: list[tuple[float, float, int, int]] = []
        for ti, track in enumerate(self.tracks):
            references = (track.predicted(t), track.box)
            side = math.sqrt(track.box[2] * track.box[3])
            for di, box in enumerate(boxes):
                ratio = math.sqrt(box[2] * box[3]) / side
                if not 1.0 / self.max_size_change <= ratio <= self.max_size_change:
                    continue
                overlap = max(box_iou(ref, box) for ref in references)
                distance = min(float(np.linalg.norm(_centre(ref) - _centre(box))) for ref in references) / side
                if overlap >= self.min_iou or distance <= self.max_distance:
                    candidates.append((-overlap, distance, ti, di))
        candidates.sort()
        matches: dict[int, int] = {}
        used_tracks: set[int] = set()
        for _, _, ti, di in candidates:
            if ti in used_tracks or di in matches:
                continue
            matches[di] = ti
            used_tracks.add(ti)
        return matches

    def _smooth(self, previous: np.ndarray, current: np.ndarray, dt: float) -> np.ndarray:
        if self.smoothing_seconds <= 0:
            return current
        weight = 1.0 - math.exp(-max(dt, 0.0) / self.smoothing_seconds)
        return previous + weight * (current - previous)

    def update(self, faces: list[Face], t: float) -> list[Face]:
        """The faces of the frame at time ``t`` with their track ids and smoothed labels, in the order given."""
        boxes = [np.array([f.box.x, f.box.y, f.box.w, f.box.h], dtype=float) for f in faces]
        matches = self._match(boxes, t)
        out: list[Face] = []
        assigned: list[Track] = []
        for di, (face, box) in enumerate(zip(faces, boxes, strict=True)):
            raw = np.array(list(face.probabilities.values()), dtype=float)
            ti = matches.get(di)
            if ti is None:
                track = Track(self._next_id, box, t, raw)
                self._next_id += 1
            else:
                track = self.tracks[ti]
                dt = t - track.t
                if dt > 0:
                    measured = (_centre(box) - _centre(track.box)) / dt
                    # A new track's first velocity is the measured one; later ones are averaged to calm jitter.
                    track.velocity = measured if track.hits == 1 else 0.5 * track.velocity + 0.5 * measured
                track.probabilities = self._smooth(track.probabilities, raw, dt)
                track.box, track.t, track.misses = box, t, 0
                track.hits += 1
            assigned.append(track)
            out.append(self._face(face, track))
        # Unmatched tracks coast on their velocity until their grace runs out.
        kept = assigned
        for ti, track in enumerate(self.tracks):
            if ti in matches.values():
                continue
            track.misses += 1
            if t - track.t <= self.grace_seconds or track.misses <= self.grace_frames:
                kept.append(track)
        self.tracks = kept
        return out

    def _face(self, face: Face, track: Track) -> Face:
        labels = list(face.probabilities)
        smoothed = {label: float(p) for label, p in zip(labels, track.probabilities, strict=True)}
        best = max(labels, key=smoothed.__getitem__)
        valence, arousal = valence_arousal(smoothed)
        return face.model_copy(
            update={
                "track_id": track.track_id,
                "emotion": best,
                "confidence": smoothed[best],
                "probabilities": smoothed,
                "valence": round(valence, 4),
                "arousal": round(arousal, 4),
                "raw_probabilities": face.probabilities if self.raw else None,
            }
        )


class TrackingPipeline:
    """The pipeline for one live stream: a full detection at least every ``full_detect_seconds`` (and whenever no
    face is tracked), and in between a search only in a window around each tracked face's predicted box.

    A face that enters the frame between full detections is found by the next full one, so it appears within
    ``full_detect_seconds`` (plus the frame that carries it). ``full_detect_seconds=0`` detects on every frame.
    Not thread-safe: one stream's frames are analysed one after the other.
    """

    def __init__(self, pipeline: EmotionPipeline, tracker: FaceTracker, full_detect_seconds: float = 0.5):
        self.pipeline = pipeline
        self.tracker = tracker
        self.full_detect_seconds = full_detect_seconds
        self._last_full: float | None = None

    def needs_full_detection(self, t: float, width: int, height: int) -> bool:
        if self._last_full is None or not self.tracker.tracks:
            return True
        if t - self._last_full >= self.full_detect_seconds:
            return True
        # Windows that together cover more than the full detection's copy would cost more than that detection.
        return self.pipeline.window_pixels(self.tracker.predicted_boxes(t)) >= self.pipeline.detection_pixels(
            width, height
        )

    def analyse(
        self, image_bgr: np.ndarray, t: float | None = None, max_faces: int | None = None
    ) -> tuple[list[Face], dict[str, float], bool]:
        """(faces with track ids, timings in ms, whether this frame had a full detection)."""
        t = time.monotonic() if t is None else t
        h, w = image_bgr.shape[:2]
        full = self.needs_full_detection(t, w, h)
        detections: list[Detection] | None = None
        window_ms = 0.0
        if full:
            self._last_full = t
        else:
            start = time.perf_counter()
            detections = self.pipeline.detect_near(image_bgr, self.tracker.predicted_boxes(t))
            window_ms = (time.perf_counter() - start) * 1e3
        faces, timings = self.pipeline.predict(image_bgr, max_faces, detections=detections)
        if not full:
            timings = {**timings, "detect": round(window_ms, 3), "total": round(timings["total"] + window_ms, 3)}
        return self.tracker.update(faces, t), timings, full
