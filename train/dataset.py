"""Torch dataset: in-memory images, one affine warp per sample, and the origin's augmentations.

Every geometric augmentation (box shift/scale/aspect jitter, rotation, horizontal flip) is
folded into the single crop matrix of :func:`fkp.tracker.geometry.crop_matrix`, so points
follow pixels exactly: the image is warped once and the points go through the same matrix.
Photometric jitter (brightness, hue, saturation, contrast) is applied to the colour crop
before the grayscale conversion, as in the origin report.

Label convention under the mirror: a dataset whose points sit a constant ``label_offset``
(original pixels) away from where this package's convention puts them (pixel centres at
integers) keeps that offset in image axes when the face is mirrored; mirroring the offset
with the face would teach the net +offset and -offset in x at once, so it learns neither and
is off by the offset on every face (on the shared data a net trained with plain mirroring was
off by -0.78 and -0.58 px in x and by less than 0.04 px in y; see the README).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fkp.tracker.geometry import apply_affine, box_from_points, crop_matrix, warp
from fkp.tracker.landmarks import FLIP_PERM


@dataclass
class AugmentConfig:
    """Ranges of the random augmentations (all off when ``enabled`` is False)."""

    enabled: bool = True
    shift: float = 0.08        # box centre shift, fraction of box size
    scale: tuple[float, float] = (0.9, 1.12)   # box size factor
    aspect: float = 0.08       # independent w/h change
    rotation: float = 25.0     # degrees, uniform +-
    flip: float = 0.5          # probability
    brightness: float = 0.3    # +- fraction of V
    contrast: float = 0.3
    saturation: float = 0.4
    hue: float = 10.0          # +- OpenCV hue units (0-179)
    blur: float = 0.15         # probability of a small Gaussian blur
    noise: float = 4.0         # max std of Gaussian pixel noise (0-255 scale)
    occlusion: float = 0.0     # probability of one random occluding rectangle
    occlusion_size: tuple[float, float] = (0.15, 0.45)   # its sides, fraction of the crop
    jpeg: float = 0.0          # probability of a JPEG round trip (compressed video, webcams)
    jpeg_quality: tuple[float, float] = (30.0, 90.0)     # its quality range (1-100)
    warp: float = 0.0          # probability of a smooth random warp of the face (new shapes)
    warp_strength: float = 0.03   # its largest displacement, fraction of the crop side

    def override(self, items: list[str]) -> "AugmentConfig":
        """A copy with ``NAME=VALUE`` items applied (``fkp-train --aug``): numbers for the
        scalar ranges, ``LO:HI`` for the pairs (``scale``, ``occlusion_size``).

        Raises ValueError naming the item (and close field names) when one does not parse
        or is out of range (negative, a probability over 1, LO > HI, a zero box scale)."""
        kinds = {f.name: str(f.type) for f in fields(self) if f.name != "enabled"}
        changes: dict = {}
        for item in items:
            name, sep, text = item.partition("=")
            name = name.strip()
            if not sep or name not in kinds:
                close = difflib.get_close_matches(name, kinds, n=3)
                hint = (f"did you mean {', '.join(close)}?" if close
                        else f"one of {', '.join(kinds)}")
                raise ValueError(f"augmentation {item!r} is not NAME=VALUE with a known "
                                 f"NAME ({hint})")
            pair = "tuple" in kinds[name]
            try:
                value = tuple(float(v) for v in text.split(":")) if pair else float(text)
                if pair and len(value) != 2:
                    raise ValueError
            except ValueError:
                raise ValueError(f"augmentation {item!r}: {name} takes "
                                 f"{'LO:HI' if pair else 'a number'}") from None
            lo, hi = value if pair else (value, value)
            if lo < 0 or lo > hi or (name == "scale" and lo == 0):
                need = ("0 < LO <= HI" if name == "scale" else "0 <= LO <= HI") if pair \
                    else "a value >= 0"
                raise ValueError(f"augmentation {item!r}: {name} needs {need}")
            if name in ("flip", "blur", "occlusion", "jpeg", "warp") and hi > 1:
                raise ValueError(f"augmentation {item!r}: {name} is a probability (0-1)")
            if name == "jpeg_quality" and not 1 <= lo <= hi <= 100:
                raise ValueError(f"augmentation {item!r}: {name} needs 1 <= LO <= HI <= 100")
            changes[name] = value
        return replace(self, **changes)


WARP_GRID = 4     # control points per side of the random warp's displacement grid


def bilinear(field: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Values of ``field`` (H, W, C), pixel centres at integers, at points (K, 2) (x, y),
    bilinearly interpolated, clamped at the edges -> (K, C)."""
    h, w = field.shape[:2]
    x = np.clip(pts[:, 0], 0, w - 1)
    y = np.clip(pts[:, 1], 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(int), w - 2)
    y0 = np.minimum(np.floor(y).astype(int), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return ((1 - fy) * ((1 - fx) * field[y0, x0] + fx * field[y0, x0 + 1])
            + fy * ((1 - fx) * field[y0 + 1, x0] + fx * field[y0 + 1, x0 + 1]))


def normalise(gray: np.ndarray, scale: float = 1 / 255.0, offset: float = -0.5) -> np.ndarray:
    """uint8 (S, S) -> float32 (1, S, S) in [-0.5, 0.5] with the default settings."""
    return (gray.astype(np.float32) * scale + offset)[None]


class FaceDataset(Dataset):
    """Samples of (image (1, S, S) float32, points (K, 2) normalised crop coords, index).

    ``images`` are BGR uint8 arrays, ``points`` (N, 68, 2) in image pixels, ``label_offset``
    (N, 2) or (2,) each sample's label convention offset in image pixels (default 0; see the
    module docstring).
    """

    def __init__(self, images: list[np.ndarray], points: np.ndarray, size: int, margin: float,
                 point_indices: list[int] | None = None, augment: AugmentConfig | None = None,
                 seed: int = 0, label_offset: np.ndarray | None = None) -> None:
        self.images = images
        self.points = np.asarray(points, np.float32)
        off = np.zeros(2) if label_offset is None else np.asarray(label_offset, np.float64)
        self.label_offset = np.broadcast_to(off, (len(self.points), 2))
        self.size = size
        self.margin = margin
        self.indices = np.asarray(point_indices if point_indices else range(self.points.shape[1]))
        self.aug = augment or AugmentConfig(enabled=False)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def matrix(self, i: int) -> tuple[np.ndarray, bool]:
        """Crop matrix for sample ``i`` (random when augmenting) and whether it is mirrored."""
        box = box_from_points(self.points[i]).astype(np.float64)
        a, r = self.aug, self.rng
        if not a.enabled:
            return crop_matrix(box, self.size, self.margin), False
        w, h = box[2] - box[0], box[3] - box[1]
        cx = (box[0] + box[2]) / 2 + r.uniform(-a.shift, a.shift) * w
        cy = (box[1] + box[3]) / 2 + r.uniform(-a.shift, a.shift) * h
        s = r.uniform(*a.scale)
        w *= s * (1 + r.uniform(-a.aspect, a.aspect))
        h *= s * (1 + r.uniform(-a.aspect, a.aspect))
        jittered = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        flip = bool(r.random() < a.flip)
        angle = r.uniform(-a.rotation, a.rotation)
        return crop_matrix(jittered, self.size, self.margin, angle, flip), flip

    def photometric(self, crop: np.ndarray) -> np.ndarray:
        """Colour jitter on a BGR crop, then grayscale. (S, S, 3) uint8 -> (S, S) uint8."""
        a, r = self.aug, self.rng
        if a.enabled and crop.ndim == 3:
            hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV).astype(np.float32)
            hsv[..., 0] = (hsv[..., 0] + r.uniform(-a.hue, a.hue)) % 180
            hsv[..., 1] *= 1 + r.uniform(-a.saturation, a.saturation)
            hsv[..., 2] *= 1 + r.uniform(-a.brightness, a.brightness)
            crop = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
        gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
        if not a.enabled:
            return gray
        g = gray.astype(np.float32)
        g = (g - g.mean()) * (1 + r.uniform(-a.contrast, a.contrast)) + g.mean()
        if r.random() < a.blur:
            g = cv2.GaussianBlur(g, (0, 0), r.uniform(0.5, 1.2))
        if a.noise > 0:
            g += r.normal(0, r.uniform(0, a.noise), g.shape).astype(np.float32)
        if a.occlusion > 0 and r.random() < a.occlusion:    # (off: the RNG stream as before)
            self.occlude(g)
        out = np.clip(g, 0, 255).astype(np.uint8)
        if a.jpeg > 0 and r.random() < a.jpeg:              # (off: the RNG stream as before)
            quality = int(round(r.uniform(*a.jpeg_quality)))
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        return out

    def occlude(self, g: np.ndarray) -> None:
        """Paint one random rectangle (flat grey or noise) over the (S, S) crop, in place.

        Points keep their targets: the net learns to place hidden points from the visible face
        (hands, microphones, other faces in front)."""
        a, r, s = self.aug, self.rng, g.shape[0]
        h, w = (r.uniform(*a.occlusion_size, size=2) * s).astype(int) + 1
        y, x = r.integers(0, s - h + 1), r.integers(0, s - w + 1)
        if r.random() < 0.5:
            g[y:y + h, x:x + w] = r.uniform(0, 255)
        else:
            g[y:y + h, x:x + w] = r.normal(r.uniform(40, 215), r.uniform(5, 40), (h, w))

    def warp(self, crop: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A smooth random warp of the crop (S, S[, 3]) and its points (K, 2), crop pixels:
        displacements drawn on a WARP_GRID x WARP_GRID grid (uniform, up to
        ``warp_strength`` of the side), upsampled bicubically to a field d; the output pixel
        p shows the input at p + d(p), so a point q moves to the p with p + d(p) = q (found
        by fixed-point iteration; d is smooth and small). Faces of new shapes, beyond the
        people in the data."""
        s, r = self.size, self.rng
        amp = self.aug.warp_strength * s
        grid = r.uniform(-amp, amp, (WARP_GRID, WARP_GRID, 2)).astype(np.float32)
        field = cv2.resize(grid, (s, s), interpolation=cv2.INTER_CUBIC)       # (S, S, 2)
        ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
        out = cv2.remap(crop, xs + field[..., 0], ys + field[..., 1], cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
        p = pts.astype(np.float64)
        for _ in range(8):
            p = pts - bilinear(field, p)
        return out, p

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gray crop (S, S) uint8, points (68, 2) crop pixels, matrix (2, 3))."""
        m, flip = self.matrix(i)
        crop = warp(self.images[i], m, self.size)
        if flip:
            # mirror the face geometry, keep the label convention offset in image axes
            off = self.label_offset[i]
            unmirrored = m[:, :2] * np.array([[-1.0], [1.0]])
            pts = (apply_affine(self.points[i] - off, m) + unmirrored @ off)[FLIP_PERM]
        else:
            pts = apply_affine(self.points[i], m)
        if self.aug.enabled and self.aug.warp > 0 and self.rng.random() < self.aug.warp:
            crop, pts = self.warp(crop, pts)                # (off: the RNG stream as before)
        return self.photometric(crop), pts.astype(np.float32), m

    def __getitem__(self, i: int):
        gray, pts, _ = self.sample(i)
        target = pts[self.indices] / self.size
        return torch.from_numpy(normalise(gray)), torch.from_numpy(target), i


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: give each worker's copy of the dataset its own
    augmentation stream. Forked workers inherit the parent's ``rng`` state, so without this
    every worker drew the same rotations, flips, colour jitter and noise, in the same order.
    The seed is torch's per-worker seed (the loader's base seed, drawn from the torch RNG that
    ``--seed`` sets, plus the worker id), so runs stay reproducible."""
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "rng"):
        info.dataset.rng = np.random.default_rng(info.seed)
