"""One Euro filter (Casiez, Roussel, Vogel, CHI 2012), vectorised over a (K, 2) point set.

A first-order low-pass filter whose cutoff rises with speed: ``cutoff = min_cutoff + beta *
|speed|``. Still points get a low cutoff (jitter removed), moving points a high one (little
lag). The speed is the filtered derivative (cutoff ``d_cutoff``) of each point, as the norm of
its (x, y) velocity, so x and y of a point share one cutoff.

Units: time comes from timestamps in ms, cutoffs are in Hz. Speed is in ``units / s`` divided by
``scale`` when one is passed: the tracker passes the face size in pixels, so ``beta`` is per
"face sizes per second" and the filter behaves the same for a near or a far face.
"""
from __future__ import annotations

import math

import numpy as np

#: Parameters at ``strength == 1`` (speed measured in face sizes per second). Chosen on the
#: tracking test videos (docs/results.md): beta 20 / d_cutoff 4 against 5 / 1 cut NME by
#: 12-17 % (lag on moving faces); with the still hold (tracker/stillness.py) taking the
#: jitter of still faces, beta 40 cut the lag further (pooled NME 3.47 -> 3.40 %).
BASE_MIN_CUTOFF = 1.0   # Hz
BASE_BETA = 40.0        # Hz per (face size / s)
BASE_D_CUTOFF = 4.0     # Hz
#: Cutoff while the face's picture holds still (:mod:`~fkp.tracker.stillness`): the points
#: settle on the mean of about the last second's predictions and ignore their noise.
BASE_STILL_CUTOFF = 0.25  # Hz
DEFAULT_DT = 1.0 / 30.0


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor of an exponential filter with ``cutoff`` Hz at step ``dt`` s."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One Euro filter over arrays of any fixed shape (typically (K, 2) frame pixels).

    ``filter(x, timestamp_ms, scale, still)`` returns the filtered array (same shape,
    float64). The first call after construction or :meth:`reset` returns ``x`` unchanged.
    ``still_cutoff``: the cutoff (Hz, no speed term) for samples marked ``still``, i.e. taken
    while the input is known not to move; None filters those like any other.
    """

    def __init__(self, min_cutoff: float = BASE_MIN_CUTOFF, beta: float = BASE_BETA,
                 d_cutoff: float = BASE_D_CUTOFF, still_cutoff: float | None = None) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0 or \
                (still_cutoff is not None and still_cutoff <= 0):
            raise ValueError("min_cutoff, d_cutoff and still_cutoff must be > 0, beta >= 0")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.still_cutoff = None if still_cutoff is None else float(still_cutoff)
        self.reset()

    @classmethod
    def from_strength(cls, strength: float = 1.0) -> "OneEuroFilter":
        """One knob: ``strength`` 1 = default, 2 = smoother (more lag), 0.5 = lighter.

        ``min_cutoff = 1.0 / strength`` Hz, ``beta = 40.0 / strength``, ``d_cutoff = 4`` Hz,
        ``still_cutoff = 0.25 / strength`` Hz.
        """
        if strength <= 0:
            raise ValueError("strength must be > 0 (use no filter for 0)")
        return cls(BASE_MIN_CUTOFF / strength, BASE_BETA / strength, BASE_D_CUTOFF,
                   BASE_STILL_CUTOFF / strength)

    def reset(self) -> None:
        """Forget the state; the next sample passes through unfiltered."""
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x: np.ndarray, timestamp_ms: float, scale: float | None = None,
                 still: bool = False) -> np.ndarray:
        return self.filter(x, timestamp_ms, scale, still)

    def filter(self, x: np.ndarray, timestamp_ms: float, scale: float | None = None,
               still: bool = False) -> np.ndarray:
        """Filter one sample. ``x``: array (..., D); speed is the norm over the last axis
        (for 1-D input, per element). ``scale``: divide speeds by it (e.g. face size px).
        ``still``: the input is known to hold still (use ``still_cutoff`` where set)."""
        x = np.asarray(x, np.float64)
        if self._x is None or self._x.shape != x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(timestamp_ms)
            return x.copy()
        dt = (float(timestamp_ms) - self._t) / 1000.0
        if not dt > 0:
            dt = DEFAULT_DT
        self._t = float(timestamp_ms)
        dx = (x - self._x) / dt
        self._dx = self._dx + _alpha(self.d_cutoff, dt) * (dx - self._dx)
        if still and self.still_cutoff is not None:
            a = _alpha(self.still_cutoff, dt)
        else:
            if x.ndim >= 2:
                speed = np.linalg.norm(self._dx, axis=-1, keepdims=True)
            else:
                speed = np.abs(self._dx)
            if scale:
                speed = speed / max(float(scale), 1e-9)
            a = _alpha(self.min_cutoff + self.beta * speed, dt)
        self._x = self._x + a * (x - self._x)
        return self._x.copy()
