"""Model registry: names, shapes, and a clear error with close matches."""
import copy

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


def test_precise_bn_averages_whole_batches_only():
    """A last, smaller batch would count as much as a full one in the cumulative average:
    20 crops in batches of 16 give the statistics of 16 of them."""
    import numpy as np

    from fkp.train.dataset import normalise
    from fkp.train.evaluation import recalibrate_bn

    class Crops:
        def __init__(self):
            self.images = [np.full((8, 8), 10 * i, np.uint8) for i in range(20)]

        def __len__(self):
            return len(self.images)

        def sample(self, i):
            return self.images[i], None

    bn = torch.nn.BatchNorm2d(1)
    recalibrate_bn(torch.nn.Sequential(bn), Crops(), images=20, batch=16)
    used = np.random.default_rng(0).permutation(20)[:16]
    expected = np.mean([normalise(np.full((8, 8), 10 * i, np.uint8)).mean() for i in used])
    assert float(bn.running_mean[0]) == pytest.approx(expected, abs=1e-6)


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


def _gaussian_heatmap(grid: torch.Tensor, centre: tuple[float, float], sx: float, sy: float,
                      angle: float = 0.0) -> torch.Tensor:
    """(1, 1, h, h) normalised Gaussian with spreads sx, sy (crop widths) along axes turned
    by ``angle`` radians."""
    import math

    c, s = math.cos(angle), math.sin(angle)
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")
    dx, dy = gx - centre[0], gy - centre[1]
    u, v = c * dx + s * dy, -s * dx + c * dy
    g = torch.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)).double()
    return (g / g.sum())[None, None]


def test_star_loss_divides_each_error_by_the_spread_along_its_axis():
    """STAR (``--loss star``): the covariance is the heatmap's; an error along the long axis
    of an elongated heatmap costs a third of the same error across it (spreads 3:1), at any
    orientation; for a heatmap of the target's own spread the error part is L1-sized."""
    import math

    from fkp.train.losses import STAR_EIGEN_WEIGHT, heatmap_covariance, star_loss
    from fkp.train.models.heads import cell_centres

    grid = cell_centres(160, 4).double()                   # 40 cells, step 0.025
    step = float(grid[1] - grid[0])
    centre = (float(grid[20]), float(grid[20]))
    mean = torch.tensor([[centre]], dtype=torch.float64)
    prob = _gaussian_heatmap(grid, centre, 3 * step, step, angle=math.pi / 6)
    cov = heatmap_covariance(prob, mean, grid)[0, 0].numpy()
    axis = [math.cos(math.pi / 6), math.sin(math.pi / 6)]
    assert abs(axis @ cov @ axis - (3 * step) ** 2) < 1e-3 * step ** 2
    assert abs(cov.trace() - 10 * step ** 2) < 1e-3 * step ** 2

    def error_part(p, offset):
        target = mean - torch.tensor(offset, dtype=torch.float64)
        spread_part = STAR_EIGEN_WEIGHT * step * float(torch.diagonal(
            heatmap_covariance(p, mean, grid)[0, 0]).sum()) / 2
        return float(star_loss(p, mean, target, grid)) - spread_part

    e = 0.01
    along = error_part(prob, [[[e * axis[0], e * axis[1]]]])
    across = error_part(prob, [[[-e * axis[1], e * axis[0]]]])
    assert abs(along / across - 1 / 3) < 1e-3
    assert abs(across - e / 2) < 1e-4                      # mean over the two axes
    # a round heatmap has no axes of its own: the L1 of the error in some turned frame
    round_ = _gaussian_heatmap(grid, centre, step, step)
    assert e / 2 - 1e-4 < error_part(round_, [[[e, 0.0]]]) < e / 2 ** 0.5 + 1e-4


def test_star_loss_gradient_is_finite_for_a_round_heatmap():
    """Both spreads equal (the axes are undefined): the loss still gives finite gradients."""
    from fkp.train.losses import star_loss, total_loss
    from fkp.train.models.heads import cell_centres

    grid = cell_centres(64, 4)
    logits = torch.zeros(2, 3, 16, 16, requires_grad=True)
    prob = torch.softmax(logits.flatten(2), -1).view_as(logits)
    pred = torch.stack([(prob.sum(2) * grid).sum(-1), (prob.sum(3) * grid).sum(-1)], -1)
    loss = star_loss(prob, pred, torch.full((2, 3, 2), 0.3), grid)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="heatmap"):
        total_loss({"points": pred}, torch.zeros(2, 3, 2), "star", 64, grid=grid)


def test_sam_takes_the_gradient_at_the_ascended_weights_and_restores_them():
    """Trainer.sam_gradient: the gradient left for the optimiser is the loss gradient at
    w + rho g / |g|; the weights come back exactly and BatchNorm's running statistics keep
    the first pass's values."""
    import types

    from fkp.train.trainer import Trainer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 2)).train()
    x, y = torch.randn(16, 4), torch.randn(16, 2)

    def loss(x, y):
        return ((net(x) - y) ** 2).mean()

    rho = 0.3
    fake = types.SimpleNamespace(model=net, args=types.SimpleNamespace(sam=rho),
                                 opt=torch.optim.SGD(net.parameters(), lr=0.1), loss=loss)
    loss(x, y).backward()
    w0 = [p.detach().clone() for p in net.parameters()]
    g = [p.grad.clone() for p in net.parameters()]
    stats = [b.clone() for b in (net[1].running_mean, net[1].running_var)]
    Trainer.sam_gradient(fake, x, y)
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), w0))
    assert torch.equal(net[1].running_mean, stats[0]) and torch.equal(net[1].running_var, stats[1])
    assert net[1].momentum == 0.1
    # the same gradient by hand, on a copy moved to the ascended point
    norm = torch.sqrt(sum((v ** 2).sum() for v in g))
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for p, v in zip(twin.parameters(), g):
            p.add_(rho * v / norm)
    ((twin(x) - y) ** 2).mean().backward()
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
    assert not torch.allclose(net[0].weight.grad, g[0])
