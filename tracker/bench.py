"""``fkp-bench``: time the fkp-track pipeline headless, optionally against the classic dlib loop.

The pipeline per frame: ``decode`` (read the next video frame; with ``--prefetch``, the default,
a decoder thread reads ahead and this is the wait for it), then :class:`Tracker.process`
(``detect``, ``crop``, ``infer``, ``post``; gray conversion and bookkeeping are in its total
only) and ``draw`` (points and labels drawn into the frame, as the live window would).
Reported are mean milliseconds per frame and stage over the timed frames (the first
``--warmup`` frames are processed but not timed) and the end-to-end rate
``fps = timed frames / sum of their wall time`` (decode to draw). The detector runs only on
some frames, so ``detect`` is its cost averaged over all frames.

``--vs dlib`` runs :mod:`fkp.tracker.dlib_loop` (HOG detector + 68-point shape predictor
every frame) on the same frames of the same video, re-decoded, with the same drawing, and
reports ``speedup_vs_dlib = fps / dlib fps``; ``--vs MODEL`` runs fkp-track with that model
(shipped name or path) the same way and reports ``speedup_vs_model``. ``--rounds N`` runs
each loop N times, alternating (A B, B A, A B, ...), so that a machine whose speed drifts
affects both alike: each loop's figures pool its rounds, and the speed-up is the median of
the rounds' ratios (``speedups``: each round's). ``--csv`` / ``--dlib-csv`` write both
loops' points (first round) in the ``fkp-track --csv`` layout, for ``fkp-testvideo score``.

The last stdout line is one JSON object: ``fps``, ``median_ms`` (the median frame's total
ms), ``stages_ms``, ``provider``, ``model``, ``arch``, ``video``, ``frames`` (timed),
``faces_per_frame``, ``detector``, ``threads``, ``detector_runs``, ``scans_skipped`` (last
round), ``truncated``; with ``--vs`` ``rounds``, ``speedups`` and ``dlib`` (``fps``,
``median_ms``, ``stages_ms``, ``frames``, ``faces_per_frame``, ``upsample``, ``version``; or
``error`` when dlib is not installed) and ``speedup_vs_dlib``, or ``vs_model`` (the same,
with ``model`` and ``arch``) and ``speedup_vs_model``.
``--infer-only`` times just the network: ``--batch`` face crops per call (default 1),
``--runs`` calls after ``--warmup`` untimed ones; its JSON line holds ``infer_ms`` (median
milliseconds per face: per call / batch), ``infer_ms_mean``, ``batch``, ``provider``,
``model``, ``threads``, ``flip_test``.
Exit status: 0 ok, 1 error (one ``fkp-bench: error:`` line on stderr), 2 bad usage, 3 the
video ended early (a truncated file: the frames read were timed and reported, the JSON line
has ``"truncated": true``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

from .argtypes import OneLineParser, whole
from .benchloops import LoopStats, run_dlib, run_fkp, stage_line
from .cli import MAX_PREFETCH, add_pipeline_args, model_from_args, quiet_opencv
from .runtime import default_cpu_threads
from .sources import VIDEO_PREFETCH as PREFETCH
from .writers import interruptible, quiet_broken_pipe

log = logging.getLogger(__name__)
PROG = "fkp-bench"


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(
        prog=PROG, description="Time the fkp-track pipeline headless (decode, detect, crop, "
        "infer, post, draw), optionally against the classic dlib loop.",
        epilog="examples:\n  fkp-bench --video one.mp4\n"
               "  fkp-bench --video one.mp4 --model resnet50 --device cuda\n"
               "  fkp-bench --video one.mp4 --vs fastnet-192-int8 --rounds 5\n"
               "  fkp-bench --video one.mp4 --vs dlib --csv fkp.csv --dlib-csv dlib.csv"
               "\n  fkp-testvideo score one.truth.csv dlib.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", metavar="PATH", help="video file to process (required unless "
                    "--infer-only)")
    ap.add_argument("--infer-only", action="store_true",
                    help="time only the network on one crop, batch 1 (no video)")
    ap.add_argument("--batch", type=whole(1, 1024), default=1, metavar="N",
                    help="--infer-only: faces per model call (default 1); times are per face")
    ap.add_argument("--runs", type=whole(1), default=500, metavar="N",
                    help="timed calls with --infer-only (default: 500)")
    ap.add_argument("--model", default="auto", metavar="NAME_OR_PATH",
                    help="shipped model name or .onnx path (default: auto)")
    add_pipeline_args(ap)
    ap.add_argument("--async-detect", action="store_true",
                    help="periodic new-face scan on a worker thread, as fkp-track does for "
                         "cameras (default: in the frame loop, as it does for video files)")
    ap.add_argument("--always-scan", action="store_true",
                    help="run every periodic scan, also when nothing changed outside the "
                         "tracked faces since the last one (as fkp-track --always-scan)")
    ap.add_argument("--no-still-hold", action="store_true",
                    help="no still-face check (as fkp-track --no-still-hold)")
    ap.add_argument("--redetect-every", type=whole(0), default=30, metavar="N",
                    help="detector period while tracking, as in fkp-track (default: 30)")
    ap.add_argument("--prefetch", type=whole(0, MAX_PREFETCH), default=PREFETCH, metavar="N",
                    help="decode up to N frames ahead on a thread, for both loops; 0 = decode "
                         f"in the loop (default: {PREFETCH}, as fkp-track)")
    ap.add_argument("--frames", type=whole(0), default=300, metavar="N",
                    help="frames to process, 0 = whole video (default: 300)")
    ap.add_argument("--warmup", type=whole(0), default=5, metavar="N",
                    help="first frames processed but not timed (default: 5)")
    ap.add_argument("--vs", metavar="dlib|MODEL", help="also run a baseline on the same "
                    "frames: the classic dlib loop, or fkp-track with another model (shipped "
                    "name or .onnx path); prints both and the frame-rate ratio")
    ap.add_argument("--rounds", type=whole(1), default=1, metavar="N", help="with --vs: run each "
                    "loop N times, alternating; the ratio is the rounds' median (default: 1)")
    ap.add_argument("--dlib-upsample", type=whole(0, 4), default=1, metavar="N",
                    help="HOG upsampling of the dlib loop (default: 1, dlib's usual)")
    ap.add_argument("--csv", metavar="FILE", help="write fkp-track's points (fkp-track --csv "
                    "layout)")
    ap.add_argument("--dlib-csv", metavar="FILE",
                    help="write the dlib loop's points (implies --vs dlib)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log details")
    return ap


def bench_inference(args) -> dict:
    """Median and mean milliseconds per face of one model call on ``--batch`` gray face-like
    crops."""
    model = model_from_args(args)
    s = model.size
    yy, xx = np.mgrid[0:s, 0:s]
    crop = (128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 9.0)).astype(np.uint8)[None]
    crop = np.repeat(crop, args.batch, axis=0)
    for _ in range(args.warmup):
        model.predict_crops(crop)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        model.predict_crops(crop)
        times.append((time.perf_counter() - t0) * 1000.0 / args.batch)
    med, mean = float(np.median(times)), float(np.mean(times))
    print(f"{model.describe()}; {s}x{s} crops, threads {args.threads or 'default'}: "
          f"{med:.3f} ms per face (batch {args.batch}, median of {args.runs} calls; mean "
          f"{mean:.3f})")
    return {"infer_ms": round(med, 4), "infer_ms_mean": round(mean, 4), "batch": args.batch,
            "provider": model.provider, "model": str(model.path), "arch": model.meta.arch,
            "threads": args.threads or default_cpu_threads(), "flip_test": model.flip_test,
            "cuda_graph": model.cuda_graph, "half": model.half}


def _tracker(args, model: str):
    """A :class:`~fkp.tracker.tracking.Tracker` with ``model`` and the pipeline options."""
    from .tracking import Tracker

    built = model_from_args(argparse.Namespace(**{**vars(args), "model": model}))
    return Tracker(built, detector=args.detector, redetect_every=args.redetect_every,
                   async_scan=args.async_detect, scan_gate=not args.always_scan,
                   still_hold=not args.no_still_hold)


def _rounds(args, tracker, base, writers: dict) -> tuple[list, list, object, str | None]:
    """``--rounds`` alternating runs (A B, B A, ...) of the fkp loop and the baseline (an fkp
    Tracker ``base``, else the dlib loop where ``--vs dlib``): per-round LoopStats of each,
    the dlib loop and why it could not run (or None). CSVs from the first round."""
    from .dlib_loop import DlibUnavailable

    mine, theirs, loop, dlib_error = [], [], None, None
    for r in range(args.rounds):
        for name in ("fkp", "base") if r % 2 == 0 else ("base", "fkp"):
            w = writers.get(name) if r == 0 else None
            on_result = w.write if w else None
            if name == "fkp":
                tracker.reset()
                mine.append(run_fkp(args, tracker, on_result))
            elif base is not None:
                base.reset()
                theirs.append(run_fkp(args, base, on_result))
            elif args.vs == "dlib" and dlib_error is None:
                try:
                    stats, loop = run_dlib(args, on_result)
                    theirs.append(stats)
                except DlibUnavailable as exc:
                    dlib_error = str(exc)
    return mine, theirs, loop, dlib_error


def bench(args) -> tuple[dict, str]:
    """Run the requested loops, print the human lines; returns the JSON dict and why the
    video ended early ("" when it did not)."""
    from .writers import CsvWriter, check_outputs, check_writable

    outputs = {"--csv": args.csv, "--dlib-csv": args.dlib_csv}
    for p in filter(None, outputs.values()):
        check_writable(p)
    tracker = _tracker(args, args.model)
    base = _tracker(args, args.vs) if args.vs and args.vs != "dlib" else None   # fails fast
    check_outputs(outputs, [args.video, tracker.model.path, base.model.path if base else ""])
    writers = {"fkp": CsvWriter(args.csv, tracker.model.meta.indices) if args.csv else None,
               "base": CsvWriter(args.dlib_csv) if args.dlib_csv else None}
    try:
        mine, theirs, loop, dlib_error = _rounds(args, tracker, base, writers)
    finally:
        for closable in (tracker, base, *writers.values()):
            if closable is not None:
                closable.close()
    if not mine[0].faces:
        raise ValueError(f"{args.video}: no frames")
    s = LoopStats.pooled(mine, args.warmup)
    model = tracker.model
    print(f"fkp-track: {model.describe()}; detector {type(tracker.detector).__name__}")
    print(stage_line("fkp-track", s))
    out = {"fps": s["fps"], "median_ms": s["median_ms"], "stages_ms": s["stages_ms"],
           "provider": tracker.provider, "model": str(model.path), "arch": model.meta.arch,
           "video": str(args.video), "cuda_graph": model.cuda_graph, "half": model.half,
           "frames": s["frames"], "faces_per_frame": s["faces_per_frame"],
           "detector": type(tracker.detector).__name__,
           "threads": args.threads or default_cpu_threads(),
           "detector_runs": tracker.stats["detections"],
           "scans_skipped": tracker.stats["scans_skipped"],
           "truncated": bool(mine[0].truncated)}
    if args.vs:
        _add_baseline(args, out, mine, theirs, base, loop, dlib_error)
    return out, mine[0].truncated


def _add_baseline(args, out: dict, mine: list, theirs: list, base, loop,
                  dlib_error: str | None) -> None:
    """``--vs``: print the baseline's line and the ratio; add them to the JSON dict ``out``."""
    key, out["rounds"] = "dlib" if base is None else "model", args.rounds
    if dlib_error is not None:
        print(f"dlib baseline skipped: {dlib_error}")
        out.update(dlib={"error": dlib_error}, speedup_vs_dlib=None, speedups=[])
        return
    b = LoopStats.pooled(theirs, args.warmup)
    ratios = [round(m.summary(args.warmup)["fps"] / max(t.summary(args.warmup)["fps"], 1e-9), 3)
              for m, t in zip(mine, theirs)]
    ratio = round(float(np.median(ratios)), 2)
    if base is None:
        name = f"dlib {loop.version} (HOG upsample {loop.upsample} + shape_predictor_68)"
        out["dlib"] = dict(b, upsample=loop.upsample, version=loop.version)
    else:
        name = base.model.path.name
        out["vs_model"] = dict(b, model=str(base.model.path), arch=base.model.meta.arch)
    print(stage_line(name, b))
    print(f"fkp-track / {'dlib' if base is None else name}: {ratio:.2f}x the frame rate" +
          (f" (median of {args.rounds} alternating rounds: "
           f"{' '.join(f'{r:.2f}' for r in ratios)})" if args.rounds > 1 else ""))
    out.update({f"speedup_vs_{key}": ratio, "speedups": ratios})


def _usage_problem(args) -> str | None:
    """The first combination of options that cannot work or would be ignored, or None."""
    problems = (
        (not args.video and not args.infer_only, "give --video PATH (or --infer-only)"),
        (args.infer_only and any((args.video, args.vs, args.csv, args.dlib_csv)),
         "--infer-only times the network alone: no --video, --vs or CSVs"),
        (args.rounds > 1 and not (args.vs or args.dlib_csv), "--rounds goes with --vs"),
        (args.batch > 1 and not args.infer_only, "--batch goes with --infer-only"),
        (args.dlib_csv and args.vs not in (None, "dlib"),
         f"--dlib-csv goes with --vs dlib, not --vs {args.vs}"))
    return next((message for bad, message in problems if bad), None)


@interruptible(PROG)
@quiet_broken_pipe
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(message)s")
    problem = _usage_problem(args)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    args.vs = "dlib" if args.dlib_csv else args.vs
    from .detectors import DetectorError
    from .metadata import MetadataError
    from .runtime import ModelError, route_onnxruntime_log
    from .sources import SourceError
    from .writers import OutputError

    unroute_onnxruntime = route_onnxruntime_log()
    sources_log = logging.getLogger("fkp.tracker.sources")
    sources_level = sources_log.level
    if not args.verbose:
        quiet_opencv()
        # a truncated video is reported once, at the end, not by the source on every pass
        sources_log.setLevel(logging.ERROR)
    try:
        result, truncated = (bench_inference(args), "") if args.infer_only else bench(args)
    except BrokenPipeError:
        raise                    # stdout closed early (| head): quiet_broken_pipe, status 1
    except (SourceError, ModelError, MetadataError, DetectorError, OutputError,
            ValueError, OSError) as exc:
        print(f"{PROG}: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return 1
    except Exception as exc:  # never a traceback for the user; -v shows it
        log.debug("unexpected error", exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    finally:
        unroute_onnxruntime()
        sources_log.setLevel(sources_level)
    print(json.dumps(result))
    if truncated:
        print(f"{PROG}: error: {truncated}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
