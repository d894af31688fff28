"""The public tracking API: detect faces once, then follow them frame to frame.

>>> tracker = Tracker("fastnet")                      # doctest: +SKIP
>>> result = tracker.process(frame_bgr)               # doctest: +SKIP
>>> result.points                                     # (N, 68, 2) frame pixels
>>> for frame, result in tracker.track("rtsp://cam/1"):  # any source  # doctest: +SKIP
...     ...

Per frame:

1. Tracking: each live track is cropped from its previous (smoothed) output points: tight
   box + ``crop_margin``, turned by the eye-line roll so the face comes out upright. All
   tracks go through the model in ONE batched call. A track whose score falls below the
   threshold, or whose box leaves the frame or collapses, is lost with its smoothing state.
2. Detection, only when needed: no tracks, a track just lost, every ``redetect_every``
   frames (new faces; skipped while ``max_faces`` tracks run) or on request. The periodic
   scan uses the detector's cheaper ``for_scan`` twin, is skipped where nothing changed
   outside the tracked faces since the last scan (every few ticks only its ``for_recheck``
   twin runs there), and something that appears in a still scene between ticks triggers a
   scan at once (:mod:`~fkp.tracker.scangate`). With
   ``async_scan`` scans run on a worker thread and their faces join a few frames later.
   Detector boxes become landmark boxes (``Detector.to_landmark_box``); those overlapping a
   live track are ignored; new faces get two passes (the landmark box, then the box of
   those points) and start tracks when they score above the threshold.
3. Post: per-track One Euro smoothing of the output points, which also place the next crop
   (``raw_points`` keep the model's own output), hard while a face's picture holds still
   (:mod:`~fkp.tracker.stillness`).

``Tracker.timings`` holds the last frame's milliseconds per stage: ``detect``, ``crop``
(crop matrices + warps), ``infer`` (onnxruntime), ``post`` (mapping back, scoring, smoothing,
bookkeeping) and ``total``. ``Tracker.stats`` counts frames, detector runs, periodic scans
skipped by the change gate, model calls, tracks started and lost since construction or
:meth:`Tracker.reset`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .detectors import Detector, iou, make_detector, twin
from .geometry import box_from_points, eye_roll, uncrop
from .landmarks import NUM_POINTS
from .runtime import LandmarkModel, ModelError
from .results import Face, FrameResult, as_image, to_gray
from .scangate import ArrivalWatch, ChangeGate
from .tracks import CONVERGED_IOU, Track, alive, choose_new, drop_converged, frame_result

if TYPE_CHECKING:
    from .sources import Frame

__all__ = ["Face", "FrameResult", "PHOTO_MAX_FACES", "STAGES", "Tracker", "as_image", "to_gray"]
log = logging.getLogger(__name__)
STAGES = ("detect", "crop", "infer", "post", "total")
UNVERIFIED_DETECTION_SCORE = 0.65  # candidates a model without a face score must trust
PHOTO_MAX_FACES = 16             # fkp-track's --max-faces default for photos (4 for streams)
MAX_CANDIDATES = 8               # detections verified per detector run (one model batch)


class Tracker:
    """Facial keypoint tracker over a stream of frames.

    ``model``: shipped name, path to an ``.onnx``, "auto", or a :class:`LandmarkModel`
    (which already carries its ``device``, ``threads``, ``flip_test`` and ``half``; those
    arguments only build a model from a name or path). It must predict all 68 points, since
    each crop is placed by the previous ones (a :class:`ModelError` says so otherwise).
    ``device``: "auto" | "cpu" | "cuda". ``detector``: None/"haar", a YuNet ``.onnx`` path or
    any :class:`~fkp.tracker.detectors.Detector`. ``smooth``: One Euro strength (0 = off).
    ``redetect_every``: frames between detector runs while tracking (0 = only when needed).
    ``max_faces``: most faces tracked at once. ``score_threshold``: a face below it is lost
    (default: the model metadata's ``score_threshold``, calibrated by fkp-train on held-out
    faces versus off-face crops; 0 where the score could not separate them, as for the
    regression nets, whose tracks are then lost only by leaving the frame).
    ``threads``: onnxruntime intra-op threads (None = its default).
    ``min_detection_score``: detector candidates below it are ignored (default: 0 for models
    with a face score, which verifies every candidate; 0.65 otherwise, e.g. 8 Haar votes).
    ``async_scan``: periodic new-face scans on a worker thread (default); False makes every
    detection synchronous, so a video gives the same output on every run. ``flip_test``:
    average each crop's prediction with its mirror image's (twice the inference work).
    ``scan_gate``: skip a periodic scan when nothing changed outside the tracked faces since
    the last one, and scan at once when something appears between periodic scans (default;
    False scans every ``redetect_every`` frames regardless, and only then, in full).
    ``half``: on a GPU, the model's body in float16 (see ``LandmarkModel``).
    ``still_hold``: smooth a face's points hard while its picture holds still
    (:mod:`~fkp.tracker.stillness`; default; needs ``smooth`` > 0).
    """

    def __init__(self, model: str | Path | LandmarkModel = "auto", device: str = "auto",
                 detector: str | Path | Detector | None = None, smooth: float = 1.0,
                 redetect_every: int = 30, max_faces: int = 4,
                 score_threshold: float | None = None, threads: int | None = None,
                 iou_threshold: float = 0.3, async_scan: bool = True,
                 min_detection_score: float | None = None, flip_test: bool = False,
                 scan_gate: bool = True, half: bool = False, still_hold: bool = True) -> None:
        if smooth < 0 or redetect_every < 0 or max_faces < 1:
            raise ValueError("smooth >= 0, redetect_every >= 0 and max_faces >= 1 required")
        self.model = model if isinstance(model, LandmarkModel) else \
            LandmarkModel(model, device, threads, flip_test, half=half)
        if self.model.meta.num_points != NUM_POINTS:    # each crop is placed by the points
            raise ModelError(f"{self.model.path.name} predicts {self.model.meta.num_points} "
                             f"point(s); tracking places each crop by a face's {NUM_POINTS} "
                             f"points, so it needs a {NUM_POINTS}-point model (fkp-eval "
                             "scores this one)")
        self.detector = make_detector(detector)
        # twins, where the detector has them: periodic scans while tracking run a cheaper one
        # (Haar: without the smallest scales, ~2/3 of the work), rechecks of an unchanged
        # scene only what has not seen it, a photo (after forget()) the thorough one
        self.scan_detector = twin(self.detector, "scan")
        self.recheck_detector = twin(self.scan_detector, "recheck")
        self.photo_detector = twin(self.detector, "photo")
        self.smooth, self.redetect_every, self.max_faces = smooth, redetect_every, max_faces
        self.iou_threshold, self.still_hold = iou_threshold, still_hold
        self.async_scan = async_scan
        self.gate = ChangeGate() if scan_gate else None
        self.arrivals = ArrivalWatch(self.gate, redetect_every) \
            if self.gate is not None and redetect_every else None
        self._pool: ThreadPoolExecutor | None = None
        self._scan: Future | None = None
        meta = self.model.meta
        if score_threshold is None:
            score_threshold = meta.score_threshold
        self.score_threshold = float(score_threshold)
        if min_detection_score is None:
            min_detection_score = 0.0 if meta.has_score else UNVERIFIED_DETECTION_SCORE
        self.min_detection_score = float(min_detection_score)
        self.num_points = meta.num_points
        idx = meta.indices
        self._eyes = [idx.index(i) for i in range(36, 48)] if set(range(36, 48)) <= set(idx) \
            else None
        self.timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.reset()
        log.info("tracker: model %s (%s, %d points) on %s, detector %s, score threshold %.2f",
                 self.model.path.name, meta.arch, meta.num_points, self.model.provider,
                 type(self.detector).__name__, self.score_threshold)

    # ------------------------------------------------------------------ public
    @property
    def provider(self) -> str:
        """The onnxruntime execution provider that really runs the model."""
        return self.model.provider

    def forget(self) -> None:
        """The next frame is unrelated to the last (another photo): drop all tracks and
        their smoothing, restart ids at 0 and detect on it with the detector's photo twin
        (``for_photo``: a larger working image) and every fallback at once
        (``detect_every``), where it has those, so its result does not depend on the frames
        before. ``stats`` and the frame counter go on."""
        self._clear()
        self._one_chance = True

    def reset(self) -> None:
        """Drop all tracks, restart ids at 0, the frame counter, the wall clock, ``stats``
        and the detectors' turns (``reset()``, where they have one): as a new tracker.
        Detect on the next frame."""
        self._clear()
        for d in (self.detector, self.scan_detector, self.recheck_detector):  # (repeats: harmless)
            if hasattr(d, "reset"):
                d.reset()
        self._one_chance = False
        self._frame_no = 0
        self._t0: float | None = None
        self.stats = {"frames": 0, "detections": 0, "scans_skipped": 0, "model_calls": 0,
                      "tracks_started": 0, "tracks_lost": 0}

    def _clear(self) -> None:
        self._tracks: list[Track] = []
        self._next_id = 0
        self._since_detect = 0
        self._detect_requested = True
        scan, self._scan = getattr(self, "_scan", None), None
        if scan is not None:        # let a running scan end (its failure no longer matters)
            with suppress(Exception):
                scan.result()
        if self.gate is not None:              # (set before __init__ calls reset)
            self.gate.reset()
        if self.arrivals is not None:
            self.arrivals.found()

    def close(self) -> None:
        """Stop the background scan worker (the tracker stays usable; it restarts on demand)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._scan is not None and self.gate is not None:
            self.gate.reset()            # the dropped scan's frame counts as not scanned
        self._scan = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request_detection(self) -> None:
        """Run the detector on the next frame (e.g. a new person stepped in)."""
        self._detect_requested = True

    def track(self, source, photos: bool | None = None) -> Iterator[tuple[Frame, FrameResult]]:
        """Track every frame of ``source``: a :class:`~fkp.tracker.sources.Source` or what
        :func:`~fkp.tracker.sources.open_source` takes (camera, stream URL, video file or
        URL, image folder or glob). Yields ``(frame, result)``, ``frame.image`` the BGR (H,
        W, 3) frame. :meth:`reset` first, so a video gives the same results on every run
        (with ``async_scan=False``). ``photos`` (default: the source's ``is_still``): each
        frame is an unrelated photo (:meth:`forget` before it). Closes the source at the
        end, also when the caller stops early."""
        from .sources import Source, open_source

        src = source if isinstance(source, Source) else open_source(source)
        photos = src.is_still if photos is None else photos
        self.reset()
        try:
            for frame in src:
                if photos:
                    self.forget()
                yield frame, self.process(frame.image, frame.timestamp_ms, frame.index)
        finally:
            src.close()

    def process(self, frame: np.ndarray, timestamp_ms: float | None = None,
                index: int | None = None) -> FrameResult:
        """Track faces in one frame (BGR (H, W, 3) or gray (H, W) uint8). ``timestamp_ms``
        drives the smoothing (default: wall clock since the first frame); ``index`` is
        copied to the result (default: frames processed so far)."""
        t_start = time.perf_counter()
        self.timings.update(dict.fromkeys(STAGES, 0.0))
        image = as_image(frame)     # made gray only where a crop reads it (while tracking)
        if timestamp_ms is None:
            if self._t0 is None:
                self._t0 = t_start
            timestamp_ms = (t_start - self._t0) * 1000.0
        index = self._frame_no if index is None else index
        self._frame_no += 1
        self.stats["frames"] += 1
        h, w = image.shape[:2]

        lost = self._track(image, w, h)
        self._since_detect += 1
        urgent = not self._tracks or lost or self._detect_requested
        due = urgent or (self.redetect_every and self._since_detect >= self.redetect_every)
        arrival = not due and self._arrival(image)
        detected = False
        if self._scan is not None and (self._scan.done() or urgent):
            scan, self._scan = self._scan, None  # (taken first: a failed scan is not kept)
            dets = scan.result()                # an earlier background scan has finished
            self._start_tracks(image, w, h, dets)
            detected = True
        if (due or arrival) and (len(self._tracks) < self.max_faces or self._detect_requested):
            scanner = self.detector if urgent else self.scan_detector
            if not (urgent or arrival) and self._scan is None:
                scanner = self._gated_scanner(image)
            if scanner is None:
                self._since_detect = 0           # nothing new can be there: skip this scan
            elif urgent or not self.async_scan:
                self._start_tracks(image, w, h, self._run_detector(image, scanner))
                self._gate_scanned(image)
                detected = True
            elif self._scan is None:             # (while a scan runs, nothing to convert)
                self._gate_scanned(image)
                gray = to_gray(image)
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="fkp-scan")
                own = gray.copy() if np.shares_memory(gray, frame) else gray  # caller may reuse
                self._scan = self._pool.submit(scanner.detect, own)
                self._since_detect = 0
                self.stats["detections"] += 1

        with self._timed("post"):
            result = frame_result(self._tracks, int(index), float(timestamp_ms),
                                  self.num_points, detected)
        self.timings["total"] = (time.perf_counter() - t_start) * 1000.0
        return result

    # ------------------------------------------------------------------ stages
    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        """Add the with-block's wall time to ``timings[stage]`` (ms)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] += (time.perf_counter() - t0) * 1000.0

    def _rolls(self, pts: np.ndarray) -> np.ndarray:
        """Eye-line roll (deg) per face of (N, K, 2) points; zeros without eye points."""
        return np.zeros(len(pts)) if self._eyes is None else eye_roll(pts[:, self._eyes])

    def _infer(self, image: np.ndarray, boxes: np.ndarray, angles: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """One batched model call: boxes (N, 4) + angles (N,) -> points (N, K, 2) frame px,
        scores (N,). Same as ``LandmarkModel.predict`` with crop / infer / post timed."""
        m = self.model
        t0 = time.perf_counter()
        mats = m.matrices(boxes, angles)
        crops = m.crops(image, mats)
        t1 = time.perf_counter()
        pts, scores = m.predict_crops(crops)
        t2 = time.perf_counter()
        pts = uncrop(pts, mats)
        t3 = time.perf_counter()
        for stage, a, b in (("crop", t0, t1), ("infer", t1, t2), ("post", t2, t3)):
            self.timings[stage] += (b - a) * 1000.0
        self.stats["model_calls"] += 1
        return pts, scores

    def _track(self, image: np.ndarray, w: int, h: int) -> bool:
        """Follow live tracks; returns True when one was lost."""
        if not self._tracks:
            return False
        with self._timed("crop"):
            prev = np.stack([t.crop_points() for t in self._tracks])
            boxes, angles = box_from_points(prev), self._rolls(prev)
        pts, scores = self._infer(image, boxes, angles)
        with self._timed("post"):
            kept = []
            for t, p, s, ok in zip(self._tracks, pts, scores,
                                   alive(pts, scores, self.score_threshold, w, h)):
                if ok:
                    t.points, t.score, t.age = p, float(s), t.age + 1
                    kept.append(t)
                else:
                    log.debug("track %d lost (score %.2f)", t.id, s)
            kept = drop_converged(kept)
            for t in kept:
                t.observe(image)
        n_lost = len(self._tracks) - len(kept)
        self.stats["tracks_lost"] += n_lost
        self._tracks = kept
        return n_lost > 0

    def _gated_scanner(self, image: np.ndarray) -> Detector | None:
        """The periodic scan's detector by the change gate's verdict (timed as ``detect``):
        None (nothing changed outside the tracked faces: skip), the recheck twin (unchanged,
        but ``max_skips`` ticks were skipped) or the scan twin."""
        if self.gate is None:
            return self.scan_detector
        with self._timed("detect"):
            ok = self.gate.should_scan(image, self._boxes())
        self.stats["scans_skipped"] += not ok
        return None if not ok else self.recheck_detector if self.gate.recheck \
            else self.scan_detector

    def _arrival(self, image: np.ndarray) -> bool:
        """Scan now, between periodic scans? (:class:`~fkp.tracker.scangate.ArrivalWatch`,
        while faces are tracked and there is room for more; timed as ``detect``.)"""
        watch, n = self.arrivals, len(self._tracks)
        if watch is None or not n or self._scan is not None or n >= self.max_faces \
                or not watch.due(self._since_detect):
            return False
        with self._timed("detect"):
            return watch.check(self._since_detect, image, self._boxes())

    def _gate_scanned(self, image: np.ndarray) -> None:
        """Tell the change gate that this frame was scanned (timed as ``detect``)."""
        if self.gate is not None:
            with self._timed("detect"):
                self.gate.scanned(image, self._boxes())

    def _boxes(self) -> np.ndarray:
        """Landmark boxes (N, 4) of the live tracks, frame px."""
        return box_from_points(np.stack([t.points for t in self._tracks])) if self._tracks \
            else np.zeros((0, 4))

    def _run_detector(self, image: np.ndarray, detector: Detector | None = None) -> np.ndarray:
        """Synchronous detection with ``detector`` (default: the thorough one) on the frame
        (BGR (H, W, 3) or gray): (N, 5) detector boxes, timed as ``detect``."""
        detector = self.photo_detector if self._one_chance else detector or self.detector
        with self._timed("detect"):
            gray = to_gray(image)
            dets = detector.detect_every(gray) if self._one_chance and \
                hasattr(detector, "detect_every") else detector.detect(gray)
        self._one_chance = False
        self.stats["detections"] += 1
        self._since_detect = 0
        self._detect_requested = False
        return dets

    def _start_tracks(self, image: np.ndarray, w: int, h: int, dets: np.ndarray) -> None:
        """Start tracks on detected faces not tracked yet (two-pass refinement); up to
        :data:`MAX_CANDIDATES` verified in one batch, so a rejected one takes no face's place."""
        room = self.max_faces - len(self._tracks)
        dets = dets[dets[:, 4] >= self.min_detection_score]
        if not len(dets) or room <= 0:
            return
        chosen = choose_new(self.detector.to_landmark_box(dets[:, :4]), self._boxes(),
                            self.iou_threshold, max(room, MAX_CANDIDATES))
        if not len(chosen):
            return
        pts, _ = self._infer(image, chosen, np.zeros(len(chosen)))
        pts, scores = self._infer(image, box_from_points(pts), self._rolls(pts))
        for p, s, ok in zip(pts, scores, alive(pts, scores, self.score_threshold, w, h)):
            if len(self._tracks) >= self.max_faces:
                break
            live = self._boxes()
            if not ok or len(live) and iou(box_from_points(p)[None], live).max() > CONVERGED_IOU:
                continue
            self._tracks.append(Track.start(self._next_id, p, float(s), image, self.smooth,
                                            self.still_hold))
            self.stats["tracks_started"] += 1
            log.debug("track %d started (score %.2f)", self._next_id, s)
            self._next_id += 1
            if self.arrivals is not None:
                self.arrivals.found()
