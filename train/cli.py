"""``fkp-train``: train a registered network on one or more labelled datasets.

Example (the shipped fast net; add ``--bf16`` on a CPU with AVX512-BF16 or AMX)::

    fkp-train --arch fastnet --data ../shared/data/youtube-faces-68 ../shared/data/300w-train \
        --label-offset 1.2,1.2 1.2,1.2 --ema 0.998 --input-size 160 --epochs 52 --batch 32 \
        --lr 3e-3 --threads 1 --out ../runs/fn160

Writes into ``--out``: ``last.pt`` every epoch (``--resume`` continues from it), ``best.pt``,
``final.pt`` (best weights + score calibration, what ``fkp-export`` takes), ``metrics.json``,
``loss_curves.png``, ``predictions_best.png`` / ``predictions_worst.png`` (truth red,
prediction green), ``filters_conv1.png`` / ``filters_conv2.png`` and ``loader_samples.png``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np
import torch

from fkp.tracker.argtypes import OneLineParser, first_paragraph, number, whole
from fkp.tracker.data import DatasetError

from .losses import LOSSES
from .models import list_models

log = logging.getLogger("fkp.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="fkp-train", description=first_paragraph(__doc__))
    p.add_argument("--arch", default="fastnet", help=f"network: {', '.join(list_models())}")
    p.add_argument("--data", nargs="+", required=True,
                   help="datasets: folder format (images/ + landmarks.csv), a folder of .pts "
                        "files, or an iBUG .xml; several are trained together")
    p.add_argument("--label-offset", nargs="+", default=[], metavar="DX,DY",
                   help="per dataset (in --data order): its label convention offset in image "
                        "pixels, kept in image axes when a face is mirrored (estimate it "
                        "with `fkp-eval DATA --split train --mirror-bias`; default 0,0)")
    p.add_argument("--input-size", type=whole(8), default=128, help="crop side in pixels")
    p.add_argument("--epochs", type=whole(1), default=40)
    p.add_argument("--batch", type=whole(1), default=32)
    p.add_argument("--lr", type=number(above=True), default=3e-3,
                   help="(max) learning rate of Adam")
    p.add_argument("--weight-decay", type=number(), default=1e-4)
    p.add_argument("--schedule", choices=("onecycle", "constant"), default="onecycle")
    p.add_argument("--loss", choices=LOSSES, default="l1",
                   help="point loss: l1 (default), mse, wing (Feng et al. 2018), or nme: each "
                        "point's distance over the face's outer-eye-corner distance, the "
                        "reported metric itself (68-point nets), or star (Zhou et al. 2023, "
                        "heatmap nets): each error split along its heatmap's principal axes "
                        "and divided by the spread there, so errors along a contour, where "
                        "labels scatter, cost less")
    p.add_argument("--heatmap-weight", type=float, default=1.0,
                   help="weight of the heatmap regulariser (heatmap models only)")
    p.add_argument("--margin", type=float, default=0.25, help="crop margin around the point box")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of people (groups) held out; the split is fixed")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--aug", nargs="+", metavar="NAME=VALUE",
                   help="set augmentation ranges (fkp.train.dataset.AugmentConfig): "
                        "shift=0.08 scale=0.9:1.12 aspect=0.08 rotation=25 (degrees) "
                        "brightness=0.3 contrast=0.3 saturation=0.4 hue=10 noise=4 (the "
                        "defaults); probabilities: flip=0.5 blur=0.15 jpeg=0 (a JPEG round "
                        "trip of the crop at jpeg_quality=30:90, as compressed video) warp=0 "
                        "(a smooth random warp of face and points, displacements up to "
                        "warp_strength=0.03 of the crop side: faces of new shapes)")
    p.add_argument("--occlusion", type=float, default=0.0, metavar="P",
                   help="probability of painting a random rectangle over a training crop "
                        "(robustness to hands and objects; default 0 = off)")
    p.add_argument("--precise-bn", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics on N training crops before every "
                        "validation (default 0 = off; the final weights always try both)")
    p.add_argument("--ema", type=number(), default=0.0, metavar="DECAY",
                   help="validate, select and export an exponential moving average of the "
                        "weights with this decay per step (e.g. 0.998; default 0 = off)")
    p.add_argument("--sam", type=number(), default=0.0, metavar="RHO",
                   help="sharpness-aware minimisation with radius RHO (e.g. 0.05; 0 = off): "
                        "two forward/backward passes per step")
    p.add_argument("--bf16", action="store_true",
                   help="train under bfloat16 autocast in channels-last layout (GPUs, and CPUs "
                        "with AVX512-BF16/AMX: 1.5-1.6x the steps per second there; emulated "
                        "and very slow on other CPUs; weights, optimiser, soft-argmax and loss "
                        "stay float32)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to train: cuda (a GPU torch can use), cpu, or auto (cuda when "
                        "torch sees a GPU; default). With cuda, use --workers for the crops")
    p.add_argument("--init", metavar="PATH",
                   help="start from trained weights of the same --arch: an fkp-train "
                        "checkpoint (.pt) or an fkp-export model (.onnx, e.g. a shipped "
                        "weights/NAME.onnx; its folded BatchNorms are unfolded); the input "
                        "size may differ; optimiser and schedule start fresh")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) bad rows and images instead of stopping")
    p.add_argument("--workers", type=whole(0), default=0, help="data loader processes")
    p.add_argument("--threads", type=whole(0), default=0, help="torch threads (0 = default)")
    p.add_argument("--max-steps", type=whole(0), default=0,
                   help="limit steps per epoch (smoke runs; 0 = none)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.aug:
        from .dataset import AugmentConfig
        try:
            AugmentConfig().override(args.aug)
        except ValueError as e:
            p.error(str(e))
    if not 0.0 <= args.occlusion <= 1.0:
        p.error(f"--occlusion must be a probability in [0, 1], not {args.occlusion}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out {args.out} is a file; give a folder for checkpoints and figures")
    if not (args.ema < 1 and 0 < args.val_fraction < 1):
        p.error("--ema must be below 1 and --val-fraction between 0 and 1")
    return args


def final_outputs(trainer) -> dict:
    """Best weights -> figures, score calibration and ``final.pt``."""
    from . import plots
    from .evaluation import calibrate_score, predict, recalibrate_bn
    from .trainer import load_checkpoint

    out = trainer.out
    # the final weights: best or last epoch, BatchNorm statistics as trained or re-estimated
    # (precise BN), whichever validates best
    net = trainer.eval_model              # the EMA copy with --ema
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    candidates, seen = [], set()
    for name in ("best.pt", "last.pt"):
        if not (out / name).exists():
            continue
        ck = load_checkpoint(out / name)
        if ck["epoch"] in seen:              # best is the last epoch: judge it once
            continue
        seen.add(ck["epoch"])
        for precise in ((False, True) if has_bn else (False,)):
            net.load_state_dict(ck["model"])
            if precise:
                recalibrate_bn(net, trainer.bn_ds, 1024)
            candidates.append((trainer.validate(recalibrate=False), ck["epoch"], precise, name,
                               {k: v.clone() for k, v in net.state_dict().items()}))
    if candidates:
        metrics, epoch, precise, name, state = min(candidates, key=lambda c: c[0]["nme_mean"])
        log.info("final weights: %s (epoch %d%s), validation NME %.3f", name, epoch,
                 ", precise BN" if precise else "", metrics["nme_mean"])
        net.load_state_dict(state)
        trainer.epoch = epoch
        selection = f"{name} (epoch {epoch}){', BatchNorm re-estimated' if precise else ''}"
    else:
        metrics, selection = trainer.validate(recalibrate=False), "last weights"
    model = net.eval()
    extra: dict = {"metrics": metrics, "datasets": [s.name for s in trainer.splits],
                   "selection": selection}
    # best/worst validation predictions over all datasets
    crops, truth, pred, err = [], [], [], []
    for ds in trainer.val_ds.values():
        p = predict(model, ds)
        t = np.stack([ds.sample(i)[1][ds.indices] for i in range(len(ds))])
        crops += p["crops"]
        truth += list(t)
        pred += list(p["crop_points"])
        err += list(np.linalg.norm(p["crop_points"] - t, axis=-1).mean(axis=-1))
    if err:
        order = np.argsort(err)
        for name, sel in (("best", order[:12]), ("worst", order[::-1][:12])):
            plots.prediction_grid([crops[i] for i in sel], [truth[i] for i in sel],
                                  [pred[i] for i in sel], [f"{err[i]:.2f} px" for i in sel],
                                  out / f"predictions_{name}.png")
        extra.update(calibrate_score(model, list(trainer.val_ds.values()), trainer.mean_shape))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    for i, conv in enumerate(convs[:2], start=1):
        plots.filters(conv.weight.detach().float().cpu().numpy(), out / f"filters_conv{i}.png",
                      f"conv layer {i} filters")
    items = [trainer.train_ds.sample(i) for i in range(min(12, len(trainer.train_ds)))]
    plots.samples([g for g, _, _ in items], [p for _, p, _ in items], out / "loader_samples.png")
    trainer.save("final.pt", extra)
    return extra


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    from .trainer import Trainer

    try:
        trainer = Trainer(args)
        if trainer.resume_from is not None:
            trainer.resume(trainer.resume_from)
        elif args.resume:
            log.warning("--resume: no %s/last.pt, starting fresh", args.out)
        trainer.fit()
        extra = final_outputs(trainer)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"fkp-train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fkp-train: interrupted; resume with --resume", file=sys.stderr)
        return 130
    m = extra["metrics"]
    print("final " + " ".join(f"{k}={v:.3f}" for k, v in m.items()
                              if isinstance(v, float) and not k.startswith("n/")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
