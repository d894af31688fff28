"""Still-face check: has the picture of a face changed since it last moved?

The One Euro filter (:mod:`~fkp.tracker.smoothing`) judges from the predicted points how fast
a face moves. Two things then move the points of a face that holds still: the network's
frame-to-frame noise reads as a little speed and opens the filter, and when a moving face
stops, the filter catches up its lag over the next few frames (on the test videos, the first
three frames after a stop held about half of all the squared jitter). This check judges from
the pixels instead. While the frame around a face matches the thumbnail taken when the face
last moved, the face is *still*, and the tracker smooths its points hard; the first change
(the head, an eye, the mouth, the light) ends it on that frame.

Thumbnail: the landmark box widened by ``pad`` on each side, reduced to S x S gray cells,
S = side // ``min_cell`` clipped to 4..16 (cells of ``min_cell`` px or more, which average
sensor noise down): a bilinear reduction to 4 x 4 samples per cell, then their mean
(:func:`~fkp.tracker.scangate.cell_means`, as the change gate's thumbnail; for a 160-px
face on a 2-core AVX2 machine, 25 us with the pixels in cache, about 130 us from a fresh
frame; averaging every pixel took 4x that). Changed: at least ``min_cells`` cells
differ from the reference by more than ``level`` grey levels. The reference is kept while
the face is still, so a slow drift adds up until it counts; after a change, the current
frame becomes the reference (around the new box once the face has left the old region).
Measured on the 72 short test videos (sensor noise sigma 4 grey levels, H.264): on frames
where the true points had not moved, no cell ever changed by more than 4 levels; where they
had moved by 0.5 px or more, 5 cells or more did in 99 % of the frames (14 or more with one
face). For noisier cameras the threshold rises with the noise: the mean of the smaller
half of the cell differences is about 0.32 sigma of a cell's noise where nothing changed, its
running minimum (rising by 1 % a frame, so it follows a camera that gets noisier) is the
noise floor (starting at ``level`` / ``NOISE_UNITS``, so that a face first seen moving does
not set it), and ``level`` is raised to ``NOISE_UNITS`` floors (4.5 sigma) where that is
higher. With the test videos' noise it stays at 4 levels; with sigma 16 written into the
frames it rises to about 8 within about 2.5 s, and the hold engages again (4-s videos:
jitter 0.60 % against 0.87 %).

Coordinates: frame pixels; boxes ``(x0, y0, x1, y1)``.
"""
from __future__ import annotations

import numpy as np

from .scangate import cell_means

MAX_CELLS = 16
NOISE_UNITS = 14.0   # threshold in units of the noise floor (below): 4.5 sigma of a cell's noise


class StillCheck:
    """One face's check: :meth:`update` (image, landmark box) -> whether it is still."""

    def __init__(self, level: float = 4.0, min_cells: int = 2, pad: float = 0.1,
                 min_cell: int = 6) -> None:
        self.level, self.min_cells, self.pad, self.min_cell = level, min_cells, pad, min_cell
        self.reset()

    def reset(self) -> None:
        """Forget the reference: the next update reads as moving."""
        self._roi: tuple[int, int, int, int] | None = None
        self._cells, self._side = 0, 0.0
        self._ref: np.ndarray | None = None
        # noise floor, from the threshold's own level (a track that starts on a moving face
        # must not take the motion for noise); it rises by 1 % a frame at most
        self._floor = self.level / NOISE_UNITS

    def _thumb(self, image: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self._roi
        return cell_means(image[y0:y1, x0:x1], self._cells, self._cells, 4)

    def _fits(self, box: np.ndarray, w: int, h: int) -> bool:
        """Whether the region still frames ``box``: the box, widened by half the pad, lies in
        it (where the frame allows) and is at least 0.8 times as wide as the box the region
        was made around."""
        x0, y0, x1, y1 = (float(v) for v in box)
        px, py = self.pad / 2 * (x1 - x0), self.pad / 2 * (y1 - y0)
        r0, s0, r1, s1 = self._roi
        return (max(x0 - px, 0) >= r0 and max(y0 - py, 0) >= s0 and min(x1 + px, w) <= r1
                and min(y1 + py, h) <= s1 and x1 - x0 >= 0.8 * self._side)

    def update(self, image: np.ndarray, box: np.ndarray) -> bool:
        """BGR (H, W, 3) or gray (H, W) uint8 frame, landmark box (4,) of the face in it ->
        True when the region around the face matches the reference, which is then kept;
        False when it changed (this frame becomes the reference) or there is no reference
        yet. After a change the region is retaken around ``box`` only when the box has left
        it (or shrunk), so a moving face mostly costs one thumbnail per frame, as a still
        one does."""
        h, w = image.shape[:2]
        if self._ref is not None:
            thumb = self._thumb(image)
            diff = np.abs(thumb - self._ref).ravel()
            half = np.partition(diff, len(diff) // 2)[:len(diff) // 2]
            low = float(half.sum()) / len(half) if len(half) else 0.0
            self._floor = min(low, self._floor * 1.01 + 0.001)
            level = max(self.level, NOISE_UNITS * self._floor)
            if int(np.count_nonzero(diff > level)) < self.min_cells:
                return True
            if self._fits(box, w, h):
                self._ref = thumb
                return False
        x0, y0, x1, y1 = (float(v) for v in box)
        px, py = self.pad * (x1 - x0), self.pad * (y1 - y0)
        roi = (max(0, int(x0 - px)), max(0, int(y0 - py)),
               min(w, int(np.ceil(x1 + px)) + 1), min(h, int(np.ceil(y1 + py)) + 1))
        side = min(roi[2] - roi[0], roi[3] - roi[1])
        if side < 4 * self.min_cell:            # too small (or off the frame) to judge
            self.reset()
            return False
        self._roi, self._cells, self._side = roi, min(MAX_CELLS, side // self.min_cell), x1 - x0
        self._ref = self._thumb(image)
        return False
