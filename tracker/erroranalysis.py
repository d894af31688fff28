"""Analyses of a model's errors on labelled faces, for ``fkp-eval``: the labels' own noise
(:func:`label_noise`), each point's systematic error (:func:`point_bias`) and how far several
models' predictions lie apart (:func:`compare`).

Arrays: predictions and labels (N, 68, 2) in image pixels; errors in % of the outer-eye-corner
distance (points 36 and 45, "IOD") of each face's labels.
"""
from __future__ import annotations

import numpy as np

from .data import DatasetError
from .landmarks import LEFT_EYE_OUTER, NUM_POINTS, RIGHT_EYE_OUTER, interocular
from .landmarks import nme as nme_fn
from .runtime import ModelError


def summary(pred: np.ndarray, truth: np.ndarray, errors: np.ndarray) -> dict:
    """``n``, ``nme``, ``mae``, ``failure_rate`` and the per-face ``errors`` (% IOD) of
    predictions (N, K, 2) against the matching labels (N, K, 2), image pixels."""
    return {"n": int(len(pred)), "nme": float(errors.mean()),
            "mae": float(np.abs(pred - truth).mean()),
            "failure_rate": float(100 * (errors > 10).mean()), "errors": errors}


def _face_frame(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Points (N, 68, 2) in image pixels -> the frame of the reference shapes ``ref`` (N, 68,
    2): origin at the points' own mean, x along ref's eye axis (36 -> 45), % of ref's IOD."""
    return _in_eye_frame(points - points.mean(1, keepdims=True), ref)


def _in_eye_frame(vectors: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Vectors (N, K, 2) in image pixels turned onto the eye axis (36 -> 45) of the shapes
    ``ref`` (N, 68, 2) and scaled to % of their IOD."""
    e = ref[:, RIGHT_EYE_OUTER] - ref[:, LEFT_EYE_OUTER]
    iod = interocular(ref)
    c, s = e[:, 0] / iod, e[:, 1] / iod
    rot = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], 1)
    return 100 * np.einsum("nij,nkj->nki", rot, vectors) / iod[:, None, None]


def label_noise(pred: np.ndarray, truth: np.ndarray, groups: np.ndarray,
                fraction: float = 0.5) -> dict:
    """Estimate the labels' own noise from groups whose faces are frames of one face
    (youtube-faces-68: a person's video; meaningless where a group's faces are different
    people, as in 300-W photos).

    ``pred`` and ``truth`` (N, 68, 2) are image pixels; both shapes of a face go into the
    frame of its label (:func:`_face_frame`). For frames i, j of one group, the mean square
    difference per coordinate of their labels is dT = dS + 2 s2 (the true change of shape plus
    both labels' noise of variance s2, if independent) and that of the predictions dP = dS +
    dE (plus the change of the net's error). Over the ``fraction`` of pairs whose predictions
    differ least, (dT - dP) / 2 = s2 - dE / 2: a lower estimate of s2 when the net's error is
    independent of the labels' noise and the net follows the true changes of shape. A net that
    does not (one that predicts nearly the mean face) sees a smaller dP than dS and inflates
    the estimate, so use it with an accurate net. Returns ``noise_pairs``,
    ``label_noise_rms`` (sqrt s2, % of IOD per coordinate) and ``nme_floor`` (s *
    sqrt(pi / 2), the NME a perfect predictor would score against labels with isotropic
    Gaussian noise of that size)."""
    if pred.shape[1:] != (NUM_POINTS, 2):
        raise ModelError(f"--label-noise needs a {NUM_POINTS}-point model")
    t, p = _face_frame(truth, truth), _face_frame(pred, truth)
    d_t, d_p = [], []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        i, j = np.triu_indices(len(idx), 1)
        d_t.append(((t[idx[i]] - t[idx[j]]) ** 2).mean(axis=(1, 2)))
        d_p.append(((p[idx[i]] - p[idx[j]]) ** 2).mean(axis=(1, 2)))
    d_t, d_p = np.concatenate(d_t), np.concatenate(d_p)
    if not len(d_t):
        raise DatasetError("--label-noise needs groups (people) with two or more faces")
    keep = np.argsort(d_p, kind="stable")[:max(1, int(round(fraction * len(d_p))))]
    rms = float(np.sqrt(max((d_t[keep] - d_p[keep]).mean() / 2, 0.0)))
    return {"noise_pairs": int(len(keep)), "label_noise_rms": rms,
            "nme_floor": rms * float(np.sqrt(np.pi / 2))}


def point_bias(pred: np.ndarray, truth: np.ndarray) -> dict:
    """The systematic part of a model's error: each point's mean signed error (K, 2) in the
    frame of its face (x along the label's eye axis 36 -> 45, % of its IOD), from ``pred``
    and ``truth`` (N, 68, 2) image pixels. Returns ``point_bias_mean`` / ``point_bias_max``
    (length of that mean error, averaged over the points / the largest), ``point_bias_worst``
    (the point with the largest) and ``nme_unbiased``: the NME with each point's mean error
    subtracted (an oracle correction fitted on the faces it is scored on; what a fixed
    per-point correction could at best gain)."""
    if pred.shape[1:] != (NUM_POINTS, 2):
        raise ModelError(f"--point-bias needs a {NUM_POINTS}-point model")
    err = _in_eye_frame(pred - truth, truth)
    bias = err.mean(axis=0)                                                # (68, 2)
    size = np.linalg.norm(bias, axis=-1)
    return {"point_bias_mean": float(size.mean()), "point_bias_max": float(size.max()),
            "point_bias_worst": int(size.argmax()),
            "nme_unbiased": float(np.linalg.norm(err - bias, axis=-1).mean())}


def compare(results: dict[str, dict]) -> dict:
    """Several 68-point models' :func:`evaluate` results on the same faces -> metrics of their
    average (frame coordinates: any input sizes mix) plus ``members`` (each one's NME) and
    ``disagreement`` (mean point distance between two models' predictions, % of the true
    IOD, per pair). Disagreement far below each model's error means the models share most
    of it, and averaging them (an ensemble) cannot remove that part."""
    names = list(results)
    truth = results[names[0]]["truth"]
    for name in names:
        r = results[name]
        if r["points"].shape != truth.shape or not np.array_equal(r["truth"], truth):
            raise ModelError(f"{name}: several --model values need 68-point models and the "
                             "same faces")
    pred = np.mean([results[n]["points"] for n in names], axis=0)
    iod = interocular(truth)
    dis = {f"{a}|{b}": round(float((100 * np.linalg.norm(results[a]["points"]
                                                         - results[b]["points"], axis=-1)
                                    .mean(-1) / iod).mean()), 4)
           for i, a in enumerate(names) for b in names[i + 1:]}
    return {**summary(pred, truth, nme_fn(pred, truth)),
            "members": {n: round(results[n]["nme"], 4) for n in names}, "disagreement": dis}
