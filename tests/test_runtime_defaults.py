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
