"""The one crop function of fkp-track and the affine helpers around it.

Coordinate systems
------------------
* frame: pixel coordinates of the full image, x to the right, y down; a pixel centre
  sits at integer coordinates (OpenCV's convention for ``warpAffine``).
* crop: pixel coordinates of the ``size`` x ``size`` network input, same convention.
* normalised crop: crop coordinates divided by ``size`` (what the networks predict).

A face box is ``(x0, y0, x1, y1)`` in frame pixels. Training builds boxes from the true
points (:func:`box_from_points`), the tracker from the previous frame's points or from a
detector, so one crop definition serves all three.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

DEFAULT_MARGIN = 0.25


def box_from_points(points: np.ndarray) -> np.ndarray:
    """Tight box around landmarks. (..., K, 2) -> (..., 4) as x0, y0, x1, y1."""
    lo = points.min(axis=-2)
    hi = points.max(axis=-2)
    return np.concatenate([lo, hi], axis=-1)


def crop_matrix(box: np.ndarray, size: int, margin: float = DEFAULT_MARGIN,
                angle_deg: float = 0.0, flip: bool = False) -> np.ndarray:
    """Affine (2, 3) matrix mapping frame pixels to crop pixels.

    The crop is the square of side ``max(w, h) * (1 + 2 * margin)`` centred on the box,
    rotated by ``angle_deg`` (counter-clockwise in the image, i.e. the crop is turned so
    that a face rolled by ``angle_deg`` comes out upright) and optionally mirrored.
    """
    x0, y0, x1, y1 = np.asarray(box, np.float64).tolist()    # (plain floats: cheaper)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + 2.0 * margin)
    s = size / side
    a = math.radians(float(angle_deg))
    c, si = math.cos(a) * s, math.sin(a) * s
    # rotate about the box centre, scale (the first row mirrored for a flip), then move the
    # box centre to the crop centre
    rows = ((-c, -si) if flip else (c, si), (-si, c))
    centre = (size - 1) / 2.0
    return np.array([[p, q, centre - (p * cx + q * cy)] for p, q in rows], np.float64)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix (or a batch (N, 2, 3)); ``np.linalg.LinAlgError``
    for a singular one. OpenCV's per matrix: right after an onnxruntime run,
    ``np.linalg.inv`` took 40-70 us here against 5-10 us at other times (session 20), a cost
    every tracked frame paid."""
    m = np.asarray(m, dtype=np.float64)
    flat = m.reshape(-1, 2, 3)
    if any(a * d == b * c for (a, b, _), (c, d, _) in flat.tolist()):
        raise np.linalg.LinAlgError("singular affine matrix")
    return np.stack([cv2.invertAffineTransform(x) for x in flat]).reshape(m.shape) \
        if len(flat) else m.copy()


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map points through an affine. points (..., K, 2), m (..., 2, 3) -> (..., K, 2)."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ np.swapaxes(m[..., :2], -1, -2) + m[..., None, :, 2]


def uncrop(points: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """Points (N, K, 2) in crop px of the crops made by ``mats`` (N, 2, 3) -> frame px:
    ``apply_affine(points, invert_affine(mats))``, by OpenCV per crop (right after an
    onnxruntime run 34 against 62 us for one face, session 21's Zen 4)."""
    pts = np.asarray(points, np.float64)
    inv = invert_affine(mats)
    return np.stack([cv2.transform(p[:, None], m)[:, 0] for p, m in zip(pts, inv)]) \
        if len(pts) else pts.copy()


def warp(image: np.ndarray, m: np.ndarray, size: int, border: int = cv2.BORDER_REPLICATE,
         out: np.ndarray | None = None) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``image`` (H, W[, C]) by the (2, 3) matrix ``m``
    (frame px -> crop px): bilinear, pixels past the frame edge padded by ``border``; into
    ``out`` where given. The sampling every crop of fkp-track and fkp-train uses."""
    return cv2.warpAffine(image, m, (size, size), out, flags=cv2.INTER_LINEAR,
                          borderMode=border)


def crop(image: np.ndarray, box: np.ndarray, size: int, margin: float = DEFAULT_MARGIN,
         angle_deg: float = 0.0, flip: bool = False,
         border: int = cv2.BORDER_REPLICATE) -> tuple[np.ndarray, np.ndarray]:
    """Cut the square face crop. image (H, W[, C]) -> (crop (size, size[, C]), matrix (2, 3)).

    Pixels past the frame edge are padded (edge replicated by default). Map crop points
    back with ``uncrop(p[None], matrix[None])[0]``.
    """
    m = crop_matrix(box, size, margin, angle_deg, flip)
    return warp(image, m, size, border), m


def source_region(m: np.ndarray, size: int, w: int, h: int) -> tuple[int, int, int, int]:
    """The part ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of a w x h frame that a ``size`` x
    ``size`` crop by the (2, 3) matrix ``m`` reads with bilinear sampling, clipped to the
    frame (the whole frame where the crop lies off it)."""
    inv = cv2.invertAffineTransform(np.asarray(m, np.float64))
    half = (size - 1) / 2.0
    cx, cy = inv[:, :2] @ (half, half) + inv[:, 2]
    ex, ey = (np.abs(inv[:, 0]) + np.abs(inv[:, 1])) * half + 2.0  # + the sampling support
    x0, y0 = max(int(cx - ex), 0), max(int(cy - ey), 0)
    x1, y1 = min(int(cx + ex) + 1, w), min(int(cy + ey) + 1, h)
    return (x0, y0, x1, y1) if x1 - x0 >= 2 and y1 - y0 >= 2 else (0, 0, w, h)


def crop_gray(image: np.ndarray, m: np.ndarray, size: int, out: np.ndarray | None = None
              ) -> np.ndarray:
    """The gray ``size`` x ``size`` crop (uint8) of a BGR (H, W, 3) or gray (H, W) frame by
    the (2, 3) matrix ``m`` (bilinear, edge replicated past the frame; as :func:`crop`).
    Only the :func:`source_region` is made gray, then warped: about half the time of
    warping in colour (session 20: 0.30-0.37 against 0.40-0.50 ms per frame on ytf1, a
    frame fresh from the decoder), same pixels within one grey level of rounding."""
    if image.ndim == 3:
        x0, y0, x1, y1 = source_region(m, size, image.shape[1], image.shape[0])
        image = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
        m = np.asarray(m, np.float64).copy()
        m[:, 2] += m[:, :2] @ (x0, y0)
    return warp(image, m, size, out=out)


def roll_angle(points: np.ndarray) -> float:
    """Head roll in degrees from the eye centres of a (68, 2) shape (0 = level eyes)."""
    return float(eye_roll(points[None, 36:48])[0])


def eye_roll(eyes: np.ndarray) -> np.ndarray:
    """Head roll in degrees (N,) from eye points (N, 12, 2), points 36-47 of each shape:
    the angle of the line from the left to the right eye centre (0 = level eyes)."""
    d = eyes[:, 6:].sum(axis=1) - eyes[:, :6].sum(axis=1)     # 6 x the centres' offset
    return np.degrees(np.arctan2(d[:, 1], d[:, 0]))
