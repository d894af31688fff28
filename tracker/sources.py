"""Frame sources behind one interface: cameras, video files, folders or globs of images.

``open_source(spec)`` picks the kind from ``spec`` (a camera index as int or digit string, a
video path, an image folder, a glob, or one image) and returns a :class:`Source`. Iterating a
source yields :class:`Frame` objects (``index``, ``timestamp_ms``, ``image`` BGR (H, W, 3)
uint8, as OpenCV reads it). Every failure to open is a :class:`SourceError` with a one-line
message for the user.

* Camera: a daemon reader thread keeps only the newest frame, so a slow consumer always gets
  the latest picture (frames in between are dropped; ``index`` counts frames grabbed, so gaps
  show). ``timestamp_ms`` is wall-clock time since the source opened. ``close()`` stops it.
* Video file: every frame in order (decoded ahead on a thread with ``prefetch``);
  ``timestamp_ms`` from ``CAP_PROP_POS_MSEC`` (falls back to ``index * 1000 / fps``). A
  truncated file ends early: the frames read are delivered, a warning is logged and
  ``truncated`` is set.
* Images: sorted file names; ``timestamp_ms = index * 1000 / fps``; unreadable files are
  skipped with a warning. Their frames carry the file's ``path``, and the source says
  ``is_still``: the images may be unrelated photos (fkp-track then processes each on its
  own) or the frames of one clip (``--track-images``).
"""
from __future__ import annotations

import glob as globmod
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from .data import IMAGE_EXTS

log = logging.getLogger(__name__)
DEFAULT_FPS = 30.0
VIDEO_PREFETCH = 4      # fkp-track's and fkp-bench's default decode-ahead for video files


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


def _valid_fps(value: float) -> float:
    return float(value) if value and math.isfinite(value) and 0 < value < 1000 else DEFAULT_FPS


def _open_file_capture(path: Path) -> cv2.VideoCapture:
    api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    return cv2.VideoCapture(str(path), api)


class VideoSource(Source):
    """Every frame of a video file, in order.

    ``prefetch`` > 0 decodes on a background thread up to that many frames ahead of the
    consumer (a bounded queue: memory stays flat), so decoding overlaps inference; frames still
    come in order and none is dropped. 0 decodes on the caller's thread.
    """

    def __init__(self, path: str | Path, prefetch: int = 0) -> None:
        p = Path(path)
        self.name = str(p)
        self.prefetch = max(0, int(prefetch))
        if p.is_dir():
            raise SourceError(f"{p} is a directory, not a video (use --images for image folders)")
        if not p.is_file():
            raise SourceError(f"video file {p} does not exist")
        self._cap = _open_file_capture(p)
        if not self._cap.isOpened():
            raise SourceError(f"cannot read video {p} (not a video, unsupported codec, or a "
                              "truncated/corrupt file)")
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"video {p} has no readable frames (truncated or corrupt file?)")
        self._first: np.ndarray | None = first
        self._reader: tuple[threading.Thread | None, threading.Event] = (None, threading.Event())
        self.fps = _valid_fps(self._cap.get(cv2.CAP_PROP_FPS))
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
        # the container's count may be estimated; allow one frame of slack
        if ended and 0 < self.frame_count and read < self.frame_count - 1:
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


class CameraSource(Source):
    """A live camera read by a daemon thread that keeps only the newest frame.

    ``capture_factory(index)`` returns an object with ``isOpened()``, ``read()``, ``get()``,
    ``release()`` (default ``cv2.VideoCapture``; tests pass a fake). ``first_frame_timeout``:
    seconds to wait for the first frame; ``frame_timeout``: a running camera that delivers
    nothing for this long ends the stream with a warning.
    """

    is_live = True

    def __init__(self, index: int, width: int | None = None, height: int | None = None,
                 capture_factory: Callable[[int], object] | None = None,
                 first_frame_timeout: float = 5.0, frame_timeout: float = 2.0) -> None:
        self.index, self.name = index, f"camera {index}"
        hint = (f"try another index (--camera {index + 1}), check permissions on "
                f"/dev/video{index} (group 'video'), or use --video FILE")
        self._cap = (capture_factory or cv2.VideoCapture)(index)
        if not self._cap.isOpened():
            raise SourceError(f"cannot open camera {index}: {hint}")
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self.fps = _valid_fps(self._cap.get(cv2.CAP_PROP_FPS))
        self.frame_timeout = frame_timeout
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._release_lock, self._released = threading.Lock(), False
        self._frame: np.ndarray | None = None
        self._count = 0                  # frames grabbed so far
        self._stamp = 0.0
        self._ended = False
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._reader, name=f"camera-{index}", daemon=True)
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._count > 0 or self._ended, first_frame_timeout)
            first = self._frame
        if first is None:
            self.close()
            raise SourceError(f"camera {index} opened but delivered no frame in "
                              f"{first_frame_timeout:g} s: {hint}")
        self.size = (first.shape[1], first.shape[0])

    def _reader(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                ok, frame = self._cap.read()
                now = time.monotonic()
                if not ok or frame is None:
                    failures += 1
                    if failures >= 50:
                        break
                    time.sleep(0.01)
                    continue
                failures = 0
                with self._cond:
                    self._frame, self._stamp = frame, now
                    self._count += 1
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            if self._stop.is_set():      # close() gave up waiting for a blocked read()
                self._release()

    def _release(self) -> None:
        with self._release_lock:
            if not self._released:
                self._released = True
                self._cap.release()

    def __iter__(self) -> Iterator[Frame]:
        last = 0
        try:
            while not self._stop.is_set():
                with self._cond:
                    self._cond.wait_for(lambda: self._count != last or self._ended
                                        or self._stop.is_set(), self.frame_timeout)
                    if self._count == last:
                        if not self._stop.is_set():
                            log.warning("camera %d stopped delivering frames", self.index)
                        return
                    last, frame, stamp = self._count, self._frame, self._stamp
                yield Frame(last - 1, (stamp - self._t0) * 1000.0, frame)
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        # never release under a read() in progress (OpenCV can deadlock): a reader still
        # blocked in read() releases the camera itself when the read returns
        if not self._thread.is_alive() or self._thread is threading.current_thread():
            self._release()
        else:
            log.warning("camera %d: read() still blocked after 2 s; it is released when the "
                        "read returns", self.index)


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def open_source(spec: int | str | Path, kind: str | None = None, fps: float | None = None,
                prefetch: int = 0) -> Source:
    """Open a frame source.

    ``spec``: camera index (int or digit string), video file, image folder, glob or one image.
    ``kind`` forces "camera", "video" or "images" (the CLI's --camera/--video/--images).
    ``fps``: frame rate for image sources (default 30). ``prefetch``: video files are
    decoded this many frames ahead on a thread (0 = on the caller's thread).
    """
    text = str(spec)
    if kind == "camera" or (kind is None and (isinstance(spec, int) or text.isdigit())):
        try:
            index = int(text)
        except ValueError:
            raise SourceError(f"camera index must be a number, got {text!r}") from None
        return CameraSource(index)
    if kind == "video":
        return VideoSource(Path(text), prefetch)
    if _is_glob(text) and not Path(text).exists():
        paths = sorted(Path(p) for p in globmod.glob(text)
                       if Path(p).suffix.lower() in IMAGE_EXTS and Path(p).is_file())
        if not paths:
            raise SourceError(f"no images match {text}")
        return ImageSource(paths, text, fps or DEFAULT_FPS)
    p = Path(text)
    if p.is_dir():
        paths = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS and q.is_file())
        return ImageSource(paths, text, fps or DEFAULT_FPS)
    if not p.exists():
        raise SourceError(f"{text}: no such file or directory")
    if p.suffix.lower() in IMAGE_EXTS:
        return ImageSource([p], text, fps or DEFAULT_FPS)
    if kind == "images":
        raise SourceError(f"{text} is neither an image folder, a glob nor an image")
    return VideoSource(p, prefetch)
