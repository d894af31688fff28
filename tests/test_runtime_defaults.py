"""Which shipped model "auto" picks."""
from fkp.tracker import runtime


def test_auto_prefers_the_int8_fast_net_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "weights_dir", lambda: tmp_path)
    (tmp_path / "fastnet.onnx").write_bytes(b"")
    (tmp_path / "resnet50.onnx").write_bytes(b"")
    assert runtime.resolve_model("auto", "cpu").name == "fastnet.onnx"
    (tmp_path / "fastnet-int8.onnx").write_bytes(b"")
    assert runtime.resolve_model("auto", "cpu").name == "fastnet-int8.onnx"
    assert runtime.resolve_model(None, "cpu").name == "fastnet-int8.onnx"
    assert runtime.resolve_model("auto", "cuda").name == "resnet50.onnx"
    assert runtime.resolve_model("fastnet", "cpu").name == "fastnet.onnx"


def test_default_threads_are_the_cores_at_most_two(monkeypatch):
    for cores, want in ((1, 1), (2, 2), (3, 2), (16, 2), (None, 1)):
        monkeypatch.setattr(runtime.os, "cpu_count", lambda c=cores: c)
        assert runtime.default_cpu_threads() == want


def test_tensorrt_is_asked_for_only_where_its_libraries_load(monkeypatch):
    import onnxruntime as ort

    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    preloads = []
    monkeypatch.setattr(runtime, "preload_cuda_libraries", lambda: preloads.append(1))
    monkeypatch.setattr(runtime, "tensorrt_loadable", lambda: False)
    assert runtime.select_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runtime, "tensorrt_loadable", lambda: True)
    assert runtime.select_providers("cuda") == listed
    assert runtime.select_providers("cpu") == ["CPUExecutionProvider"]
    assert len(preloads) == 2                    # the CUDA libraries load only for GPU runs


def test_onnxruntime_retry_messages_stay_off_stdout(tiny_model, monkeypatch, capsys, caplog):
    """onnxruntime prints its provider fallback to stdout, which may be carrying --csv -."""
    import logging

    import onnxruntime as ort

    real = ort.InferenceSession

    def noisy(*args, **kwargs):
        print("*** EP Error ***\nFalling back to ['CPUExecutionProvider'] and retrying.")
        return real(*args, **kwargs)
    monkeypatch.setattr(ort, "InferenceSession", noisy)
    with caplog.at_level(logging.INFO, logger=runtime.__name__):
        model = runtime.LandmarkModel(tiny_model, "cpu")
    assert model.provider == "CPUExecutionProvider"
    assert capsys.readouterr().out == ""
    assert any("Falling back" in r.getMessage() for r in caplog.records)


def _model_with_an_unused_initializer() -> bytes:
    """An ONNX graph whose loading makes onnxruntime warn through its own process-wide log."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:],
                              [numpy_helper.from_array(np.zeros(3, np.float32), "unused")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_onnxruntime_log_goes_to_the_fkp_log_not_raw_stderr(capfd, caplog):
    """onnxruntime-gpu warns at every CUDA session it makes (seen on an H200); the programs
    route its log through logging, where warnings show only with -v."""
    import logging

    import onnxruntime as ort
    import pytest

    if not hasattr(ort, "set_default_logger_callback"):
        pytest.skip("onnxruntime < 1.32 has no log callback (its errors-only fallback is "
                    "tested below)")
    model = _model_with_an_unused_initializer()
    undo = runtime.route_onnxruntime_log()
    try:
        with caplog.at_level(logging.INFO, logger="fkp.onnxruntime"):
            ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    finally:
        undo()
    routed = [r for r in caplog.records if r.name == "fkp.onnxruntime"]
    assert any("unused" in r.getMessage() and r.levelno == logging.INFO for r in routed)
    assert "unused" not in capfd.readouterr().err
    ort.InferenceSession(model, providers=["CPUExecutionProvider"])   # undone: stderr again
    assert "unused" in capfd.readouterr().err


def test_without_a_log_callback_onnxruntime_keeps_to_errors(monkeypatch):
    import onnxruntime as ort

    severities = []
    monkeypatch.delattr(ort, "set_default_logger_callback", raising=False)
    monkeypatch.setattr(ort, "set_default_logger_severity", severities.append)
    undo = runtime.route_onnxruntime_log()
    assert severities == [3]
    undo()
    assert severities == [3, 2]


def test_pool_threads_spin_only_while_a_run_lasts():
    """The frame loop's other work gets the second core between inferences: after a run the
    onnxruntime pool threads sleep (threads left spinning burn about 40 ms of CPU in the
    first half second here)."""
    import time

    import numpy as np
    import onnxruntime as ort

    opts = runtime.session_options(2)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    path = runtime.resolve_model("fastnet-int8", "cpu")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1) + tuple(session.get_inputs()[0].shape[2:]), np.float32)
    for _ in range(5):
        session.run(None, {session.get_inputs()[0].name: x})
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.015
