"""What goes into the tracker and what it returns: frames checked by :func:`as_image`, and
plain dataclasses of numpy arrays (never None).

Coordinates are frame pixels (x right, y down, pixel centres at integers); N faces, K points.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class Face:
    """One tracked face: ``points`` (K, 2) frame px (smoothed), ``box`` (4,) x0, y0, x1, y1."""

    id: int
    score: float
    points: np.ndarray
    box: np.ndarray


def empty_points(k: int) -> np.ndarray:
    """An empty (0, K, 2) float64 points array."""
    return np.zeros((0, k, 2), np.float64)


@dataclass
class FrameResult:
    """Everything found in one frame; arrays are never None (N = 0 when no face).

    ``ids`` (N,) int64 track ids (stable while a face is tracked, new after a loss);
    ``points`` (N, K, 2) float64 frame px, smoothed; ``raw_points`` the same unsmoothed;
    ``scores`` (N,) float64; ``boxes`` (N, 4) tight box of ``points`` (x0, y0, x1, y1);
    ``detected``: the detector ran on this frame.
    """

    index: int
    timestamp_ms: float
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    points: np.ndarray = field(default_factory=lambda: empty_points(68))
    raw_points: np.ndarray = field(default_factory=lambda: empty_points(68))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float64))
    detected: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def faces(self) -> list[Face]:
        """Per-face view of the arrays."""
        return [Face(int(i), float(s), p, b)
                for i, s, p, b in zip(self.ids, self.scores, self.points, self.boxes)]


def as_image(frame: np.ndarray) -> np.ndarray:
    """Validate a frame: BGR (H, W, 3), BGRA (H, W, 4) or gray (H, W[, 1]) uint8 ->
    BGR (H, W, 3) or gray (H, W), without copying where possible."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        raise ValueError("frame must be a uint8 array (H, W) or (H, W, C) (float images in "
                         "[0, 1]: (frame * 255).round().astype(np.uint8))")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame is empty: shape {frame.shape}")
    if frame.ndim == 2:
        return frame
    c = frame.shape[2]
    if c == 1:
        return frame[:, :, 0]
    if c == 3:
        return frame
    if c == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"frame with {c} channels")


def to_gray(frame: np.ndarray) -> np.ndarray:
    """BGR (H, W, 3), BGRA (H, W, 4) or gray (H, W[, 1]) uint8 -> gray (H, W) uint8."""
    image = as_image(frame)
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
