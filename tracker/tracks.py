"""Tracks: faces followed from frame to frame, and the per-frame checks on them.

A :class:`Track` holds one face's points in frame pixels; :func:`alive` decides which tracks
survive a frame, :func:`drop_converged` removes tracks that ended up on the same face,
:func:`choose_new` picks the detections that may start tracks and :func:`frame_result` turns
the live tracks into a frame's :class:`~fkp.tracker.results.FrameResult`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .detectors import iou
from .geometry import box_from_points
from .results import FrameResult, empty_points
from .smoothing import OneEuroFilter
from .stillness import StillCheck

MIN_BOX_SIDE = 8.0               # px; a smaller landmark box counts as lost
CONVERGED_IOU = 0.5              # two tracks whose boxes overlap more follow one face


@dataclass
class Track:
    """One face. ``points`` (K, 2): the model's raw points, frame px; ``shown`` (K, 2): the
    last output (smoothed) points, which place the next crop; ``smoother``: its One Euro
    filter (None: smoothing off); ``age``: frames followed; ``still_check``: its
    :class:`~fkp.tracker.stillness.StillCheck` (None: off), whose verdict on the current
    frame is ``still``."""

    id: int
    points: np.ndarray
    score: float
    smoother: Optional[OneEuroFilter]
    age: int = 0
    shown: Optional[np.ndarray] = None
    still_check: Optional[StillCheck] = None
    still: bool = False

    @classmethod
    def start(cls, id: int, points: np.ndarray, score: float, image: np.ndarray,
              smooth: float, still_hold: bool) -> "Track":
        """A new track on ``image``: One Euro smoothing of strength ``smooth`` (0 = off) and,
        with smoothing and ``still_hold``, a still check that starts from this picture."""
        smoother = OneEuroFilter.from_strength(smooth) if smooth > 0 else None
        check = StillCheck() if smoother is not None and still_hold else None
        track = cls(id, points, score, smoother, still_check=check)
        track.observe(image)                # its picture now: still from the next frame on
        return track

    def observe(self, image: np.ndarray) -> None:
        """Judge, on this frame (BGR or gray), whether the face held still since it last
        moved (``still``), around the box of its ``points``; without a check it never
        does."""
        if self.still_check is not None:
            self.still = self.still_check.update(image, box_from_points(self.points))

    def crop_points(self) -> np.ndarray:
        """(K, 2) points that place the next crop: the shown ones, else the raw ones."""
        return self.points if self.shown is None else self.shown

    def output(self, timestamp_ms: float) -> np.ndarray:
        """(K, 2) points to report for this frame: smoothed (and kept as ``shown``) when the
        track has a smoother, else the raw points."""
        if self.smoother is None:
            return self.points
        b = box_from_points(self.points)
        self.shown = self.smoother(self.points, timestamp_ms, max(b[2] - b[0], b[3] - b[1]),
                                   self.still)
        return self.shown


def alive(points: np.ndarray, scores: np.ndarray, threshold: float, w: int, h: int
          ) -> np.ndarray:
    """(N,) bool for faces (N, K, 2) frame px with scores (N,) in a w x h frame: score at or
    above ``threshold``, finite points, landmark box at least ``MIN_BOX_SIDE`` px, box centre
    inside the frame. (A NaN point makes the box NaN and an infinite one its centre
    infinite or NaN: both fail the comparisons.)"""
    # plain floats: for a face or two, cheaper than a dozen numpy calls
    lo, hi = points.min(axis=1).tolist(), points.max(axis=1).tolist()
    return np.array([s >= threshold and max(x1 - x0, y1 - y0) >= MIN_BOX_SIDE
                     and 0 <= (x0 + x1) / 2 < w and 0 <= (y0 + y1) / 2 < h
                     for s, (x0, y0), (x1, y1) in zip(np.asarray(scores).tolist(), lo, hi)],
                    bool).reshape(-1)


def drop_converged(tracks: list[Track]) -> list[Track]:
    """``tracks`` (oldest first) without those whose landmark box overlaps an older one's by
    IoU > ``CONVERGED_IOU``: two tracks that converged on one face keep the older."""
    if len(tracks) < 2:
        return tracks
    boxes = box_from_points(np.stack([t.points for t in tracks]))
    ov = iou(boxes, boxes)
    drop = {j for i in range(len(tracks)) for j in range(i + 1, len(tracks))
            if ov[i, j] > CONVERGED_IOU}
    return [t for j, t in enumerate(tracks) if j not in drop]


def choose_new(boxes: np.ndarray, live: np.ndarray, iou_threshold: float, room: int
               ) -> np.ndarray:
    """(M, 4) of the landmark boxes ``boxes`` (best first, frame px) that may start tracks:
    at most ``room``, none overlapping a live track's box (``live`` (N, 4)) or a box chosen
    before it by IoU >= ``iou_threshold``."""
    chosen: list[np.ndarray] = []
    for b in boxes if room > 0 else ():
        others = np.vstack([live.reshape(-1, 4)] + [c[None] for c in chosen])
        if len(others) and iou(b[None], others).max() >= iou_threshold:
            continue
        chosen.append(b)
        if len(chosen) >= room:
            break
    return np.array(chosen, np.float64).reshape(-1, 4)


def frame_result(tracks: list[Track], index: int, timestamp_ms: float, num_points: int,
                 detected: bool) -> FrameResult:
    """The frame's result from the live ``tracks``: their output (smoothed) points, raw
    points, ids, scores and the boxes of the output points; empty arrays without tracks."""
    if not tracks:
        return FrameResult(index, timestamp_ms, points=empty_points(num_points),
                           raw_points=empty_points(num_points), detected=detected)
    out = np.stack([t.output(timestamp_ms) for t in tracks])
    return FrameResult(index, timestamp_ms, ids=np.array([t.id for t in tracks], np.int64),
                       points=out, raw_points=np.stack([t.points for t in tracks]),
                       scores=np.array([t.score for t in tracks], np.float64),
                       boxes=box_from_points(out), detected=detected)
