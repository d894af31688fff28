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
import re
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

    def invert(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) landmark boxes -> (N, 4) detector boxes: the inverse of :meth:`apply`."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        w = (b[:, 2] - b[:, 0]) / self.sx
        h = (b[:, 3] - b[:, 1]) / self.sy
        cx = (b[:, 0] + b[:, 2]) / 2 - self.dx * w
        cy = (b[:, 1] + b[:, 3]) / 2 - self.dy * h
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


# Measured with:  python -m fkp.tracker.calibrate_detector /work/shared/data/youtube-faces-68 \
#                     --count 300 --astronaut
# medians over 283 youtube-faces-68 images where the cascade matched the true face (17 missed)
# plus skimage's astronaut (dx +0.02, dy +0.16, sx 0.92, sy 0.87 on its own); interquartile
# ranges: dx -0.06..+0.06, dy +0.14..+0.19, sx 0.82..0.92, sy 0.79..0.89.
HAAR_FACTORS = BoxFactors(dx=0.0, dy=0.16, sx=0.87, sy=0.84)
# The alt2 cascade at min_neighbors 2, the same 300 images (295 matched): dy +0.166, sx 0.896,
# sy 0.860 (the default cascade there: dy +0.158, sx 0.872, sy 0.837).
CASCADE_FACTORS = {"haarcascade_frontalface_default.xml": HAAR_FACTORS,
                   "haarcascade_frontalface_alt2.xml": BoxFactors(dy=0.17, sx=0.90, sy=0.86)}
# YuNet boxes run from the forehead to the chin. Not measured here (no YuNet model in this
# environment): an estimate; measure with  calibrate_detector DATA --detector yunet.onnx
YUNET_FACTORS = BoxFactors(dx=0.0, dy=0.06, sx=1.0, sy=0.92)


@runtime_checkable
class Detector(Protocol):
    """What the tracker needs from a face detector. A detector may also offer
    ``for_scan() -> Detector``, a cheaper twin the tracker uses for its periodic scan for
    new faces while it tracks some (as :meth:`HaarDetector.for_scan`),
    ``for_photo() -> Detector``, a more thorough twin for a frame that gets one chance (as
    :meth:`HaarDetector.for_photo`), and ``for_recheck() -> Detector``, a twin for pixels
    that the scan twin saw unchanged at the last scan (as :meth:`FallbackDetector.for_recheck`)."""

    def detect(self, gray: np.ndarray) -> np.ndarray:
        """Gray frame (H, W) uint8 -> (N, 5) x0, y0, x1, y1, score in frame px, best first."""
        ...

    def to_landmark_box(self, boxes: np.ndarray) -> np.ndarray:
        """Detector boxes (N, 4+) -> landmark boxes (N, 4), frame px."""
        ...


#: Working resolution (longest side) of the detectors' photo twins: faces from 24 px there,
#: 3.75 % of a photo's longest side (the 320 px of video frames: 7.5 %).
PHOTO_MAX_SIDE = 640


def twin(detector: Detector, kind: str) -> Detector:
    """``detector.for_<kind>()`` (kind: "scan", "recheck" or "photo", see :class:`Detector`)
    where the detector has it, else the detector itself."""
    make = getattr(detector, f"for_{kind}", None)
    return make() if make is not None else detector


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


def _load_cascade(name: str | Path | None) -> tuple[cv2.CascadeClassifier, str]:
    """A Haar cascade by file name in OpenCV's ``cv2.data.haarcascades`` or by path."""
    path = Path(name or "haarcascade_frontalface_default.xml")
    if not path.is_file():
        path = Path(cv2.data.haarcascades) / path.name
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise DetectorError(f"cannot load Haar cascade {path}")
    return cascade, path.name


class HaarDetector:
    """One of OpenCV's frontal-face Haar cascades on a downscaled, histogram-equalised gray
    frame.

    ``max_side``: working resolution (longest side, px); ``min_size``: smallest face side in
    working-image pixels; ``min_neighbors``: the cascade's vote threshold (8 rejects the
    typical false positives; the astronaut's face gets ~47 votes, background clutter < 8).
    ``cascade``: a file name in ``cv2.data.haarcascades`` or a path (default: the
    ``frontalface_default`` cascade). ``equalize``: "hist" (global histogram equalisation),
    "clahe" (contrast-limited, 8x8 tiles: lifts faces in dim or low-contrast parts of the
    frame) or "none". ``roll``: degrees the working image is turned
    (counter-clockwise as displayed) before the cascade runs, so that faces tilted that far
    clockwise come out upright (the cascades find faces within about +-15 degrees of upright);
    boxes are mapped back to the frame through the landmark-box convention, keeping their size.
    Score: ``n / (n + min_neighbors)`` for ``n`` votes, in (0, 1).
    """

    def __init__(self, max_side: int = 320, min_size: int = 24, scale_factor: float = 1.1,
                 min_neighbors: int = 4, cascade: str | Path | None = None,
                 equalize: str = "hist", roll: float = 0.0) -> None:
        if equalize not in ("hist", "clahe", "none"):
            raise DetectorError(f"equalize must be hist, clahe or none, not {equalize!r}")
        self.cascade, name = _load_cascade(cascade)
        self.equalize = equalize
        self.clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)) \
            if equalize == "clahe" else None
        self.factors = CASCADE_FACTORS.get(name, HAAR_FACTORS)
        self.max_side, self.min_size = max_side, min_size
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.roll = float(roll)

    def for_scan(self) -> "HaarDetector":
        """A cheaper twin for the periodic new-face scan while faces are tracked: the same
        cascade without the smallest scales (``min_size`` x1.5: 36 px in the 320-px working
        image, faces of 72 px and more in a 640x480 frame), about 2/3 of the work. Scans
        with no face tracked, after a loss or on request keep the full range."""
        twin = copy.copy(self)
        twin.min_size = round(self.min_size * 1.5)
        return twin

    def for_photo(self) -> "HaarDetector":
        """A twin for a photo, which gets one chance: the working image is at least
        ``PHOTO_MAX_SIDE`` px (640), so faces from 3.75 % of its longest side are found, at
        up to 4x the work."""
        twin = copy.copy(self)
        twin.max_side = max(self.max_side, PHOTO_MAX_SIDE)
        return twin

    def detect(self, gray: np.ndarray) -> np.ndarray:
        small, s = _downscale(gray, self.max_side)
        if self.equalize == "hist":
            small = cv2.equalizeHist(small)
        elif self.equalize == "clahe":
            small = self.clahe.apply(small)
        if self.roll:
            h, w = small.shape
            turn = cv2.getRotationMatrix2D((w / 2, h / 2), self.roll, 1.0)
            small = cv2.warpAffine(small, turn, (w, h), borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=int(small.mean()))   # a flat border: no features
        rects, votes = self.cascade.detectMultiScale2(
            small, self.scale_factor, self.min_neighbors, minSize=(self.min_size, self.min_size))
        if len(rects) == 0:
            return _empty()
        r = np.asarray(rects, np.float64)
        boxes = np.column_stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]])
        if self.roll:
            boxes = self._unturn(boxes, cv2.invertAffineTransform(turn))
        n = np.asarray(votes, np.float64).reshape(-1)
        out = np.column_stack([boxes / s, n / (n + self.min_neighbors)])
        return out[np.argsort(-out[:, 4], kind="stable")]

    def _unturn(self, boxes: np.ndarray, back: np.ndarray) -> np.ndarray:
        """Detector boxes (N, 4) in the turned working image -> detector boxes in the upright
        one: the landmark box's centre goes back through ``back`` (2, 3), its size stays."""
        lm = self.factors.apply(boxes)
        c = np.column_stack([(lm[:, 0] + lm[:, 2]) / 2, (lm[:, 1] + lm[:, 3]) / 2])
        c = c @ back[:, :2].T + back[:, 2]
        half = np.column_stack([lm[:, 2] - lm[:, 0], lm[:, 3] - lm[:, 1]]) / 2
        return self.factors.invert(np.hstack([c - half, c + half]))

    def to_landmark_box(self, boxes: np.ndarray) -> np.ndarray:
        return self.factors.apply(boxes)


class FallbackDetector:
    """A primary detector on every call plus one of several fallbacks, in turn.

    While no face is tracked the tracker detects on every frame, so a face the primary
    misses (tilted, low-contrast) is looked for by a different fallback on each frame and
    found within ``len(fallbacks)`` frames if any of them finds it, at the cost of one
    fallback pass per call; :meth:`for_scan` does the same for the periodic scan. Fallback
    boxes are returned in the primary's convention (mapped through the landmark box: the
    primary needs its :class:`BoxFactors` as ``factors``), so :meth:`to_landmark_box` is
    the primary's; candidates are merged best first, and the tracker's model verifies them.
    ``skip_primary``: run the fallbacks only (:meth:`for_recheck`). The twins share the
    fallbacks' turn, so a scan or recheck of a still scene runs the fallback that looked
    longest ago, not one that has just seen the same pixels.
    """

    def __init__(self, primary: Detector, fallbacks: list[Detector],
                 skip_primary: bool = False, turn: list[int] | None = None) -> None:
        if not fallbacks:
            raise ValueError("FallbackDetector needs at least one fallback")
        if not isinstance(getattr(primary, "factors", None), BoxFactors):
            raise ValueError("FallbackDetector's primary needs its BoxFactors as .factors")
        self.primary, self.fallbacks = primary, list(fallbacks)
        self.skip_primary = skip_primary
        self._turn = turn if turn is not None else [0]     # shared with the twins

    @property
    def turn(self) -> int:
        """Calls of :meth:`detect` so far, this detector's and its twins'."""
        return self._turn[0]

    def for_scan(self) -> "FallbackDetector":
        """For the periodic scan while faces are tracked: the primary's scan twin (where it
        has one) with the same fallbacks, in the shared turn."""
        return FallbackDetector(twin(self.primary, "scan"), self.fallbacks, turn=self._turn)

    def for_recheck(self) -> "FallbackDetector":
        """For a scan of pixels that have not changed since the last scan (the change gate's
        forced tick in a still scene): the primary has seen them and would find what it
        found then, so only the fallbacks run, one per call in their own turn; boxes stay
        in the primary's convention. About half the work of :meth:`detect`."""
        return FallbackDetector(self.primary, self.fallbacks, skip_primary=True,
                                turn=self._turn)

    def for_photo(self) -> "FallbackDetector":
        """The photo twins (``for_photo``, where they have one) of the primary and of every
        fallback; use it with :meth:`detect_every`."""
        return FallbackDetector(twin(self.primary, "photo"),
                                [twin(f, "photo") for f in self.fallbacks])

    def reset(self) -> None:
        """Start the fallbacks' turns over (as a new detector; the twins' too)."""
        self._turn[0] = 0

    def detect(self, gray: np.ndarray) -> np.ndarray:
        fallback = self.fallbacks[self._turn[0] % len(self.fallbacks)]
        self._turn[0] += 1
        return self._merged(gray, [fallback])

    def detect_every(self, gray: np.ndarray) -> np.ndarray:
        """The primary and every fallback at once, for a frame that gets one chance (a
        photo); the turn is left as it is, so the result does not depend on earlier calls."""
        return self._merged(gray, self.fallbacks)

    def _merged(self, gray: np.ndarray, fallbacks: list[Detector]) -> np.ndarray:
        found = [_empty() if self.skip_primary else self.primary.detect(gray)]
        for fallback in fallbacks:
            extra = fallback.detect(gray)
            if len(extra):
                boxes = self.primary_boxes(fallback, extra[:, :4])
                found.append(np.column_stack([boxes, extra[:, 4]]))
        out = np.vstack(found)
        return out[np.argsort(-out[:, 4], kind="stable")]

    def primary_boxes(self, fallback: Detector, boxes: np.ndarray) -> np.ndarray:
        """A fallback's boxes (N, 4) in the primary detector's convention."""
        return self.primary.factors.invert(fallback.to_landmark_box(boxes))

    def to_landmark_box(self, boxes: np.ndarray) -> np.ndarray:
        return self.primary.to_landmark_box(boxes)


def haar_with_fallbacks() -> FallbackDetector:
    """The default detector: OpenCV's default frontal-face cascade, plus three fallbacks,
    each on a CLAHE-equalised frame and from 72-px faces up (the scan twin's range): the
    frame turned by +20 and by -20 degrees (3 votes), and the ``alt2`` cascade (2 votes).
    Chosen on 576 frames of 48 short ``fkp-testvideo`` videos of held-out faces (README,
    Tracking): the default cascade alone finds 83 % of those faces, together with these
    fallbacks 99 % (82 % and 96.5 % on as many frames of training people)."""
    alt2 = "haarcascade_frontalface_alt2.xml"
    fallbacks = [HaarDetector(min_neighbors=3, equalize="clahe", roll=20).for_scan(),
                 HaarDetector(min_neighbors=3, equalize="clahe", roll=-20).for_scan(),
                 HaarDetector(cascade=alt2, min_neighbors=2, equalize="clahe").for_scan()]
    return FallbackDetector(HaarDetector(), fallbacks)


def _cv_reason(exc: cv2.error) -> str:
    """An OpenCV error's reasons in one line, without versions, source files and functions."""
    text = re.sub(r"OpenCV\([^)]*\) \S+: error: \([^)]*\)|in function '[^']*'|>", " ",
                  str(exc))
    return " ".join(text.split())[:160] or type(exc).__name__


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
        self.max_side = max_side
        self._size: tuple[int, int] | None = None
        try:
            self.net = cv2.FaceDetectorYN.create(str(p), "", (320, 320), score_threshold,
                                                 nms_threshold, top_k)
            self.detect(np.zeros((240, 320), np.uint8))   # a wrong graph fails here, not later
        except cv2.error as exc:
            raise DetectorError(f"cannot use {p} as a YuNet face detector: "
                                f"{_cv_reason(exc)}") from None

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
    """None/"haar" -> :func:`haar_with_fallbacks`; "haar-single" -> one :class:`HaarDetector`
    (one cascade pass per call); a path to an ``.onnx`` -> :class:`YuNetDetector`; a detector
    object is returned as is."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "haar"):
        return haar_with_fallbacks()
    if isinstance(spec, str) and spec.lower() == "haar-single":
        return HaarDetector()
    if isinstance(spec, (str, Path)):
        if Path(spec).suffix.lower() != ".onnx":
            raise DetectorError(f"unknown detector {str(spec)!r} "
                                "(use 'haar', 'haar-single' or a YuNet .onnx file)")
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
