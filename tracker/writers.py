"""Result writers: CSV, JSON Lines and an annotated video.

Every writer opens its file in the constructor, so an unwritable path fails with one
:class:`OutputError` before any frame is processed. The text writers write each frame with a
single ``write`` and flush it, so an interrupted run (Ctrl-C, a crash, even SIGKILL) keeps every
finished frame and never a half row. A frame without faces writes nothing. Coordinates are
frame pixels (x right, y down; pixel centres on integers).

* :class:`CsvWriter`: header ``frame,timestamp_ms,face,score,x0,y0,...,x67,y67``, one row per
  face per frame (``face`` is the track id).
* :class:`JsonLinesWriter`: one JSON object per frame that has faces:
  ``{"frame": 12, "timestamp_ms": 400.0, "faces": [{"id": 0, "score": 0.93,
  "box": [x0, y0, x1, y1], "points": [[x0, y0], ..., [x67, y67]]}]}``, plus
  ``"image": "photos/a.jpg"`` for frames read from image files.
* :class:`VideoOutput`: frames at the source size and fps (``mp4v`` by default).
* :class:`ImageDirOutput`: each frame as an image file in a folder, written atomically
  (an image source's frames keep their file names; others are ``000012.jpg``).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence, TextIO

import cv2
import numpy as np


class OutputError(RuntimeError):
    """An output file cannot be written; the message is one line for the user."""


def quiet_broken_pipe(main: Callable[..., int]) -> Callable[..., int]:
    """For a command's ``main``: stdout closed early (``fkp-eval ... | head -1``) ends the
    command quietly with status 1 instead of a BrokenPipeError traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            try:                    # Python's own flush at exit must not raise it again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                pass
            return 1
    return wrapper


def interruptible(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """For a command's ``main``: Ctrl-C (or SIGINT) ends it with one ``PROG: interrupted``
    line on stderr and status 130 instead of a KeyboardInterrupt traceback."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
        return wrapper
    return decorate


def check_writable(path: str | os.PathLike) -> Path:
    """Raise :class:`OutputError` unless ``path`` can be created or overwritten (creates
    nothing). ``-`` (stdout) is always fine."""
    p = Path(path)
    if str(path) == "-":
        return p
    if p.is_dir():
        raise OutputError(f"cannot write {p}: it is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {p}: directory {parent} does not exist")
    if not os.access(p if p.exists() else parent, os.W_OK):
        raise OutputError(f"cannot write {p}: permission denied")
    return p


def _identity(path: str | os.PathLike) -> tuple:
    """What a path names: stdout for ``-``, device and inode for an existing file (so links
    and other spellings of it match), else the absolute path with links resolved."""
    if str(path) == "-":
        return ("stdout",)
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def check_outputs(outputs: dict[str, str | os.PathLike | None],
                  inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Raise :class:`OutputError` when two outputs name one file (``-``, stdout, included) or
    an output names one of the ``inputs`` (which writing it would destroy). ``outputs``: the
    option or argument that names each (for the message) -> its path; None or "" = not
    given. Inputs that are not local files (camera indices, URLs) never match."""
    seen: dict[tuple, str] = {}
    for name, path in outputs.items():
        if not path:
            continue
        key = _identity(path)
        if key in seen:
            raise OutputError(f"{seen[key]} and {name} both name {path}; give each its own file")
        seen[key] = name
    for path in inputs:
        if path and str(path) != "-" and os.path.isfile(path):
            key = _identity(path)
            if key in seen:
                raise OutputError(f"{seen[key]} {path} is an input of this run; writing it "
                                  "would destroy it, so choose another path")


def _open_text(path: str | os.PathLike) -> TextIO:
    if str(path) == "-":
        return sys.stdout
    check_writable(path)
    try:
        return open(path, "w", newline="", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


class _TextWriter:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._fh: TextIO | None = _open_text(path)

    def _emit(self, text: str) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path} is closed")
        if text:
            try:
                self._fh.write(text)
                self._fh.flush()
            except BrokenPipeError:
                raise                   # stdout closed early: quiet_broken_pipe ends the run
            except OSError as exc:
                raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._fh is not None and self._fh is not sys.stdout:
            self._fh.close()
        self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CsvWriter(_TextWriter):
    """``frame,timestamp_ms,face,score,x0,y0,...`` rows; ``indices`` names the point columns
    (default 0..67)."""

    def __init__(self, path: str | os.PathLike, indices: Sequence[int] | None = None) -> None:
        super().__init__(path)
        self.indices = list(indices) if indices is not None else list(range(68))
        cols = ",".join(f"x{i},y{i}" for i in self.indices)
        self._emit(f"frame,timestamp_ms,face,score,{cols}\n")

    def write(self, result, image: str | os.PathLike | None = None) -> None:
        """Append the rows of one :class:`~fkp.tracker.results.FrameResult`. The columns are
        fixed, so ``image`` (the frame's file) is not written: ``frame`` is its position in
        the source's sorted list."""
        if not len(result.ids):
            return
        buf = io.StringIO()
        head = f"{result.index},{result.timestamp_ms:.3f}"
        for fid, score, pts in zip(result.ids, result.scores, result.points):
            coords = ",".join(f"{v:.2f}" for v in np.asarray(pts, np.float64).reshape(-1))
            buf.write(f"{head},{int(fid)},{float(score):.4f},{coords}\n")
        self._emit(buf.getvalue())


class JsonLinesWriter(_TextWriter):
    """One JSON object per frame with faces (see the module docstring)."""

    def write(self, result, image: str | os.PathLike | None = None) -> None:
        """Append the line of one frame; ``image``: the file it was read from, if any."""
        if not len(result.ids):
            return
        faces = [{"id": int(fid), "score": round(float(s), 4),
                  "box": [round(float(v), 2) for v in b],
                  "points": np.round(np.asarray(p, np.float64), 2).tolist()}
                 for fid, s, p, b in zip(result.ids, result.scores, result.points, result.boxes)]
        obj = {"frame": int(result.index), "timestamp_ms": round(float(result.timestamp_ms), 3),
               "faces": faces}
        if image is not None:
            obj["image"] = str(image)
        self._emit(json.dumps(obj, separators=(",", ":")) + "\n")


class VideoOutput:
    """``cv2.VideoWriter`` at a fixed ``size`` (width, height) and ``fps``; frames of another
    size are resized, gray frames expanded to BGR.

    Frames written with a ``timestamp_ms`` (live sources: frames come at uneven times, and
    those the tracker had no time for are dropped) are placed on the file's timeline: the
    previous frame is repeated over a gap, and a frame early for its slot is left out, so
    the file plays in real time. ``frames_written`` counts the frames in the file."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int],
                 fourcc: str = "mp4v") -> None:
        p = check_writable(path)
        self.path, self.size, self.fps = str(p), (int(size[0]), int(size[1])), float(fps)
        self.frames_written = 0
        self._t0: float | None = None
        self._last: np.ndarray | None = None
        self._vw = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*fourcc), self.fps,
                                   self.size)
        if not self._vw.isOpened():
            raise OutputError(f"cannot write video {p} with codec {fourcc} (try a .mp4 or .avi "
                              "file name)")

    def write(self, image: np.ndarray, timestamp_ms: float | None = None) -> None:
        """Append ``image`` (H, W[, 3]) uint8; with ``timestamp_ms``, at its slot in time."""
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        if timestamp_ms is not None:
            if self._t0 is None:
                self._t0 = timestamp_ms
            slot = round((timestamp_ms - self._t0) * self.fps / 1000.0)
            while self._last is not None and self.frames_written < slot:
                self._emit(self._last)           # hold the previous frame over the gap
            if self.frames_written > slot:
                return                           # early for its slot: its time is filled
            self._last = image
        self._emit(image)

    def _emit(self, image: np.ndarray) -> None:
        self._vw.write(image)
        self.frames_written += 1

    def close(self) -> None:
        self._vw.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ImageDirOutput:
    """Annotated frames as image files in ``folder`` (created if missing; its parent must
    exist). ``write(image, index, path)`` names the file after ``path`` (the frame's own
    file, for image sources; a name met twice gets ``-INDEX`` added) or ``INDEX.jpg``
    (six digits). Each file is encoded in memory and moved into place, so the folder never
    holds a half-written image."""

    def __init__(self, folder: str | os.PathLike) -> None:
        p = Path(folder)
        if p.exists() and not p.is_dir():
            raise OutputError(f"cannot write images to {p}: it is a file")
        if not p.exists():
            if not p.parent.is_dir():
                raise OutputError(f"cannot write images to {p}: directory {p.parent} does "
                                  "not exist")
            try:
                p.mkdir()
            except OSError as exc:
                raise OutputError(f"cannot create {p}: {exc.strerror or exc}") from None
        if not os.access(p, os.W_OK):
            raise OutputError(f"cannot write images to {p}: permission denied")
        self.folder = p
        self._names: set[str] = set()

    def write(self, image: np.ndarray, index: int,
              path: str | os.PathLike | None = None) -> Path:
        """Write one frame; returns the file written."""
        if path is None:                 # frames of a video or camera: unique by index
            name = f"{index:06d}.jpg"
        else:                            # an image source's own names may repeat
            name, k = Path(path).name, 0
            while name in self._names:
                k += 1
                stem, suffix = Path(path).stem, Path(path).suffix
                name = f"{stem}-{index}{suffix}" if k == 1 else f"{stem}-{index}-{k}{suffix}"
            self._names.add(name)
        out = self.folder / name
        ok, buf = cv2.imencode(out.suffix or ".jpg", image)
        if not ok:
            raise OutputError(f"cannot encode {out}")
        tmp = out.with_name(f".{out.name}.part")
        try:
            tmp.write_bytes(buf.tobytes())
            os.replace(tmp, out)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
        return out

    def close(self) -> None:
        """(Nothing to release: every image is complete when ``write`` returns.)"""
