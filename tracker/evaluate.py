"""``fkp-eval``: accuracy of an ONNX model on a labelled folder, through the tracker's runtime.

Each face is cropped from the box of its TRUE points (``geometry.box_from_points``, the
model's own crop margin, no rotation) — the crop the tracker makes from the previous frame's
points — and predicted with :class:`fkp.tracker.runtime.LandmarkModel`, the tracker's code.

Metrics: ``nme`` mean point error in percent of the outer-eye-corner distance (points 36
and 45), ``mae`` mean absolute error in pixels of the original image over x and y (the origin
report's metric), ``failure_rate`` percent of faces with NME > 10. The last stdout line is
one JSON object ``{"n", "nme", "mae", "failure_rate", "model"}``. With several ``--model``
values it is their average's (in frame coordinates), with each one's NME (``members``) and
how far apart their predictions are (``disagreement``). ``--label-noise`` adds an estimate of
the labels' own noise from frames of one person (:func:`label_noise`).

``--from-detector`` instead finds each face as fkp-track does in a photo, with the detector on
the whole image (:func:`evaluate_detected`): ``detected`` is the percentage of labelled faces
found, and a face missed counts as a failure.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .argtypes import OneLineParser, first_paragraph
from .data import DatasetError, Sample, load_image, read_dataset, select_split
from .geometry import box_from_points, uncrop
from .erroranalysis import compare, label_noise, point_bias, summary
from .landmarks import NUM_POINTS, interocular, unmirror_points
from .landmarks import nme as nme_fn
from .runtime import LandmarkModel, ModelError, route_onnxruntime_log
from .writers import OutputError, check_writable, interruptible, quiet_broken_pipe

CED_FORMATS = (".png", ".pdf", ".svg")

log = logging.getLogger("fkp.eval")


def _samples(data: str | Path, skip_bad: bool, limit: int, split: str,
             val_fraction: float) -> tuple[list[Sample], int]:
    """The faces fkp-eval scores (split, then the first ``limit``) and how many bad rows
    ``skip_bad`` dropped."""
    bad: list[str] | None = [] if skip_bad else None
    samples = select_split(read_dataset(data, bad), split, val_fraction)
    return (samples[:limit] if limit else samples), len(bad or [])


def _image(sample: Sample, skip_bad: bool, color: bool) -> np.ndarray | None:
    """The sample's image; None for an unreadable one when ``skip_bad`` (else it raises)."""
    try:
        return load_image(sample, color)
    except DatasetError:
        if not skip_bad:
            raise
        return None


def mirrored_prediction(model: LandmarkModel, gray: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Points (68, 2) in frame pixels predicted on the mirrored crop of ``box``, mirrored
    back and relabelled left/right (no flip-test averaging)."""
    mats = model.matrices(box[None])
    pts, _ = model.predict_crops(model.crops(gray, mats)[:, :, ::-1].copy(), flip_test=False)
    return uncrop(unmirror_points(pts, model.size), mats)[0]


def evaluate(model: LandmarkModel, data: str | Path, skip_bad: bool = False,
             limit: int = 0, split: str = "all", val_fraction: float = 0.1,
             mirror_bias: bool = False) -> dict:
    """Predict every face of a dataset. Returns metrics plus per-face ``errors`` (% IOD),
    ``bias_px``, the mean signed error (x, y) in image pixels, ``points`` (N, K, 2) the
    predictions and ``truth`` (N, 68, 2) the labels, both in image pixels.

    ``mirror_bias`` (68-point models) also predicts every mirrored crop and returns its
    ``bias_mirrored_px`` and ``label_offset_x_px`` = -(bias + mirrored bias) / 2 in x: a net
    that learned an offset d of labels that sit o px right of this package's convention
    has bias d - o on plain crops and -d - o on mirrored ones, so this estimates o (the
    ``--label-offset`` of fkp-train) whatever d it learned.

    ``split`` "val" (or "train") keeps only those people of fkp-train's fixed split.
    ``groups`` (N,) is each face's split group (person or source photo).
    """
    samples, skipped = _samples(data, skip_bad, limit, split, val_fraction)
    preds, truths, groups, mirrored = [], [], [], []
    if mirror_bias and model.meta.num_points != NUM_POINTS:
        raise ModelError(f"{model.path}: --mirror-bias needs a {NUM_POINTS}-point model")
    for s in tqdm(samples, desc="eval", leave=False, disable=len(samples) < 50):
        gray = _image(s, skip_bad, color=False)
        if gray is None:
            skipped += 1
            continue
        box = box_from_points(s.points)
        pts, _ = model.predict(gray, box[None])
        preds.append(pts[0])
        truths.append(s.points)
        groups.append(s.group)
        if mirror_bias:
            mirrored.append(mirrored_prediction(model, gray, box))
    if not preds:
        raise _nothing_to_score(data, split, skipped)
    pred, truth = np.stack(preds), np.stack(truths).astype(np.float64)
    idx = model.meta.indices
    t = truth[:, idx]
    if len(idx) == truth.shape[1]:
        errors = nme_fn(pred, truth)
    else:
        errors = 100 * np.linalg.norm(pred - t, axis=-1).mean(-1) / interocular(truth)
    extra = {}
    if mirror_bias:
        mb = (np.stack(mirrored) - t).mean(axis=(0, 1))
        extra = {"bias_mirrored_px": [round(float(v), 4) for v in mb],
                 "label_offset_x_px": round(-float((pred - t)[..., 0].mean() + mb[0]) / 2, 4)}
    return {**extra, **summary(pred, t, errors),
            "bias_px": [round(float(v), 4) for v in (pred - t).mean(axis=(0, 1))],
            "skipped": skipped, "points": pred, "truth": truth, "groups": np.array(groups)}


def evaluate_detected(model: LandmarkModel, data: str | Path, skip_bad: bool = False,
                      limit: int = 0, split: str = "all", val_fraction: float = 0.1,
                      detector=None) -> dict:
    """End to end on photos: each image goes through a
    :class:`~fkp.tracker.tracking.Tracker` as fkp-track treats one image of a folder
    (``forget()`` first: the detector's photo twin on the whole image with every fallback,
    up to 16 faces, two-pass refinement, the model's face score; fkp-track's defaults
    otherwise). Of the faces it
    returns, the one with the least NME against the labels is matched to them.

    Returns ``n`` (labelled faces), ``detected`` (% matched within NME 10), ``nme``, ``mae``
    and ``errors`` over those, ``failure_rate`` (% of all faces missed or above NME 10) and
    ``skipped``. ``detector`` as for the Tracker (None: the default Haar with fallbacks).
    """
    from .tracking import PHOTO_MAX_FACES, Tracker

    if model.meta.num_points != NUM_POINTS:
        raise ModelError(f"{model.path}: --from-detector needs a {NUM_POINTS}-point model")
    tracker = Tracker(model, detector=detector, smooth=0.0, async_scan=False,
                      max_faces=PHOTO_MAX_FACES)
    samples, skipped = _samples(data, skip_bad, limit, split, val_fraction)
    matched, truths, errors = [], [], []
    for i, s in enumerate(tqdm(samples, desc="eval", leave=False, disable=len(samples) < 50)):
        image = _image(s, skip_bad, color=True)     # in colour, as fkp-track reads it
        if image is None:
            skipped += 1
            continue
        tracker.forget()
        res = tracker.process(image, 0.0, i)
        truth = s.points.astype(np.float64)
        errs = nme_fn(res.raw_points, np.broadcast_to(truth, res.raw_points.shape)) \
            if len(res) else np.array([np.inf])
        errors.append(float(errs.min()))
        if errs.min() <= 10:
            matched.append(res.raw_points[int(errs.argmin())])
            truths.append(truth)
    if not errors:
        raise _nothing_to_score(data, split, skipped)
    errors_all = np.array(errors)
    found = errors_all[errors_all <= 10]
    return {"n": len(errors_all), "detected": float(100 * len(found) / len(errors_all)),
            "nme": float(found.mean()) if len(found) else float("nan"),
            "mae": float(np.abs(np.stack(matched) - np.stack(truths)).mean())
            if matched else float("nan"),
            "failure_rate": float(100 * (errors_all > 10).mean()), "errors": found,
            "skipped": skipped}


def _nothing_to_score(data: str | Path, split: str, skipped: int) -> DatasetError:
    """The error for a dataset that left no face to score, saying why."""
    return DatasetError(f"{data}: " + (f"every face was skipped as bad ({skipped})" if skipped
                                       else f"no faces of {split} people in its split"
                                       if split != "all" else "no faces"))


def ced_plot(errors: np.ndarray, path: Path, label: str, limit: float = 15.0) -> None:
    """Cumulative error distribution (fraction of faces with NME <= x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.sort(errors)
    y = np.arange(1, len(x) + 1) / len(x)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.step(x, y, where="post", label=label)
    ax.set_xlim(0, limit), ax.set_ylim(0, 1)
    ax.set_xlabel("NME (% of outer-eye-corner distance)"), ax.set_ylabel("fraction of faces")
    ax.grid(alpha=0.3), ax.legend(loc="lower right")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


@interruptible("fkp-eval")
@quiet_broken_pipe
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="fkp-eval", description=first_paragraph(__doc__))
    p.add_argument("data", help="labelled folder (images/ + landmarks.csv), .pts folder or .xml")
    p.add_argument("--model", action="append", metavar="NAME_OR_PATH",
                   help="shipped model name or .onnx path (default fastnet); given several "
                        "times (68-point models, any input sizes), also evaluates their "
                        "average and prints how far apart their predictions are")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--flip-test", action="store_true",
                   help="also run each crop mirrored and average: twice the inference time, "
                        "lower error")
    p.add_argument("--mirror-bias", action="store_true",
                   help="also report the mean error of mirrored crops and the label offset "
                        "in x it implies (label_offset_x_px, for fkp-train --label-offset)")
    p.add_argument("--label-noise", action="store_true",
                   help="also estimate the labels' own noise from the frames of each person "
                        "(youtube-faces-68 style data) and the NME it alone would cost a "
                        "perfect predictor; meaningful with an accurate model only (see "
                        "fkp.tracker.erroranalysis.label_noise)")
    p.add_argument("--point-bias", action="store_true",
                   help="also report the systematic part of the error: each point's mean "
                        "signed error in the face's frame, and the NME with it subtracted "
                        "(see fkp.tracker.erroranalysis.point_bias)")
    p.add_argument("--from-detector", action="store_true",
                   help="find each face as fkp-track does in a photo (the detector on the "
                        "whole image) instead of cropping it from the box of its labels: "
                        "adds 'detected' (%% of faces found within NME 10); a missed face "
                        "counts as a failure, NME and MAE are over the faces found (fkp-track "
                        "runs photos with the flip test: add --flip-test to match it)")
    p.add_argument("--ced", type=Path, help="write a cumulative error curve PNG here")
    p.add_argument("--skip-bad", action="store_true", help="count and skip bad rows/images")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N faces")
    p.add_argument("--split", choices=("all", "train", "val"), default="all",
                   help="only the held-out (val) or training people of fkp-train's fixed "
                        "person-wise split (default: all)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="the split's held-out fraction, as given to fkp-train (default 0.1)")
    args = p.parse_args(argv)
    if args.from_detector and (len(args.model or []) > 1 or args.label_noise
                               or args.mirror_bias or args.point_bias):
        p.error("--from-detector takes one --model and none of --label-noise, "
                "--mirror-bias, --point-bias")
    if args.limit < 0 or not 0 < args.val_fraction < 1:
        p.error("--limit must be >= 0 (0: all faces) and --val-fraction between 0 and 1")
    if args.ced and (args.ced.suffix.lower() not in CED_FORMATS
                     or importlib.util.find_spec("matplotlib") is None):
        p.error(f"--ced writes {', '.join(CED_FORMATS)} files with matplotlib "
                "(pip install matplotlib)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    results: dict[str, dict] = {}
    unroute_onnxruntime = route_onnxruntime_log()
    try:
        if args.ced:
            check_writable(args.ced)
        models = [LandmarkModel(name, args.device, flip_test=args.flip_test)
                  for name in args.model or ["fastnet"]]
        if (len(models) > 1 or args.label_noise or args.point_bias) and any(
                m.meta.num_points != NUM_POINTS for m in models):
            raise ModelError(f"several --model values, --label-noise and --point-bias need "
                             f"{NUM_POINTS}-point models")
        if args.from_detector:
            model = models[0]
            res = evaluate_detected(model, args.data, args.skip_bad, args.limit, args.split,
                                    args.val_fraction)
            if res["skipped"]:
                print(f"skipped {res['skipped']} bad rows/images")
            print(f"{model.path.name} on {args.data}, faces found by the detector: detected "
                  f"{res['detected']:.1f} %  NME {res['nme']:.2f} %  MAE {res['mae']:.2f} px "
                  f"(of those)  failures {res['failure_rate']:.1f} % (missed or NME > 10; "
                  f"n={res['n']}, provider {model.provider})", flush=True)
            results[model.path.name] = res
        else:
            for model in models:
                res = evaluate(model, args.data, args.skip_bad, args.limit, args.split,
                               args.val_fraction, args.mirror_bias)
                if res["skipped"] and not results:
                    print(f"skipped {res['skipped']} bad rows/images")
                print(f"{model.path.name} on {args.data}: NME {res['nme']:.2f} %  MAE "
                      f"{res['mae']:.2f} px  failures {res['failure_rate']:.1f} %  (n={res['n']}, "
                      f"provider {model.provider})", flush=True)
                if args.label_noise:
                    res.update(label_noise(res["points"], res["truth"], res["groups"]))
                    print(f"label noise: {res['label_noise_rms']:.2f} % of IOD per coordinate "
                          f"(rms, from the {res['noise_pairs']} pairs of frames predicted most "
                          f"alike); a perfect predictor would score NME about "
                          f"{res['nme_floor']:.2f} %",
                          flush=True)
                if args.point_bias:
                    res.update(point_bias(res["points"], res["truth"]))
                    print(f"point bias: {res['point_bias_mean']:.2f} % of IOD on average "
                          f"(largest {res['point_bias_max']:.2f} %, point "
                          f"{res['point_bias_worst']}); NME without it "
                          f"{res['nme_unbiased']:.2f} %", flush=True)
                key = model.path.name if model.path.name not in results else str(model.path)
                results[key] = res
        label = "+".join(results)
        if len(results) > 1:
            res = compare(results)
            for pair, d in res["disagreement"].items():
                print(f"{pair.replace('|', ' vs ')}: predictions {d:.2f} % of IOD apart")
            print(f"average of {label}: NME {res['nme']:.2f} %  MAE {res['mae']:.2f} px  "
                  f"failures {res['failure_rate']:.1f} %")
        if args.ced:
            ced_plot(res["errors"], args.ced, "+".join(Path(n).stem for n in results))
    except (ModelError, DatasetError, OutputError, OSError) as exc:
        print(f"fkp-eval: error: {exc}", file=sys.stderr)
        return 1
    finally:
        unroute_onnxruntime()
    # NaN and infinity are not JSON: null
    out = {k: (round(v, 4) if np.isfinite(v) else None) if isinstance(v, float) else v
           for k, v in res.items()
           if k in ("n", "nme", "mae", "failure_rate", "bias_px", "bias_mirrored_px",
                    "label_offset_x_px", "members", "disagreement", "label_noise_rms",
                    "nme_floor", "noise_pairs", "detected", "point_bias_mean",
                    "point_bias_max", "point_bias_worst", "nme_unbiased")}
    print(json.dumps({**out, "model": label}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
