"""Fast overlays: landmark points, optional contours, face ids, FPS.

All functions draw in place on a BGR (H, W, 3) uint8 image in frame pixel coordinates and
return it. Points are drawn with 4 bits of sub-pixel precision (``shift``); anti-aliasing is
off by default (``cv2.LINE_8`` is several times faster than ``LINE_AA``).
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from .landmarks import CONTOURS

SHIFT = 4
_ONE = 1 << SHIFT
POINT_COLOR = (0, 255, 0)
CONTOUR_COLOR = (255, 200, 0)
TEXT_COLOR = (0, 255, 255)


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float px (..., 2) -> int32 fixed point with SHIFT fractional bits."""
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32)


@functools.cache
def _disk(radius: int) -> np.ndarray:
    """Integer offsets (M, 2) of a filled disk of ``radius`` px (made once per radius,
    read-only: building it took as long as stamping a face's 68 dots)."""
    r = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(r, r)
    keep = dx ** 2 + dy ** 2 <= radius ** 2 + radius   # radius 1: a 3x3 dot
    disk = np.stack([dx[keep], dy[keep]], axis=1)
    disk.setflags(write=False)
    return disk


@functools.cache
def _disk_offsets(radius: int, width: int) -> np.ndarray:
    """:func:`_disk` as offsets (M,) into a row-major image ``width`` px wide."""
    disk = _disk(radius)
    return disk[:, 1] * width + disk[:, 0]


def draw_points(image: np.ndarray, points: np.ndarray, color=POINT_COLOR, radius: int = 1,
                antialias: bool = False) -> np.ndarray:
    """Draw (K, 2) points (frame px) as small filled dots.

    Without anti-aliasing the dots are stamped by numpy indexing (about 7x faster than a
    ``cv2.circle`` call per point): where every dot lies wholly inside a contiguous image,
    by one assignment through flat pixel offsets; else pixel by pixel, clipped to the
    image. With it, ``cv2.circle`` sub-pixel.
    """
    pts = points[np.isfinite(points).all(axis=1)]
    if antialias:
        for x, y in _fixed(pts):
            cv2.circle(image, (int(x), int(y)), radius * _ONE, color, -1, cv2.LINE_AA, SHIFT)
        return image
    h, w = image.shape[:2]
    value = color if image.ndim == 3 else color[1]
    xy = np.rint(pts).astype(np.intp)
    if not len(xy):
        return image
    x, y = xy[:, 0], xy[:, 1]
    if image.flags.c_contiguous and xy.min() >= radius and x.max() < w - radius \
            and y.max() < h - radius:
        image.reshape(h * w, -1)[((y * w + x)[:, None] + _disk_offsets(radius, w)).ravel()] = value
        return image
    at = (xy[:, None, :] + _disk(radius)[None]).reshape(-1, 2)
    ok = (at[:, 0] >= 0) & (at[:, 0] < w) & (at[:, 1] >= 0) & (at[:, 1] < h)
    image[at[ok, 1], at[ok, 0]] = value
    return image


def draw_contours(image: np.ndarray, points: np.ndarray, color=CONTOUR_COLOR,
                  thickness: int = 1, antialias: bool = False,
                  indices: list[int] | None = None) -> np.ndarray:
    """Draw the 68-point contours (``landmarks.CONTOURS``) of one face (K, 2).

    ``indices``: which of the 68 points the K rows are (default: all 68 in order); contours
    with a missing point are skipped.
    """
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    pos = {j: i for i, j in enumerate(indices)} if indices is not None else None
    fixed = _fixed(points)
    polys, closed_polys = [], []
    for _, idx, closed in CONTOURS:
        if pos is not None:
            if not all(i in pos for i in idx):
                continue
            idx = tuple(pos[i] for i in idx)
        elif max(idx) >= len(points):
            continue
        (closed_polys if closed else polys).append(fixed[list(idx)].reshape(-1, 1, 2))
    if polys:
        cv2.polylines(image, polys, False, color, thickness, line, SHIFT)
    if closed_polys:
        cv2.polylines(image, closed_polys, True, color, thickness, line, SHIFT)
    return image


def draw_result(image: np.ndarray, result, contours: bool = False, ids: bool = True,
                boxes: bool = False, antialias: bool = False,
                indices: list[int] | None = None) -> np.ndarray:
    """Draw every face of a :class:`~fkp.tracker.results.FrameResult` (points, contours,
    ``#id score`` label above the face, optional box)."""
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    for fid, score, pts, box in zip(result.ids, result.scores, result.points, result.boxes):
        if contours:
            draw_contours(image, pts, antialias=antialias, indices=indices)
        draw_points(image, pts, antialias=antialias)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        if boxes:
            cv2.rectangle(image, (x0, y0), (x1, y1), TEXT_COLOR, 1, line)
        if ids:
            cv2.putText(image, f"#{int(fid)} {score:.2f}", (x0, max(12, y0 - 6)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT_COLOR, 1, line)
    return image


def draw_fps(image: np.ndarray, fps: float, extra: str = "") -> np.ndarray:
    """Write ``"NN.N fps  extra"`` in the top-left corner (black outline for contrast)."""
    text = f"{fps:5.1f} fps" + (f"  {extra}" if extra else "")
    for color, thick in (((0, 0, 0), 3), (TEXT_COLOR, 1)):
        cv2.putText(image, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, color, thick,
                    cv2.LINE_8)
    return image


class FpsMeter:
    """Exponential moving average of frames per second from wall-clock ticks."""

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha, self.fps, self._last = alpha, 0.0, None

    def tick(self, now: float) -> float:
        """Call once per frame with ``time.perf_counter()``; returns the current estimate."""
        if self._last is not None and now > self._last:
            inst = 1.0 / (now - self._last)
            self.fps = inst if self.fps == 0 else self.fps + self.alpha * (inst - self.fps)
        self._last = now
        return self.fps
