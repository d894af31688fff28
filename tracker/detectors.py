"""Face detectors for (re)starting tracks: OpenCV's Haar cascade and YuNet.

Every detector takes a gray frame (H, W) uint8 and returns an (N, 5) float64 array of
``x0, y0, x1, y1, score`` in frame pixels, best first; an empty (0, 5) array when no face.

A detector box is not the box the landmark models were trained on: model crops come from the
tight box around the 68 points (:func:`fkp.tracker.geometry.box_from_points`) plus the model's
``crop_margin``. ``Detector.to_landmark_box`` maps detector boxes (N, 4) to that landmark-box
convention with fixed factors (:class:`BoxFactors`) measured by
``python -m fkp.tracker.calibrate_detector``.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

log = logging.getLogger(__name__)


class DetectorError(RuntimeError):
    """A detector cannot be created (missing or bad model file); one-line message."""


@dataclass(frozen=True)
class BoxFactors:
    """Detector box -> landmark box: centre shift (fractions of the detector box width and
    height) and size scale. ``cx' = cx + dx * w``, ``cy' = cy + dy * h``, ``w' = sx * w``,
    ``h' = sy * h``."""

    dx: float = 0.0
    dy: float = 0.0
    sx: float = 1.0
    sy: float = 1.0

    def apply(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4+) detector boxes -> (N, 4) landmark boxes, both x0, y0, x1, y1 frame px."""
        b = np.asarray(boxes, np.float64)
        b = b.reshape(-1, b.shape[-1]) if b.size else np.zeros((0, 4))
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        cx = (b[:, 0] + b[:, 2]) / 2 + self.dx * w
        cy = (b[:, 1] + b[:, 3]) / 2 + self.dy * h
        hw, hh = self.sx * w / 2, self.sy * h / 2
        return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)


# Measured with:  python -m fkp.tracker.calibrate_detector /work/shared/data/youtube-faces-68 \
#                     --count 300 --astronaut
# medians over 283 youtube-faces-68 images where the cascade matched the true face (17 missed)
# plus skimage's astronaut (dx +0.02, dy +0.16, sx 0.92, sy 0.87 on its own); interquartile
# ranges: dx -0.06..+0.06, dy +0.14..+0.19, sx 0.82..0.92, sy 0.79..0.89.
HAAR_FACTORS = BoxFactors(dx=0.0, dy=0.16, sx=0.87, sy=0.84)
# YuNet boxes run from the forehead to the chin. Not measured here (no YuNet model in this
# environment): an estimate; measure with  calibrate_detector DATA --detector yunet.onnx
YUNET_FACTORS = BoxFactors(dx=0.0, dy=0.06, sx=1.0, sy=0.92)


@runtime_checkable
class Detector(Protocol):
    """What the tracker needs from a face detector. A detector may also offer
    ``for_scan() -> Detector``, a cheaper twin the tracker uses for its periodic scan for
    new faces while it tracks some (as :meth:`HaarDetector.for_scan`)."""

    def detect(self, gray: np.ndarray) -> np.ndarray:
        """Gray frame (H, W) uint8 -> (N, 5) x0, y0, x1, y1, score in frame px, best first."""
        ...

    def to_landmark_box(self, boxes: np.ndarray) -> np.ndarray:
        """Detector boxes (N, 4+) -> landmark boxes (N, 4), frame px."""
        ...


def _downscale(gray: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink so the longest side is at most ``max_side``; returns (image, scale <= 1)."""
    h, w = gray.shape[:2]
    s = min(1.0, max_side / float(max(h, w)))
    if s < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * s)), max(1, round(h * s))),
                          interpolation=cv2.INTER_AREA)
    return gray, s


def _empty() -> np.ndarray:
    return np.zeros((0, 5), np.float64)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade on a downscaled, histogram-equalised gray frame.

    ``max_side``: working resolution (longest side, px); ``min_size``: smallest face side in
    working-image pixels; ``min_neighbors``: the cascade's vote threshold (8 rejects the
    typical false positives; the astronaut's face gets ~47 votes, background clutter < 8).
    Score: ``n / (n + min_neighbors)`` for ``n`` votes, in (0, 1).
    """

    factors = HAAR_FACTORS

    def __init__(self, max_side: int = 320, min_size: int = 24, scale_factor: float = 1.1,
                 min_neighbors: int = 4, cascade: str | Path | None = None) -> None:
        path = str(cascade or Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise DetectorError(f"cannot load Haar cascade {path}")
        self.max_side, self.min_size = max_side, min_size
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def for_scan(self) -> "HaarDetector":
        """A cheaper twin for the periodic new-face scan while faces are tracked: the same
        cascade without the smallest scales (``min_size`` x1.5: 36 px in the 320-px working
        image, faces of 72 px and more in a 640x480 frame), about 2/3 of the work. Scans
        with no face tracked, after a loss or on request keep the full range."""
        twin = copy.copy(self)
        twin.min_size = round(self.min_size * 1.5)
        return twin

    def detect(self, gray: np.ndarray) -> np.ndarray:
        small, s = _downscale(gray, self.max_side)
        small = cv2.equalizeHist(small)
        rects, votes = self.cascade.detectMultiScale2(
            small, self.scale_factor, self.min_neighbors, minSize=(self.min_size, self.min_size))
        if len(rects) == 0:
            return _empty()
        r = np.asarray(rects, np.float64) / s
        n = np.asarray(votes, np.float64).reshape(-1)
        out = np.column_stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3],
                               n / (n + self.min_neighbors)])
        return out[np.argsort(-out[:, 4], kind="stable")]

    def to_landmark_box(self, boxes: np.ndarray) -> np.ndarray:
        return self.factors.apply(boxes)


class YuNetDetector:
    """OpenCV's YuNet CNN detector (``cv2.FaceDetectorYN``) from an ``.onnx`` file.

    Runs on a downscaled frame (longest side ``max_side``); gray input is expanded to BGR.
    Score: YuNet's face confidence in [0, 1].
    """

    factors = YUNET_FACTORS

    def __init__(self, onnx_path: str | Path, max_side: int = 320,
                 score_threshold: float = 0.7, nms_threshold: float = 0.3,
                 top_k: int = 50) -> None:
        p = Path(onnx_path)
        if not p.is_file():
            raise DetectorError(f"YuNet model {p} does not exist")
        try:
            self.net = cv2.FaceDetectorYN.create(str(p), "", (320, 320), score_threshold,
                                                 nms_threshold, top_k)
        except cv2.error as exc:
            msg = str(exc).strip().splitlines()[-1][:160]
            raise DetectorError(f"cannot load YuNet model {p}: {msg}") from None
        self.max_side = max_side
        self._size: tuple[int, int] | None = None

    def detect(self, gray: np.ndarray) -> np.ndarray:
        small, s = _downscale(gray, self.max_side)
        bgr = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR) if small.ndim == 2 else small
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._size:
            self.net.setInputSize(size)
            self._size = size
        _, faces = self.net.detect(bgr)
        if faces is None or len(faces) == 0:
            return _empty()
        f = np.asarray(faces, np.float64)
        xywh = f[:, :4] / s
        out = np.column_stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2],
                               xywh[:, 1] + xywh[:, 3], f[:, -1]])
        return out[np.argsort(-out[:, 4], kind="stable")]

    def to_landmark_box(self, boxes: np.ndarray) -> np.ndarray:
        return self.factors.apply(boxes)


def make_detector(spec: str | Path | Detector | None = None) -> Detector:
    """``None``/"haar" -> :class:`HaarDetector`; a path to an ``.onnx`` -> :class:`YuNetDetector`;
    a detector object is returned as is."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "haar"):
        return HaarDetector()
    if isinstance(spec, (str, Path)):
        if Path(spec).suffix.lower() != ".onnx":
            raise DetectorError(f"unknown detector {str(spec)!r} (use 'haar' or a YuNet .onnx file)")
        return YuNetDetector(spec)
    if not isinstance(spec, Detector):
        raise DetectorError(f"{spec!r} is not a detector (needs detect and to_landmark_box)")
    return spec


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N, 4) and b (M, 4) -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
