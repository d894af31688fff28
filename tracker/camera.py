"""Live sources: a local camera (an index such as 0, or a device path such as /dev/video0) or
a network stream (``rtsp://``, ``rtmp://``, ``http://``, ``udp://``, ...), read by a daemon
thread that keeps only the newest frame, so a slow consumer always gets the latest picture.

Frames are :class:`~fkp.tracker.sources.Frame` objects: ``index`` counts the frames grabbed
(dropped frames show as gaps), ``timestamp_ms`` is wall-clock time since the source opened,
``image`` is BGR (H, W, 3) uint8 as OpenCV reads it.

A network stream that stalls (a camera rebooting, a Wi-Fi drop) is reopened: up to
``STREAM_RECONNECTS`` attempts, ``RECONNECT_PAUSE`` s apart, each time it stops, as long as it
looks live (the stream reports no frame count; a file on a web server does, and ends at its
end instead of starting over). Opening and reading a stream time out after
``STREAM_TIMEOUT_MS``. Passwords in stream URLs are never logged or printed.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator

import cv2
import numpy as np

from .sources import (STREAM_TIMEOUT_MS, Frame, Source, SourceError, is_url, open_video_capture,
                      redact_url, valid_fps)

log = logging.getLogger(__name__)
STREAM_RECONNECTS = 5       # attempts to reopen a live network stream each time it stalls
RECONNECT_PAUSE = 1.0       # s between those attempts
MAX_READ_FAILURES = 50      # failed reads in a row (~0.5 s) that count as a stall


def open_capture(device: int | str) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` for a camera index, a device path, or a stream URL (through
    FFmpeg, with open and read timeouts: :func:`~fkp.tracker.sources.open_video_capture`)."""
    if isinstance(device, str) and is_url(device):
        return open_video_capture(device)
    return cv2.VideoCapture(device)


class CameraSource(Source):
    """A live camera or network stream read by a daemon thread that keeps only the newest frame.

    ``device``: camera index (int), device path, or stream URL. ``width``, ``height``: the
    capture size to ask for (a warning says when the camera delivers another).
    ``capture_factory(device)`` returns an object with ``isOpened()``, ``read()``, ``get()``,
    ``release()`` (default :func:`open_capture`; tests pass a fake). ``first_frame_timeout``:
    seconds to wait for the first frame (default 5; a stream's open timeout for URLs);
    ``frame_timeout``: a source that delivers nothing for this long (and is not reopening)
    ends with a warning (default 2 s; twice a stream's read timeout for URLs). ``reconnects``:
    attempts to reopen the source each time it stalls (default: ``STREAM_RECONNECTS`` for a
    network stream without a frame count, 0 otherwise).
    """

    is_live = True

    def __init__(self, device: int | str, width: int | None = None, height: int | None = None,
                 capture_factory: Callable[[int | str], object] | None = None,
                 first_frame_timeout: float | None = None, frame_timeout: float | None = None,
                 reconnects: int | None = None) -> None:
        self.device = device
        url = isinstance(device, str) and is_url(device)
        if isinstance(device, int):
            self.name = f"camera {device}"
            hint = (f"try another index (--camera {device + 1}), check permissions on "
                    f"/dev/video{device} (group 'video'), or use --video FILE")
        elif url:
            self.name = f"stream {redact_url(device)}"
            hint = ("check the address and the credentials, that the stream is up and that "
                    "this machine can reach it (try it in a media player such as ffplay)")
        else:
            self.name = f"camera {device}"
            hint = "check that the device exists and its permissions (group 'video')"
        if first_frame_timeout is None:
            first_frame_timeout = STREAM_TIMEOUT_MS / 1000 if url else 5.0
        if frame_timeout is None:        # a stream's read() may itself wait STREAM_TIMEOUT_MS
            frame_timeout = 2 * STREAM_TIMEOUT_MS / 1000 if url else 2.0
        self._factory = capture_factory or open_capture
        self._cap = self._factory(device)
        if not self._cap.isOpened():
            raise SourceError(f"cannot open {self.name}: {hint}")
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self.fps = valid_fps(self._cap.get(cv2.CAP_PROP_FPS))
        if reconnects is None:
            reconnects = STREAM_RECONNECTS if url and not \
                self._cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0 else 0
        self.reconnects = reconnects
        self.frame_timeout = frame_timeout
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._release_lock, self._released = threading.Lock(), False
        self._frame: np.ndarray | None = None
        self._count = 0                  # frames grabbed so far
        self._stamp = 0.0
        self._ended = self._reconnecting = False
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._reader, name=f"read-{self.name}",
                                        daemon=True)
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._count > 0 or self._ended, first_frame_timeout)
            first = self._frame
        if first is None:
            self.close()
            raise SourceError(f"{self.name} opened but delivered no frame in "
                              f"{first_frame_timeout:g} s: {hint}")
        self.size = (first.shape[1], first.shape[0])
        if width and height and self.size != (width, height):
            log.warning("%s delivers %dx%d, not the %dx%d asked for", self.name, *self.size,
                        width, height)

    def _reader(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                ok, frame = self._cap.read()
                now = time.monotonic()
                if not ok or frame is None:
                    failures += 1
                    if failures < MAX_READ_FAILURES:
                        time.sleep(0.01)
                        continue
                    if not self._count or not self._reconnect():
                        break
                    failures = 0
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

    def _reconnect(self) -> bool:
        """On the reader thread, after a stall: reopen the source, up to ``reconnects``
        times. True when it is open again."""
        with self._cond:
            self._reconnecting = True
        try:
            for attempt in range(1, self.reconnects + 1):
                log.warning("%s stopped delivering frames; reopening it (%d of %d)",
                            self.name, attempt, self.reconnects)
                self._cap.release()           # (only this thread reads it)
                if self._stop.wait(RECONNECT_PAUSE):
                    return False
                self._cap = self._factory(self.device)
                if self._cap.isOpened():
                    return True
            return False
        finally:
            with self._cond:
                self._reconnecting = False

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
                    deadline = time.monotonic() + self.frame_timeout
                    while not (self._count != last or self._ended or self._stop.is_set()):
                        if self._reconnecting:   # a stream being reopened: keep waiting
                            deadline = time.monotonic() + self.frame_timeout
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(min(left, 0.1))
                    if self._count == last:
                        if not self._stop.is_set():
                            log.warning("%s stopped delivering frames", self.name)
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
            log.warning("%s: read() still blocked after 2 s; it is released when the "
                        "read returns", self.name)
