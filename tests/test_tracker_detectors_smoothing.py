"""Detectors (Haar on the astronaut, landmark-box mapping, YuNet errors) and One Euro."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from fkp.tracker.calibrate_detector import ASTRONAUT_LANDMARK_BOX
from fkp.tracker.detectors import (BoxFactors, Detector, DetectorError, HaarDetector,
                                   YuNetDetector, iou, make_detector)
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


def test_make_detector_and_yunet_errors(tmp_path):
    assert isinstance(make_detector(None), HaarDetector)
    assert isinstance(make_detector("haar"), HaarDetector)
    with pytest.raises(DetectorError, match="does not exist"):
        YuNetDetector(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DetectorError, match="cannot load YuNet"):
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
