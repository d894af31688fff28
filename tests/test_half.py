"""``--half``: the model's body in float16 for GPUs (runtime.half_precision). The converted
graph is checked on CPU here (onnxruntime runs it there too, only slowly); its speed is a GPU
benchmark (README)."""
import builtins

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fkp.tracker import runtime
from fkp.tracker.cudagraph import GraphRunner
from fkp.tracker.metadata import METADATA_KEY
from fkp.tracker.runtime import LandmarkModel, ModelError, half_precision, session_options


def test_half_copy_keeps_float32_io_and_metadata_and_the_points():
    full = LandmarkModel("fastnet", "cpu")
    data = half_precision(full.path)
    half = onnx.load_from_string(data)
    floats = [t.data_type for t in half.graph.initializer
              if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats.count(onnx.TensorProto.FLOAT16) > 0.9 * len(floats)   # the convolutions
    io = [v.type.tensor_type.elem_type for v in [*half.graph.input, *half.graph.output]]
    assert set(io) == {onnx.TensorProto.FLOAT}
    assert METADATA_KEY in {p.key for p in half.metadata_props}
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    crops = np.random.default_rng(0).integers(0, 256, (3, full.size, full.size), np.uint8)
    x = full.inputs(crops)
    want = full.session.run(full.output_names, {full.input_name: x})
    got = sess.run(full.output_names, {full.input_name: x})
    points_px = np.abs(got[0] - want[0]).max() * full.size
    assert 0 < points_px < 0.25, points_px          # float16 moves points, but not far
    assert np.abs(got[1] - want[1]).max() < 2e-3    # the face score


def test_graph_runner_takes_the_converted_bytes():
    data = half_precision(runtime.weights_dir() / "fastnet.onnx")
    plain = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in plain.get_outputs()]
    runner = GraphRunner(data, session_options, 160, names, "batch", "cpu", name="fastnet.onnx")
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (3, 1, 160, 160)).astype(np.float32)
    got = runner.run(x)
    want = plain.run(names, {plain.get_inputs()[0].name: x})
    for g, w in zip(got, want):
        # the same graph; with its batch fixed, onnxruntime may round an output one float16
        # step differently (seen on an AVX-512 CPU, session 19)
        step = np.spacing(np.abs(w).astype(np.float16)).astype(np.float32)
        assert (np.abs(g - w) <= step).all(), np.abs(g - w).max()
    # float16 arithmetic to the end: the points are float16 values, so it ran the copy
    assert np.array_equal(got[0], got[0].astype(np.float16).astype(np.float32))
    full = LandmarkModel("fastnet", "cpu")
    f32 = full.session.run(full.output_names, {full.input_name: x})[0]
    assert not np.array_equal(f32, f32.astype(np.float16).astype(np.float32))
    assert runner.name == "fastnet.onnx" and not runner.failed


def test_half_refuses_an_8_bit_model():
    with pytest.raises(ModelError, match="quantized"):
        half_precision(runtime.weights_dir() / "fastnet-int8.onnx")


def test_half_is_for_gpus(tiny_model):
    from fkp.tracker import Tracker

    with pytest.raises(ModelError, match="GPU"):
        LandmarkModel(tiny_model, "cpu", half=True)
    with pytest.raises(ModelError, match="GPU"):
        Tracker(tiny_model, device="cpu", half=True)


def test_half_without_onnx_says_what_to_install(monkeypatch, tiny_model):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ModelError, match="pip install onnx"):
        half_precision(tiny_model)


def test_duplicate_casts_of_an_older_converter_are_dropped(monkeypatch):
    """onnxruntime 1.31's converter wrote one identical Cast per float32 reader of a tensor,
    under one name; onnxruntime refuses such a graph (seen on an H200)."""
    import onnxruntime.transformers.float16 as f16

    real = f16.convert_float_to_float16

    def doubling(model, **kwargs):
        half = real(model, **kwargs)
        half.graph.node.extend([n for n in half.graph.node if n.op_type == "Cast"][:1])
        return half
    monkeypatch.setattr(f16, "convert_float_to_float16", doubling)
    half = onnx.load_from_string(half_precision(runtime.weights_dir() / "fastnet.onnx"))
    names = [n.name for n in half.graph.node]
    assert len(names) == len(set(names))
    ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
