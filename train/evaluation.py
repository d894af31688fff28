"""Validation-side helpers shared by the training loop and ``fkp-train``'s final step:
device choice, predictions on un-augmented crops, metrics, BatchNorm re-estimation and the
face-score threshold.

Inputs go to the device the model's weights live on; outputs come back to the CPU as numpy.
Points are in crop pixels (``crop_points``) or pixels of the original image (``points``).
"""
from __future__ import annotations

import numpy as np
import torch

from fkp.tracker.geometry import uncrop
from fkp.tracker.landmarks import interocular, shape_plausibility

from .dataset import FaceDataset, normalise


def pick_device(name: str) -> torch.device:
    """``--device`` -> torch device: ``auto`` is CUDA when torch sees a GPU, else the CPU.
    Raises ValueError for ``cuda`` without a usable GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no usable CUDA GPU (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights live (inputs are moved there; outputs come back to the CPU)."""
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: torch.nn.Module, ds: FaceDataset, batch: int = 64) -> dict[str, np.ndarray]:
    """Predictions on un-augmented crops: points in crop pixels and original pixels, scores."""
    model.eval()
    crops, mats, pts_crop, scores = [], [], [], []
    for start in range(0, len(ds), batch):
        idx = range(start, min(start + batch, len(ds)))
        items = [ds.sample(i) for i in idx]
        x = torch.from_numpy(np.stack([normalise(g) for g, _, _ in items]))
        out = model(x.to(model_device(model)))
        pts_crop.append(out["points"].float().cpu().numpy() * ds.size)
        if "score" in out:
            scores.append(out["score"].float().cpu().numpy())
        crops += [g for g, _, _ in items]
        mats += [m for _, _, m in items]
    pc = np.concatenate(pts_crop) if pts_crop else np.zeros((0, len(ds.indices), 2))
    orig = uncrop(pc, np.stack(mats)) if len(mats) else pc
    return {"crop_points": pc, "points": orig, "crops": crops,
            "scores": np.concatenate(scores) if scores else np.zeros(0)}


def metrics(pred: np.ndarray, truth: np.ndarray, indices: list[int]) -> dict[str, float]:
    """NME (% IOD), MAE (px of the original image) and failure rate (% with NME > 10)."""
    t = truth[:, indices]
    err = np.linalg.norm(pred - t, axis=-1).mean(axis=-1)
    nme = 100 * err / np.maximum(interocular(truth), 1e-6)
    return {"nme": float(nme.mean()), "mae": float(np.abs(pred - t).mean()),
            "failure_rate": float(100 * (nme > 10).mean()), "n": int(len(t))}


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, ds: FaceDataset, images: int = 512,
                   batch: int = 32, seed: int = 0) -> None:
    """Precise BatchNorm: re-estimate every BN layer's running mean/variance as a plain
    average over ``images`` training crops (train-mode forward, no gradients).

    The running averages kept during training can lag behind fast-changing weights; for the
    ResNet-50 this made evaluation-mode outputs diverge (validation NME 220 % with the
    running statistics, 20 % recalibrated, on an epoch-7 checkpoint). For the fast net the
    running statistics were slightly better (4.3 % vs 4.6 %), so ``fkp-train`` keeps
    whichever validates better (see ``fkp.train.cli.final_outputs``)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or len(ds) == 0:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                        # cumulative average
    was_training = model.training
    model.train()
    idx = np.random.default_rng(seed).permutation(len(ds))[:images]
    if len(idx) > batch:              # whole batches only: each counts once in the average
        idx = idx[:len(idx) // batch * batch]
    for start in range(0, len(idx), batch):
        model(torch.from_numpy(np.stack([normalise(ds.sample(int(i))[0])
                                         for i in idx[start:start + batch]]))
              .to(model_device(model)))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)


def choose_score_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """Face/no-face threshold from the scores of true faces (``pos``) and of non-face crops
    (``neg``): the lower of the best balanced-accuracy cut and the 2nd percentile of true
    faces, leaning towards keeping faces. Where the two separate completely (the fast nets:
    non-faces up to about 0.4-0.55, faces from about 0.62), every cut between them is best
    and the lowest is taken, so the threshold is the weakest true face's score."""
    cands = np.unique(np.concatenate([pos, neg]))
    if not len(cands):
        return 0.0
    acc = [((pos >= c).mean() + (neg < c).mean()) / 2 for c in cands]
    best = float(cands[int(np.argmax(acc))])
    return min(best, float(np.percentile(pos, 2))) if len(pos) else best


def calibrate_score(model: torch.nn.Module, datasets: list[FaceDataset],
                    mean_shape: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Face/no-face threshold for the score the runtime uses, from the validation faces of
    every dataset and non-face crops (the same images cropped one to two face sizes away from
    the face). All datasets count: the weakest faces of one (300-W photos) can score below
    every face of another, and a threshold from one alone lost such faces while tracking."""
    rng = np.random.default_rng(seed)

    def score(p, ds):
        if len(p["scores"]):
            return p["scores"]
        return shape_plausibility(p["crop_points"] / ds.size, mean_shape[ds.indices])

    sp, sn = [], []
    for ds in datasets:
        neg_pts = ds.points.copy()
        for i in range(len(neg_pts)):
            w = np.ptp(neg_pts[i], axis=0)
            neg_pts[i] += rng.choice([-1, 1], 2) * rng.uniform(1.0, 2.0, 2) * w
        neg_ds = FaceDataset(ds.images, neg_pts, ds.size, ds.margin, ds.indices.tolist())
        sp.append(score(predict(model, ds), ds))
        sn.append(score(predict(model, neg_ds), ds))
    sp = np.concatenate(sp) if sp else np.zeros(0)
    sn = np.concatenate(sn) if sn else np.zeros(0)
    thr = choose_score_threshold(sp, sn)
    return {"score_threshold": thr,
            "score_pos_median": float(np.median(sp)) if len(sp) else float("nan"),
            "score_neg_median": float(np.median(sn)) if len(sn) else float("nan"),
            "score_balanced_accuracy": float(((sp >= thr).mean() + (sn < thr).mean()) / 2)
            if len(sp) and len(sn) else float("nan")}
