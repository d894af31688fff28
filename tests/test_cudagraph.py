"""The CUDA-graph runner's batching and bindings, checked on CPU buffers (no GPU needed):
padding to fixed capacities must not change any output, and batches past the largest
capacity go back to the plain session."""
import logging

import numpy as np
import pytest

from fkp.tracker import cudagraph
from fkp.tracker.cudagraph import CAPACITIES, GraphRunner, capacity
from fkp.tracker.runtime import LandmarkModel, session_options


def test_capacity_is_the_next_power_of_two_up_to_16():
    assert [capacity(n) for n in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]
    assert capacity(17) is None
    assert CAPACITIES[-1] == 16


def _runner(model: LandmarkModel) -> GraphRunner:
    return GraphRunner(model.path, session_options, model.size, model.output_names,
                       model.session.get_inputs()[0].shape[0], device="cpu")


@pytest.mark.parametrize("name", ["tiny", "fastnet-128-int8"])
def test_padded_fixed_batches_give_the_plain_sessions_outputs(name, tiny_model):
    model = LandmarkModel(tiny_model if name == "tiny" else name, "cpu")
    runner = _runner(model)
    rng = np.random.default_rng(0)
    for n in (1, 3, 2, 5, 3):
        x = model.inputs(rng.integers(0, 256, (n, model.size, model.size), dtype=np.uint8))
        got = runner.run(x)
        want = model.session.run(model.output_names, {model.input_name: x})
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-5)
    # one session per capacity used, reused across calls (3 and 3 share the 4-slot)
    assert sorted(runner._slots) == [1, 2, 4, 8]
    big = model.inputs(np.zeros((17, model.size, model.size), np.uint8))
    assert runner.run(big) is None and not runner.failed


def test_model_with_a_runner_predicts_as_without(tiny_model, astronaut_bgr):
    plain = LandmarkModel(tiny_model, "cpu")
    assert plain.graphs is None and not plain.cuda_graph     # graphs only on the CUDA provider
    bound = LandmarkModel(tiny_model, "cpu")
    bound.graphs = _runner(bound)
    boxes = np.array([[180.0, 60, 120, 140], [150, 40, 160, 180]])
    for flip in (False, True):
        a = plain.predict_crops(plain.crops(astronaut_bgr, plain.matrices(boxes)), flip)
        b = bound.predict_crops(bound.crops(astronaut_bgr, bound.matrices(boxes)), flip)
        np.testing.assert_allclose(a[0], b[0], atol=1e-4)
        np.testing.assert_allclose(a[1], b[1], atol=1e-6)
    assert bound.cuda_graph


def test_a_failed_capture_falls_back_to_the_plain_session(tiny_model, monkeypatch, caplog):
    model = LandmarkModel(tiny_model, "cpu")
    model.graphs = _runner(model)

    def broken(self, cap):
        raise RuntimeError("This session cannot use the CUDA Graph feature\nmore")
    monkeypatch.setattr(GraphRunner, "_slot", broken)
    crops = np.full((2, model.size, model.size), 90, np.uint8)
    with caplog.at_level(logging.WARNING, logger=cudagraph.__name__):
        pts, scores = model.predict_crops(crops)
        model.predict_crops(crops)
    assert pts.shape == (2, 68, 2) and scores.shape == (2,)
    assert not model.cuda_graph
    warnings = [r for r in caplog.records if "CUDA graphs off" in r.getMessage()]
    assert len(warnings) == 1 and "cannot use the CUDA Graph" in warnings[0].getMessage()
