"""Change gate for the periodic new-face scan: scan only where something may have entered.

While faces are tracked, the tracker scans the frame for new faces every ``redetect_every``
frames. Where nothing outside the tracked faces has changed since the last scan, that scan
cannot find anything the last one did not (a face that appears changes the pixels where it
appears), so the gate skips it.

The gate keeps, from the frame of the last scan, a gray thumbnail (about the mean of each
``cell`` x ``cell`` block, which also averages sensor noise away: sigma 4 grey levels per
pixel becomes about 0.75 per 8x8 cell) and the landmark boxes tracked then. At the next
periodic tick it compares the current thumbnail with it, outside the head boxes of the
faces tracked then and now: ``min_cells`` cells changed by more than ``level`` grey levels
mean "changed", and the tracker scans. A head box is the landmark box (brows to chin)
widened by ``pad`` (left, top, right, bottom; in box widths / heights) for hair, forehead,
ears and neck: a moving head changes those pixels too. A moving body, a moving or shaking
camera, a light switched on, a person walking in: all change cells, and the scan runs as
without the gate, so it saves work in still scenes (a person at a desk, a fixed camera).
Every ``max_skips`` skipped ticks a scan runs anyway, a recheck of pixels the last scan saw:
the tracker runs only the detectors that have not looked at them (the next Haar fallback in
turn, :meth:`~fkp.tracker.detectors.FallbackDetector.for_recheck`). Between ticks the tracker asks
:meth:`ChangeGate.arrived` every few frames: a change after a still check means something
has just appeared, and the scan runs at once instead of up to ``redetect_every`` frames
later.

Coordinates: frame pixels (x right, y down) for boxes (N, 4) ``x0, y0, x1, y1``.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

ARRIVAL_RETRIES = 2              # scans after an arrival that found no face: 3 in all
ARRIVAL_CHECKS = 10              # arrival checks per periodic scan interval


def cell_means(image: np.ndarray, cols: int, rows: int, samples: int | None) -> np.ndarray:
    """BGR (H, W, 3) or gray (H, W) uint8 -> gray (rows, cols) int16 means of a cols x rows
    grid of cells. ``samples``: first a bilinear reduction to that many samples per cell
    edge, whose mean each cell then takes (much cheaper than every pixel for large cells);
    None averages every pixel."""
    if samples:
        image = cv2.resize(image, (cols * samples, rows * samples),
                           interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    return small.astype(np.int16)


def _clip(i: int, n: int) -> int:
    """A cell index clipped to 0..n."""
    return min(max(i, 0), n)


def thumbnail(image: np.ndarray, cell: int) -> np.ndarray:
    """BGR (H, W, 3) or gray (H, W) uint8 -> gray (H // cell, W // cell) int16 cell means.

    For cells of 8 px and more, a bilinear reduction to 2 px per cell comes first, then the
    area average: 4-5x cheaper than averaging every pixel (0.07-0.10 against 0.39-0.40 ms
    for a 640x480 BGR frame on session 10's 2-core AVX2 machine). Each cell then averages
    16 bilinear samples, a quarter of its pixels: plenty for objects the size of a face,
    and sensor noise of sigma 4 per pixel leaves a thumbnail difference of sigma 1.06 grey
    levels (0.74 averaging every pixel), 14 sigma below the gate's default ``level``."""
    h, w = image.shape[:2]
    return cell_means(image, max(1, w // cell), max(1, h // cell), 2 if cell >= 8 else None)


class ChangeGate:
    """``should_scan(image, boxes)`` at a periodic tick; ``arrived(image, boxes)`` at checks
    between ticks; ``scanned(image, boxes)`` whenever a scan runs (periodic or not).
    ``skipped`` counts the scans it saved."""

    def __init__(self, cell: int = 8, level: int = 15, min_cells: int = 4,
                 pad: tuple[float, float, float, float] = (0.3, 0.6, 0.3, 0.3),
                 max_skips: int = 3) -> None:
        self.cell, self.level, self.min_cells = cell, level, min_cells
        self.pad, self.max_skips = pad, max_skips
        self.reset()

    def reset(self) -> None:
        """Forget the last scan: the next tick scans."""
        self._thumb: np.ndarray | None = None
        self._boxes = np.zeros((0, 4))
        self._skips = 0
        self._was_changed = True        # no still check seen yet: no arrival
        self.skipped = 0
        self.recheck = False

    def scanned(self, image: np.ndarray, boxes: np.ndarray) -> None:
        """Remember the frame of a scan and the boxes (N, 4) tracked in it."""
        self._thumb = thumbnail(image, self.cell)
        self._boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        self._skips = 0

    def changed_cells(self, image: np.ndarray, boxes: np.ndarray) -> int:
        """Cells changed by more than ``level`` since the last scan, outside the head boxes
        then and now (-1 without a last scan or after a change of frame size)."""
        thumb = thumbnail(image, self.cell)
        if self._thumb is None or thumb.shape != self._thumb.shape:
            return -1
        outside = np.ones(thumb.shape, bool)
        th, tw = thumb.shape
        left, top, right, bottom = self.pad
        # plain floats: a dozen numpy scalar calls per box cost more than the thumbnail
        for x0, y0, x1, y1 in np.concatenate([self._boxes, np.reshape(boxes, (-1, 4))]).tolist():
            if not all(map(math.isfinite, (x0, y0, x1, y1))):
                continue
            bw, bh = x1 - x0, y1 - y0
            c0 = _clip(math.floor((x0 - left * bw) / self.cell), tw)
            c1 = _clip(math.ceil((x1 + right * bw) / self.cell), tw)
            r0 = _clip(math.floor((y0 - top * bh) / self.cell), th)
            r1 = _clip(math.ceil((y1 + bottom * bh) / self.cell), th)
            outside[r0:r1, c0:c1] = False
        return int(((np.abs(thumb - self._thumb) > self.level) & outside).sum())

    def should_scan(self, image: np.ndarray, boxes: np.ndarray) -> bool:
        """True when the periodic scan should run on this frame (boxes (N, 4): tracked now).
        Sets ``recheck``: True when it runs only because ``max_skips`` ticks were skipped,
        on pixels unchanged since the last scan (a detector that has seen them need not
        look again; the fallbacks that have not may)."""
        changed = self._changed(image, boxes)
        self.recheck = not changed and self._skips >= self.max_skips
        if changed or self.recheck:
            return True
        self._skips += 1
        self.skipped += 1
        return False

    def arrived(self, image: np.ndarray, boxes: np.ndarray) -> bool:
        """A check between periodic ticks: True when cells changed since the last scan and
        the previous check (this or a tick's) saw none: something new has appeared in a still
        scene, so a scan should run now rather than at the next tick. In a scene that keeps
        changing, only its first change counts, so scans stay periodic there."""
        was_changed = self._was_changed
        return self._changed(image, boxes) and not was_changed

    def _changed(self, image: np.ndarray, boxes: np.ndarray) -> bool:
        """Did ``min_cells`` cells change since the last scan (or is there none)? Remembered
        for :meth:`arrived`."""
        n = self.changed_cells(image, boxes)
        self._was_changed = n < 0 or n >= self.min_cells
        return self._was_changed


class ArrivalWatch:
    """When to scan between periodic ticks: every ``period // ARRIVAL_CHECKS`` frames since
    the last scan (``period``: frames between periodic scans), ask the gate whether
    something has just appeared (:meth:`ChangeGate.arrived`). After an arrival, the next
    ``retries`` checks scan again until :meth:`found` (a track started): the gate cannot see
    the face again once the last scan's frame holds it, and the detector's fallbacks take
    turns, so a face that only a fallback finds needs them."""

    def __init__(self, gate: ChangeGate, period: int, retries: int = ARRIVAL_RETRIES) -> None:
        self.gate, self.step, self.retries = gate, max(1, period // ARRIVAL_CHECKS), retries
        self.left = 0                    # retry scans still to come

    def due(self, since_scan: int) -> bool:
        """Whether :meth:`check` looks at this frame (``since_scan``: frames since the last
        scan); on other frames it says no without reading its arguments."""
        return since_scan % self.step == 0

    def check(self, since_scan: int, image: np.ndarray, boxes: np.ndarray) -> bool:
        """Scan now? ``since_scan``: frames since the last scan; boxes (N, 4): tracked now."""
        if not self.due(since_scan):
            return False
        if self.left > 0:
            self.left -= 1
            return True
        if self.gate.arrived(image, boxes):
            self.left = self.retries
            return True
        return False

    def found(self) -> None:
        """A new track started: no more retries."""
        self.left = 0
