"""Detectors (Haar on the astronaut, landmark-box mapping, YuNet errors) and One Euro."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from fkp.tracker.calibrate_detector import ASTRONAUT_LANDMARK_BOX
from fkp.tracker.detectors import (BoxFactors, Detector, DetectorError, FallbackDetector,
                                   HaarDetector, YuNetDetector, iou, make_detector)
from fkp.tracker.smoothing import OneEuroFilter


def test_haar_finds_the_astronaut(astronaut_bgr):
    det = HaarDetector()
    assert isinstance(det, Detector)
    gray = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    boxes = det.detect(gray)
    # the face is the best candidate (weaker ones, like the shuttle, are left to the
    # landmark model's face score to reject)
    assert boxes.shape[1] == 5 and len(boxes) >= 1 and boxes.dtype == np.float64
    assert (0 < boxes[:, 4]).all() and (boxes[:, 4] < 1).all()
    assert (np.diff(boxes[:, 4]) <= 0).all()
    boxes = boxes[:1]
    lm = det.to_landmark_box(boxes[:, :4])
    assert lm.shape == (1, 4)
    truth = np.array([ASTRONAUT_LANDMARK_BOX])
    assert iou(lm, truth)[0, 0] > iou(boxes[:, :4], truth)[0, 0]   # mapping moves closer
    assert iou(lm, truth)[0, 0] > 0.75


def test_haar_scan_twin_skips_only_the_smallest_faces(astronaut_bgr):
    det = HaarDetector()
    twin = det.for_scan()
    assert (det.min_size, twin.min_size) == (24, 36) and twin.cascade is det.cascade
    assert twin.scale_factor == det.scale_factor
    gray = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    full, quick = det.detect(gray), twin.detect(gray)
    assert iou(quick[:1, :4], full[:1, :4])[0, 0] > 0.9      # the face, as the full scan
    small = cv2.resize(gray, (160, 160), interpolation=cv2.INTER_AREA)   # a 32-px face:
    assert len(det.detect(small)) >= 1 and len(twin.detect(small)) == 0  # full range only


def test_no_face_gives_empty_array():
    out = HaarDetector().detect(np.full((240, 320), 90, np.uint8))
    assert out.shape == (0, 5)
    assert HaarDetector().to_landmark_box(out[:, :4]).shape == (0, 4)


def test_box_factors():
    f = BoxFactors(dx=0.1, dy=0.2, sx=0.5, sy=2.0)
    out = f.apply(np.array([[0.0, 0.0, 10.0, 20.0]]))
    np.testing.assert_allclose(out, [[3.5, -6.0, 8.5, 34.0]])


def test_box_factors_invert_apply():
    f = BoxFactors(dx=0.1, dy=0.2, sx=0.5, sy=2.0)
    boxes = np.array([[0.0, 0.0, 10.0, 20.0], [5.0, -3.0, 40.0, 9.0]])
    np.testing.assert_allclose(f.invert(f.apply(boxes)), boxes, atol=1e-12)


def tilted(gray: np.ndarray, degrees: float) -> np.ndarray:
    """The astronaut turned about its landmark-box centre (which stays put)."""
    b = ASTRONAUT_LANDMARK_BOX
    turn = cv2.getRotationMatrix2D(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2), degrees, 1.0)
    return cv2.warpAffine(gray, turn, gray.shape[::-1], borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("degrees, roll", [(-25, 20), (25, -20)])
def test_turned_cascade_finds_a_tilted_face(astronaut_bgr, degrees, roll):
    """Turned 25 degrees, the face escapes the upright cascade; the cascade run on the frame
    turned back by 20 finds it, and its box comes back to the frame at the face."""
    gray = tilted(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY), degrees)
    truth = np.array([ASTRONAUT_LANDMARK_BOX])
    for wrong in (HaarDetector(), HaarDetector(roll=-roll)):    # upright, or turned away
        found = wrong.detect(gray)
        assert not len(found) or iou(wrong.to_landmark_box(found[:, :4]), truth).max() < 0.3
    det = HaarDetector(roll=roll)
    boxes = det.detect(gray)
    assert len(boxes) >= 1
    assert iou(det.to_landmark_box(boxes[:, :4]), truth).max() > 0.75


class Fixed:
    """A fake detector returning one fixed box, with its own box factors; counts calls."""

    def __init__(self, box, factors: BoxFactors, score: float) -> None:
        self.box, self.factors, self.score, self.calls = box, factors, score, 0

    def detect(self, gray):
        self.calls += 1
        return np.array([[*self.box, self.score]], np.float64)

    def to_landmark_box(self, boxes):
        return self.factors.apply(boxes)


def test_fallback_detector_takes_turns_in_the_primary_convention():
    primary = Fixed((0, 0, 10, 10), BoxFactors(dy=0.2, sx=0.8, sy=0.9), 0.5)
    fbs = [Fixed((100, 100, 120, 130), BoxFactors(dx=0.1, sx=1.2, sy=1.1), s)
           for s in (0.9, 0.3)]
    det = FallbackDetector(primary, fbs)
    assert isinstance(det, Detector)
    gray = np.zeros((8, 8), np.uint8)
    for _ in range(5):
        out = det.detect(gray)
    assert primary.calls == 5 and [f.calls for f in fbs] == [3, 2]
    np.testing.assert_array_equal(out[:, 4], [0.9, 0.5])     # the 5th call: fallback 0
    # the fallback's landmark box is what the primary's mapping gives for its returned box
    np.testing.assert_allclose(det.to_landmark_box(out[:1, :4]),
                               fbs[0].to_landmark_box(np.array([fbs[0].box], float)))
    np.testing.assert_allclose(out[1, :4], primary.box)
    every = det.detect_every(gray)              # a photo: all fallbacks, the turn unchanged
    np.testing.assert_array_equal(every[:, 4], [0.9, 0.5, 0.3])
    assert det.turn == 5 and [f.calls for f in fbs] == [4, 3]
    # the scan and recheck twins take the next fallback in the same turn: a recheck of a
    # still scene does not repeat the fallback that has just looked at it
    scan = det.for_scan()
    recheck = scan.for_recheck()
    scan.detect(gray)
    recheck.detect(gray)
    assert det.turn == scan.turn == recheck.turn == 7 and [f.calls for f in fbs] == [5, 4]
    recheck.reset()
    assert det.turn == 0
    with pytest.raises(ValueError):
        FallbackDetector(primary, [])
    with pytest.raises(ValueError, match="BoxFactors"):
        FallbackDetector(object(), fbs)


def test_make_detector_and_yunet_errors(tmp_path):
    default = make_detector(None)
    assert isinstance(default, FallbackDetector) and isinstance(make_detector("haar"),
                                                                FallbackDetector)
    scan = default.for_scan()         # periodic scans: the cascade's cheaper twin + fallbacks
    assert isinstance(scan, FallbackDetector) and scan.fallbacks == default.fallbacks
    assert (scan.primary.min_size, default.primary.min_size) == (36, 24)
    photo = default.for_photo()      # photos: every cascade on a 640-px working image
    assert isinstance(photo, FallbackDetector) and photo.primary.max_side == 640
    assert [f.max_side for f in photo.fallbacks] == [640] * 3
    assert [f.min_size for f in photo.fallbacks] == [f.min_size for f in default.fallbacks]
    assert default.primary.max_side == 320
    assert isinstance(make_detector("haar-single"), HaarDetector)
    with pytest.raises(DetectorError, match="equalize"):
        HaarDetector(equalize="gamma")
    with pytest.raises(DetectorError, match="does not exist"):
        YuNetDetector(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DetectorError, match="as a YuNet face detector"):
        make_detector(bad)
    with pytest.raises(DetectorError, match="unknown detector"):
        make_detector("dlib")


def test_one_euro_reduces_jitter_on_constant_signal():
    rng = np.random.default_rng(0)
    f = OneEuroFilter.from_strength(1.0)
    truth = np.full((68, 2), 100.0)
    raw, out = [], []
    for i in range(300):
        x = truth + rng.normal(0, 0.3, truth.shape)     # 0.3 % of the face size, as measured
        raw.append(x)
        out.append(f(x, i * 1000 / 30, scale=100.0))
    raw, out = np.array(raw[50:]), np.array(out[50:])
    assert out.std(axis=0).mean() < 0.6 * raw.std(axis=0).mean()
    assert abs(out.mean() - 100) < 0.2


def test_one_euro_tracks_a_step_quickly():
    f = OneEuroFilter.from_strength(1.0)
    slow = OneEuroFilter(min_cutoff=1.0, beta=0.0)           # plain low-pass at min_cutoff
    x0, x1 = np.zeros((68, 2)), np.full((68, 2), 50.0)
    for i in range(30):
        f(x0, i * 33.3, 100.0), slow(x0, i * 33.3, 100.0)
    for i in range(30, 40):
        a, b = f(x1, i * 33.3, 100.0), slow(x1, i * 33.3, 100.0)
    assert np.abs(a - 50).max() < 2.5          # within 5% after 10 frames (0.33 s)
    assert np.abs(b - 50).max() > 5 * np.abs(a - 50).max()


def test_one_euro_reset_and_first_sample():
    f = OneEuroFilter()
    x = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(f(x, 0.0), x)
    f(x + 10, 33.0)
    f.reset()
    np.testing.assert_array_equal(f(x + 20, 66.0), x + 20)
    with pytest.raises(ValueError):
        OneEuroFilter.from_strength(0)


def test_recheck_twin_runs_only_the_fallbacks_in_turn():
    from fkp.tracker.detectors import FallbackDetector, HaarDetector

    class Fixed(HaarDetector):
        def __init__(self, box, **kw):
            super().__init__(**kw)
            self.box, self.calls = np.array([box], np.float64), 0

        def detect(self, gray):
            self.calls += 1
            return self.box

    primary = Fixed([0, 0, 10, 10, 0.9])
    fallbacks = [Fixed([20, 20, 40, 40, 0.8]), Fixed([50, 50, 60, 60, 0.7])]
    det = FallbackDetector(primary, fallbacks)
    recheck = det.for_recheck()
    gray = np.zeros((8, 8), np.uint8)
    first, second = recheck.detect(gray), recheck.detect(gray)
    assert primary.calls == 0 and [f.calls for f in fallbacks] == [1, 1]
    # boxes in the primary's convention, as from detect
    expected = det.primary_boxes(fallbacks[0], fallbacks[0].box[:, :4])
    np.testing.assert_allclose(first[:, :4], expected)
    np.testing.assert_allclose(second[:, 4], [0.7])
    assert len(det.detect(gray)) == 2 and primary.calls == 1
