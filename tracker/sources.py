"""Frame sources behind one interface: cameras, network streams, video files, folders or globs
of images.

``open_source(spec)`` picks the kind from ``spec`` (a camera index as int or digit string, a
camera device path such as /dev/video0, a stream URL, a video path or URL, an image folder, a
glob, or one image) and returns a :class:`Source`. Iterating a source yields :class:`Frame`
objects (``index``, ``timestamp_ms``, ``image`` BGR (H, W, 3) uint8, as OpenCV reads it).
Every failure to open is a :class:`SourceError` with a one-line message for the user.

* Camera or network stream (``rtsp://``, ``rtmp://``, ``udp://``, ``tcp://``, ``srt://``, or
  ``http(s)://`` not ending in a video file name): :class:`~fkp.tracker.camera.CameraSource`,
  a daemon reader thread keeps only the newest frame, so a slow consumer always gets the
  latest picture (frames in between are dropped; ``index`` counts frames grabbed, so gaps
  show). ``timestamp_ms`` is wall-clock time since the source opened. ``close()`` stops it.
* Video file, or a video file's URL (``http(s)://.../talk.mp4``): every frame in order
  (decoded ahead on a thread with ``prefetch``); ``timestamp_ms`` from ``CAP_PROP_POS_MSEC``
  (falls back to ``index * 1000 / fps``). A truncated file ends early: the frames read are
  delivered, a warning is logged and ``truncated`` is set.
* Images: file names in natural order (``f2`` before ``f10``); ``timestamp_ms = index *
  1000 / fps``; unreadable files are skipped with a warning. Their frames carry the file's
  ``path``, and the source says ``is_still``: the images may be unrelated photos (fkp-track
  then processes each on its own) or the frames of one clip (``--track-images``).

``--camera`` forces live reading (newest frame only) and ``--video`` every frame in order,
whatever the URL looks like.
"""
from __future__ import annotations

import glob as globmod
import logging
import math
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import cv2
import numpy as np

from .data import IMAGE_EXTS

log = logging.getLogger(__name__)
DEFAULT_FPS = 30.0
VIDEO_PREFETCH = 4      # fkp-track's and fkp-bench's default decode-ahead for video files
STREAM_TIMEOUT_MS = 10000   # opening a network source, and one read() of it
VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")
_URL = re.compile(r"^(rtsps?|rtmps?|https?|udp|tcp|srt)://", re.IGNORECASE)


class SourceError(RuntimeError):
    """A frame source cannot be opened or read; the message is one line for the user."""


@dataclass
class Frame:
    """One frame: ``index`` (0-based), ``timestamp_ms``, ``image`` BGR (H, W, 3) uint8, and
    ``path``, the image file it was read from (image sources; None for cameras and videos)."""

    index: int
    timestamp_ms: float
    image: np.ndarray
    path: Path | None = None


class Source:
    """Base class. ``fps`` (float), ``size`` (width, height) of the first frame, ``is_live``,
    ``is_still`` (frames are image files, not necessarily one scene), ``frame_count``
    (expected number of frames, -1 when unknown), ``truncated``."""

    name: str = ""
    fps: float = DEFAULT_FPS
    size: tuple[int, int] = (0, 0)
    is_live: bool = False
    is_still: bool = False
    frame_count: int = -1
    truncated: bool = False

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file (idempotent)."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, fps={self.fps:.3g}, size={self.size})"


def valid_fps(value: float) -> float:
    """A capture's reported fps, or ``DEFAULT_FPS`` where it reports none or nonsense."""
    return float(value) if value and math.isfinite(value) and 0 < value < 1000 else DEFAULT_FPS


def is_url(text: str) -> bool:
    """True for a network address OpenCV's FFmpeg backend reads (rtsp, rtmp, http(s), udp,
    tcp, srt)."""
    return bool(_URL.match(text))


def is_video_file_url(text: str) -> bool:
    """An http(s) URL whose path ends in a video file name: a finished file, read in order."""
    parts = urlsplit(text)
    return parts.scheme.lower() in ("http", "https") and \
        Path(parts.path).suffix.lower() in VIDEO_EXTS


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def is_live_spec(spec: int | str | Path) -> bool:
    """Whether ``spec``, given with no kind forced, names a live source: a camera index, a
    camera device (/dev/video0) or a stream URL that is not a video file's."""
    text = str(spec)
    return isinstance(spec, int) or text.isdigit() or \
        (is_url(text) and not is_video_file_url(text)) or \
        (text.startswith("/dev/") and Path(text).is_char_device())


def decode_ahead_threads() -> int:
    """FFmpeg decoding threads for a decoder that runs beside the frame loop (``prefetch``):
    the cores left beside the loop's two busy threads (the caller's and onnxruntime's
    second), at least 1. FFmpeg's default, a thread per core, competes with both: on 2
    cores (session 21) the crop stage ran at 0.32-0.43 against 0.22-0.28 ms per frame."""
    return max(1, (os.cpu_count() or 1) - 2)


def open_video_capture(path: Path | str, threads: int = 0) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` for a video file or URL through FFmpeg where OpenCV has it; a URL
    gets open and read timeouts of ``STREAM_TIMEOUT_MS``. ``threads``: FFmpeg's decoding
    threads (0: its default, one per core)."""
    if not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
        return cv2.VideoCapture(str(path), cv2.CAP_ANY)
    n_threads = getattr(cv2, "CAP_PROP_N_THREADS", None)      # OpenCV 4.7 and later
    params = [n_threads, threads] if threads > 0 and n_threads is not None else []
    if is_url(str(path)):
        params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                   cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
    return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)


class VideoSource(Source):
    """Every frame of a video file, in order.

    ``prefetch`` > 0 decodes on a background thread up to that many frames ahead of the
    consumer (a bounded queue: memory stays flat), so decoding overlaps inference; frames still
    come in order and none is dropped. That decoder keeps to :func:`decode_ahead_threads`
    threads. 0 decodes on the caller's thread.
    """

    def __init__(self, path: str | Path, prefetch: int = 0) -> None:
        url = is_url(str(path))
        p = str(path) if url else Path(path)
        self.name = redact_url(p) if url else str(p)
        self.prefetch = max(0, int(prefetch))
        if not url and p.is_dir():
            raise SourceError(f"{p} is a directory, not a video (fkp-track reads image "
                              "folders: fkp-track --images DIR)")
        if not url and not p.is_file():
            raise SourceError(f"video file {p} does not exist")
        self._cap = open_video_capture(p, decode_ahead_threads() if self.prefetch else 0)
        if not self._cap.isOpened():
            raise SourceError(f"cannot read video {self.name} (" + (
                "unreachable, not found, or not a video)" if url else
                "not a video, unsupported codec, or a truncated/corrupt file)"))
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"video {self.name} has no readable frames (truncated or corrupt "
                              "file?)")
        self._first: np.ndarray | None = first
        self._reader: tuple[threading.Thread | None, threading.Event] = (None, threading.Event())
        self.fps = valid_fps(self._cap.get(cv2.CAP_PROP_FPS))
        n = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(n) if n and math.isfinite(n) and n > 0 else -1
        self.size = (first.shape[1], first.shape[0])
        self._first_ts = self._timestamp(0, -1.0)

    def _timestamp(self, index: int, previous: float) -> float:
        pos = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        if pos is not None and math.isfinite(pos) and pos >= 0 and (pos > previous or index == 0):
            return float(pos)
        return index * 1000.0 / self.fps

    def _decode(self, stop: threading.Event | None = None) -> Iterator[Frame]:
        """The frames in order, decoded on the calling thread; checks for truncation at the end."""
        image, self._first = self._first, None
        ts, index, ended = self._first_ts, 0, False
        while stop is None or not stop.is_set():
            yield Frame(index, ts, image)
            ok, image = self._cap.read()
            if not ok or image is None:
                ended = True
                break
            index += 1
            ts = self._timestamp(index, ts)
        read = index + 1
        # the container's count may be an estimate (MKV, WebM: duration x fps): 2 % slack
        if ended and 0 < self.frame_count and read < self.frame_count - max(
                1, int(0.02 * self.frame_count)):
            self.truncated = True
            log.warning("video %s ended after %d of %d frames (truncated file?); the frames "
                        "read were processed", self.name, read, self.frame_count)

    def _prefetched(self) -> Iterator[Frame]:
        """:meth:`_decode` run on a reader thread, ``prefetch`` frames ahead."""
        frames: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop, done = threading.Event(), object()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    frames.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def reader() -> None:
            try:
                for frame in self._decode(stop):
                    if not put(frame):
                        return
            except Exception as exc:  # handed to the consumer, raised there
                put(exc)
                return
            put(done)

        thread = threading.Thread(target=reader, name="video-decode", daemon=True)
        self._reader = (thread, stop)            # close() stops it before releasing the file
        thread.start()
        try:
            while True:
                try:
                    item = frames.get(timeout=0.2)
                except queue.Empty:
                    if thread.is_alive() or not frames.empty():
                        continue
                    return                       # stopped by close() from elsewhere
                if item is done:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()

    def __iter__(self) -> Iterator[Frame]:
        if self._first is None:
            raise SourceError(f"video {self.name} can be iterated only once")
        try:
            yield from (self._prefetched() if self.prefetch else self._decode())
        finally:
            self.close()

    def close(self) -> None:
        """Stop the decoder thread (if any), then release the file. Releasing a capture while
        another thread is inside its ``read()`` can deadlock OpenCV, so the order matters: a
        caller may close the source while a prefetching iterator is still suspended."""
        thread, stop = self._reader
        if thread is not None and thread is not threading.current_thread():
            stop.set()
            thread.join()
        self._cap.release()


class ImageSource(Source):
    """Image files as frames, in the given order."""

    is_still = True

    def __init__(self, paths: list[Path], name: str, fps: float = DEFAULT_FPS) -> None:
        if not paths:
            raise SourceError(f"no images ({' '.join(IMAGE_EXTS)}) in {name}")
        self.paths, self.name, self.fps = paths, name, fps
        self.frame_count = len(paths)
        first = next((im for im in (cv2.imread(str(p)) for p in paths[:10]) if im is not None),
                     None)
        if first is None:
            raise SourceError(f"cannot read any image of {name} (first: {paths[0]})")
        self.size = (first.shape[1], first.shape[0])

    def __iter__(self) -> Iterator[Frame]:
        for i, p in enumerate(self.paths):
            image = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("skipped unreadable image %s", p)
                continue
            yield Frame(i, i * 1000.0 / self.fps, image, p)


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def natural_key(path: Path) -> list:
    """Sort key that orders numbered files as numbers: ``f2.png`` before ``f10.png``
    (FFmpeg's ``%d`` names), then by the full path."""
    parts = re.split(r"(\d+)", str(path))
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in parts] + [(2, 0, str(path))]


def open_source(spec: int | str | Path, kind: str | None = None, fps: float | None = None,
                prefetch: int = 0, size: tuple[int, int] | None = None) -> Source:
    """Open a frame source.

    ``spec``: camera index (int or digit string), camera device path, stream URL, video file
    or URL, image folder, glob or one image. ``kind`` forces "camera" (live: an index, a
    device path or a URL), "video" or "images" (the CLI's --camera/--video/--images).
    ``fps``: frame rate for image sources (default 30). ``prefetch``: video files are
    decoded this many frames ahead on a thread (0 = on the caller's thread). ``size``:
    (width, height) to ask a camera for (live sources only).
    """
    from .camera import CameraSource

    text = str(spec)
    if isinstance(spec, int) or (kind in (None, "camera") and text.isdigit()):
        return CameraSource(int(text), *(size or ()))
    url = is_url(text)
    if kind == "camera" or (kind is None and is_live_spec(text)):
        if not (url or Path(text).exists()):
            raise SourceError(f"camera must be an index, a device path or a stream URL "
                              f"(rtsp://, http://, ...): no such device {text}")
        if not url and Path(text).is_file():
            log.warning("%s is a file: read as a camera, only the newest frame is kept and "
                        "frames are dropped; --video %s processes every frame", text, text)
        return CameraSource(text, *(size or ()))
    if kind == "video" or url:
        return VideoSource(text, prefetch)
    if _is_glob(text) and not Path(text).exists():
        paths = sorted((Path(p) for p in globmod.glob(text)
                        if Path(p).suffix.lower() in IMAGE_EXTS and Path(p).is_file()),
                       key=natural_key)
        if not paths:
            raise SourceError(f"no images match {text}")
        return ImageSource(paths, text, fps or DEFAULT_FPS)
    p = Path(text)
    if p.is_dir():
        paths = sorted((q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS and q.is_file()),
                       key=natural_key)
        return ImageSource(paths, text, fps or DEFAULT_FPS)
    if not p.exists():
        raise SourceError(f"{text}: no such file or directory")
    if p.suffix.lower() in IMAGE_EXTS:
        return ImageSource([p], text, fps or DEFAULT_FPS)
    if kind == "images":
        raise SourceError(f"{text} is neither an image folder, a glob nor an image")
    return VideoSource(p, prefetch)
