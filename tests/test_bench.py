"""fkp-bench on the tiny ONNX model and the astronaut clip of conftest.py (nothing downloaded)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from fkp.tracker import bench, benchloops
from fkp.tracker.videoscore import read_points_csv


def run(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    code = bench.main(list(argv))
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err.strip().splitlines()


def test_bench_fkp_json(capsys, tiny_model, face_video, tmp_path):
    csv_path = tmp_path / "fkp.csv"
    code, out, err = run(capsys, "--video", str(face_video), "--model", str(tiny_model),
                         "--device", "cpu", "--frames", "12", "--warmup", "2",
                         "--csv", str(csv_path))
    assert code == 0, err
    res = json.loads(out[-1])
    assert res["fps"] > 0 and res["frames"] == 10 and res["median_ms"] > 0
    assert set(benchloops.FKP_STAGES) <= set(res["stages_ms"])
    assert res["provider"] == "CPUExecutionProvider"
    assert res["model"].endswith("tiny.onnx") and res["arch"] == "tiny-test"
    assert res["faces_per_frame"] > 0.5
    assert "dlib" not in res
    assert res["detector_runs"] >= 1 and res["scans_skipped"] >= 0
    rows = read_points_csv(csv_path)
    assert rows and max(rows) <= 11


def test_loop_summary_means_fps_and_median():
    """fps counts frames over their summed time after the warm-up; median_ms is the median
    frame's total, which one stalled frame does not move."""
    stats = benchloops.LoopStats(("infer", "total"))
    for total in (50.0, 2.0, 2.0, 3.0, 40.0):      # the first is warm-up
        stats.add({"infer": total / 2, "total": total}, 1)
    s = stats.summary(warmup=1)
    assert s["frames"] == 4 and s["fps"] == round(4 / 0.047, 2)
    assert s["median_ms"] == 2.5 and s["stages_ms"]["infer"] == round(47 / 8, 3)


def test_bench_always_scan_runs_every_periodic_scan(capsys, tiny_model, face_video):
    args = ["--video", str(face_video), "--model", str(tiny_model), "--device", "cpu",
            "--frames", "12", "--warmup", "2", "--redetect-every", "3"]
    code, out, err = run(capsys, *args, "--always-scan")
    assert code == 0, err
    res = json.loads(out[-1])
    assert res["scans_skipped"] == 0 and res["detector_runs"] >= 4     # frames 0, 3, 6, 9


def test_bench_dlib_not_installed(capsys, tiny_model, face_video, monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)     # import dlib -> ImportError
    code, out, err = run(capsys, "--video", str(face_video), "--model", str(tiny_model),
                         "--device", "cpu", "--frames", "4", "--vs", "dlib")
    assert code == 0, err
    line = [x for x in out if x.startswith("dlib baseline skipped")]
    assert len(line) == 1 and "pip install dlib-bin face-recognition-models" in line[0]
    res = json.loads(out[-1])
    assert "error" in res["dlib"] and res["speedup_vs_dlib"] is None


def test_bench_vs_dlib(capsys, tiny_model, face_video, tmp_path):
    pytest.importorskip("dlib")
    from fkp.tracker.dlib_loop import DlibUnavailable, predictor_path
    try:
        predictor_path()
    except DlibUnavailable as exc:
        pytest.skip(str(exc))
    dlib_csv = tmp_path / "dlib.csv"
    code, out, err = run(capsys, "--video", str(face_video), "--model", str(tiny_model),
                         "--device", "cpu", "--frames", "3", "--warmup", "0", "--vs", "dlib",
                         "--dlib-upsample", "0", "--dlib-csv", str(dlib_csv))
    assert code == 0, err
    res = json.loads(out[-1])
    assert res["dlib"]["fps"] > 0 and res["speedup_vs_dlib"] > 0
    assert set(benchloops.DLIB_STAGES) <= set(res["dlib"]["stages_ms"])
    assert res["dlib"]["faces_per_frame"] > 0          # HOG finds the astronaut
    rows = read_points_csv(dlib_csv)
    assert sorted(rows) == [0, 1, 2]


@pytest.mark.parametrize("argv, code", [
    (["--video", "/nonexistent/x.mp4"], 1),
    (["--video", "VIDEO", "--model", "/nonexistent/m.onnx"], 1),
    (["--video", "VIDEO", "--frames", "-1"], 2),
    (["--video", "VIDEO", "--prefetch", "-1"], 2),
    (["--video", "VIDEO", "--vs", "mediapipe"], 1),          # no such model: before any run
    (["--video", "VIDEO", "--vs", "dlib", "--rounds", "0"], 2),
    (["--video", "VIDEO", "--vs", "fastnet", "--dlib-csv", "d.csv"], 2),
    ([], 2),
    (["--infer-only", "--runs", "0"], 2),
    (["--infer-only", "--batch", "0"], 2),
    (["--video", "VIDEO", "--rounds", "3"], 2),               # options that would be ignored
    (["--video", "VIDEO", "--batch", "8"], 2),
    (["--infer-only", "--video", "VIDEO"], 2),
    (["--video", "VIDEO", "--csv", "VIDEO"], 1),              # would overwrite the video
])
def test_bench_bad_input(capsys, face_video, tiny_model, argv, code):
    argv = [str(face_video) if a == "VIDEO" else a for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(tiny_model)]
    try:
        got = bench.main(argv)
    except SystemExit as e:
        got = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code
    assert len(err) == 1 and err[0].startswith("fkp-bench: error:"), err
    assert "Traceback" not in err[0]


def test_bench_vs_a_model_alternates_rounds_and_takes_the_median_ratio(
        capsys, tiny_model, face_video, monkeypatch):
    """--vs MODEL --rounds 3: the loops run A B, B A, A B (each tracker reset first), both
    pool their rounds' timed frames, and the speed-up is the median of the rounds' ratios."""
    order = []
    real = bench.run_fkp

    def spy(args, tracker, on_result=None):
        order.append(tracker)
        assert tracker.stats["frames"] == 0          # reset before every round
        return real(args, tracker, on_result)

    monkeypatch.setattr(bench, "run_fkp", spy)
    code, out, err = run(capsys, "--video", str(face_video), "--model", str(tiny_model),
                         "--device", "cpu", "--frames", "8", "--warmup", "2",
                         "--vs", str(tiny_model), "--rounds", "3")
    assert code == 0, err
    a, b = order[0], order[1]
    assert a is not b and order == [a, b, b, a, a, b]
    res = json.loads(out[-1])
    assert res["rounds"] == 3 and len(res["speedups"]) == 3
    assert res["frames"] == res["vs_model"]["frames"] == 3 * 6
    assert res["speedup_vs_model"] == round(float(np.median(res["speedups"])), 2) > 0
    assert res["vs_model"]["model"].endswith("tiny.onnx") and "dlib" not in res
    assert "median of 3 alternating rounds" in out[-2]


def test_bench_help(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0 and "--vs" in capsys.readouterr().out


def test_bench_infer_only(capsys, tiny_model):
    code, out, err = run(capsys, "--infer-only", "--model", str(tiny_model), "--device", "cpu",
                         "--runs", "20", "--threads", "1", "--flip-test")
    assert code == 0, err
    res = json.loads(out[-1])
    assert res["infer_ms"] > 0 and res["infer_ms_mean"] > 0
    assert res["provider"] == "CPUExecutionProvider" and res["flip_test"] is True
    assert "ms per face" in out[0] and res["batch"] == 1


def test_bench_infer_only_batch_reports_per_face_times(capsys, tiny_model, monkeypatch):
    """--batch N: N crops go into each model call, and the time of a call is divided by N."""
    from fkp.tracker import runtime

    sizes = []
    real = runtime.LandmarkModel.predict_crops

    def spy(self, crops, *a, **k):
        sizes.append(len(crops))
        return real(self, crops, *a, **k)

    monkeypatch.setattr(runtime.LandmarkModel, "predict_crops", spy)
    clock = iter(range(10**6))             # every perf_counter call advances 1 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))
    code, out, err = run(capsys, "--infer-only", "--model", str(tiny_model), "--device", "cpu",
                         "--runs", "5", "--warmup", "2", "--batch", "4")
    assert code == 0, err
    res = json.loads(out[-1])
    assert sizes == [4] * 7 and res["batch"] == 4
    assert res["infer_ms"] == pytest.approx(1000.0 / 4) and "batch 4" in out[0]



def test_closed_stdout_ends_quietly(tiny_model, monkeypatch):
    """`fkp-bench ... | head -1`: stdout closed early gives status 1, no traceback."""
    class ClosedPipe:
        def write(self, _text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert bench.main(["--infer-only", "--model", str(tiny_model), "--device", "cpu",
                       "--runs", "3"]) == 1
