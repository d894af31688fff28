"""fkp-train --init: warm start from a checkpoint or from an exported ONNX file (whose folded
BatchNorms are unfolded), also at another input size; lineage in metadata and model card."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from datasets import run_module as run, write_folder
from fkp.tracker.metadata import METADATA_KEY, ModelMeta


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 64-px fastnet trained two steps and exported (BatchNorms folded by the exporter)."""
    tmp = tmp_path_factory.mktemp("init")
    data, _ = write_folder(tmp / "data", n=12, people=6)
    common = ["--data", str(data), "--batch", "4", "--max-steps", "2", "--val-fraction", "0.34",
              "--epochs", "1"]
    run("fkp.train.cli", "--arch", "fastnet", "--input-size", "64", *common,
        "--out", str(tmp / "run"))
    run("fkp.export.onnx_export", str(tmp / "run" / "final.pt"), str(tmp / "m.onnx"))
    return tmp, data, common


def crops_fn(size, n=16, seed=0):
    x = torch.from_numpy(np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 1, size, size))
                         .astype(np.float32))
    return lambda: x


def test_unfolded_weights_reproduce_the_onnx_file(exported):
    from fkp.train.init_weights import initialise
    from fkp.train.models import create_model

    tmp, _, _ = exported
    path = tmp / "m.onnx"
    graph_bns = [n for n in onnx.load(str(path)).graph.node if n.op_type == "BatchNormalization"]
    assert not graph_bns                    # the exporter folded them: a real unfolding test
    net = create_model("fastnet", input_size=64)
    record = initialise(net, "fastnet", path, crops_fn(64))
    assert record["arch"] == "fastnet" and record["input_size"] == 64
    assert record["epochs"] == 1 and record["command"].startswith("fkp-train")
    x = crops_fn(64, 4, seed=1)()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref_pts, ref_score = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        out = net.eval()(x)
    assert np.abs(out["points"].numpy() - ref_pts.reshape(4, 68, 2)).max() < 1e-4
    assert np.abs(out["score"].numpy() - ref_score.reshape(4)).max() < 1e-4


def test_unfolded_batchnorm_statistics_match_training_mode_at_another_size(exported):
    """BatchNorm running statistics come from the given crops: a training-mode pass on the
    same crops (batch statistics) gives the evaluation-mode output, at 96 px too."""
    from fkp.train.init_weights import initialise
    from fkp.train.models import create_model

    tmp, _, _ = exported
    net = create_model("fastnet", input_size=96)
    x = crops_fn(96)()
    initialise(net, "fastnet", tmp / "m.onnx", lambda: x)
    with torch.no_grad():
        ev = net.eval()(x)["points"]
        tr = net.train()(x)["points"]
    assert ev.shape == (16, 68, 2)
    assert (ev - tr).abs().max() < 1e-3


def test_init_cli_records_the_source_in_checkpoint_metadata_and_card(exported):
    tmp, _, common = exported
    out = tmp / "ft"
    p = run("fkp.train.cli", "--arch", "fastnet", "--input-size", "96", "--init",
            str(tmp / "m.onnx"), *common, "--out", str(out))
    assert "weights unfolded" in p.stderr
    ck = torch.load(out / "final.pt", weights_only=False)
    assert ck["init"]["from"].endswith("m.onnx") and ck["init"]["input_size"] == 64
    run("fkp.export.onnx_export", str(out / "final.pt"), str(tmp / "ft.onnx"))
    meta = ModelMeta.from_json(next(e.value for e in onnx.load(str(tmp / "ft.onnx")).metadata_props
                                    if e.key == METADATA_KEY))
    assert meta.input_size == 96 and "--init" in meta.training["command"]
    assert meta.training["init"]["epochs"] == 1
    card = (tmp / "ft.md").read_text()
    assert "initialised from" in card and "64 px, 1 epochs" in card
    # a resumed run keeps the record of its checkpoint, even when the source is gone
    (tmp / "m.onnx").rename(tmp / "moved.onnx")
    try:
        common2 = common[:-1] + ["2"]                            # --epochs 2
        p = run("fkp.train.cli", "--arch", "fastnet", "--input-size", "96", "--init",
                str(tmp / "m.onnx"), *common2, "--out", str(out), "--resume")
    finally:
        (tmp / "moved.onnx").rename(tmp / "m.onnx")
    assert "resumed" in p.stderr and "weights unfolded" not in p.stderr
    ck = torch.load(out / "final.pt", weights_only=False)
    assert ck["epoch"] == 2 and ck["init"]["from"].endswith("m.onnx")
    # a checkpoint works as a source too, and its record chains to the ONNX one
    out2 = tmp / "ft2"
    run("fkp.train.cli", "--arch", "fastnet", "--input-size", "64", "--init",
        str(out / "final.pt"), *common, "--out", str(out2))
    ck2 = torch.load(out2 / "final.pt", weights_only=False)
    assert ck2["init"]["input_size"] == 96 and ck2["init"]["init"]["input_size"] == 64
    json.dumps(ck2["init"])                 # plain data: goes into the JSON metadata


@pytest.mark.parametrize("source, arch, message", [
    ("m.onnx", "fastnet-deep", "model is 'fastnet', not 'fastnet-deep'"),
    ("garbage.onnx", "fastnet", "not a readable ONNX model"),
    ("missing.pt", "fastnet", "no such checkpoint"),
])
def test_init_bad_source_is_one_line(exported, source, arch, message):
    tmp, _, common = exported
    (tmp / "garbage.onnx").write_bytes(b"not a model")
    p = run("fkp.train.cli", "--arch", arch, "--input-size", "64", "--init", str(tmp / source),
            *common, "--out", str(tmp / "bad"), check=False)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.strip().splitlines() if "fkp-train" in ln]
    assert len(lines) == 1 and message in lines[0], p.stderr[-1500:]
    assert "Traceback" not in p.stderr
