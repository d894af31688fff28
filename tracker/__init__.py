"""fkp-track runtime: numpy, OpenCV and onnxruntime only (never torch).

>>> from fkp.tracker import Tracker                          # doctest: +SKIP
>>> for frame, result in Tracker().track("talk.mp4"):       # doctest: +SKIP
...     print(frame.index, result.ids, result.points.shape)  # (N,), (N, 68, 2) frame px

The names below load their modules on first use, so importing a numpy-only module such as
``fkp.tracker.geometry`` (as training does) does not load onnxruntime.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"Tracker": "tracking", "FrameResult": "results", "Face": "results",
            "LandmarkModel": "runtime", "open_source": "sources"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
