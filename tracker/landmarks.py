"""The 68-point iBUG / 300-W landmark scheme shared by training and tracking.

Index ranges (0-based): 0-16 jaw, 17-21 right brow, 22-26 left brow, 27-35 nose,
36-41 right eye, 42-47 left eye, 48-67 mouth ("right"/"left" from the subject's view).
Point 30 is the nose tip; points 36 and 45 are the outer eye corners whose distance
(the inter-ocular distance, IOD) normalises every error in this project.
"""
from __future__ import annotations

import numpy as np

NUM_POINTS = 68
NOSE_TIP = 30
LEFT_EYE_OUTER = 36   # image-left outer eye corner
RIGHT_EYE_OUTER = 45  # image-right outer eye corner

#: Contours as (name, index range, closed?) for drawing.
CONTOURS: tuple[tuple[str, tuple[int, ...], bool], ...] = (
    ("jaw", tuple(range(0, 17)), False),
    ("brow_r", tuple(range(17, 22)), False),
    ("brow_l", tuple(range(22, 27)), False),
    ("nose_bridge", tuple(range(27, 31)), False),
    ("nose_base", tuple(range(31, 36)), False),
    ("eye_r", tuple(range(36, 42)), True),
    ("eye_l", tuple(range(42, 48)), True),
    ("lips_outer", tuple(range(48, 60)), True),
    ("lips_inner", tuple(range(60, 68)), True),
)


def _flip_permutation() -> np.ndarray:
    """Index permutation that maps the points of a mirrored face back to the scheme."""
    pairs = [(i, 16 - i) for i in range(8)]                       # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]                 # brows
    pairs += [(31, 35), (32, 34)]                                 # nose base
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]   # outer lips
    pairs += [(60, 64), (61, 63), (67, 65)]                       # inner lips
    perm = np.arange(NUM_POINTS)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


#: ``points_flipped[FLIP_PERM]`` re-orders the points of a horizontally mirrored face.
FLIP_PERM: np.ndarray = _flip_permutation()


def unmirror_points(points: np.ndarray, size: int) -> np.ndarray:
    """Points (N, 68, 2) predicted on horizontally mirrored ``size`` crops -> the same points
    in the unmirrored crops (pixel centres at integers), relabelled left/right."""
    out = points[:, FLIP_PERM].copy()
    out[..., 0] = size - 1 - out[..., 0]
    return out


def interocular(points: np.ndarray) -> np.ndarray:
    """Outer-eye-corner distance. ``points``: (..., 68, 2) -> (...,)."""
    return np.linalg.norm(points[..., LEFT_EYE_OUTER, :] - points[..., RIGHT_EYE_OUTER, :], axis=-1)


def nme(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-face normalised mean error in percent of the IOD. (N, 68, 2) x2 -> (N,)."""
    err = np.linalg.norm(pred - true, axis=-1).mean(axis=-1)
    return 100.0 * err / np.maximum(interocular(true), 1e-6)


def shape_plausibility(points: np.ndarray, mean_shape: np.ndarray) -> np.ndarray:
    """Landmark plausibility in [0, 1] for shapes (N, K, 2) against a mean shape (K, 2).

    Both are centred and scaled to unit norm, the shape is rotated onto the mean shape
    (orthogonal Procrustes), and the score is ``1 - 4 * RMS point distance`` in units of the
    mean point spread (1 = the mean shape, 0 = nothing face-like). Any coordinate system.
    """
    pts = np.asarray(points, np.float64)
    ref = np.asarray(mean_shape, np.float64)
    ref = ref - ref.mean(axis=0)
    ref = ref / (np.linalg.norm(ref) + 1e-9)
    q = pts - pts.mean(axis=1, keepdims=True)
    q = q / (np.linalg.norm(q, axis=(1, 2), keepdims=True) + 1e-9)
    u, _, vt = np.linalg.svd(np.swapaxes(q, 1, 2) @ ref)   # (N, 2, 2)
    aligned = q @ (u @ vt)
    rms = np.sqrt(((aligned - ref) ** 2).sum(axis=-1).mean(axis=-1)) * np.sqrt(ref.shape[0])
    return np.clip(1.0 - 4.0 * rms, 0.0, 1.0)
