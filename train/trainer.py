"""The training loop: data assembly, epochs, validation, checkpoints and resume.

Validation crops come from the box of the true points, without augmentation (the same
crop ``fkp-eval`` uses). NME is in percent of the outer-eye-corner distance (points 36/45);
MAE is in pixels of the original image, mean over x and y (the origin report's metric).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fkp.tracker.data import DatasetError, load_all, read_dataset, split_by_group
from fkp.tracker.landmarks import NUM_POINTS

from .dataset import AugmentConfig, FaceDataset, normalise, seed_worker
from .evaluation import metrics, pick_device, predict, recalibrate_bn
from .losses import total_loss
from .models import create_model

log = logging.getLogger(__name__)
SPLIT_SEED = 0  # the person-wise split never depends on --seed


@dataclass
class Split:
    """One dataset's images and points, split by person."""

    name: str
    train_images: list = field(default_factory=list)
    train_points: list = field(default_factory=list)
    val_images: list = field(default_factory=list)
    val_points: list = field(default_factory=list)
    val_names: list = field(default_factory=list)


def load_splits(specs: list[str], val_fraction: float, skip_bad: bool) -> list[Split]:
    """Read, split by person (fixed seed) and load every dataset. Raises DatasetError."""
    out = []
    for spec in specs:
        bad: list[str] | None = [] if skip_bad else None
        samples = read_dataset(spec, bad)
        train, val = split_by_group(samples, val_fraction, SPLIT_SEED)
        tr, tr_img, n1 = load_all(train, skip_bad)
        va, va_img, n2 = load_all(val, skip_bad)
        skipped = n1 + n2 + len(bad or [])
        if skipped:
            log.warning("%s: skipped %d bad rows/images", spec, skipped)
        if not tr_img:
            raise DatasetError(f"{spec}: no training images after the split")
        name = Path(spec).name or str(spec)
        out.append(Split(name, tr_img, [s.points for s in tr], va_img, [s.points for s in va],
                         [s.path.name for s in va]))
        log.info("%s: %d train / %d val images (%d / %d groups)", name, len(tr), len(va),
                 len({s.group for s in tr}), len({s.group for s in va}))
    return out


def parse_label_offsets(specs: list[str], n: int) -> list[np.ndarray]:
    """``--label-offset`` values ("DX,DY" or "DX", one per dataset) -> n arrays (2,)."""
    if not specs:
        return [np.zeros(2)] * n
    if len(specs) != n:
        raise ValueError(f"--label-offset: {len(specs)} values for {n} datasets")
    out = []
    for spec in specs:
        try:
            vals = [float(v) for v in str(spec).split(",")]
        except ValueError:
            vals = []
        if len(vals) not in (1, 2):
            raise ValueError(f"--label-offset: {spec!r} is not DX,DY")
        out.append(np.array(vals + [0.0] * (2 - len(vals))))
    return out


class Trainer:
    """Owns model, optimiser, schedule and history; ``fit`` runs (or resumes) training."""

    def __init__(self, args) -> None:
        self.args = args
        self.device = pick_device(getattr(args, "device", "cpu"))
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        self.splits = load_splits(args.data, args.val_fraction, args.skip_bad)
        self.model = create_model(args.arch, input_size=args.input_size)
        self.bf16 = bool(getattr(args, "bf16", False))
        idx = self.model.point_indices
        if args.loss == "nme" and len(idx) != NUM_POINTS:
            raise ValueError(f"--loss nme needs a {NUM_POINTS}-point network; {args.arch!r} "
                             f"predicts {len(idx)}")
        if args.loss == "star" and getattr(self.model, "grid", None) is None:
            raise ValueError(f"--loss star needs a heatmap network; {args.arch!r} regresses "
                             "its points")
        tr_img = [im for s in self.splits for im in s.train_images]
        tr_pts = np.stack([p for s in self.splits for p in s.train_points])
        offsets = parse_label_offsets(args.label_offset, len(self.splits))
        tr_off = np.concatenate([np.tile(o, (len(s.train_points), 1))
                                 for o, s in zip(offsets, self.splits)])
        aug = AugmentConfig(enabled=not args.no_augment, flip=0.0 if len(idx) < 68 else 0.5,
                            occlusion=getattr(args, "occlusion", 0.0)
                            ).override(getattr(args, "aug", None) or [])
        self.train_ds = FaceDataset(tr_img, tr_pts, args.input_size, args.margin, idx, aug,
                                    args.seed, tr_off)
        self.val_ds = {s.name: FaceDataset(s.val_images, np.stack(s.val_points), args.input_size,
                                           args.margin, idx)
                       for s in self.splits if s.val_images}
        # training crops for BatchNorm re-estimation, augmented as in training, own RNG
        self.bn_ds = FaceDataset(tr_img, tr_pts, args.input_size, args.margin, idx, aug,
                                 args.seed + 1, tr_off)
        self.init = None                     # --init's record; a resumed run keeps its own
        # --resume continues OUT/last.pt when there is one (decided once, here; fkp-train
        # then calls resume): its weights replace --init's, which is therefore skipped
        last = self.out / "last.pt"
        self.resume_from = last if getattr(args, "resume", False) and last.exists() else None
        if getattr(args, "init", None) and self.resume_from is None:
            from .init_weights import initialise

            def crops(n: int = 256) -> torch.Tensor:
                pick = np.random.default_rng(args.seed).permutation(len(self.bn_ds))[:n]
                return torch.from_numpy(np.stack([normalise(self.bn_ds.sample(int(i))[0])
                                                  for i in pick]))
            self.init = initialise(self.model, args.arch, args.init, crops)
            src = self.init.get("val_fraction")
            if src is not None and args.val_fraction > src + 1e-12:
                log.warning("--init %s was trained with --val-fraction %g: at %g this run's "
                            "validation includes people it trained on", args.init, src,
                            args.val_fraction)
        if self.bf16:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.to(self.device)
        torch.backends.cudnn.benchmark = self.device.type == "cuda"
        plain = FaceDataset(tr_img, tr_pts, args.input_size, args.margin)
        self.mean_shape = np.mean([plain.sample(i)[1] for i in range(min(len(plain), 500))],
                                  axis=0) / args.input_size   # (68, 2) normalised crop coords
        self.loader = DataLoader(self.train_ds, batch_size=args.batch, shuffle=True,
                                 num_workers=args.workers, drop_last=len(tr_img) > args.batch,
                                 persistent_workers=args.workers > 0,
                                 worker_init_fn=seed_worker,
                                 pin_memory=self.device.type == "cuda")
        steps = len(self.loader) if not args.max_steps else min(args.max_steps, len(self.loader))
        self.steps_per_epoch = steps
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr,
                                     weight_decay=args.weight_decay)
        if args.schedule == "onecycle":
            self.sched = torch.optim.lr_scheduler.OneCycleLR(
                self.opt, max_lr=args.lr, total_steps=max(1, args.epochs * steps),
                pct_start=0.15)
        else:
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: 1.0)
        self.grid = getattr(self.model, "grid", None)
        # exponential moving average of the weights (--ema): validated, selected and exported
        self.ema = copy.deepcopy(self.model).eval() if args.ema > 0 else None
        self.ema_updates = 0
        self.history: list[dict] = []
        self.epoch = 0
        self.best = float("inf")
        self.elapsed = 0.0

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and shipped: the EMA copy with ``--ema``."""
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * weights, d warming up as (1 + n) / (10 + n)."""
        self.ema_updates += 1
        n = self.ema_updates
        d = min(self.args.ema, (1 + n) / (10 + n))
        for e, w in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(w, 1 - d)
            else:
                e.copy_(w)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """``model``: the weights to use (EMA with ``--ema``); ``train_model``: the raw
        optimiser weights that ``--resume`` continues from (only with ``--ema``)."""
        extra = ({"train_model": self.model.state_dict(), "ema_updates": self.ema_updates}
                 if self.ema is not None else {})
        return {**extra, "model": self.eval_model.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "epoch": self.epoch, "history": self.history,
                "best": self.best, "elapsed": self.elapsed, "args": vars(self.args),
                "arch": self.args.arch, "point_indices": self.model.point_indices,
                "mean_shape": self.mean_shape.tolist(), "fkp_checkpoint": 1,
                "rng": self.rng_state(), **({"init": self.init} if self.init else {})}

    #: options that fix what a run's epochs mean: --resume refuses a run that changes them
    RESUME_FIXED = ("data", "val_fraction", "input_size", "margin", "label_offset", "loss",
                    "batch")

    def rng_state(self) -> dict:
        """Every random stream an epoch draws from (data order, augmentation, BatchNorm
        crops), so that ``--resume`` continues the run exactly as if it had not stopped."""
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "train_aug": self.train_ds.rng.bit_generator.state,
                "bn_aug": self.bn_ds.rng.bit_generator.state}

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda"])
        self.train_ds.rng.bit_generator.state = state["train_aug"]
        self.bn_ds.rng.bit_generator.state = state["bn_aug"]

    def save(self, name: str, extra: dict | None = None) -> Path:
        path = self.out / name
        tmp = path.with_suffix(".tmp")
        torch.save({**self.state(), **(extra or {})}, tmp)
        os.replace(tmp, path)
        return path

    def resume(self, path: Path) -> None:
        ck = load_checkpoint(path)
        if ck["arch"] != self.args.arch:
            raise ValueError(f"{path}: checkpoint is {ck['arch']!r}, not {self.args.arch!r}")
        before, now = dict(ck.get("args", {})), dict(vars(self.args))
        for d in (before, now):          # the datasets by name: the run may resume elsewhere
            d["data"] = [Path(x).name for x in d.get("data") or []]
        for key in self.RESUME_FIXED:
            if key in before and before[key] != now.get(key):
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"{path}: the run was started with {flag} {before[key]}, not "
                                 f"{now.get(key)}; resume with the same options, or start a "
                                 f"new run from it with --init")
        self.model.load_state_dict(ck.get("train_model", ck["model"]))
        if self.ema is not None:
            self.ema.load_state_dict(ck["model"])
            self.ema_updates = ck.get("ema_updates", 0)
        self.opt.load_state_dict(ck["opt"])
        self.epoch, self.history = ck["epoch"], ck["history"]
        if ck["args"]["epochs"] == self.args.epochs:
            self.sched.load_state_dict(ck["sched"])
        else:  # a longer (or shorter) run: the same schedule shape over the new length
            log.warning("resuming with --epochs %d (was %d): schedule stretched",
                        self.args.epochs, ck["args"]["epochs"])
            for _ in range(self.epoch * self.steps_per_epoch):
                self.sched.step()
        self.best, self.elapsed = ck["best"], ck.get("elapsed", 0.0)
        self.init = ck.get("init")
        if "rng" in ck:            # checkpoints written before it was saved continue anyway
            self.set_rng_state(ck["rng"])
        log.info("resumed %s at epoch %d", path, self.epoch)

    # ------------------------------------------------------------------ loop
    def train_epoch(self) -> float:
        self.model.train()
        a = self.args
        total, n = 0.0, 0
        bar = tqdm(self.loader, total=self.steps_per_epoch,
                   desc=f"epoch {self.epoch + 1}/{a.epochs}",
                   leave=False, dynamic_ncols=True, mininterval=2.0)
        for step, (x, y, _) in enumerate(bar):
            if step >= self.steps_per_epoch:
                break
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.bf16:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = self.loss(x, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if getattr(a, "sam", 0.0) > 0:
                self.sam_gradient(x, y)
            self.opt.step()
            self.sched.step()
            if self.ema is not None:
                self.update_ema()
            total += float(loss.detach()) * len(x)
            n += len(x)
            bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
        return total / max(n, 1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of the batch x (B, 1, S, S) with targets y (B, K, 2)."""
        a = self.args
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(x)
        return total_loss(out, y, a.loss, a.input_size, a.heatmap_weight, self.grid)

    def sam_gradient(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Sharpness-aware minimisation (``--sam RHO``; Foret et al., ICLR 2021): replace the
        gradients with those taken at the weights moved by RHO along the normalised gradient
        (the worst nearby point, to first order), so the step favours flat minima. BatchNorm
        running statistics are left as the first pass set them."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        saved = [p.detach().clone() for p in params]
        scale = self.args.sam / (norm + 1e-12)
        batchnorms = [m for m in self.model.modules()
                      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in batchnorms]
        with torch.no_grad():
            for p in params:
                p.add_(p.grad * scale)
        for m in batchnorms:
            m.momentum = 0.0                 # running = 1 * running + 0 * batch: untouched
        try:
            self.opt.zero_grad(set_to_none=True)
            self.loss(x, y).backward()
        finally:
            for m, momentum in zip(batchnorms, momenta):
                m.momentum = momentum
            with torch.no_grad():
                for p, w in zip(params, saved):
                    p.copy_(w)

    @torch.no_grad()
    def validate(self, recalibrate: bool = True) -> dict:
        """Validation metrics per dataset (with ``--precise-bn`` and ``recalibrate``, after
        BN recalibration; ``final_outputs`` passes False to judge the weights as they are)."""
        a = self.args
        net = self.eval_model
        if a.precise_bn and recalibrate:
            recalibrate_bn(net, self.bn_ds, a.precise_bn)
        res: dict = {}
        losses = []
        net.eval()
        for name, ds in self.val_ds.items():
            p = predict(net, ds)
            m = metrics(p["points"], ds.points, ds.indices.tolist())
            for k, v in m.items():
                res[f"{k}/{name}"] = v
            x = torch.from_numpy(np.stack([normalise(c) for c in p["crops"]]))
            y = torch.from_numpy(np.stack([ds.sample(i)[1][ds.indices] for i in range(len(ds))])
                                 / ds.size).float()
            losses.append(float(total_loss(net(x.to(self.device)), y.to(self.device), a.loss,
                                           a.input_size,
                                           a.heatmap_weight, self.grid)) * len(ds))
        n = sum(len(d) for d in self.val_ds.values())
        res["val_loss"] = sum(losses) / max(n, 1)
        nmes = [res[f"nme/{k}"] for k in self.val_ds]
        res["nme_mean"] = float(np.mean(nmes)) if nmes else float("nan")
        return res

    def fit(self) -> dict:
        a = self.args
        while self.epoch < a.epochs:
            t0 = time.time()
            train_loss = self.train_epoch()
            self.epoch += 1
            rec = {"epoch": self.epoch, "train_loss": train_loss, **self.validate(),
                   "lr": self.opt.param_groups[0]["lr"], "seconds": time.time() - t0}
            self.elapsed += rec["seconds"]
            self.history.append(rec)
            improved = rec["nme_mean"] < self.best
            if improved:
                self.best = rec["nme_mean"]
            self.save("last.pt")
            if improved:
                self.save("best.pt")
            summary = "  ".join(f"{k}={v:.3f}" for k, v in rec.items()
                                if k.startswith("nme/") or k in ("train_loss", "val_loss"))
            log.info("epoch %d/%d  %s  (%.0f s)", self.epoch, a.epochs, summary, rec["seconds"])
            self.write_metrics()
        return self.history[-1] if self.history else {}

    def write_metrics(self) -> None:
        from .plots import loss_curves

        payload = {"arch": self.args.arch, "epochs": self.epoch, "history": self.history,
                   "best_nme_mean": self.best, "train_seconds": self.elapsed,
                   "args": vars(self.args)}
        tmp = self.out / "metrics.json.tmp"
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, self.out / "metrics.json")
        if self.history:
            loss_curves(self.history, self.out / "loss_curves.png")


def load_checkpoint(path: Path) -> dict:
    """Load an fkp-train checkpoint; ValueError with one line for anything else."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(ck, dict) or ck.get("fkp_checkpoint") != 1:
        raise ValueError(f"{path}: not an fkp-train checkpoint")
    return ck
