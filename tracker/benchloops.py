"""The loops that ``fkp-bench`` times, frame by frame: the fkp-track pipeline and the classic
dlib loop over a video's frames, with per-stage milliseconds (:class:`LoopStats`).

Stages, ms per frame: ``decode`` (the wait for the next decoded frame), the tracker's
``detect``, ``crop``, ``infer``, ``post`` (or dlib's ``detect`` and ``infer``), ``draw``,
and ``total`` (decode to draw, bookkeeping included).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

FKP_STAGES = ("decode", "detect", "crop", "infer", "post", "draw", "total")
DLIB_STAGES = ("decode", "detect", "infer", "draw", "total")


@dataclass
class LoopStats:
    """Per-frame stage times (ms) of one loop; ``faces`` counts faces per frame."""

    stages: tuple[str, ...]
    times: dict[str, list[float]] = field(default_factory=dict)
    faces: list[int] = field(default_factory=list)
    truncated: str = ""        # why the video ended early ("": it did not)

    def add(self, ms: dict[str, float], n_faces: int) -> None:
        for k in self.stages:
            self.times.setdefault(k, []).append(float(ms.get(k, 0.0)))
        self.faces.append(n_faces)

    @classmethod
    def pooled(cls, rounds: list["LoopStats"], warmup: int) -> dict:
        """:meth:`summary` over the timed frames of several rounds of one loop (each round's
        first ``warmup`` frames left out)."""
        out = cls(rounds[0].stages)
        for r in rounds:
            start = r.first_timed(warmup)
            for k, v in r.times.items():
                out.times.setdefault(k, []).extend(v[start:])
            out.faces.extend(r.faces[start:])
        return out.summary(0)

    def first_timed(self, warmup: int) -> int:
        """Index of the first timed frame: ``warmup``, or 0 where there are no more frames."""
        return warmup if len(self.faces) > warmup else 0

    def summary(self, warmup: int) -> dict:
        """Means over frames after ``warmup`` (all frames when there are no more), and the
        median frame time ``median_ms`` (steadier than the mean where other work on the
        machine stalls some frames)."""
        n, start = len(self.faces), self.first_timed(warmup)
        mean = {k: round(float(np.mean(v[start:])), 3) for k, v in self.times.items()}
        total = float(np.sum(self.times["total"][start:]))
        return {"fps": round((n - start) / max(total / 1000.0, 1e-9), 2),
                "median_ms": round(float(np.median(self.times["total"][start:])), 3),
                "stages_ms": mean, "frames": n - start,
                "faces_per_frame": round(float(np.mean(self.faces[start:])), 3)}


def _frames(path: str, limit: int, prefetch: int = 0,
            stats: LoopStats | None = None) -> Iterator[tuple[object, float]]:
    """(Frame, decode ms) for the first ``limit`` frames (0 = all) of a video. With
    ``prefetch`` the ms are the wait for a frame the decoder thread has not finished yet.
    A video that ends before its container's frame count sets ``stats.truncated``."""
    from .sources import open_source

    source = open_source(path, "video", prefetch=prefetch)
    it = iter(source)
    try:
        n = 0
        while not limit or n < limit:
            t0 = time.perf_counter()
            frame = next(it, None)
            ms = (time.perf_counter() - t0) * 1000.0
            if frame is None:
                return
            n += 1
            yield frame, ms
    finally:
        if stats is not None and getattr(source, "truncated", False):
            stats.truncated = (f"video {path} ended after {n} of {source.frame_count} frames "
                               f"(truncated file?); the {n} frames read were timed")
        source.close()


def _progress(it, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(it, total=total or None, desc=desc, unit="f", disable=None, leave=False)


def run_fkp(args, tracker, on_result: Callable | None = None) -> LoopStats:
    """The fkp-track pipeline (a :class:`~fkp.tracker.tracking.Tracker`) over the video."""
    from .draw import draw_result

    indices = tracker.model.meta.indices
    stats = LoopStats(FKP_STAGES)
    frames = _frames(args.video, args.frames, args.prefetch, stats)
    for frame, decode_ms in _progress(frames, args.frames, "fkp"):
        t0 = time.perf_counter()
        res = tracker.process(frame.image, frame.timestamp_ms, frame.index)
        t1 = time.perf_counter()
        draw_result(frame.image, res, indices=indices)
        draw_ms = (time.perf_counter() - t1) * 1000.0
        ms = dict(tracker.timings, decode=decode_ms, draw=draw_ms)
        ms["total"] = decode_ms + (t1 - t0) * 1000.0 + draw_ms
        stats.add(ms, len(res))
        if on_result is not None:
            on_result(res)
    return stats


def run_dlib(args, on_result: Callable | None = None) -> tuple[LoopStats, object]:
    """The dlib loop over the same frames; raises DlibUnavailable when not installed."""
    import cv2

    from .dlib_loop import DlibLoop
    from .draw import draw_result
    from .geometry import box_from_points
    from .tracking import FrameResult

    loop = DlibLoop(args.dlib_upsample)
    stats = LoopStats(DLIB_STAGES)
    frames = _frames(args.video, args.frames, args.prefetch, stats)
    for frame, decode_ms in _progress(frames, args.frames, "dlib"):
        t0 = time.perf_counter()
        gray = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
        pts, scores, ms = loop.process(gray)
        t1 = time.perf_counter()
        res = FrameResult(frame.index, frame.timestamp_ms, ids=np.arange(len(pts)),
                          points=pts, raw_points=pts, scores=scores,
                          boxes=box_from_points(pts) if len(pts) else np.zeros((0, 4)))
        draw_result(frame.image, res)
        draw_ms = (time.perf_counter() - t1) * 1000.0
        ms.update(decode=decode_ms, draw=draw_ms,
                  total=decode_ms + (t1 - t0) * 1000.0 + draw_ms)
        stats.add(ms, len(pts))
        if on_result is not None:
            on_result(res)
    return stats, loop


def stage_line(name: str, summary: dict) -> str:
    st = summary["stages_ms"]
    parts = "  ".join(f"{k} {v:.2f}" for k, v in st.items() if k != "total")
    return (f"{name}: {summary['fps']:.1f} fps ({st['total']:.2f} ms/frame over "
            f"{summary['frames']} frames, {summary['faces_per_frame']:.2f} faces/frame); "
            f"ms: {parts}")
