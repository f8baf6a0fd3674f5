"""Faces that keep their identity: the tracker on synthetic faces, then real photos moved around a frame and run
through the real pipeline (YuNet + the ONNX classifier), the windowed live path, videos and the live socket."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import LiveServer, iou, make_settings
from videos import WILD, camera_noise, scene, wild_face, write_video
from websockets.sync.client import connect

from server.pipeline import EmotionPipeline
from server.schemas import Box, Face
from server.tracker import FaceTracker, TrackingPipeline

FPS = 15.0
LABELS = ("neutral", "happy", "sad")


def synthetic(x: float, probabilities: tuple[float, ...] = (0.2, 0.7, 0.1), y: float = 100, side: int = 80) -> Face:
    p = dict(zip(LABELS, probabilities, strict=True))
    best = max(p, key=p.__getitem__)
    return Face(
        box=Box(x=round(x), y=round(y), w=side, h=side),
        detection_score=0.9,
        emotion=best,
        confidence=p[best],
        probabilities=p,
        valence=0.0,
        arousal=0.0,
    )


def label_changes(labels: list[str | None]) -> int:
    return sum(a != b for a, b in zip(labels, labels[1:], strict=False) if a is not None and b is not None)


@pytest.fixture(scope="module")
def photos() -> Path:
    if not WILD.is_dir():
        pytest.skip(f"{WILD} not found (the shared faces-in-the-wild photos)")
    return WILD


# --- the tracker alone ------------------------------------------------------------------------------------------


def test_synthetic_motion_grace_and_new_ids() -> None:
    tracker = FaceTracker(grace_seconds=0.3, grace_frames=2)
    ids = [tracker.update([synthetic(10 + 12 * i)], i / FPS)[0].track_id for i in range(20)]
    assert set(ids) == {1}
    # Missed for two frames (within the grace): the face keeps its id where it was expected to be by then.
    t = 22 / FPS
    assert tracker.update([], 20 / FPS) == [] and tracker.update([], 21 / FPS) == []
    assert tracker.update([synthetic(10 + 12 * 22)], t)[0].track_id == 1
    # Gone for longer than the grace, then a face at the same place: a new person, a new id.
    for i in range(23, 40):
        tracker.update([], i / FPS)
    assert tracker.tracks == []
    assert tracker.update([synthetic(10 + 12 * 22)], 40 / FPS)[0].track_id == 2
    # A second face far away at the same time is not the first one.
    both = tracker.update([synthetic(10 + 12 * 22), synthetic(500)], 41 / FPS)
    assert [f.track_id for f in both] == [2, 3]


def test_synthetic_smoothing_is_time_aware_and_follows_a_step() -> None:
    tau = 0.5
    a, b = (0.05, 0.9, 0.05), (0.05, 0.05, 0.9)  # happy, then sad

    def run(fps: float) -> tuple[float, float]:
        tracker = FaceTracker(smoothing_seconds=tau)
        switched_at = None
        value_at_tau = math.nan
        for i in range(int(3 * fps)):
            t = i / fps
            face = tracker.update([synthetic(100, a if t < 1.0 else b)], t)[0]
            if t >= 1.0 and switched_at is None and face.emotion == "sad":
                switched_at = t - 1.0
            if abs(t - (1.0 + tau)) < 0.5 / fps:
                value_at_tau = face.probabilities["sad"]
        assert switched_at is not None
        return switched_at, value_at_tau

    for fps in (10.0, 30.0, 60.0):
        delay, sad_at_tau = run(fps)
        # Equal margins either side: the label turns once the average is half-way, after tau * ln 2.
        assert tau * math.log(2) - 1 / fps <= delay <= tau * math.log(2) + 1 / fps, (fps, delay)
        # The same average at the same time whatever the frame rate: 1 - 1/e of the way one time constant after
        # the last frame before the switch (the sample-and-hold view: the new value holds from that frame on).
        assert sad_at_tau == pytest.approx(0.05 + 0.85 * (1 - math.exp(-(tau + 1 / fps) / tau)), abs=1e-6), fps

    off = FaceTracker(smoothing_seconds=0.0, raw=True)
    off.update([synthetic(100, a)], 0.0)
    face = off.update([synthetic(100, b)], 0.1)[0]
    assert face.emotion == "sad" and face.probabilities == face.raw_probabilities == dict(zip(LABELS, b, strict=True))
    on = FaceTracker(smoothing_seconds=tau)
    on.update([synthetic(100, a)], 0.0)
    face = on.update([synthetic(100, b)], 0.1)[0]
    assert face.emotion == "happy" and face.raw_probabilities is None  # raw values only when asked for
    assert sum(face.probabilities.values()) == pytest.approx(1.0)


# --- real photos through the real pipeline ---------------------------------------------------------------------


def run_clip(
    pipeline: EmotionPipeline, frames: list[np.ndarray], *, windowed: bool = False, **tracker_options: object
) -> list[list[Face]]:
    stream = TrackingPipeline(pipeline, FaceTracker(**tracker_options), 0.5 if windowed else 0.0)  # type: ignore[arg-type]
    return [stream.analyse(frame, i / FPS)[0] for i, frame in enumerate(frames)]


def nearest(faces: list[Face], x: float, y: float) -> Face | None:
    def distance(f: Face) -> float:
        return math.hypot(f.box.x + f.box.w / 2 - x, f.box.y + f.box.h / 2 - y)

    close = [f for f in faces if distance(f) < 50]
    return min(close, key=distance) if close else None


@pytest.mark.parametrize("windowed", [False, True], ids=["full", "windowed"])
def test_a_face_moving_across_keeps_one_id(yunet_pipeline: EmotionPipeline, photos: Path, windowed: bool) -> None:
    patch = wild_face("Colin_Powell_0140.jpg")
    rng = np.random.default_rng(1)
    frames = [camera_noise(scene([(patch, 10 + 17 * i, 150 + 3 * i)]), rng) for i in range(30)]  # 255 px/s
    results = run_clip(yunet_pipeline, frames, windowed=windowed)
    seen = [f.track_id for faces in results for f in faces]
    assert len(seen) >= 27  # YuNet finds the face in (nearly) every frame
    assert set(seen) == {1}


def test_two_faces_crossing_keep_their_ids(yunet_pipeline: EmotionPipeline, photos: Path) -> None:
    a, b = wild_face("Colin_Powell_0140.jpg"), wild_face("Jayamadhuri_76.jpg")
    n = 40

    def positions(i: int) -> tuple[tuple[float, float], tuple[float, float]]:
        # A goes right, B goes left a little lower; they overlap (B in front) around frame 20.
        return (20 + 12 * i, 120.0), (500 - 12 * i, 180.0)

    rng = np.random.default_rng(2)
    frames = []
    for i in range(n):
        (ax, ay), (bx, by) = positions(i)
        frames.append(camera_noise(scene([(a, ax, ay), (b, bx, by)]), rng))
    for windowed in (False, True):
        results = run_clip(yunet_pipeline, frames, windowed=windowed)
        ids: dict[str, set[int]] = {"a": set(), "b": set()}
        for i, faces in enumerate(results):
            (ax, ay), (bx, by) = positions(i)
            if abs(ax - bx) < 150:
                continue  # overlapping: B hides part of A, so A may not be detected; ids are checked either side
            for name, (x, y) in (("a", (ax + 60, ay + 60)), ("b", (bx + 60, by + 60))):
                face = nearest(faces, x, y)
                if face is not None:
                    ids[name].add(face.track_id)  # type: ignore[arg-type]
        assert len(ids["a"]) == 1 and len(ids["b"]) == 1 and ids["a"] != ids["b"], (windowed, ids)


def test_a_face_that_leaves_and_a_new_one_that_enters_get_different_ids(
    yunet_pipeline: EmotionPipeline, photos: Path
) -> None:
    a, b = wild_face("Colin_Powell_0140.jpg"), wild_face("Jayamadhuri_76.jpg")
    rng = np.random.default_rng(3)
    frames = [camera_noise(scene([(a, 400 + 20 * i, 150)]), rng) for i in range(15)]  # walks out on the right
    frames += [camera_noise(scene([]), rng) for _ in range(10)]
    frames += [camera_noise(scene([(b, -120 + 20 * i, 150)]), rng) for i in range(15)]  # walks in from the left
    for windowed in (False, True):
        results = run_clip(yunet_pipeline, frames, windowed=windowed)
        first = {f.track_id for faces in results[:10] for f in faces}
        last = {f.track_id for faces in results[-8:] for f in faces}
        assert not any(results[15:25]), windowed
        assert len(first) == 1 and len(last) == 1 and first != last, (windowed, first, last)


# Photos whose labels flicker under camera noise (the classifier's top two labels are close for them).
UNCERTAIN = ("Lleyton_Hewitt_0040.jpg", "Dennis_Kucinich_0006.jpg", "Frank_Griswold_0001.jpg", "Jayamadhuri_194.jpg")


def test_smoothing_reduces_flicker_on_a_steady_clip(yunet_pipeline: EmotionPipeline, photos: Path) -> None:
    patches = [wild_face(name) for name in UNCERTAIN]
    corners = [(120, 80), (400, 80), (120, 280), (400, 280)]
    still = scene([(p, x, y) for p, (x, y) in zip(patches, corners, strict=True)])
    rng = np.random.default_rng(4)
    frames = [camera_noise(still, rng) for _ in range(45)]  # 3 s at 15 frames/s

    def changes(results: list[list[Face]]) -> int:
        by_track: dict[int, list[str]] = {}
        for faces in results:
            for f in faces:
                by_track.setdefault(f.track_id, []).append(f.emotion)  # type: ignore[arg-type]
        assert len(by_track) == 4  # and the four faces kept their ids
        return sum(label_changes(labels) for labels in by_track.values())

    raw = changes(run_clip(yunet_pipeline, frames, smoothing_seconds=0.0))
    smoothed = changes(run_clip(yunet_pipeline, frames, smoothing_seconds=0.5))
    assert raw >= 6  # the clip flickers: otherwise this test shows nothing
    assert smoothed <= raw / 3, (raw, smoothed)


SWITCH_PAIRS = (
    ("Jayamadhuri_172.jpg", "Jayamadhuri_76.jpg"),
    ("FaridaJalal_22.jpg", "FaridaJalal_73.jpg"),
    ("Tommy_Haas_0005.jpg", "Tommy_Haas_0006.jpg"),
)


def test_smoothing_follows_a_change_of_expression_within_the_time_constant(
    yunet_pipeline: EmotionPipeline, photos: Path
) -> None:
    """One person, two expressions (two photos of them), 1.5 s each: the smoothed label follows within tau."""
    tau = 0.5
    rng = np.random.default_rng(5)
    for first, second in SWITCH_PAIRS:
        a, b = wild_face(first), wild_face(second)
        frames = [camera_noise(scene([(a if i < 23 else b, 260, 180)]), rng) for i in range(46)]
        raw = run_clip(yunet_pipeline, frames, smoothing_seconds=0.0)
        label_a = Counter(f[0].emotion for f in raw[:23] if f).most_common(1)[0][0]
        label_b = Counter(f[0].emotion for f in raw[23:] if f).most_common(1)[0][0]
        if label_a != label_b:
            break
    else:
        pytest.fail(f"none of {SWITCH_PAIRS} shows two different expressions to this model")
    smoothed = run_clip(yunet_pipeline, frames, smoothing_seconds=tau)
    labels = [f[0].emotion if f else None for f in smoothed]
    assert labels[22] == label_a  # before the switch it showed the first expression
    # From the switch (frame 23) on, the first frame after which the label stays the second expression.
    settled = next(i for i in range(23, 46) if all(label == label_b for label in labels[i:]))
    delay = (settled - 23) / FPS
    assert delay <= tau, (first, second, labels)


def test_windowed_live_path_finds_a_new_face_within_its_promised_time(
    yunet_pipeline: EmotionPipeline, photos: Path
) -> None:
    promise = 0.4
    a, b = wild_face("Colin_Powell_0140.jpg"), wild_face("Jayamadhuri_76.jpg")
    rng = np.random.default_rng(6)
    arrives = 20  # B appears in frame 20 (1.33 s), right after a full detection, the worst case
    frames = [
        camera_noise(scene([(a, 100 + 3 * i, 150)] + ([(b, 420, 200)] if i >= arrives else [])), rng) for i in range(40)
    ]
    stream = TrackingPipeline(yunet_pipeline, FaceTracker(), promise)
    results = []
    for i, frame in enumerate(frames):
        results.append(stream.analyse(frame, i / FPS))
    full_frames = [i for i, (_, _, full) in enumerate(results) if full]
    assert len(full_frames) < len(frames) / 3  # most frames took the cheap path
    found = next(i for i, (faces, _, _) in enumerate(results) if len(faces) == 2)
    assert arrives <= found and (found - arrives) / FPS <= promise
    # The cheap path's boxes agree with a full detection of the same frames.
    overlaps = []
    for i, (faces, _, full) in enumerate(results):
        if not full and faces:
            reference = yunet_pipeline.detect(frames[i])
            box = faces[0].box
            overlaps.append(max(iou((box.x, box.y, box.w, box.h), (d.x, d.y, d.w, d.h)) for d in reference))
    assert len(overlaps) > 20 and min(overlaps) >= 0.7 and np.mean(overlaps) >= 0.85, overlaps


@pytest.mark.parametrize("align", ["eyes", "landmarks"])
def test_windowed_detections_carry_landmarks_in_frame_pixels_to_the_aligned_crop(
    make_model, yunet_path: Path, astronaut_bgr: np.ndarray, align: str
) -> None:
    """The window's landmarks are mapped back like its box (offset and scale), so they match a full detection's of the
    same frame, and a model with ``align: eyes`` or ``landmarks`` gets that crop on the windowed path too."""
    import cv2

    from server.classifier import EmotionClassifier
    from server.detector import create_detector
    from server.pipeline import crop_region

    # The astronaut turned by 30 degrees, shrunk and placed off the origin of a larger frame: the window starts far
    # from (0, 0) and is downscaled, so a landmark left in window pixels would be hundreds of pixels off.
    turned = cv2.warpAffine(astronaut_bgr, cv2.getRotationMatrix2D((256, 256), -30, 1.0), (512, 512))
    frame = np.full((900, 1200, 3), 90, np.uint8)
    frame[300:812, 600:1112] = turned
    clf = EmotionClassifier(make_model(f"{align}.onnx", metadata={"align": align}))
    pipeline = EmotionPipeline(create_detector("yunet", yunet_path), clf)
    full = pipeline.detect(frame)[0]
    (near,) = pipeline.detect_near(frame, [(full.x + 6, full.y - 4, full.w, full.h)])
    assert full.landmarks is not None and near.landmarks is not None
    side = max(full.w, full.h)
    assert iou((near.x, near.y, near.w, near.h), (full.x, full.y, full.w, full.h)) > 0.6  # a finer look
    np.testing.assert_allclose(np.array(near.landmarks), np.array(full.landmarks), atol=0.15 * side)
    (rx, ry), (lx, ly) = near.eyes()
    assert near.x < rx < lx < near.x + near.w and near.y < min(ry, ly) < near.y + near.h

    # The crop follows the landmarks: the same box without them gives the box crop and other probabilities.
    bare = type(near)(near.x, near.y, near.w, near.h, near.score)
    aligned = pipeline.predict(frame, detections=[near])[0][0]
    unaligned = pipeline.predict(frame, detections=[bare])[0][0]
    assert aligned.box == unaligned.box and aligned.probabilities != unaligned.probabilities
    if align == "eyes":  # turned by about the same angle as the full detection's crop
        full_aligned = pipeline.predict(frame)[0][0]
        assert max(abs(aligned.probabilities[k] - full_aligned.probabilities[k]) for k in aligned.probabilities) < max(
            abs(unaligned.probabilities[k] - full_aligned.probabilities[k]) for k in aligned.probabilities
        )
    else:  # framed by the window's landmarks about as the full detection's frame it (YuNet sees it at ~64 px there)
        h, w = frame.shape[:2]
        region, full_region = crop_region(near, clf.spec, w, h), crop_region(full, clf.spec, w, h)
        assert region != crop_region(bare, clf.spec, w, h)
        as_box = [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in (region, full_region)]
        assert iou(*as_box) > 0.7, (region, full_region)


# --- videos, the live socket -------------------------------------------------------------------------------------


def test_video_answer_has_track_ids_and_a_summary_per_track(
    yunet_pipeline: EmotionPipeline, photos: Path, tmp_path: Path
) -> None:
    from server.video import VideoAnalysis

    a, b = wild_face("Colin_Powell_0140.jpg"), wild_face("Jayamadhuri_76.jpg")
    rng = np.random.default_rng(7)
    # 4 s at 10 fps: A for the first 3 s, B joins at 1 s.
    frames = [
        camera_noise(scene([(a, 100 + 5 * i, 150)] * (i < 30) + [(b, 420, 200)] * (i >= 10)), rng) for i in range(40)
    ]
    path = write_video(tmp_path / "two.mp4", frames, fps=10.0)
    with VideoAnalysis.open(path, yunet_pipeline, 0.5) as analysis:
        frames_out = [item.result for item in analysis]
        response = analysis.response(frames_out)
    ids = [[f.track_id for f in frame.faces] for frame in response.frames]
    assert ids[0] == [1] and sorted(ids[3]) == [1, 2] and ids[-1] == [2], ids
    tracks = {t.track_id: t for t in response.summary.tracks}
    assert set(tracks) == {1, 2}
    assert tracks[1].first_seen == 0.0 and tracks[1].samples == 6 and tracks[1].seconds_seen == 3.0
    assert tracks[2].first_seen == 1.0 and tracks[2].samples == 6 and tracks[2].last_seen == 3.5
    for track in tracks.values():
        assert sum(track.emotion_share.values()) == pytest.approx(1.0, abs=1e-3)
        assert track.dominant_emotion == max(track.emotion_share, key=track.emotion_share.__getitem__)
        own = [f for frame in response.frames for f in frame.faces if f.track_id == track.track_id]
        assert track.mean_valence == pytest.approx(np.mean([f.valence for f in own]), abs=1e-3)


def test_cli_video_names_faces_by_track_and_lists_the_tracks(
    model_path: Path, yunet_path: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``emotion video`` on two faces: each line names the faces by track id (``#1 ...  #2 ...``), and after the
    summary line comes one line per track, as the API's summary.tracks says."""
    from server.cli import format_line, format_summary, format_tracks, main
    from server.config import Settings
    from server.video import VideoAnalysis

    a, b = wild_face("Colin_Powell_0140.jpg"), wild_face("Jayamadhuri_76.jpg")
    rng = np.random.default_rng(9)
    frames = [camera_noise(scene([(a, 100, 150)] + [(b, 420, 200)] * (i >= 10)), rng) for i in range(30)]
    path = write_video(tmp_path / "two.mp4", frames, fps=10.0)
    settings = Settings(model_path=model_path, detector="yunet", yunet_path=yunet_path)
    with VideoAnalysis.open(path, EmotionPipeline.from_settings(settings), 1.0, settings) as analysis:
        response = analysis.response([item.result for item in analysis])
    expected = [format_line(frame) for frame in response.frames]
    expected += [format_summary(response.summary), *format_tracks(response.summary)]
    assert main(["video", str(path), "--model", str(model_path), "--yunet", str(yunet_path), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == expected
    assert sorted(word for word in lines[2].split() if word.startswith("#")) == ["#1", "#2"]  # named by track
    assert [line.split()[0] for line in lines[-2:]] == ["#1", "#2"] and lines[-1].split()[1].startswith("00:00:01-")


def test_live_socket_keeps_ids_and_searches_windows(model_path: Path, yunet_path: Path, photos: Path) -> None:
    import cv2

    from server.app import create_app

    a = wild_face("Colin_Powell_0140.jpg")
    rng = np.random.default_rng(8)
    settings = make_settings(model_path, "yunet", yunet_path, track_full_detect_seconds=60.0)
    with LiveServer(create_app(settings)) as server, connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"raw": True}))
        assert json.loads(ws.recv(timeout=10))["config"]["raw"] is True
        answers = []
        for i in range(12):
            frame = camera_noise(scene([(a, 100 + 10 * i, 150)]), rng)
            ws.send(cv2.imencode(".jpg", frame)[1].tobytes())
            answers.append(json.loads(ws.recv(timeout=20)))
    assert [m["detection"] for m in answers] == ["full"] + ["window"] * 11
    assert all(len(m["faces"]) == 1 and m["faces"][0]["track_id"] == 1 for m in answers)
    face = answers[-1]["faces"][0]
    assert set(face["raw_probabilities"]) == set(face["probabilities"])
    assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)
