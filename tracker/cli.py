"""``fkp-track``: track 68 facial keypoints live from a camera or network stream, a video or
images.

Exit status: 0 done, 1 error (one ``fkp-track: error: ...`` line on stderr), 2 bad usage,
3 the video ended early (truncated file; the frames read were processed and written),
130 interrupted (Ctrl-C; every finished frame is in the CSV / JSON files).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from .argtypes import OneLineParser, frame_size, number, whole
from .sources import VIDEO_PREFETCH as PREFETCH
from .sources import is_live_spec, is_url
from .writers import quiet_broken_pipe

MAX_PREFETCH = 256                  # frames decoded ahead at most (1080p: 6 MB each)

EXAMPLES = """\
examples:
  fkp-track                                 # webcam 0, live window (q or Esc quits)
  fkp-track --video talk.mp4 --no-display --csv talk.csv --out talk_tracked.mp4
  fkp-track photos/ --no-display --json points.jsonl --out-dir annotated/
  fkp-track --images 'frames/*.png' --track-images --no-display --csv points.csv
  fkp-track --camera 1 --model resnet50 --device cuda --contours
  fkp-track rtsp://user:pass@192.168.1.20/stream1 --no-display --csv door.csv   # IP camera

exit status: 0 ok, 1 error, 2 bad usage, 3 video ended early (truncated), 130 interrupted
"""
WINDOW = "fkp-track"
log = logging.getLogger("fkp.tracker")


class DisplayError(RuntimeError):
    """No window can be opened."""


def add_pipeline_args(group) -> None:
    """The inference and detector options fkp-track and fkp-bench share: ``--device``,
    ``--threads``, ``--flip-test``, ``--no-cuda-graph``, ``--half``, ``--detector`` (read back by
    :func:`model_from_args`)."""
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    group.add_argument("--threads", type=whole(1), metavar="N",
                       help="onnxruntime CPU threads (default: the cores, at most 2)")
    group.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=None,
                       help="also run each crop mirrored and average: twice the inference "
                            "time, lower error (fkp-track's default: on for the photos of an "
                            "image folder, where detection dominates the time; off otherwise)")
    group.add_argument("--no-cuda-graph", action="store_true",
                       help="on a GPU, run onnxruntime's plain session instead of replaying "
                            "captured CUDA graphs (the default: lower latency per frame)")
    group.add_argument("--half", action="store_true",
                       help="on a GPU, run the model's body in float16 (needs the onnx "
                            "package; resnet50's points move by up to about 0.1 px)")
    group.add_argument("--detector", default="haar", metavar="haar|haar-single|YUNET.onnx",
                       help="face detector for (re)starting tracks: haar (default; OpenCV's "
                            "cascade plus fallbacks for tilted and low-contrast faces, one "
                            "per frame in turn), haar-single (the cascade alone), or a YuNet "
                            "model file")


def model_from_args(args, flip_test: bool = False):
    """The :class:`~fkp.tracker.runtime.LandmarkModel` that ``--model`` and the options of
    :func:`add_pipeline_args` ask for; ``flip_test`` where neither --flip-test nor
    --no-flip-test was given."""
    from .runtime import LandmarkModel

    flip = flip_test if args.flip_test is None else args.flip_test
    return LandmarkModel(args.model, args.device, args.threads, flip,
                         cuda_graph=not args.no_cuda_graph, half=args.half)


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(
        prog="fkp-track", description="Real-time 68-point facial keypoint tracking.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("source (one of; default: --camera 0)")
    src.add_argument("source", nargs="?", help="camera index, stream URL (rtsp://, http://, "
                     "...), video file or URL, image folder or glob")
    src.add_argument("--camera", metavar="N|DEVICE|URL",
                     help="live source, newest frame only: camera index, device path "
                          "(/dev/video0) or stream URL")
    src.add_argument("--camera-size", type=frame_size, metavar="WxH",
                     help="ask a local camera for this capture size, e.g. 1280x720 (default: "
                          "its own; faces from 7.5 %% of the longest side are found)")
    src.add_argument("--video", metavar="PATH", help="video file or URL (every frame, in order)")
    src.add_argument("--images", metavar="DIR_OR_GLOB", help="image folder or glob (quote it)")
    src.add_argument("--track-images", action="store_true",
                     help="images are the frames of one clip: track and smooth across them "
                          "(default: each image on its own, faces detected afresh)")
    m = ap.add_argument_group("model and tracking")
    m.add_argument("--model", default="auto", metavar="NAME_OR_PATH",
                   help="shipped model name (fastnet-int8, fastnet, resnet50, ...) or .onnx "
                        "path; auto = fastnet-int8 on CPU, resnet50 on GPU (default: auto)")
    add_pipeline_args(m)
    smooth = m.add_mutually_exclusive_group()
    smooth.add_argument("--smooth", type=number(), default=1.0, metavar="STRENGTH",
                        help="One Euro smoothing strength: 2 smoother, 0.5 lighter (default: 1)")
    smooth.add_argument("--no-smooth", action="store_true",
                        help="no smoothing (same as --smooth 0)")
    m.add_argument("--no-still-hold", action="store_true",
                   help="smooth a face that holds still like a moving one (by default its "
                        "points are smoothed hard while its picture does not change)")
    m.add_argument("--redetect-every", type=whole(0), default=30, metavar="N",
                   help="run the detector every N frames to catch new faces; 0: only when a "
                        "face is lost (default: 30)")
    m.add_argument("--always-scan", action="store_true",
                   help="run every periodic scan and no others; by default one is skipped "
                        "when nothing changed outside the tracked faces since the last scan, "
                        "and a scan runs at once when something appears in between")
    m.add_argument("--max-faces", type=whole(1), metavar="N",
                   help="most faces at once (default: 4; 16 in each photo of a folder)")
    scan = m.add_mutually_exclusive_group()
    scan.add_argument("--sync-detect", action="store_true",
                      help="run the periodic new-face scan inside the frame loop (the default "
                           "for video files and images: every frame is processed anyway, the "
                           "output is the same every run, and new faces join on the frame they "
                           "are found)")
    scan.add_argument("--async-detect", action="store_true",
                      help="run it on a worker thread, off the frame loop (the default for "
                           "cameras: no stall in the live picture)")
    o = ap.add_argument_group("output")
    o.add_argument("--no-display", action="store_true", help="no live window (headless)")
    o.add_argument("--contours", action="store_true", help="draw face contours")
    o.add_argument("--out", metavar="VIDEO", help="write an annotated video (.mp4 or .avi)")
    o.add_argument("--out-dir", metavar="DIR",
                   help="write each annotated frame as an image into DIR (created if "
                        "missing): images keep their file names, other frames are "
                        "numbered 000000.jpg, 000001.jpg, ...")
    o.add_argument("--csv", metavar="FILE", help="write points as CSV ('-' = stdout)")
    o.add_argument("--json", metavar="FILE", help="write points as JSON Lines ('-' = stdout)")
    o.add_argument("--prefetch", type=whole(0, MAX_PREFETCH), default=PREFETCH, metavar="N",
                   help=f"video files: decode up to N frames ahead on a thread (default: "
                        f"{PREFETCH}; 0 = in the loop)")
    o.add_argument("--max-frames", type=whole(0), default=0, metavar="N",
                   help="stop after N frames (default: 0 = all)")
    o.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    return ap


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = f"fkp-track: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return msg


def quiet_opencv() -> None:
    """Silence OpenCV's and FFmpeg's own messages (``moov atom not found`` and the like from a
    corrupt file): the command's one error line says what went wrong."""
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def setup_logging(verbose: int):
    """Log records of ``fkp.*`` as ``fkp-track: level: message`` lines on stderr, onnxruntime's
    own log among them (:func:`~fkp.tracker.runtime.route_onnxruntime_log`); silence OpenCV's
    and FFmpeg's own chatter unless -vv. Returns a function that undoes it."""
    import cv2

    from .runtime import route_onnxruntime_log

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("fkp")
    saved = (root.handlers[:], root.propagate, root.level, cv2.utils.logging.getLogLevel())
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    if verbose < 2:
        quiet_opencv()
    unroute_onnxruntime = route_onnxruntime_log()

    def restore() -> None:
        root.handlers[:], root.propagate, root.level = saved[:3]
        cv2.utils.logging.setLogLevel(saved[3])
        unroute_onnxruntime()
    return restore


def probe_display() -> None:
    """Open the window now, so a headless machine fails before any processing."""
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        raise DisplayError("no display to open a window on ($DISPLAY is not set); "
                           "use --no-display")
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
    except cv2.error as exc:
        why = str(exc).strip().splitlines()[-1][:120]
        raise DisplayError(f"cv2.imshow cannot open a window ({why}); use --no-display") from None


def _source_spec(args, ap: argparse.ArgumentParser) -> tuple[object, str | None]:
    given = [(args.camera, "camera"), (args.video, "video"), (args.images, "images"),
             (args.source, None)]
    given = [(v, k) for v, k in given if v is not None]
    if len(given) > 1:
        ap.error("give one source: a positional source, --camera, --video or --images")
    spec, kind = given[0] if given else (0, "camera")
    if kind is None and is_live_spec(spec):
        kind = "camera"                      # as open_source reads it: live, newest frame only
    return spec, kind


def next_frame_wanted(still: bool) -> bool:
    """After showing a frame: False when the user quits (q, Esc, or closes the window).
    Moving frames poll the keyboard once; a still image stays up until a key is pressed."""
    import cv2

    while True:
        key = cv2.waitKey(50 if still else 1)
        if cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
            return False
        if key != -1 and (key & 0xFF) in (ord("q"), 27):
            return False
        if key != -1 or not still:
            return True


def _on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def async_scan(args, kind: str | None) -> bool:
    """Periodic scan on a worker thread: for cameras unless --sync-detect, for files only with
    --async-detect (its detections arrive some frames late, on moved faces: on the test videos
    that left new faces untracked for up to 60 frames, 2-4 % failures against 0 %)."""
    return bool(args.async_detect or (kind == "camera" and not args.sync_detect))


def run(args, ap: argparse.ArgumentParser) -> int:
    import cv2

    from .draw import FpsMeter, draw_fps, draw_result
    from .sources import open_source
    from .tracking import PHOTO_MAX_FACES, STAGES, Tracker
    from .writers import (CsvWriter, ImageDirOutput, JsonLinesWriter, OutputError, VideoOutput,
                          check_outputs, check_writable)

    spec, kind = _source_spec(args, ap)
    if args.camera_size and (kind != "camera" or is_url(str(spec))):
        ap.error("--camera-size is for local cameras (a stream's size is set where it is "
                 "sent from; files and images keep theirs)")
    outputs = {"--csv": args.csv, "--json": args.json, "--out": args.out}
    check_outputs(outputs)          # against each other now; against the inputs once known
    for path in outputs.values():
        if path:
            check_writable(path)
    images_out = ImageDirOutput(args.out_dir) if args.out_dir else None
    display = not args.no_display
    if display:
        probe_display()
    # files first (cheap checks), the model next, a camera last (slow to open)
    source = open_source(spec, kind, prefetch=args.prefetch) if kind != "camera" else None
    if images_out is not None and source is not None and source.is_still and any(
            p.parent.resolve() == images_out.folder.resolve() for p in source.paths):
        source.close()
        raise OutputError(f"--out-dir {args.out_dir} holds input images, which it would "
                          "overwrite; choose another folder")
    if args.track_images and not (source is not None and source.is_still):
        if source is not None:
            source.close()
        ap.error("--track-images is for an image folder or glob (a video's or camera's frames "
                 "are always tracked)")
    photos = source is not None and source.is_still and not args.track_images  # unrelated
    tracker = None
    try:
        model = model_from_args(args, flip_test=photos)
        tracker = Tracker(model, detector=args.detector,
                          smooth=0.0 if args.no_smooth else args.smooth,
                          redetect_every=args.redetect_every,
                          max_faces=args.max_faces or (PHOTO_MAX_FACES if photos else 4),
                          async_scan=async_scan(args, kind), scan_gate=not args.always_scan,
                          still_hold=not args.no_still_hold)
        if source is None:
            source = open_source(spec, kind, prefetch=args.prefetch, size=args.camera_size)
        check_outputs(outputs, [str(spec), tracker.model.path, args.detector or "",
                                *getattr(source, "paths", ())])
    except BaseException:
        if source is not None:
            source.close()
        if tracker is not None:
            tracker.close()
        raise
    info = sys.stderr if "-" in (args.csv, args.json) else sys.stdout
    writers: list = []
    video = None
    n = with_faces = 0
    sums = dict.fromkeys(STAGES, 0.0)
    t_start = time.perf_counter()
    status = 0
    try:
        w, h = source.size
        print(f"fkp-track: {tracker.model.describe()}; source {source.name} {w}x{h} "
              f"@ {source.fps:.3g} fps", file=info, flush=True)
        indices = tracker.model.meta.indices
        if args.csv:
            writers.append(CsvWriter(args.csv, indices))
        if args.json:
            writers.append(JsonLinesWriter(args.json))
        if args.out:
            video = VideoOutput(args.out, source.fps, source.size)
        fps = FpsMeter()
        for frame, res in tracker.track(source, photos):
            for w in writers:
                w.write(res, frame.path)
            n += 1
            with_faces += bool(len(res))
            for k in STAGES:
                sums[k] += tracker.timings[k]
            if display or video is not None or images_out is not None:
                vis = draw_result(frame.image, res, contours=args.contours, indices=indices)
                if video is not None:    # a live source's recording keeps real time
                    video.write(vis, frame.timestamp_ms if source.is_live else None)
                if images_out is not None:
                    images_out.write(vis, frame.index, frame.path)
                if display:
                    cv2.imshow(WINDOW, vis if photos else
                               draw_fps(vis, fps.tick(time.perf_counter())))
                    if not next_frame_wanted(photos):
                        break
            if args.max_frames and n >= args.max_frames:
                break
        if getattr(source, "truncated", False):
            status = 3
    except KeyboardInterrupt:
        print(f"fkp-track: interrupted after {n} frames", file=sys.stderr)
        status = 130
    finally:
        source.close()
        tracker.close()
        for w in writers:
            w.close()
        if video is not None:
            video.close()
        if display:
            cv2.destroyAllWindows()
    wall = time.perf_counter() - t_start
    if status != 130:
        print(f"fkp-track: {n} frames ({with_faces} with faces) in {wall:.1f} s, "
              f"{n / max(wall, 1e-9):.1f} fps; {tracker.model.path.name} on {tracker.provider}",
              file=info)
    if n:
        log.info("mean ms per frame: " + ", ".join(f"{k} {sums[k] / n:.2f}" for k in STAGES)
                 + f"; detector ran on {tracker.stats['detections']} frames")
    return status


@quiet_broken_pipe
def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    from .detectors import DetectorError
    from .metadata import MetadataError
    from .runtime import ModelError
    from .sources import SourceError
    from .writers import OutputError

    known = (SourceError, ModelError, MetadataError, DetectorError, OutputError, DisplayError)
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM and SIGHUP (a closed terminal or SSH session) end a run like Ctrl-C: files
    # closed (an --out video finished, playable), rows kept
    ends = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    old_handlers = {sig: signal.getsignal(sig) for sig in ends}
    restore_logging = setup_logging(args.verbose)
    try:
        if main_thread:
            for sig in ends:
                signal.signal(sig, _on_sigterm)
        return run(args, ap)
    except known as exc:
        print(f"fkp-track: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fkp-track: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise                    # stdout closed early (| head): quiet_broken_pipe, status 1
    except Exception as exc:  # never a traceback for the user; -vv shows it
        log.debug("unexpected error", exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"fkp-track: error: unexpected {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    finally:
        restore_logging()
        if main_thread:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
