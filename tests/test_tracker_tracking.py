"""Tracker on the synthetic astronaut video with the tiny ONNX model."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from conftest import BLANK_FRAMES, FACE_FRAMES, FACE_FRAMES_2, make_tiny_model
from fkp.tracker.runtime import LandmarkModel, ModelError
from fkp.tracker.sources import open_source
from fkp.tracker.tracking import STAGES, FrameResult, Tracker


@pytest.fixture(scope="module")
def run(tiny_model, face_video):
    tracker = Tracker(tiny_model, device="cpu", threads=1, redetect_every=10, async_scan=False)
    results, timings = [], []
    for frame in open_source(face_video):
        results.append(tracker.process(frame.image, frame.timestamp_ms, frame.index))
        timings.append(dict(tracker.timings))
    return tracker, results, timings


def test_faces_tracked_with_stable_ids(run, astronaut_bgr):
    _, results, _ = run
    first = results[:FACE_FRAMES]
    second = results[FACE_FRAMES + BLANK_FRAMES:]
    assert all(len(r) == 1 for r in first) and all(len(r) == 1 for r in second)
    assert {int(r.ids[0]) for r in first} == {0}
    assert {int(r.ids[0]) for r in second} == {1}         # a new track after the loss
    for r in first + second:
        assert r.points.shape == (1, 68, 2) and r.boxes.shape == (1, 4)
        assert r.scores[0] >= 0.5
        x0, y0, x1, y1 = r.boxes[0]
        # the astronaut's face sits around x 100..220, y 60..185 in every face frame
        assert 90 < x0 < x1 < 230 and 50 < y0 < y1 < 195
        eyes_y = r.points[0, 36:48, 1].mean()
        assert eyes_y < r.points[0, 48:68, 1].mean()


def test_blank_frames_give_empty_arrays(run):
    _, results, _ = run
    for r in results[FACE_FRAMES:FACE_FRAMES + BLANK_FRAMES]:
        assert isinstance(r, FrameResult) and len(r) == 0
        assert r.ids.shape == (0,) and r.points.shape == (0, 68, 2)
        assert r.raw_points.shape == (0, 68, 2)
        assert r.scores.shape == (0,) and r.boxes.shape == (0, 4)
        assert r.faces == []


def test_detection_not_every_frame(run):
    tracker, results, timings = run
    n = FACE_FRAMES + BLANK_FRAMES + FACE_FRAMES_2
    detected = [i for i, r in enumerate(results) if r.detected]
    assert tracker.stats["frames"] == n
    assert tracker.stats["detections"] == len(detected)
    # periodic (every 10), on loss, on every blank frame (nothing tracked), on re-appearance
    assert detected[:3] == [0, 10, 20]
    assert len(detected) <= 14
    for i in (1, 2, 3, FACE_FRAMES + BLANK_FRAMES + 1):      # tracking frames: no detector
        assert not results[i].detected and timings[i]["infer"] > 0   # (the change gate's
        assert timings[i]["detect"] < timings[0]["detect"]            # checks may run)
    assert timings[0]["detect"] > 0
    assert set(timings[0]) == set(STAGES)
    assert all(t["total"] >= t["detect"] + t["crop"] + t["infer"] for t in timings)


def test_one_batched_model_call_per_tracking_frame(tiny_model, astronaut_bgr):
    from conftest import face_frame
    # two faces side by side: both tracked with one model call per frame
    frame = np.full((240, 480, 3), 128, np.uint8)
    face = face_frame(astronaut_bgr, 0)[:, 40:280]
    frame[:, :240], frame[:, 240:] = face, face
    tracker = Tracker(tiny_model, device="cpu", threads=1, redetect_every=0)
    r = tracker.process(frame)
    assert len(r) == 2 and sorted(r.ids.tolist()) == [0, 1]
    calls = tracker.stats["model_calls"]
    assert calls == 2                        # detection frame: two passes, batched
    for _ in range(3):
        r = tracker.process(frame)
    assert tracker.stats["model_calls"] == calls + 3 and len(r) == 2
    assert tracker.stats["detections"] == 1
    tracker = Tracker(tiny_model, device="cpu", threads=1, max_faces=1)
    assert len(tracker.process(frame)) == 1


@pytest.mark.parametrize("smooth", [1.0, 0.0])
def test_next_crop_comes_from_the_output_points(tiny_model, astronaut_bgr, smooth):
    from conftest import face_frame
    from fkp.tracker.geometry import box_from_points
    tracker = Tracker(tiny_model, device="cpu", threads=1, redetect_every=0, smooth=smooth)
    boxes = []
    infer = tracker._infer
    tracker._infer = lambda image, b, angles: boxes.append(b.copy()) or infer(image, b, angles)
    results = [tracker.process(face_frame(astronaut_bgr, i), i * 40.0) for i in range(4)]
    assert [len(r) for r in results] == [1] * 4 and len(boxes) == 2 + 3   # 2 detection passes
    for r, b in zip(results[:3], boxes[2:]):
        np.testing.assert_allclose(b, box_from_points(r.points))
    if smooth:                                  # the smoothed points, not the raw ones
        assert not np.allclose(results[2].points, results[2].raw_points)


def test_request_detection_reset_and_smoothing_off(tiny_model, astronaut_bgr):
    from conftest import face_frame
    tracker = Tracker(tiny_model, device="cpu", threads=1, redetect_every=0, smooth=0)
    frame = face_frame(astronaut_bgr, 0)
    assert tracker.process(frame).detected
    assert not tracker.process(frame).detected
    tracker.request_detection()
    r = tracker.process(frame)
    assert r.detected and r.ids.tolist() == [0]          # the tracked face is not duplicated
    np.testing.assert_array_equal(r.points, r.raw_points)
    tracker.reset()
    r = tracker.process(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))     # gray input works
    assert r.detected and r.ids.tolist() == [0] and r.index == 0


def test_shared_model_and_score_threshold_from_meta(tiny_model, tmp_path):
    model = LandmarkModel(tiny_model, "cpu", 1)
    assert Tracker(model).score_threshold == 0.5
    assert Tracker(model, score_threshold=0.9).score_threshold == 0.9
    with pytest.raises(ModelError):
        Tracker(tmp_path / "missing.onnx", device="cpu")
    with pytest.raises(ValueError):
        Tracker(model).process(np.zeros((4, 4), np.float32))


def test_no_score_output_uses_plausibility(tmp_path, astronaut_bgr):
    from conftest import face_frame
    path = make_tiny_model(tmp_path / "noscore.onnx", with_score=False)
    tracker = Tracker(path, device="cpu", threads=1)
    r = tracker.process(face_frame(astronaut_bgr, 0))
    assert len(r) == 1 and r.scores[0] > 0.9      # the mean shape is perfectly plausible


def test_background_scan_finds_a_face_entering(tiny_model, astronaut_bgr):
    """With async_scan the periodic scan runs on a worker; a new face joins a few frames on."""
    from conftest import face_frame
    one = np.full((240, 480, 3), 128, np.uint8)
    one[:, :240] = face_frame(astronaut_bgr, 0)[:, 40:280]
    two = one.copy()
    two[:, 240:] = one[:, :240]
    with Tracker(tiny_model, device="cpu", threads=1, redetect_every=5) as tracker:
        counts = [len(tracker.process(one)) for _ in range(8)]
        assert counts == [1] * 8
        for _ in range(200):               # the second face enters; scans run in background
            r = tracker.process(two)
            time.sleep(0.005)
            if len(r) == 2:
                break
        assert sorted(r.ids.tolist()) == [0, 1]
        assert tracker.stats["detections"] >= 2


def test_periodic_scan_uses_the_cheaper_twin(tiny_model, astronaut_bgr):
    """Scans with no face tracked run the thorough detector; periodic ones its ``for_scan``."""
    from conftest import face_frame
    from fkp.tracker.detectors import HaarDetector

    calls: list[str] = []

    class Recording(HaarDetector):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def detect(self, gray):
            calls.append(self.name)
            return super().detect(gray)

        def for_scan(self):
            return Recording("scan")

    tracker = Tracker(tiny_model, device="cpu", threads=1, detector=Recording("full"),
                      redetect_every=5, async_scan=False)
    for i in range(12):
        tracker.process(face_frame(astronaut_bgr, i))
    blank = np.full_like(face_frame(astronaut_bgr, 0), 128)
    tracker.process(blank)                   # the face is lost: full scan
    tracker.process(blank)                   # nothing tracked: full scan
    assert calls == ["full", "scan", "scan", "full", "full"]


def test_forget_detects_afresh_and_keeps_counting(tiny_model, astronaut_bgr):
    """After forget() a frame gets what a fresh tracker gives it (every detector fallback
    at once, no track or smoothing carried over, ids from 0), and the counters go on."""
    from conftest import face_frame

    frame = face_frame(astronaut_bgr, 3)
    fresh = Tracker(tiny_model, device="cpu", threads=1, async_scan=False)
    fresh.forget()
    alone = fresh.process(frame, 0.0)
    tracker = Tracker(tiny_model, device="cpu", threads=1, async_scan=False)
    for i in range(3):
        tracker.process(face_frame(astronaut_bgr, i), i * 40.0)
    assert tracker.stats["detections"] == 1
    tracker.forget()
    res = tracker.process(frame, 120.0)
    assert res.index == 3 and tracker.stats["frames"] == 4 and tracker.stats["detections"] == 2
    assert len(res) >= 1 and list(res.ids) == list(range(len(res)))
    np.testing.assert_array_equal(res.points, alone.points)
    np.testing.assert_array_equal(res.points, res.raw_points)   # no smoothing carried over


def test_a_photo_is_searched_at_a_larger_working_size(tiny_model, astronaut_bgr):
    """A small face in a large photo (the astronaut's, ~95 px in 2048x1536: under the video
    detector's 7.5 % of the longest side) is found after forget(), which uses the
    detector's photo twin (640-px working image), and not by the video path."""
    canvas = np.full((1536, 2048, 3), 128, np.uint8)
    canvas[600:1112, 900:1412] = astronaut_bgr
    centre = np.array([900 + 228, 600 + 135])           # the face, in canvas pixels
    found = {}
    for mode in ("reset", "forget"):
        tracker = Tracker(tiny_model, device="cpu", threads=1, async_scan=False)
        getattr(tracker, mode)()
        boxes = tracker.process(canvas, 0.0).boxes
        found[mode] = bool(((boxes[:, :2] < centre) & (centre < boxes[:, 2:])).all(1).any())
    assert found == {"reset": False, "forget": True}


def test_track_runs_a_source_as_process_does(run, tiny_model, face_video, tmp_path,
                                             astronaut_bgr):
    """``track(spec)`` gives the results of the frame loop in ``run``, closes the source also
    when stopped early, and takes an image folder as unrelated photos."""
    _, expected, _ = run
    tracker = Tracker(tiny_model, device="cpu", threads=1, redetect_every=10, async_scan=False)
    for _ in range(2):                       # a second run of the source starts afresh
        got = list(tracker.track(str(face_video)))
        assert [f.index for f, _ in got] == list(range(len(expected)))
        for (_, r), e in zip(got, expected):
            assert np.array_equal(r.ids, e.ids) and np.array_equal(r.points, e.points)

    src = open_source(face_video)
    closed = []
    src.close = lambda: closed.append(True)
    it = tracker.track(src)
    next(it)
    it.close()                                        # as a `break` out of a for loop does
    assert closed

    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), astronaut_bgr)
    photos = [r for _, r in tracker.track(tmp_path)]
    assert [list(r.ids) for r in photos] == [[0], [0]]      # each photo from nothing
    assert np.array_equal(photos[0].points, photos[1].points)
    assert tracker.stats["tracks_started"] == 2
    clip = [r for _, r in tracker.track(tmp_path, photos=False)]
    assert clip[1].ids[0] == 0                               # one clip: track 0 goes on,
    assert not np.array_equal(clip[1].points[0], photos[1].points[0])   # cropped from frame 0


def test_top_level_names():
    import fkp.tracker as ft
    assert ft.Tracker is Tracker and ft.FrameResult is FrameResult
    assert ft.open_source is open_source and ft.LandmarkModel is LandmarkModel
    with pytest.raises(AttributeError):
        ft.track


def test_a_long_run_keeps_flat_memory(tiny_model, face_video, tmp_path):
    """Tracking with every writer on: the Python heap (numpy arrays included) does not grow
    with the number of frames (1,000 frames after a warm-up of one pass; the faces are lost
    and found again twice per pass, so tracks and detections come and go)."""
    import tracemalloc

    from fkp.tracker.draw import draw_result
    from fkp.tracker.writers import CsvWriter, JsonLinesWriter, VideoOutput

    frames = [f.image for f in open_source(face_video)]
    tracker = Tracker(tiny_model, device="cpu", threads=1, redetect_every=10,
                      async_scan=False)
    csv = CsvWriter(tmp_path / "p.csv")
    js = JsonLinesWriter(tmp_path / "p.jsonl")
    video = VideoOutput(tmp_path / "p.avi", 25.0, frames[0].shape[1::-1], fourcc="MJPG")

    def run(start: int, n: int) -> None:
        for i in range(start, start + n):
            res = tracker.process(frames[i % len(frames)], i * 40.0, i)
            csv.write(res)
            js.write(res)
            video.write(draw_result(frames[i % len(frames)], res), i * 40.0)

    tracemalloc.start()
    try:
        run(0, len(frames))
        before = tracemalloc.get_traced_memory()[0]
        run(len(frames), 500)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        csv.close(), js.close(), video.close()
    assert tracker.stats["tracks_started"] > 10
    assert grown < 256 * 1024, f"{grown / 1024:.0f} KiB more after 500 frames"


def test_a_false_detection_ranked_first_does_not_keep_a_face_out(tiny_model, astronaut_bgr):
    """Every candidate (up to MAX_CANDIDATES) is verified by the model: with room for one
    face, a higher-ranked box on blank background that the model rejects does not take the
    face's place."""
    from conftest import face_frame
    from fkp.tracker.detectors import HaarDetector

    class FakeFirst(HaarDetector):
        def detect(self, gray):
            return np.vstack([[[380.0, 150.0, 460.0, 230.0, 1.0]], super().detect(gray)])

    frame = np.full((240, 480, 3), 128, np.uint8)
    frame[:, :240] = face_frame(astronaut_bgr, 0)[:, 40:280]
    assert len(FakeFirst().detect(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))) >= 2
    with Tracker(tiny_model, device="cpu", threads=1, detector=FakeFirst(), max_faces=1,
                 async_scan=False) as tracker:
        r = tracker.process(frame)
        assert len(r) == 1 and r.boxes[0, 2] < 240            # the face, not the fake box
        assert tracker.stats["detections"] == 1


def test_a_failed_background_scan_costs_one_frame_not_the_tracker(tiny_model, astronaut_bgr):
    from conftest import face_frame
    from fkp.tracker.detectors import HaarDetector

    class FailsOnce(HaarDetector):
        calls = 0

        def detect(self, gray):
            FailsOnce.calls += 1
            if FailsOnce.calls == 2:                # the first background scan
                raise RuntimeError("transient detector failure")
            return super().detect(gray)

    frame = face_frame(astronaut_bgr, 0)
    with Tracker(tiny_model, device="cpu", threads=1, detector=FailsOnce(),
                 redetect_every=3) as tracker:
        tracker.scan_detector = tracker.detector           # the scan fails, not a twin
        failures, counts = 0, []
        for _ in range(40):
            try:
                counts.append(len(tracker.process(frame)))
            except RuntimeError:
                failures += 1
            time.sleep(0.002)
        assert failures == 1 and counts[-5:] == [1] * 5 and FailsOnce.calls > 2
        tracker.reset()
        assert len(tracker.process(frame)) == 1
