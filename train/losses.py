"""Landmark losses. Coordinates are normalised crop coordinates (B, K, 2)."""
from __future__ import annotations

import math

import torch

from fkp.tracker.landmarks import LEFT_EYE_OUTER, NUM_POINTS, RIGHT_EYE_OUTER

LOSSES = ("l1", "mse", "wing", "nme", "star")
#: ``nme`` loss: smallest outer-eye-corner distance it divides by, in crop widths (a face seen
#: from the side has its eye corners almost on top of each other)
IOD_FLOOR = 0.1


def coord_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1",
               size: int = 128) -> torch.Tensor:
    """Point loss. pred, target (B, K, 2) in normalised crop coordinates.

    ``l1``, ``mse``, ``wing`` are in crop pixels / ``size`` units (wing: Feng et al. 2018,
    w=10, eps=2 px). ``nme`` is the evaluation metric itself, as a fraction: each point's
    Euclidean error divided by the face's outer-eye-corner distance (points 36 and 45, at
    least :data:`IOD_FLOOR`), so faces weigh in as they do in the reported NME (68 points
    only).
    """
    if kind == "nme":
        if target.shape[-2] != NUM_POINTS:
            raise ValueError(f"the nme loss needs the {NUM_POINTS} points, not {target.shape[-2]}")
        iod = (target[:, RIGHT_EYE_OUTER] - target[:, LEFT_EYE_OUTER]).norm(dim=-1)
        err = (pred - target).square().sum(dim=-1).add(1e-12).sqrt().mean(dim=-1)
        return (err / iod.clamp_min(IOD_FLOOR)).mean()
    diff = (pred - target) * size
    if kind == "l1":
        return diff.abs().mean() / size
    if kind == "mse":
        return (diff ** 2).mean() / size ** 2
    if kind == "wing":
        w, eps = 10.0, 2.0
        c = w - w * math.log(1 + w / eps)
        a = diff.abs()
        return torch.where(a < w, w * torch.log1p(a / eps), a - c).mean() / size
    if kind == "star":
        raise ValueError("the star loss needs heatmaps: call total_loss with a heatmap model")
    raise ValueError(f"unknown loss {kind!r} (choose from {', '.join(LOSSES)})")


def heatmap_covariance(prob: torch.Tensor, mean: torch.Tensor,
                       grid: torch.Tensor) -> torch.Tensor:
    """(B, K, 2, 2) covariance of each heatmap distribution ``prob`` (B, K, h, w) about
    ``mean`` (B, K, 2), in normalised crop coordinates; ``grid`` (>= max(h, w),) holds the
    cell centres."""
    h, w = prob.shape[-2:]
    dx = grid[:w].view(1, 1, 1, w) - mean[..., 0, None, None]      # (B, K, 1, w)
    dy = grid[:h].view(1, 1, h, 1) - mean[..., 1, None, None]      # (B, K, h, 1)
    sxx = (prob.sum(dim=2) * dx[:, :, 0] ** 2).sum(-1)
    syy = (prob.sum(dim=3) * dy[..., 0] ** 2).sum(-1)
    sxy = (prob * dx * dy).sum(dim=(2, 3))
    return torch.stack([torch.stack([sxx, sxy], -1), torch.stack([sxy, syy], -1)], -2)


#: STAR: weight of the eigenvalue restriction (Zhou et al. 2023 use 1 on a [-1, 1] frame,
#: which is 4 on the [0, 1] crop frame used here) and the floor under each eigenvalue
STAR_EIGEN_WEIGHT = 4.0
STAR_EPS = 2.5e-6


def star_loss(prob: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
              grid: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Self-adaptive ambiguity reduction loss (STAR, Zhou et al., CVPR 2023).

    Each point's error ``pred - target`` (B, K, 2) is split along the principal axes of its
    predicted heatmap distribution ``prob`` (B, K, h, w) and each part divided by the spread
    along that axis: along a contour, where the labels themselves scatter and the net learns
    a long heatmap, an error costs less than across it. The eigenvalues are kept from
    growing by their sum (the restriction). The axes come from the covariance without a
    gradient (a 2x2 eigenvector is not differentiable where both spreads are equal); the
    spreads along them (``u^T S u``) and the errors carry it.

    Scaled by the target Gaussian's spread ``sigma`` cells, so that for a heatmap of exactly
    that shape the first part is the ``l1`` loss taken along the heatmap's axes (same units:
    normalised crop widths).
    """
    cov = heatmap_covariance(prob, pred, grid)
    with torch.no_grad():
        theta = 0.5 * torch.atan2(2 * cov[..., 0, 1], cov[..., 0, 0] - cov[..., 1, 1])
        axes = torch.stack([torch.stack([theta.cos(), theta.sin()], -1),
                            torch.stack([-theta.sin(), theta.cos()], -1)], -2)  # (B, K, 2, 2)
    spread = torch.einsum("bkij,bkjl,bkil->bki", axes, cov, axes)      # (B, K, 2) eigenvalues
    err = torch.einsum("bkij,bkj->bki", axes, pred - target)           # (B, K, 2) along the axes
    s0 = sigma * float(grid[1] - grid[0])
    per_axis = err.abs() / (spread.clamp_min(0) + STAR_EPS).sqrt() + STAR_EIGEN_WEIGHT * spread
    return s0 * per_axis.mean()


def gaussian_targets(points: torch.Tensor, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """Normalised Gaussian heatmaps (B, K, h, h) centred on ``points`` (B, K, 2).

    ``grid`` (h,) holds the cell centres in normalised crop coordinates; sigma is in cells.
    """
    step = (grid[1] - grid[0]) if len(grid) > 1 else grid.new_tensor(1.0)
    dx = (grid.view(1, 1, 1, -1) - points[..., 0:1, None]) / (sigma * step)
    dy = (grid.view(1, 1, -1, 1) - points[..., 1:2, None]) / (sigma * step)
    g = torch.exp(-0.5 * (dx ** 2 + dy ** 2))
    return g / g.flatten(2).sum(-1).clamp_min(1e-12)[..., None, None]


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence between heatmap distributions (B, K, h, w)."""
    p, q = p.flatten(2).clamp_min(1e-10), q.flatten(2).clamp_min(1e-10)
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).mean()


def total_loss(out: dict[str, torch.Tensor], target: torch.Tensor, kind: str, size: int,
               heatmap_weight: float = 1.0, grid: torch.Tensor | None = None,
               sigma: float = 1.0) -> torch.Tensor:
    """Coordinate loss, plus the DSNT heatmap regulariser for models with heatmaps
    (in float32, also for outputs computed under bfloat16 autocast). ``star`` needs the
    heatmaps and ``grid``."""
    if kind == "star":
        if "heatmaps" not in out or grid is None:
            raise ValueError("the star loss needs a heatmap network")
        loss = star_loss(out["heatmaps"].float(), out["points"].float(), target, grid, sigma)
    else:
        loss = coord_loss(out["points"].float(), target, kind, size)
    if "heatmaps" in out and heatmap_weight > 0 and grid is not None:
        loss = loss + heatmap_weight * js_divergence(
            out["heatmaps"].float(), gaussian_targets(target, grid, sigma))
    return loss
