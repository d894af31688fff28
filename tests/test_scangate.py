"""The change gate of the periodic new-face scan (unit), and the tracker using it."""
from __future__ import annotations

import cv2
import numpy as np

from fkp.tracker.scangate import (ARRIVAL_CHECKS, ARRIVAL_RETRIES, ArrivalWatch, ChangeGate,
                                  thumbnail)

H, W = 480, 640
HEAD = np.array([[200.0, 150.0, 300.0, 270.0]])     # a tracked landmark box, frame px


def background(seed: int = 0) -> np.ndarray:
    """A static textured BGR background (H, W, 3) float32."""
    rng = np.random.default_rng(seed)
    small = rng.normal(128, 40, (12, 16, 3)).astype(np.float32)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)


def shot(bg: np.ndarray, rng: np.random.Generator, noise: float = 4.0) -> np.ndarray:
    """One frame of the static scene with fresh sensor noise."""
    return np.clip(bg + rng.normal(0, noise, bg.shape), 0, 255).astype(np.uint8)


def test_sensor_noise_alone_skips_until_max_skips():
    bg, rng = background(), np.random.default_rng(1)
    gate = ChangeGate(max_skips=3)
    gate.scanned(shot(bg, rng), HEAD)
    assert [gate.should_scan(shot(bg, rng), HEAD) for _ in range(4)] == [False] * 3 + [True]
    assert gate.skipped == 3 and gate.recheck      # forced: a recheck of unchanged pixels
    gate.scanned(shot(bg, rng), HEAD)              # the tracker scanned: skipping again
    assert not gate.should_scan(shot(bg, rng), HEAD)


def test_a_face_appearing_outside_the_heads_opens_the_gate():
    bg, rng = background(), np.random.default_rng(2)
    gate = ChangeGate()
    gate.scanned(shot(bg, rng), HEAD)
    scene = bg.copy()
    scene[330:400, 480:540] = 220.0                # 60x70 px: a small face stepping in
    assert gate.changed_cells(shot(scene, rng), HEAD) >= 30
    assert gate.should_scan(shot(scene, rng), HEAD) and not gate.recheck
    gate = ChangeGate(max_skips=0)                 # due for a forced scan, but changed:
    gate.scanned(shot(bg, rng), HEAD)
    assert gate.should_scan(shot(scene, rng), HEAD) and not gate.recheck   # a full scan


def test_a_moving_head_with_its_hair_does_not():
    """Pixels change where the head was and where it is, forehead and hair included."""
    bg, rng = background(), np.random.default_rng(3)
    old = bg.copy()
    old[100:280, 190:310] = 200.0                  # head at HEAD, hair 50 px above the brows
    gate = ChangeGate()
    gate.scanned(shot(old, rng), HEAD)
    moved = HEAD + [60.0, 20.0, 60.0, 20.0]
    new = bg.copy()
    new[120:300, 250:370] = 200.0
    assert gate.changed_cells(shot(new, rng), moved) == 0
    assert not gate.should_scan(shot(new, rng), moved)
    # without the head boxes the same change would open it
    assert ChangeGate.changed_cells(gate, shot(new, rng), np.zeros((0, 4))) > 0


def test_arrival_is_a_change_after_a_still_check():
    bg, rng = background(), np.random.default_rng(5)
    gate = ChangeGate()
    assert not gate.arrived(shot(bg, rng), HEAD)            # no still check seen yet
    gate.scanned(shot(bg, rng), HEAD)
    assert not gate.arrived(shot(bg, rng), HEAD)            # still: nothing arrived
    scene = bg.copy()
    scene[330:400, 480:540] = 220.0                          # a face steps in
    assert gate.arrived(shot(scene, rng), HEAD)
    scene[330:400, 470:530] = 220.0                          # ... and keeps moving:
    assert not gate.arrived(shot(scene, rng), HEAD)          # not a new arrival
    assert gate.should_scan(shot(scene, rng), HEAD)          # the periodic scan still runs
    gate.scanned(shot(scene, rng), HEAD)
    assert not gate.arrived(shot(scene, rng), HEAD)          # still again after the scan
    scene[50:120, 40:100] = 30.0                             # someone else steps in
    assert gate.arrived(shot(scene, rng), HEAD)
    # a scene that changes at every check (a moving camera) arrives once, not again
    gate = ChangeGate()
    gate.scanned(shot(bg, rng), HEAD)
    assert not gate.arrived(shot(bg, rng), HEAD)
    assert [gate.arrived(shot(background(seed), rng), HEAD) for seed in range(10, 15)] == \
        [True] + [False] * 4


def test_thumbnail_is_close_to_the_exact_cell_means():
    """The cheap thumbnail (bilinear to 2 px per cell, then area) stays within 2 grey levels
    of the exact 8x8 means on a textured scene, and under the gate's level on noise."""
    frame = shot(background(5), np.random.default_rng(5), noise=0.0)
    exact = cv2.cvtColor(cv2.resize(frame, (W // 8, H // 8), interpolation=cv2.INTER_AREA),
                         cv2.COLOR_BGR2GRAY).astype(np.int16)
    thumb = thumbnail(frame, 8)
    assert thumb.shape == exact.shape == (H // 8, W // 8) and thumb.dtype == np.int16
    assert np.abs(thumb - exact).max() <= 2
    rng = np.random.default_rng(6)
    a, b = (thumbnail(shot(background(5), rng), 8) for _ in range(2))
    assert np.abs(a - b).max() < ChangeGate().level / 2


class _Gate:
    """A stand-in gate whose arrived() answers from a list and counts its calls."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), 0

    def arrived(self, image, boxes):
        self.calls += 1
        return self.answers.pop(0)


def test_arrival_watch_checks_every_step_and_retries_until_found():
    gate = _Gate([False, True, False])
    watch = ArrivalWatch(gate, 30)
    step = 30 // ARRIVAL_CHECKS
    assert watch.step == step and ArrivalWatch(gate, 5).step == 1
    frame, boxes = np.zeros((4, 4), np.uint8), np.zeros((0, 4))
    assert not watch.check(1, frame, boxes) and gate.calls == 0      # off-step: no check
    assert not watch.check(step, frame, boxes)                       # still
    assert watch.check(2 * step, frame, boxes)                       # something arrived
    # the scan found nothing: the next ARRIVAL_RETRIES checks scan without asking the gate
    assert [watch.check(k * step, frame, boxes) for k in range(1, ARRIVAL_RETRIES + 1)] \
        == [True] * ARRIVAL_RETRIES and gate.calls == 2
    assert not watch.check(step, frame, boxes) and gate.calls == 3   # back to asking
    gate.answers = [True]
    assert watch.check(step, frame, boxes)
    watch.found()                                                    # a track started
    gate.answers = [False]
    assert not watch.check(step, frame, boxes) and gate.calls == 5


def test_no_reference_or_a_new_frame_size_scans():
    bg, rng = background(), np.random.default_rng(4)
    gate = ChangeGate()
    assert gate.should_scan(shot(bg, rng), HEAD)   # nothing scanned yet
    gate.scanned(shot(bg, rng), HEAD)
    assert gate.should_scan(shot(bg, rng)[: H // 2, : W // 2], HEAD)
    gate.reset()
    assert gate.should_scan(shot(bg, rng), HEAD)


def one_and_two_faces(astronaut_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 480x240 BGR frames of a still scene: the astronaut on the left; and a second
    astronaut stepped in on the right."""
    from conftest import face_frame

    one = np.full((240, 480, 3), 128, np.uint8)
    one[:, :240] = face_frame(astronaut_bgr, 0)[:, 40:280]
    two = one.copy()
    two[:, 240:] = one[:, :240]
    return one, two


def test_tracker_skips_scans_of_a_still_scene_but_finds_a_face_entering(tiny_model,
                                                                         astronaut_bgr):
    from fkp.tracker.tracking import Tracker

    one, two = one_and_two_faces(astronaut_bgr)
    runs = {}
    for gated in (True, False):
        tracker = Tracker(tiny_model, device="cpu", threads=1, redetect_every=5,
                          async_scan=False, scan_gate=gated)
        counts = [len(tracker.process(one)) for _ in range(21)]
        assert counts == [1] * 21
        runs[gated] = dict(tracker.stats)
        found = [len(tracker.process(two)) for _ in range(6)]
        assert found[-1] == 2 and found.index(2) <= 4   # at the next periodic tick
    assert runs[False]["detections"] == 5 and runs[False]["scans_skipped"] == 0
    # first frame, then ticks 5, 10, 15 skipped, 20 forced (max_skips 3)
    assert runs[True]["detections"] == 2 and runs[True]["scans_skipped"] == 3


def test_tracker_scans_at_once_when_a_face_arrives(tiny_model, astronaut_bgr):
    """A second face appearing in a still scene is found within redetect_every //
    ARRIVAL_CHECKS frames (the change gate's arrival check), not at the next periodic
    tick."""
    from fkp.tracker.tracking import Tracker

    one, two = one_and_two_faces(astronaut_bgr)
    tracker = Tracker(tiny_model, device="cpu", threads=1, redetect_every=30, async_scan=False)
    assert [len(tracker.process(one)) for _ in range(12)] == [1] * 12    # detected at 0
    found = [len(tracker.process(two)) for _ in range(8)]      # appears at frame 12 ...
    assert found.index(2) <= 30 // ARRIVAL_CHECKS              # found by frame 15, not 30
    assert tracker.stats["detections"] == 2 and tracker.stats["scans_skipped"] == 0


def test_arrival_scans_retry_until_a_face_starts(tiny_model, astronaut_bgr):
    """An arrival scan that misses the new face (here: a detector that fails once) is
    retried at the next checks, without waiting for the next periodic tick; once a track
    starts, retries stop."""
    from fkp.tracker.detectors import HaarDetector
    from fkp.tracker.tracking import Tracker

    class Flaky(HaarDetector):
        """Finds nothing while ``misses`` > 0; its scan twin is itself."""
        misses, calls = 0, 0

        def for_scan(self):
            return self

        def detect(self, gray):
            self.calls += 1
            if self.misses > 0:
                self.misses -= 1
                return np.zeros((0, 5))
            return super().detect(gray)

    one, two = one_and_two_faces(astronaut_bgr)
    det = Flaky()
    tracker = Tracker(tiny_model, device="cpu", threads=1, detector=det, redetect_every=30,
                      async_scan=False)
    assert [len(tracker.process(one)) for _ in range(12)] == [1] * 12
    det.misses = ARRIVAL_RETRIES           # the arrival scan and the first retry miss
    found = [len(tracker.process(two)) for _ in range(16)]       # appears at frame 12
    # checks every `step` frames since the detection at frame 0: the first at or after
    # frame 12 sees the face arrive and scans (missed); retries `step` and 2 `step` later
    step = 30 // ARRIVAL_CHECKS
    first = -(-12 // step) * step
    assert found.index(2) == first + ARRIVAL_RETRIES * step - 12
    assert det.calls == 1 + 1 + ARRIVAL_RETRIES


def test_forced_scans_of_a_still_scene_skip_the_primary(tiny_model, astronaut_bgr):
    """The scan forced after ``max_skips`` skipped ticks of an unchanged scene runs the
    detector's recheck twin (Haar: the fallbacks only)."""
    from fkp.tracker.detectors import FallbackDetector, HaarDetector
    from fkp.tracker.tracking import Tracker

    calls: list[str] = []

    class Recording(HaarDetector):
        def __init__(self, name: str, **kw) -> None:
            super().__init__(**kw)
            self.name = name

        def detect(self, gray):
            calls.append(self.name)
            return super().detect(gray)

    det = FallbackDetector(Recording("primary"), [Recording("fallback", min_neighbors=3)])
    one, _ = one_and_two_faces(astronaut_bgr)
    tracker = Tracker(tiny_model, device="cpu", threads=1, detector=det, redetect_every=5,
                      async_scan=False)
    assert [len(tracker.process(one)) for _ in range(21)] == [1] * 21
    assert tracker.stats["detections"] == 2 and tracker.stats["scans_skipped"] == 3
    # the first detection: primary + fallback; the forced scan at tick 20: the fallback
    assert calls == ["primary", "fallback", "fallback"]
