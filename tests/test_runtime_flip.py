"""The flip test of the runtime: mirrored crops in the same batch, mapped back and averaged."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_SIZE, make_tiny_model, mean_shape_normalised
from fkp.tracker.landmarks import FLIP_PERM
from fkp.tracker.runtime import LandmarkModel, ModelError


class FixedSession:
    """Stands in for the onnxruntime session: the same points for every crop (plain and
    mirrored), scores 0.2 for plain crops and 0.6 for mirrored ones; records batch sizes."""

    def __init__(self, points: np.ndarray):
        self.points, self.batches = points, []

    def run(self, _names, feed):
        b = len(next(iter(feed.values())))
        self.batches.append(b)
        scores = np.r_[np.full(b // 2, 0.2), np.full(b - b // 2, 0.6)]
        return [np.repeat(self.points[None], b, 0).astype(np.float32), scores.astype(np.float32)]


def model_with(points: np.ndarray, tmp_path, flip: bool = True) -> LandmarkModel:
    m = LandmarkModel(make_tiny_model(tmp_path / "tiny.onnx"), "cpu", 1, flip_test=flip)
    m.session = FixedSession(points)
    m.output_names = ["points", "score"]
    return m


def mirrored(p: np.ndarray) -> np.ndarray:
    """Points (K, 2) in crop pixels of a mirrored crop, relabelled left/right."""
    q = p[FLIP_PERM].copy()
    q[:, 0] = TINY_SIZE - 1 - q[:, 0]
    return q


def test_flip_test_symmetrises_shape_and_averages_scores(tmp_path):
    shape = mean_shape_normalised()                     # mirror-symmetric template
    skewed = shape.copy()
    skewed[30, 0] += 3.0 / TINY_SIZE                    # nose tip 3 px right of centre
    m = model_with(skewed, tmp_path)
    crops = np.zeros((2, TINY_SIZE, TINY_SIZE), np.uint8)
    pts, scores = m.predict_crops(crops)
    assert m.session.batches == [4]                     # one call, crops and mirrors
    assert np.allclose(scores, 0.4)
    q = mirrored(pts[0])                                # symmetric up to a shift in x
    assert np.allclose(q - q.mean(0), pts[0] - pts[0].mean(0), atol=1e-4)
    assert abs(pts[0, 30, 0] - pts[0, 27:30, 0].mean()) < 0.1   # nose tip back on the bridge


def test_flip_test_keeps_a_constant_offset_of_the_labels(tmp_path):
    """A net that learned a label convention offset predicts it on mirrored crops too; the
    flip test must not cancel it."""
    shape = mean_shape_normalised()
    shifted = shape + np.array([0.8, 0.0]) / TINY_SIZE
    m = model_with(shifted, tmp_path)
    pts, _ = m.predict_crops(np.zeros((1, TINY_SIZE, TINY_SIZE), np.uint8))
    assert np.allclose(pts[0], shifted * TINY_SIZE, atol=1e-4)


def test_without_flip_test_points_pass_through(tmp_path):
    shape = mean_shape_normalised()
    m = model_with(shape, tmp_path, flip=False)
    pts, scores = m.predict_crops(np.zeros((3, TINY_SIZE, TINY_SIZE), np.uint8))
    assert m.session.batches == [3] and np.allclose(pts[1], shape * TINY_SIZE, atol=1e-4)


def test_flip_test_needs_68_points(tmp_path):
    path = make_tiny_model(tmp_path / "one.onnx", metadata={"num_points": 1,
                                                            "point_indices": [30]})
    with pytest.raises(ModelError, match="flip test needs a 68-point model"):
        LandmarkModel(path, "cpu", 1, flip_test=True)


def test_describe_names_file_provider_and_the_modes_on(tmp_path):
    path = make_tiny_model(tmp_path / "tiny.onnx")
    plain = LandmarkModel(path, "cpu", 1).describe()
    assert plain.startswith("tiny.onnx (") and plain.endswith(" on CPUExecutionProvider")
    assert LandmarkModel(path, "cpu", 1, flip_test=True).describe() == plain + " with flip test"
