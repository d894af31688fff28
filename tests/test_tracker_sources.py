"""Frame sources: video, folder, glob, one image, bad paths, camera (with a fake capture),
network streams (a local HTTP server with byte ranges, and fake captures that stall)."""
from __future__ import annotations

import http.server
import logging
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import BLANK_FRAMES, FACE_FRAMES, FACE_FRAMES_2, FRAME_H, FRAME_W
from fkp.tracker import camera, sources
from fkp.tracker.camera import CameraSource
from fkp.tracker.sources import (ImageSource, SourceError, VideoSource, is_live_spec, is_url,
                                 is_video_file_url, open_source, redact_url)

N_FRAMES = FACE_FRAMES + BLANK_FRAMES + FACE_FRAMES_2


@pytest.mark.parametrize("prefetch", [0, 3])
def test_video_every_frame_in_order(face_video, prefetch):
    src = open_source(str(face_video), prefetch=prefetch)
    assert isinstance(src, VideoSource) and not src.is_live
    assert src.size == (FRAME_W, FRAME_H) and src.fps == pytest.approx(25.0)
    assert src.frame_count == N_FRAMES
    frames = list(src)
    assert [f.index for f in frames] == list(range(N_FRAMES))
    ts = np.array([f.timestamp_ms for f in frames])
    assert ts[0] == 0 and np.allclose(np.diff(ts), 40.0)
    assert frames[0].image.shape == (FRAME_H, FRAME_W, 3)
    assert not src.truncated
    cap = cv2.VideoCapture(str(face_video))            # the same pictures as a plain read
    for f in frames:
        ok, image = cap.read()
        assert ok and np.array_equal(f.image, image)
    cap.release()


def test_a_decoder_beside_the_frame_loop_keeps_to_the_spare_cores(face_video, monkeypatch):
    """A prefetching video source asks FFmpeg for the cores beside the frame loop's two busy
    threads (at least one); decoding on the caller's thread keeps FFmpeg's default."""
    for cores, threads in ((None, 1), (1, 1), (2, 1), (4, 2), (16, 14)):
        monkeypatch.setattr(sources.os, "cpu_count", lambda: cores)
        assert sources.decode_ahead_threads() == threads
    opened = []
    real = cv2.VideoCapture

    def capture(*args):
        opened.append(args[2] if len(args) > 2 else None)
        return real(*args)

    monkeypatch.setattr(sources.cv2, "VideoCapture", capture)
    monkeypatch.setattr(sources.os, "cpu_count", lambda: 2)
    if not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
        pytest.skip("OpenCV without FFmpeg")
    assert len(list(open_source(face_video, prefetch=3))) == N_FRAMES
    assert len(list(open_source(face_video, prefetch=0))) == N_FRAMES
    assert opened == [[cv2.CAP_PROP_N_THREADS, 1], []]


def test_prefetching_video_stops_its_thread_when_the_consumer_stops(face_video):
    src = open_source(face_video, prefetch=2)
    it = iter(src)
    assert [next(it).index for _ in range(3)] == [0, 1, 2]
    assert any(t.name == "video-decode" for t in threading.enumerate())
    it.close()                                         # as a `break` out of a for loop does
    assert not any(t.name == "video-decode" for t in threading.enumerate())


def test_closing_a_video_under_a_suspended_iterator_stops_the_decoder_first(face_video):
    """fkp-bench closes the source while its iterator is still suspended; releasing the
    capture under the decoder's read() deadlocked OpenCV (a CI run hung here)."""
    src = open_source(face_video, prefetch=2)
    it = iter(src)
    next(it)
    time.sleep(0.05)                                   # the decoder is now blocked on a full queue
    closer = threading.Thread(target=src.close, daemon=True)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "close() hung"
    assert not any(t.name == "video-decode" for t in threading.enumerate())
    it.close()                                         # and the iterator still ends cleanly


@pytest.mark.parametrize("prefetch", [0, 3])
def test_truncated_video_keeps_frames_and_warns(face_video, tmp_path, caplog, prefetch):
    data = face_video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="fkp.tracker.sources"):
        src = open_source(cut, prefetch=prefetch)
        n = sum(1 for _ in src)
    assert 0 < n < N_FRAMES
    assert src.truncated
    assert any("truncated" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("extra, truncated", [(0, False), (3, False), (4, True)])
def test_an_estimated_frame_count_a_little_high_is_not_truncation(tmp_path, extra, truncated):
    """MKV and WebM frame counts are estimates (duration x fps): a file that ends within
    2 % of its count (at least one frame; 3 of 150) is whole."""
    from conftest import FRAME_H, FRAME_W, write_video

    video = write_video(tmp_path / "v.avi", [np.full((FRAME_H, FRAME_W, 3), i, np.uint8)
                                             for i in range(150)])
    src = open_source(video)
    src.frame_count = 150 + extra
    assert sum(1 for _ in src) == 150 and src.truncated == truncated


def test_images_folder_glob_and_single(tmp_path, astronaut_bgr, caplog):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i:02d}.png"), astronaut_bgr[::4, ::4])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "f03.png").write_bytes(b"broken")           # unreadable: skipped
    src = open_source(tmp_path)
    assert isinstance(src, ImageSource) and src.size == (128, 128)
    with caplog.at_level(logging.WARNING):
        frames = list(src)
    assert [f.index for f in frames] == [0, 1, 2]
    assert "f03.png" in caplog.text
    assert [f.index for f in open_source(str(tmp_path / "f0[12].png"))] == [0, 1]
    one = list(open_source(tmp_path / "f00.png"))
    assert len(one) == 1 and one[0].timestamp_ms == 0


def test_numbered_images_are_read_in_number_order(tmp_path, astronaut_bgr):
    """FFmpeg's ``%d`` names (f1, f2, ..., f10) are frames in number order, not f1, f10, f2."""
    for i in (1, 2, 10, 11, 3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), astronaut_bgr[::8, ::8])
    order = ["f1.png", "f2.png", "f3.png", "f10.png", "f11.png"]
    assert [f.path.name for f in open_source(tmp_path)] == order
    assert [f.path.name for f in open_source(str(tmp_path / "f*.png"))] == order


@pytest.mark.parametrize("make,kind,words", [
    (lambda d: d / "missing.mp4", None, "no such file"),
    (lambda d: d / "missing.mp4", "video", "does not exist"),
    (lambda d: d, "video", "directory"),
    (lambda d: d / "nothing*.png", None, "no images match"),
    (lambda d: (d / "empty").mkdir() or d / "empty", None, "no images"),
    (lambda d: (d / "junk.mp4").write_bytes(b"\0junk" * 50) and d / "junk.mp4", None,
     "cannot read video"),
])
def test_bad_sources(tmp_path, make, kind, words):
    spec = make(tmp_path)
    with pytest.raises(SourceError) as exc:
        open_source(spec, kind)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_video_with_no_frames(face_video, tmp_path):
    cut = tmp_path / "stub.avi"
    cut.write_bytes(face_video.read_bytes()[:3000])
    with pytest.raises(SourceError, match="cannot read video|no readable frames"):
        open_source(cut)


class FakeCapture:
    """Delivers numbered frames every ``period`` s; ``opened=False`` mimics a missing camera."""

    def __init__(self, index, opened=True, period=0.002, fail_after=None):
        self.opened, self.period, self.n, self.fail_after = opened, period, 0, fail_after
        self.released = threading.Event()

    def isOpened(self):
        return self.opened

    def read(self):
        time.sleep(self.period)
        if self.released.is_set() or (self.fail_after is not None and self.n >= self.fail_after):
            return False, None
        self.n += 1
        return True, np.full((24, 32, 3), self.n % 256, np.uint8)

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, prop, value):
        return True

    def release(self):
        self.released.set()


def test_camera_keeps_only_newest_frame_and_stops_cleanly():
    fake = FakeCapture(0)
    src = CameraSource(0, capture_factory=lambda i: fake)
    assert src.is_live and src.size == (32, 24) and src.fps == 30
    got = []
    for frame in src:
        got.append(frame)
        time.sleep(0.02)                       # slow consumer: frames get dropped
        if len(got) == 5:
            break
    idx = [f.index for f in got]
    assert idx == sorted(set(idx)) and idx[-1] - idx[0] > 4     # gaps: newest frame only
    assert all(f.image[0, 0, 0] == (f.index + 1) % 256 for f in got)
    ts = [f.timestamp_ms for f in got]
    assert ts == sorted(ts)
    src.close()
    assert not src._thread.is_alive() and fake.released.is_set()
    assert src._thread.daemon


def test_camera_close_never_releases_under_a_blocked_read():
    """A camera stuck in read() (USB hiccup): close() returns, and the capture is released by
    the reader once its read returns, never while it is inside it."""
    class Stuck(FakeCapture):
        def __init__(self):
            super().__init__(0)
            self.gate, self.reading, self.overlap = threading.Event(), False, False

        def read(self):
            self.reading = True
            if self.n >= 2:
                self.gate.wait(10)                    # blocks until the test opens the gate
            out = super().read()
            self.reading = False
            return out

        def release(self):
            self.overlap |= self.reading
            super().release()

    fake = Stuck()
    src = CameraSource(0, capture_factory=lambda i: fake)
    deadline = time.monotonic() + 5
    while not (fake.n >= 2 and fake.reading) and time.monotonic() < deadline:
        time.sleep(0.005)                              # until the reader is stuck in read()
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 5 and not fake.released.is_set()
    fake.gate.set()
    src._thread.join(timeout=5)
    assert fake.released.is_set() and not fake.overlap


def test_camera_that_stops_delivering_ends_stream():
    src = CameraSource(0, capture_factory=lambda i: FakeCapture(0, fail_after=3),
                       frame_timeout=0.5)
    assert len(list(src)) <= 3


def test_camera_size_is_asked_for_and_a_different_one_reported(caplog, monkeypatch):
    class Sized(FakeCapture):
        asked: dict = {}

        def set(self, prop, value):
            self.asked[prop] = value
            return True

    fake = Sized(0)
    monkeypatch.setattr(camera, "open_capture", lambda device: fake)
    with caplog.at_level(logging.WARNING, logger="fkp.tracker.camera"):
        src = open_source(0, size=(1280, 720))
    src.close()
    assert fake.asked == {cv2.CAP_PROP_FRAME_WIDTH: 1280, cv2.CAP_PROP_FRAME_HEIGHT: 720}
    assert src.size == (32, 24) and "delivers 32x24, not the 1280x720" in caplog.text


def test_camera_that_wont_open():
    with pytest.raises(SourceError) as exc:
        CameraSource(7, capture_factory=lambda i: FakeCapture(i, opened=False))
    msg = str(exc.value)
    assert "camera 7" in msg and "/dev/video7" in msg and "--video" in msg


@pytest.mark.parametrize("spec,url,file_url,live", [
    ("rtsp://10.0.0.2:554/stream1", True, False, True),
    ("RTMP://host/app/key", True, False, True),
    ("udp://@:1234", True, False, True),
    ("http://cam.local/video", True, False, True),          # an MJPEG camera
    ("https://host/live/index.m3u8", True, False, True),     # HLS
    ("http://host/clips/talk.MP4?token=1", True, True, False),
    ("https://host/a.webm", True, True, False),
    ("talk.mp4", False, False, False),
    ("ftp://host/a.mp4", False, False, False),
    ("0", False, False, True),
    ("/dev/null", False, False, True),                        # a character device
])
def test_url_and_live_classification(spec, url, file_url, live):
    assert is_url(spec) is url and is_video_file_url(spec) is file_url
    assert is_live_spec(spec) is live


def test_passwords_are_redacted():
    assert redact_url("rtsp://admin:s3cret@10.0.0.2:554/ch1?x=1") == \
        "rtsp://admin:***@10.0.0.2:554/ch1?x=1"
    assert redact_url("rtsp://10.0.0.2/ch1") == "rtsp://10.0.0.2/ch1"
    assert redact_url("http://user@host/v") == "http://user@host/v"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges, as a real web server serves them (FFmpeg seeks in an
    mp4); ``http.server``'s own handler ignores ranges."""

    def log_message(self, *args):
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        size = path.stat().st_size
        m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = (int(m[1]), int(m[2]) if m[2] else size - 1) if m else (0, size - 1)
        self.send_response(206 if m else 200)
        self.send_header("Accept-Ranges", "bytes")
        if m:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        f = path.open("rb")
        f.seek(start)
        self.left = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        while self.left > 0 and (chunk := source.read(min(65536, self.left))):
            outputfile.write(chunk)
            self.left -= len(chunk)


@pytest.fixture
def web(tmp_path, face_video):
    """http://127.0.0.1:PORT/ serving face.avi and the same bytes as 'live' (no file name)."""
    (tmp_path / "face.avi").write_bytes(face_video.read_bytes())
    (tmp_path / "live").write_bytes(face_video.read_bytes())
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_video_url_gives_every_frame_and_a_live_url_the_newest(web, face_video):
    src = open_source(f"{web}/face.avi")
    assert isinstance(src, VideoSource) and not src.is_live
    cap = cv2.VideoCapture(str(face_video))
    for frame in src:
        ok, image = cap.read()
        assert ok and np.array_equal(frame.image, image)
    assert frame.index == N_FRAMES - 1 and not cap.read()[0]
    live = open_source(f"{web}/live")
    assert isinstance(live, CameraSource) and live.is_live and live.size == (FRAME_W, FRAME_H)
    assert live.reconnects == 0               # it reports a frame count: a file, not a camera
    assert 0 < len(list(live)) <= N_FRAMES
    forced = open_source(f"{web}/live", "video")
    assert isinstance(forced, VideoSource) and sum(1 for _ in forced) == N_FRAMES


def test_unreachable_streams_fail_in_one_line_without_the_password(web):
    with pytest.raises(SourceError, match="cannot read video") as exc:
        open_source(f"{web}/nothing.mp4")
    assert "\n" not in str(exc.value)
    with pytest.raises(SourceError) as exc:
        open_source("rtsp://admin:s3cret@127.0.0.1:1/ch1")
    msg = str(exc.value)
    assert "cannot open stream rtsp://admin:***@127.0.0.1:1/ch1" in msg and "s3cret" not in msg
    with pytest.raises(SourceError, match="no such device"):
        open_source("/dev/no-such-camera", "camera")


def test_a_stalled_stream_is_reopened(monkeypatch, caplog):
    """A network camera that stalls twice is reopened each time and the frames go on; one
    that cannot be reopened ends after its attempts."""
    monkeypatch.setattr(camera, "RECONNECT_PAUSE", 0.01)
    opened = []

    def factory(url):
        opened.append(FakeCapture(url, fail_after=None if len(opened) == 2 else 3))
        return opened[-1]

    src = CameraSource("rtsp://cam/1", capture_factory=factory, reconnects=2,
                       frame_timeout=3)
    with caplog.at_level(logging.WARNING, logger="fkp.tracker.camera"):
        got = []
        for frame in src:
            got.append(frame)
            if len(got) == 10:
                break
    assert len(opened) == 3 and opened[0].released.is_set() and opened[1].released.is_set()
    assert [f.index for f in got] == sorted({f.index for f in got})
    assert "reopening it (1 of 2)" in caplog.text

    dead = iter([FakeCapture(0, fail_after=3)] + [FakeCapture(0, opened=False)] * 2)
    src = CameraSource("rtsp://cam/2", capture_factory=lambda url: next(dead), reconnects=2,
                       frame_timeout=3)
    assert 1 <= len(list(src)) <= 3 and "reopening it (2 of 2)" in caplog.text
