"""Model registry: names, shapes, and a clear error with close matches."""
import pytest
import torch

from fkp.train.models import create_model, list_models


@pytest.mark.parametrize("name,size,k", [("nosetip", 64, 1), ("simple", 64, 68),
                                         ("fastnet", 64, 68), ("fastnet-deep", 64, 68),
                                         ("fastnet-wide", 64, 68),
                                         ("resnet50", 64, 68),
                                         ("resnet50-heatmap", 64, 68)])
def test_shapes(name, size, k):
    m = create_model(name, input_size=size).eval()
    with torch.no_grad():
        out = m(torch.zeros(2, 1, size, size))
    assert out["points"].shape == (2, k, 2)
    assert len(m.point_indices) == k
    assert ("score" in out) == m.has_score
    if m.has_score:
        assert out["score"].shape == (2,) and ((out["score"] >= 0) & (out["score"] <= 1)).all()


def test_registry_lists_all_and_suggests():
    assert set(list_models()) == {"nosetip", "simple", "resnet50", "resnet50-heatmap",
                                 "fastnet", "fastnet-deep", "fastnet-wide"}
    with pytest.raises(ValueError, match="did you mean fastnet"):
        create_model("fastnett")
    with pytest.raises(ValueError, match="known: fastnet"):
        create_model("zzzz")


def test_heatmap_nets_need_a_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("resnet50-heatmap", input_size=112)


@pytest.mark.parametrize("name", ["fastnet", "resnet50-heatmap"])
def test_bf16_autocast_keeps_soft_argmax_in_float32(name):
    """fkp-train --bf16: convolutions in bfloat16 (channels last), the soft-argmax in float32
    (bfloat16 coordinates would be quantised to about 0.3 px of a 160-px crop)."""
    torch.manual_seed(0)
    m = create_model(name, input_size=64).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x)
    for key in ("points", "score", "heatmaps"):
        assert low[key].dtype == torch.float32, key
    assert (low["points"] - ref["points"]).abs().max() < 0.01


def test_precise_bn_replaces_stale_statistics(tmp_path):
    """Stale BN running stats wreck eval-mode outputs; recalibration restores them."""
    import numpy as np

    from datasets import face_shape
    from fkp.train.dataset import FaceDataset, normalise
    from fkp.train.evaluation import recalibrate_bn

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (80, 80, 3), dtype=np.uint8) for _ in range(16)]
    pts = np.stack([face_shape(40, 40, 20)] * 16)
    ds = FaceDataset(images, pts, 64, 0.25)
    torch.manual_seed(0)
    model = create_model("fastnet", input_size=64)
    x = torch.from_numpy(np.stack([normalise(ds.sample(i)[0]) for i in range(16)]))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(1e-3)
    with torch.no_grad():
        ref = model.train()(x)["points"]
        stale = model.eval()(x)["points"]
        recalibrate_bn(model, ds, images=16, batch=16)
        fixed = model.eval()(x)["points"]
    assert not model.training
    assert (stale - ref).abs().mean() > 10 * (fixed - ref).abs().mean()
    assert (fixed - ref).abs().max() < 1e-3


def test_nme_loss_is_the_evaluation_metric_with_an_iod_floor():
    """``--loss nme`` is the reported NME (as a fraction), also after the coordinates are
    scaled and shifted, and divides by at least IOD_FLOOR for faces seen from the side."""
    import numpy as np

    from fkp.tracker.landmarks import nme
    from fkp.train.losses import IOD_FLOOR, coord_loss

    rng = np.random.default_rng(0)
    true = rng.uniform(0.2, 0.8, (5, 68, 2))
    true[:, 36], true[:, 45] = [0.3, 0.4], [0.7, 0.42]                 # frontal faces
    pred = true + rng.normal(0, 0.01, true.shape)
    want = nme(pred, true).mean() / 100
    got = coord_loss(torch.tensor(pred), torch.tensor(true), "nme")
    assert abs(float(got) - want) < 1e-9
    # scale and shift do not change it (crop pixels or normalised crop coordinates)
    got = coord_loss(torch.tensor(pred * 3 + 1) / 4, torch.tensor(true * 3 + 1) / 4, "nme")
    assert abs(float(got) - want) < 1e-9
    side = true.copy()
    side[:, 45] = side[:, 36] + [0.01, 0.0]                             # eye corners 0.01 apart
    err = np.linalg.norm(pred - side, axis=-1).mean()
    assert abs(float(coord_loss(torch.tensor(pred), torch.tensor(side), "nme"))
               - err / IOD_FLOOR) < 1e-9
    with pytest.raises(ValueError, match="68 points"):
        coord_loss(torch.zeros(2, 1, 2), torch.zeros(2, 1, 2), "nme")
