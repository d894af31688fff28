"""End to end on tiny synthetic data: fkp-train -> fkp-export (parity) -> fkp-eval -> tracker."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from datasets import constant_model, int8_conv_weights, run_module as run, write_folder
from fkp.tracker.geometry import apply_affine, box_from_points, crop_matrix
from fkp.tracker.metadata import METADATA_KEY, ModelMeta


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data, _ = write_folder(tmp / "data", n=12, people=6)
    out = tmp / "run"
    run("fkp.train.cli", "--arch", "fastnet", "--data", str(data), "--input-size", "64",
        "--epochs", "1", "--batch", "4", "--max-steps", "2", "--val-fraction", "0.34",
        "--out", str(out))
    return tmp, data, out


def test_train_writes_checkpoints_figures_and_metrics(trained):
    _, _, out = trained
    for name in ("last.pt", "best.pt", "final.pt", "metrics.json", "loss_curves.png",
                 "predictions_best.png", "predictions_worst.png", "filters_conv1.png",
                 "filters_conv2.png", "loader_samples.png"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 1 and "nme/data" in m["history"][0]


def test_resume_continues_from_last_epoch(trained):
    tmp, data, out = trained
    p = run("fkp.train.cli", "--arch", "fastnet", "--data", str(data), "--input-size", "64",
            "--epochs", "2", "--batch", "4", "--max-steps", "2", "--val-fraction", "0.34",
            "--out", str(out), "--resume")
    m = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    assert "resumed" in p.stderr


def test_export_parity_metadata_and_tracker_runtime(trained):
    tmp, data, out = trained
    onnx_path = tmp / "m.onnx"
    p = run("fkp.export.onnx_export", str(out / "final.pt"), str(onnx_path))
    diff = float(p.stdout.split("=")[1].split()[0])
    assert diff <= 1e-3
    assert (tmp / "m.md").read_text().count("nme/data") == 1
    from fkp.tracker.runtime import LandmarkModel

    model = LandmarkModel(onnx_path, "cpu")
    assert model.provider == "CPUExecutionProvider"
    assert model.meta.arch == "fastnet" and model.meta.input_size == 64 and model.meta.has_score
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert model.meta.training["epochs"] == epochs and "nme/data" in model.meta.metrics
    assert model.meta.val_fraction == 0.34
    pts, scores = model.predict(np.zeros((120, 160), np.uint8),
                                np.array([[10, 10, 60, 70], [50, 40, 150, 110.0]]))
    assert pts.shape == (2, 68, 2) and scores.shape == (2,)
    # dynamic batch: an empty batch and one face both work
    assert model.predict(np.zeros((50, 50), np.uint8), np.zeros((0, 4)))[0].shape == (0, 68, 2)


def test_quantize_int8_checks_accuracy_and_keeps_the_contract(trained):
    tmp, data, out = trained
    fp32, int8 = tmp / "q32.onnx", tmp / "q8.onnx"
    run("fkp.export.onnx_export", str(out / "final.pt"), str(fp32), "--no-card")
    # refused (int8 cannot be 100 % better than float): one line, exit 1, nothing written
    p = run("fkp.export.quantize", str(fp32), str(int8), "--data", str(data), "--count", "8",
            "--val-fraction", "0.34", "--max-loss", "-100", check=False)
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0
    assert "above the float model" in p.stderr and not int8.exists()
    junk = tmp / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 20)
    for model, data_arg in ((junk, data), (fp32, tmp / "no-such-data")):
        p = run("fkp.export.quantize", str(model), str(int8), "--data", str(data_arg),
                check=False)
        assert p.returncode == 1 and p.stderr.startswith("fkp-quantize: error:"), p.stderr
        assert p.stderr.strip().count("\n") == 0 and not int8.exists()
    p = run("fkp.export.quantize", str(fp32), str(int8), "--data", str(data), "--count", "8",
            "--val-fraction", "0.34", "--max-loss", "1000", "--calibration", "percentile")
    assert "int8" in p.stdout and (tmp / "q8.md").read_text().count("quantized from") == 1
    proto = onnx.load(str(int8))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Softmax"} <= ops
    # weights in 7 bits (no int16 saturation on AVX2 CPUs without VNNI), scaled to fill them
    weights = int8_conv_weights(proto)
    assert weights and max(int(np.abs(w).max()) for w in weights) in range(60, 65)
    from fkp.tracker.runtime import LandmarkModel

    a, b = LandmarkModel(fp32, "cpu"), LandmarkModel(int8, "cpu")
    assert b.meta.training["quantization"]["from"] == "q32.onnx"
    assert "7 bits" in b.meta.training["quantization"]["method"]
    assert "percentile" in b.meta.training["quantization"]["method"]
    assert b.meta.metrics["n/data"] >= 1 and b.meta.input_size == a.meta.input_size
    from fkp.tracker.data import load_image, read_dataset

    diffs = []
    for s in read_dataset(data):                 # faces like the calibration crops
        gray, box = load_image(s, color=False), box_from_points(s.points)[None]
        (pa, _), (pb, sb) = a.predict(gray, box), b.predict(gray, box)
        assert pb.shape == (1, 68, 2) and sb.shape == (1,)
        diffs.append(np.abs(pa - pb).mean() / (box[0, 2] - box[0, 0]))
    print("int8 - float, mean |point difference| / face width:", np.mean(diffs))
    assert np.mean(diffs) < 0.02


def test_export_rejects_a_foreign_checkpoint(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    p = run("fkp.export.onnx_export", str(bad), str(tmp_path / "x.onnx"), check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "not a readable checkpoint" in p.stderr


def test_train_device_cuda_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    data, _ = write_folder(tmp_path / "d", n=4)
    p = run("fkp.train.cli", "--data", str(data), "--out", str(tmp_path / "o"), "--epochs", "1",
            "--device", "cuda", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip() == ("fkp-train: error: --device cuda: torch sees no usable CUDA GPU "
                                "(use --device cpu)")


@pytest.mark.parametrize("loss, refused, message", [
    ("nme", "nosetip", "--loss nme needs a 68-point network; 'nosetip' predicts 1"),
    ("star", "simple", "--loss star needs a heatmap network; 'simple' regresses its points"),
])
def test_train_loss_runs_on_fastnet_and_is_refused_where_it_cannot(tmp_path, loss, refused,
                                                                    message):
    data, _ = write_folder(tmp_path / "d", n=6, people=3)
    common = ["--data", str(data), "--input-size", "64", "--epochs", "1", "--batch", "2",
              "--max-steps", "2", "--val-fraction", "0.34", "--loss", loss]
    p = run("fkp.train.cli", "--arch", refused, "--out", str(tmp_path / "n"), *common,
            check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"fkp-train: error: {message}"
    run("fkp.train.cli", "--arch", "fastnet", "--out", str(tmp_path / "f"), *common)
    hist = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert np.isfinite(hist["history"][0]["train_loss"])


def test_train_with_sam_runs_both_passes_on_a_heatmap_net(tmp_path):
    """--sam on a real net (BatchNorm, heatmap head): two steps, a finite loss."""
    data, _ = write_folder(tmp_path / "d", n=6, people=3)
    run("fkp.train.cli", "--arch", "fastnet", "--out", str(tmp_path / "s"), "--data", str(data),
        "--input-size", "64", "--epochs", "1", "--batch", "2", "--max-steps", "2",
        "--val-fraction", "0.34", "--sam", "0.05")
    hist = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert np.isfinite(hist["history"][0]["train_loss"])


def test_train_bad_dataset_is_one_line(tmp_path):
    data, _ = write_folder(tmp_path / "d", n=4)
    (data / "images" / "Person_1_01.jpg").write_bytes(b"garbage")
    p = run("fkp.train.cli", "--data", str(data), "--out", str(tmp_path / "o"), "--epochs", "1",
            check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "Person_1_01.jpg: missing or unreadable image" in p.stderr


def test_eval_known_answer(tmp_path):
    data, shapes = write_folder(tmp_path / "d", n=4, people=2)
    # the model always answers the first face's crop coordinates
    first = shapes[0]
    norm = apply_affine(first, crop_matrix(box_from_points(first), 32, 0.25)) / 32
    constant_model(tmp_path / "c.onnx", norm)
    # every face is a scaled+shifted copy of the first (exact answer), but face 3's nose tip
    # (an interior point: the crop box is unchanged) is moved 6 px right
    csv = data / "landmarks.csv"
    lines = csv.read_text().splitlines()
    truth = []
    for i in range(4):
        pts = first * (1 + 0.1 * i) + [3 * i, -2 * i]
        if i == 3:
            pts[30, 0] += 6.0
        truth.append(pts)
        name = lines[i + 1].split(",")[0]
        lines[i + 1] = name + "," + ",".join(f"{v:.6f}" for v in pts.ravel())
    csv.write_text("\n".join(lines) + "\n")
    p = run("fkp.tracker.evaluate", str(data), "--model", str(tmp_path / "c.onnx"),
            "--ced", str(tmp_path / "ced.png"))
    res = json.loads(p.stdout.strip().splitlines()[-1])
    iod = np.linalg.norm(truth[3][36] - truth[3][45])
    assert res["n"] == 4
    assert res["nme"] == pytest.approx(100 * 6.0 / 68 / iod / 4, abs=1e-3)
    assert res["mae"] == pytest.approx(6.0 / (68 * 2) / 4, abs=1e-4)
    assert res["failure_rate"] == 0.0
    assert (tmp_path / "ced.png").stat().st_size > 1000


def test_eval_split_keeps_only_held_out_people(tmp_path):
    from fkp.tracker.data import read_dataset, split_by_group

    data, shapes = write_folder(tmp_path / "d", n=30, people=15)
    norm = apply_affine(shapes[0], crop_matrix(box_from_points(shapes[0]), 32, 0.25)) / 32
    constant_model(tmp_path / "c.onnx", norm)
    _, val = split_by_group(read_dataset(data), 0.3)
    assert 0 < len(val) < 30
    p = run("fkp.tracker.evaluate", str(data), "--model", str(tmp_path / "c.onnx"),
            "--split", "val", "--val-fraction", "0.3")
    assert json.loads(p.stdout.strip().splitlines()[-1])["n"] == len(val)


def test_ema_weights_are_checkpointed_resumed_and_exported(trained, tmp_path):
    """--ema: ``model`` holds the moving average (validated and exported), ``train_model``
    the raw weights that --resume continues from; fastnet-deep keeps its face score; trained
    with --bf16 (channels-last weights) it still exports with parity."""
    import torch

    _, data, _ = trained
    out = tmp_path / "ema"
    common = ["fkp.train.cli", "--arch", "fastnet-deep", "--data", str(data), "--input-size",
              "64", "--batch", "4", "--max-steps", "3", "--val-fraction", "0.34", "--ema", "0.9",
              "--bf16", "--out", str(out)]
    run(*common, "--epochs", "1")
    ck = torch.load(out / "last.pt", weights_only=False)
    steps = ck["ema_updates"]                 # one update per optimiser step
    assert steps >= 2
    name = "stem.0.0.weight"
    raw, avg = ck["train_model"][name], ck["model"][name]
    assert not torch.equal(raw, avg)
    p = run(*common, "--epochs", "2", "--resume")
    assert "resumed" in p.stderr
    ck2 = torch.load(out / "last.pt", weights_only=False)
    assert ck2["ema_updates"] == 2 * steps and ck2["epoch"] == 2
    assert not torch.equal(ck2["model"][name], avg)
    onnx_path = tmp_path / "deep.onnx"
    run("fkp.export.onnx_export", str(out / "final.pt"), str(onnx_path))
    meta = ModelMeta.from_json(next(p.value for p in onnx.load(str(onnx_path)).metadata_props
                                    if p.key == METADATA_KEY))
    assert meta.arch == "fastnet-deep" and meta.has_score


def test_model_card_paths_are_relative_when_shorter(tmp_path, monkeypatch):
    from fkp.export.onnx_export import portable_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    assert portable_path(str(tmp_path / "d")) == "d"
    assert portable_path("/") == "/"


def test_eval_mirror_bias_recovers_a_label_offset(tmp_path):
    """A net that learned an offset k (crop px) of labels that sit o px right of the points'
    geometry: plain bias k/s - o, mirrored bias -k/s - o, label_offset_x_px = o."""
    from conftest import template_shape

    data, _ = write_folder(tmp_path / "d", n=2, people=2)
    geo = template_shape() * 60 + [20, 15]               # mirror-symmetric, frame px
    m = crop_matrix(box_from_points(geo), 32, 0.25)
    k, o = 0.3, 0.4                                      # crop px, frame px
    constant_model(tmp_path / "c.onnx", (apply_affine(geo, m) + [k, 0]) / 32)
    labels = geo.copy()
    labels[1:16, 0] += o                                 # 0 and 16 keep the crop box
    labels[17:, 0] += o
    lines = (data / "landmarks.csv").read_text().splitlines()
    lines[1:] = [ln.split(",")[0] + "," + ",".join(f"{v:.6f}" for v in labels.ravel())
                 for ln in lines[1:]]
    (data / "landmarks.csv").write_text("\n".join(lines) + "\n")
    p = run("fkp.tracker.evaluate", str(data), "--model", str(tmp_path / "c.onnx"),
            "--mirror-bias")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    frac, s = 66 / 68, m[0, 0]
    assert res["bias_px"][0] == pytest.approx(k / s - o * frac, abs=2e-3)
    assert res["bias_mirrored_px"][0] == pytest.approx(-k / s - o * frac, abs=2e-3)
    assert res["label_offset_x_px"] == pytest.approx(o * frac, abs=2e-3)


def test_label_noise_recovers_the_noise_of_labels_around_a_perfect_prediction():
    """Frames of one face whose labels carry Gaussian noise of 2 % of IOD per coordinate,
    predicted exactly: the estimate is 2 %; a net that copies the noisy labels gives 0."""
    from conftest import template_shape
    from fkp.tracker.data import DatasetError
    from fkp.tracker.erroranalysis import label_noise
    from fkp.tracker.landmarks import interocular
    from fkp.tracker.runtime import ModelError

    rng = np.random.default_rng(0)
    shapes, groups = [], []
    for g in range(40):
        base = template_shape() + rng.normal(0, 0.01, (68, 2))          # one person
        for _ in range(6):                                              # frames of a video
            a, s = rng.uniform(-0.3, 0.3), rng.uniform(150, 250)
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            frame = (base + rng.normal(0, 0.01, (68, 2))) @ rot.T * s
            shapes.append(frame + rng.uniform(0, 300, 2))
            groups.append(f"p{g}")
    truth_free = np.stack(shapes)
    iod = interocular(truth_free)
    labels = truth_free + rng.normal(0, 1, truth_free.shape) * 0.02 * iod[:, None, None]
    res = label_noise(truth_free, labels, np.array(groups))
    assert res["label_noise_rms"] == pytest.approx(2.0, rel=0.1)
    assert res["nme_floor"] == pytest.approx(2.0 * np.sqrt(np.pi / 2), rel=0.1)
    assert res["noise_pairs"] == round(40 * 15 / 2)
    assert label_noise(labels, labels, np.array(groups))["label_noise_rms"] == 0
    with pytest.raises(DatasetError, match="two or more"):
        label_noise(labels[:3], labels[:3], np.array(["a", "b", "c"]))
    with pytest.raises(ModelError, match="68-point"):
        label_noise(labels[:, 30:31], labels, np.array(groups))


def test_point_bias_finds_a_fixed_offset_in_the_face_frame():
    """Faces turned and scaled at random, predicted with a fixed offset of one point in the
    face's own frame plus noise: point_bias finds the offset there, and the NME without it
    is the noise's alone."""
    from conftest import template_shape
    from fkp.tracker.erroranalysis import point_bias
    from fkp.tracker.landmarks import interocular, nme
    from fkp.tracker.runtime import ModelError

    rng = np.random.default_rng(1)
    truth, pred, noise_only = [], [], []
    for _ in range(400):
        a, s = rng.uniform(-0.5, 0.5), rng.uniform(100, 300)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        t = template_shape() @ rot.T * s + rng.uniform(0, 300, 2)
        iod = interocular(t[None])[0]
        noise = rng.normal(0, 0.01 * iod, (68, 2))
        offset = np.zeros((68, 2))
        offset[8] = rot @ np.array([0.0, 0.05]) * iod       # chin 5 % of IOD down the face
        truth.append(t), pred.append(t + noise + offset), noise_only.append(t + noise)
    truth, pred = np.stack(truth), np.stack(pred)
    res = point_bias(pred, truth)
    assert res["point_bias_worst"] == 8
    assert res["point_bias_max"] == pytest.approx(5.0, abs=0.15)
    assert res["point_bias_mean"] < 5.0 / 68 + 0.15
    assert res["nme_unbiased"] == pytest.approx(nme(np.stack(noise_only), truth).mean(),
                                                abs=0.02)
    assert nme(pred, truth).mean() > res["nme_unbiased"] + 0.03
    with pytest.raises(ModelError, match="68-point"):
        point_bias(pred[:, :5], truth)


def test_eval_label_noise_reports_in_the_json_line(tmp_path):
    data, shapes = write_folder(tmp_path / "d", n=6, people=3)
    norm = apply_affine(shapes[0], crop_matrix(box_from_points(shapes[0]), 32, 0.25)) / 32
    constant_model(tmp_path / "c.onnx", norm)
    p = run("fkp.tracker.evaluate", str(data), "--model", str(tmp_path / "c.onnx"),
            "--label-noise")
    assert "label noise:" in p.stdout
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["noise_pairs"] == 2 and res["label_noise_rms"] >= 0 and "nme_floor" in res


def test_ensemble_known_answer_and_bad_members(tmp_path):
    from fkp.tracker.runtime import LandmarkModel

    data, shapes = write_folder(tmp_path / "d", n=6, people=3)
    norm = apply_affine(shapes[0], crop_matrix(box_from_points(shapes[0]), 32, 0.25)) / 32
    other = norm + np.array([0.04, -0.02])
    constant_model(tmp_path / "a.onnx", norm)
    constant_model(tmp_path / "b.onnx", other)
    out = tmp_path / "e.onnx"
    p = run("fkp.export.ensemble", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"),
            str(out), "--data", str(data), "--val-fraction", "0.5")
    assert "ensemble" in p.stdout and out.exists()
    m = LandmarkModel(out, "cpu")
    pts, _ = m.predict_crops(np.random.default_rng(0).integers(0, 255, (3, 32, 32), np.uint8))
    assert np.allclose(pts / 32, (norm + other) / 2, atol=1e-6)
    assert m.meta.arch == "ensemble(const, const)" and len(m.meta.training["ensemble"]) == 2
    assert m.meta.metrics["n/d"] >= 1
    assert (tmp_path / "e.md").read_text().count("`a.onnx`") == 1
    # members of another crop format, or a file that is no model: one line, exit 1
    constant_model(tmp_path / "c48.onnx", norm, size=48)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 20)
    for bad, why in ((tmp_path / "c48.onnx", "differ in input_size"), (junk, "cannot load")):
        p = run("fkp.export.ensemble", str(tmp_path / "a.onnx"), str(bad),
                str(tmp_path / "bad.onnx"), "--data", str(data), check=False)
        assert p.returncode == 1 and p.stderr.startswith("fkp-ensemble: error:"), p.stderr
        assert why in p.stderr and p.stderr.strip().count("\n") == 0
        assert not (tmp_path / "bad.onnx").exists()


def test_ensemble_soup_averages_the_weights_of_one_graph(tmp_path):
    """--soup: one graph whose weights are the members' mean (for constant models, the mean
    shape); the same architecture is kept; members of another graph are refused."""
    from fkp.export.onnx_export import portable_path
    from fkp.tracker.runtime import LandmarkModel

    data, shapes = write_folder(tmp_path / "d", n=6, people=3)
    norm = apply_affine(shapes[0], crop_matrix(box_from_points(shapes[0]), 32, 0.25)) / 32
    other = norm + np.array([0.04, -0.02])
    a, b, out = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "s.onnx"
    constant_model(a, norm)
    constant_model(b, other)
    p = run("fkp.export.ensemble", str(a), str(b), str(out), "--soup", "--data", str(data),
            "--val-fraction", "0.5")
    assert "soup" in p.stdout
    m = LandmarkModel(out, "cpu")
    assert len(onnx.load(str(out)).graph.node) == len(onnx.load(str(a)).graph.node)
    pts, _ = m.predict_crops(np.zeros((2, 32, 32), np.uint8))
    assert np.allclose(pts / 32, (norm + other) / 2, atol=1e-6)
    assert m.meta.arch == "const" and m.meta.training["combine"] == "weights"
    assert m.meta.training["command"].split()[3:5] == [portable_path(str(out)), "--soup"]
    assert "weights of these members (fkp-ensemble --soup)" in (tmp_path / "s.md").read_text()
    # same crop format, but one node more; or integer tensors that differ (quantized
    # members: their int8 weights cannot be averaged)
    more, ints = onnx.load(str(b)), onnx.load(str(b))
    more.graph.node.insert(0, helper.make_node("Identity", ["c"], ["c2"]))
    more.graph.node[-1].input[0] = "c2"
    ax = next(t for t in ints.graph.initializer if t.name == "ax")
    ax.CopyFrom(helper.make_tensor("ax", TensorProto.INT64, [2], [2, 1]))
    for proto, why in ((more, "member 1's graph differs from member 0's"),
                       (ints, "members differ in the integer tensor 'ax'")):
        onnx.save(proto, str(b))
        p = run("fkp.export.ensemble", str(a), str(b), str(tmp_path / "bad.onnx"), "--soup",
                "--data", str(data), check=False)
        assert p.returncode == 1 and p.stderr.strip().count("\n") == 0
        assert why in p.stderr, p.stderr
        assert not (tmp_path / "bad.onnx").exists()


def test_ensemble_of_nets_keeps_every_head_in_float_when_quantized(trained):
    from fkp.export.ensemble import ensemble
    from fkp.export.quantize import float_nodes
    from fkp.tracker.runtime import LandmarkModel

    tmp, data, out = trained
    net = tmp / "m.onnx"
    run("fkp.export.onnx_export", str(out / "final.pt"), str(net), "--no-card")
    ens = tmp / "ens.onnx"
    ensemble([net, net], ens, [str(data)], val_fraction=0.34, card=False)
    a, e = LandmarkModel(net, "cpu"), LandmarkModel(ens, "cpu")
    crops = np.random.default_rng(1).integers(0, 255, (2, 64, 64), np.uint8)
    (pa, sa), (pe, se) = a.predict_crops(crops), e.predict_crops(crops)
    assert np.allclose(pa, pe, atol=1e-4) and np.allclose(sa, se, atol=1e-5)
    graph = onnx.load(str(ens)).graph
    heads = [n for n in graph.node if n.op_type == "Conv" and n.name in float_nodes(graph)]
    assert sorted(n.name.split("/")[0] for n in heads) == ["m0", "m1"]
    single = onnx.load(str(net)).graph
    convs = [n.name for n in single.node if n.op_type == "Conv"]
    assert [n for n in float_nodes(single) if n in convs] == convs[-1:]
    # two exports of one checkpoint are one graph: their soup computes the same function
    again = tmp / "m2.onnx"
    run("fkp.export.onnx_export", str(out / "final.pt"), str(again), "--no-card")
    ensemble([net, again], tmp / "soup.onnx", [str(data)], val_fraction=0.34, card=False,
             soup=True)
    ps, ss = LandmarkModel(tmp / "soup.onnx", "cpu").predict_crops(crops)
    assert np.allclose(pa, ps, atol=1e-4) and np.allclose(sa, ss, atol=1e-5)


def test_eval_several_models_reports_their_average_and_disagreement(tmp_path):
    """Two constant models, one exact and one with every point shifted right by a fixed
    fraction of the crop: the average errs by half that shift, the disagreement is the
    whole shift; input sizes may differ (the average is taken in frame coordinates)."""
    data, shapes = write_folder(tmp_path / "d", n=4, people=2)
    first = shapes[0]
    norm = apply_affine(first, crop_matrix(box_from_points(first), 32, 0.25)) / 32
    constant_model(tmp_path / "a.onnx", norm, size=32)
    norm48 = apply_affine(first, crop_matrix(box_from_points(first), 48, 0.25)) / 48
    constant_model(tmp_path / "b.onnx", norm48 + [0.05, 0.0], size=48)
    lines = (data / "landmarks.csv").read_text().splitlines()
    for i in range(4):                    # scaled, shifted copies of the first face
        pts = first * (1 + 0.1 * i) + [3 * i, -2 * i]
        lines[i + 1] = lines[i + 1].split(",")[0] + "," + ",".join(f"{v:.6f}" for v in pts.ravel())
    (data / "landmarks.csv").write_text("\n".join(lines) + "\n")
    box = box_from_points(first)
    side = max(box[2] - box[0], box[3] - box[1]) * 1.5
    shift = 100 * 0.05 * side / np.linalg.norm(first[36] - first[45])   # % IOD, every face
    p = run("fkp.tracker.evaluate", str(data), "--model", str(tmp_path / "a.onnx"),
            "--model", str(tmp_path / "b.onnx"), "--ced", str(tmp_path / "ced.png"))
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["model"] == "a.onnx+b.onnx" and res["n"] == 4
    assert res["members"]["a.onnx"] == pytest.approx(0.0, abs=1e-3)
    assert res["members"]["b.onnx"] == pytest.approx(shift, rel=1e-3)
    assert res["nme"] == pytest.approx(shift / 2, rel=1e-3)
    assert res["disagreement"]["a.onnx|b.onnx"] == pytest.approx(shift, rel=1e-3)
    assert "a.onnx vs b.onnx: predictions" in p.stdout
    assert (tmp_path / "ced.png").is_file()


def test_model_card_command_repeats_the_options_that_were_set():
    """The recorded fkp-train command: unset options (None) are left out, not written as
    '--init None'; list options such as --aug come out as their items."""
    import shlex

    from fkp.export.onnx_export import build_meta

    args = dict(arch="fastnet", data=["d1"], input_size=64, epochs=2, margin=0.25,
                val_fraction=0.1, loss="l1", init=None, aug=["rotation=10", "scale=0.9:1.1"],
                bf16=False, threads=0, out="run", resume=False, sam=0.0)
    ck = dict(args=args, epoch=2, arch="fastnet", point_indices=list(range(68)),
              mean_shape=np.zeros((68, 2)), metrics={"nme/d1": 4.0})
    cmd = shlex.split(build_meta(ck, True).training["command"])
    assert "None" not in cmd and "--init" not in cmd and "--bf16" not in cmd
    assert "--sam" not in cmd      # off: left out
    ck["args"] = dict(args, sam=0.2)
    cmd = shlex.split(build_meta(ck, True).training["command"])
    assert cmd[cmd.index("--sam") + 1] == "0.2"
    i = cmd.index("--aug")
    assert cmd[i + 1:i + 3] == ["rotation=10", "scale=0.9:1.1"]


def test_eval_from_detector_matches_found_faces_and_counts_missed_ones(tmp_path, tiny_model,
                                                                      astronaut_bgr):
    """--from-detector: the face fkp-track finds in a photo is scored against the labels; a
    photo where no face is found counts as missed (a failure) and stays out of the NME."""
    import cv2

    from conftest import face_frame
    from fkp.tracker.tracking import Tracker

    photo = face_frame(astronaut_bgr, 0)
    tracker = Tracker(tiny_model, device="cpu", smooth=0.0, async_scan=False)
    tracker.forget()
    found = tracker.process(photo, 0.0).raw_points
    assert len(found) >= 1
    pts = found[0] + [[1.5, 0.0]]                     # labels 1.5 px right of the answer
    (tmp_path / "d" / "images").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "d" / "images" / "a_01.png"), photo)
    cv2.imwrite(str(tmp_path / "d" / "images" / "b_01.png"), np.full_like(photo, 128))
    row = ",".join(f"{v:.4f}" for v in pts.ravel())
    header = "image," + ",".join(f"x{i},y{i}" for i in range(68))
    (tmp_path / "d" / "landmarks.csv").write_text(f"{header}\na_01.png,{row}\nb_01.png,{row}\n")
    p = run("fkp.tracker.evaluate", str(tmp_path / "d"), "--model", str(tiny_model),
            "--from-detector")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    iod = np.linalg.norm(pts[36] - pts[45])
    assert res["n"] == 2 and res["detected"] == 50.0 and res["failure_rate"] == 50.0
    assert res["nme"] == pytest.approx(100 * 1.5 / iod, abs=1e-3)
    assert res["mae"] == pytest.approx(0.75, abs=1e-3)
    p = run("fkp.tracker.evaluate", str(tmp_path / "d"), "--model", str(tiny_model),
            "--model", str(tiny_model), "--from-detector", check=False)
    assert p.returncode == 2 and "--from-detector takes one --model" in p.stderr


def test_resume_after_a_cut_continues_exactly_and_refuses_changed_options(tmp_path,
                                                                          monkeypatch):
    """A run cut after its first epoch and resumed ends with the very weights of a run that
    was never cut (data order, augmentation and BatchNorm crops continue their random
    streams); resuming with another input size is refused in one line."""
    import torch

    from fkp.train import cli
    from fkp.train.trainer import Trainer

    data, _ = write_folder(tmp_path / "d", n=12, people=6)
    common = ["--arch", "fastnet", "--data", str(data), "--input-size", "64", "--epochs", "2",
              "--batch", "4", "--max-steps", "2", "--val-fraction", "0.34", "--ema", "0.9",
              "--precise-bn", "8", "--threads", "1"]
    write_metrics = Trainer.write_metrics

    def cut(self):
        write_metrics(self)
        raise KeyboardInterrupt              # after epoch 1's checkpoint: a Ctrl-C

    monkeypatch.setattr(Trainer, "write_metrics", cut)
    assert cli.main([*common, "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(Trainer, "write_metrics", write_metrics)
    assert cli.main([*common, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "whole")]) == 0
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=False) for r in ("cut", "whole"))
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "train_model"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in b[key]), key
    bigger = [*common, "--out", str(tmp_path / "cut"), "--resume"]
    bigger[bigger.index("64")] = "96"
    p = run("fkp.train.cli", *bigger, check=False)
    assert p.returncode == 1 and "started with --input-size 64, not 96" in p.stderr, p.stderr


def test_models_are_scored_on_people_none_of_them_trained_on(caplog):
    """fkp-quantize / fkp-ensemble score at the smallest held-out fraction their models were
    trained with (read from the metadata; older files carry it only in the split text)."""
    from fkp.export.onnx_export import scoring_fraction

    old = ModelMeta("fastnet", 64, training={
        "split": "by person/photo (group hash, val_fraction=0.05, fixed seed 0)"})
    new = ModelMeta("fastnet", 64, training={"val_fraction": 0.2})
    unknown = ModelMeta("fastnet", 64)
    assert (old.val_fraction, new.val_fraction, unknown.val_fraction) == (0.05, 0.2, None)
    assert scoring_fraction([new, old], None) == 0.05
    assert scoring_fraction([new], None) == 0.2 and scoring_fraction([unknown], None) == 0.1
    assert scoring_fraction([new], 0.1) == 0.1 and not caplog.records
    assert scoring_fraction([new, old], 0.1) == 0.1
    assert "include people it trained on" in caplog.records[-1].getMessage()


def test_a_soup_worse_than_every_member_is_refused(tmp_path):
    """Weight averaging of nets trained apart gives nonsense: members that square a weight
    (+w and -w predict the same points) average to w = 0; nothing is written."""
    from onnx import numpy_helper

    data, shapes = write_folder(tmp_path / "d", n=6, people=3)
    norm = apply_affine(shapes[0], crop_matrix(box_from_points(shapes[0]), 32, 0.25)) / 32
    paths = []
    for sign, name in ((1, "plus"), (-1, "minus")):
        path = constant_model(tmp_path / f"{name}.onnx", norm)
        proto = onnx.load(str(path))
        c = next(t for t in proto.graph.initializer if t.name == "c")
        c.CopyFrom(numpy_helper.from_array(sign * np.sqrt(numpy_helper.to_array(c)), "c"))
        proto.graph.node.insert(0, helper.make_node("Mul", ["c", "c"], ["c2"]))
        proto.graph.node[-1].input[0] = "c2"
        onnx.save(proto, str(path))
        paths.append(path)
    out = tmp_path / "soup.onnx"
    p = run("fkp.export.ensemble", *map(str, paths), str(out), "--soup", "--data", str(data),
            "--val-fraction", "0.5", check=False)
    assert p.returncode == 1 and "worse than every member" in p.stderr, p.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
