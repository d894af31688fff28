"""fkp-track end to end: outputs, every bad input (one stderr line, exit != 0, no traceback),
interrupted runs keep complete CSV rows, and the runtime never imports torch."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from conftest import (BLANK_FRAMES, FACE_FRAMES, FACE_FRAMES_2, FRAME_H, FRAME_W, face_frame,
                      make_tiny_model)
from fkp.tracker import cli
from fkp.tracker.argtypes import frame_size

N_COLS = 4 + 136


def run_main(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_cli(*argv, timeout=60):
    return subprocess.run([sys.executable, "-m", "fkp.tracker.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout)


def test_help():
    p = run_cli("--help")
    assert p.returncode == 0
    for opt in ("--camera", "--video", "--images", "--model", "--device", "--smooth",
                "--no-smooth", "--redetect-every", "--detector", "--contours", "--no-display",
                "--out", "--out-dir", "--csv", "--json", "--max-frames", "--prefetch",
                "--track-images", "--camera-size", "-v"):
        assert opt in p.stdout


def test_full_run(tmp_path, tiny_model, face_video):
    csv_path, json_path, out = tmp_path / "p.csv", tmp_path / "p.jsonl", tmp_path / "o.mp4"
    p = run_cli("--video", face_video, "--model", tiny_model, "--device", "cpu",
                "--no-display", "--contours", "--csv", csv_path, "--json", json_path,
                "--out", out, "--threads", "1")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert "CPUExecutionProvider" in p.stdout and "tiny.onnx" in p.stdout
    n_faces = FACE_FRAMES + FACE_FRAMES_2
    rows = list(csv.reader(csv_path.open()))[1:]
    assert len(rows) == n_faces and all(len(r) == N_COLS for r in rows)
    blank = set(range(FACE_FRAMES, FACE_FRAMES + BLANK_FRAMES))
    assert not blank & {int(r[0]) for r in rows}           # no face: no row
    assert len(json_path.read_text().splitlines()) == n_faces
    json.loads(json_path.read_text().splitlines()[0])
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n_faces + BLANK_FRAMES
    p = run_cli(face_video, "--model", tiny_model, "--no-display", "--max-frames", 5,
                "--csv", "-", "--no-smooth")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 1 + 5


def test_bad_input_in_subprocess_has_no_traceback(tmp_path, tiny_model):
    p = run_cli("--video", tmp_path / "missing.mp4", "--model", tiny_model, "--no-display")
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("fkp-track: error: ")
    assert "Traceback" not in p.stderr + p.stdout


@pytest.fixture
def bad_inputs(tmp_path, tiny_model, face_video):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 20)
    stub = tmp_path / "stub.avi"
    stub.write_bytes(face_video.read_bytes()[:3000])
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(os.urandom(5000))
    nometa = make_tiny_model(tmp_path / "nometa.onnx", metadata=False)
    misfit = make_tiny_model(tmp_path / "misfit.onnx", metadata={"input_size": 32})
    m = ["--model", tiny_model, "--no-display"]
    v = ["--video", face_video]
    return {
        "missing video": (["--video", tmp_path / "nope.mp4", *m], "does not exist"),
        "unreadable video": (["--video", noise, *m], "cannot read video"),
        "video without frames": (["--video", stub, *m], "video"),
        "camera": (["--camera", "99", *m], "camera 99"),
        "camera device": (["--camera", tmp_path / "video9", *m], "no such device"),
        "stream": (["rtsp://admin:s3cret@127.0.0.1:1/ch1", *m], "rtsp://admin:***@127.0.0.1"),
        "missing model": ([*v, "--model", tmp_path / "none.onnx", "--no-display"], "model"),
        "corrupt model": ([*v, "--model", junk, "--no-display"], "cannot load"),
        "no metadata": ([*v, "--model", nometa, "--no-display"], "metadata"),
        "metadata misfit": ([*v, "--model", misfit, "--no-display"], "does not fit"),
        "unknown model": ([*v, "--model", "nosuchnet", "--no-display"], "no model named"),
        "one-point model": ([*v, "--model", "nosetip", "--no-display"], "68-point model"),
        "unwritable csv": ([*v, *m, "--csv", tmp_path / "no/dir/x.csv"], "cannot write"),
        "csv is a dir": ([*v, *m, "--json", tmp_path], "directory"),
        "unwritable video": ([*v, *m, "--out", tmp_path / "no/dir/x.mp4"], "cannot write"),
        "bad detector": ([*v, *m, "--detector", tmp_path / "yunet.onnx"], "YuNet"),
        "out-dir is a file": ([*v, *m, "--out-dir", face_video], "it is a file"),
        "out-dir without parent": ([*v, *m, "--out-dir", tmp_path / "no/dir"], "not exist"),
    }


CASES = ["missing video", "unreadable video", "video without frames", "camera",
         "camera device", "stream",
         "missing model", "corrupt model", "no metadata", "metadata misfit", "unknown model",
         "one-point model",
         "unwritable csv", "csv is a dir", "unwritable video", "bad detector",
         "out-dir is a file", "out-dir without parent"]


@pytest.mark.parametrize("case", CASES)
def test_bad_inputs_one_line_nonzero(capsys, bad_inputs, case):
    argv, words = bad_inputs[case]
    rc, out, err = run_main(capsys, *argv)
    assert rc == 1, (out, err)
    assert err.count("\n") == 1 and err.startswith("fkp-track: error: "), err
    assert words in err and "Traceback" not in err and "s3cret" not in err


def _photo_points(capsys, tmp_path, model, folder, *extra) -> dict[str, list]:
    """fkp-track on an image folder; {image file name: points of its first face}."""
    out = tmp_path / f"p{len(list(tmp_path.glob('p*.jsonl')))}.jsonl"
    rc, _, err = run_main(capsys, folder, "--model", model, "--no-display", "--threads", 1,
                          "--json", out, *extra)
    assert rc == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return {Path(d["image"]).name: d["faces"][0]["points"] for d in lines}


def test_image_folder_each_image_on_its_own(capsys, tmp_path, tiny_model, astronaut_bgr):
    """Photos of a folder are unrelated: the second one's points are what it gets alone
    (no track or smoothing carried over), unless --track-images says they are one clip;
    --out-dir writes them under their names and never over the inputs."""
    photos, alone = tmp_path / "photos", tmp_path / "alone"
    photos.mkdir()
    alone.mkdir()
    cv2.imwrite(str(photos / "a.png"), face_frame(astronaut_bgr, 0))
    cv2.imwrite(str(photos / "b.png"), face_frame(astronaut_bgr, 8))   # moved 7 px
    cv2.imwrite(str(alone / "b.png"), face_frame(astronaut_bgr, 8))
    ann = tmp_path / "annotated"
    both = _photo_points(capsys, tmp_path, tiny_model, photos, "--out-dir", ann)
    assert sorted(both) == ["a.png", "b.png"]
    single = _photo_points(capsys, tmp_path, tiny_model, alone)
    assert both["b.png"] == single["b.png"]
    tracked = _photo_points(capsys, tmp_path, tiny_model, photos, "--track-images")
    assert tracked["b.png"] != both["b.png"]          # tracked from a.png, smoothed
    assert sorted(q.name for q in ann.iterdir()) == ["a.png", "b.png"]     # no temp files
    assert cv2.imread(str(ann / "b.png")).shape == (FRAME_H, FRAME_W, 3)
    before = (photos / "a.png").read_bytes()
    rc, _, err = run_main(capsys, photos, "--model", tiny_model, "--no-display",
                          "--out-dir", photos)
    assert rc == 1 and err.count("\n") == 1 and "would overwrite" in err
    assert (photos / "a.png").read_bytes() == before


def test_flip_test_is_on_for_photos_only_by_default(capsys, tmp_path, tiny_model,
                                                    astronaut_bgr, face_video):
    """Photos run with the flip test unless --no-flip-test; videos without unless
    --flip-test. The header line says so, and the shipped net's points follow."""
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), face_frame(astronaut_bgr, 0))
    heads, points = {}, {}
    for extra in ([], ["--no-flip-test"], ["--track-images"]):
        out = tmp_path / f"f{len(heads)}.jsonl"
        rc, stdout, _ = run_main(capsys, photos, "--model", "fastnet-int8", "--no-display",
                                 "--threads", 1, "--json", out, *extra)   # (tiny: symmetric)
        assert rc == 0
        heads[tuple(extra)] = stdout.splitlines()[0]
        points[tuple(extra)] = json.loads(out.read_text())["faces"][0]["points"]
    assert "flip test" in heads[()] and "flip test" not in heads[("--no-flip-test",)]
    assert "flip test" not in heads[("--track-images",)]
    assert points[()] != points[("--no-flip-test",)]
    for extra, flip in (([], False), (["--flip-test"], True)):
        rc, stdout, _ = run_main(capsys, face_video, "--model", tiny_model, "--no-display",
                                 "--max-frames", 1, *extra)
        assert rc == 0 and ("flip test" in stdout.splitlines()[0]) is flip


def test_cuda_without_gpu(capsys, tiny_model, face_video):
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    rc, _, err = run_main(capsys, "--video", face_video, "--model", tiny_model, "--device",
                          "cuda", "--no-display")
    assert rc == 1 and err.count("\n") == 1 and "--device cuda" in err
    rc, _, err = run_main(capsys, "--video", face_video, "--model", tiny_model, "--half",
                          "--no-display")
    assert rc == 1 and err.count("\n") == 1 and "--half" in err and "GPU" in err


def test_headless_display(capsys, monkeypatch, tiny_model, face_video):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc, _, err = run_main(capsys, "--video", face_video, "--model", tiny_model)
    assert rc == 1 and err.count("\n") == 1 and "--no-display" in err


def test_truncated_video_keeps_rows(capsys, tmp_path, tiny_model, face_video):
    cut = tmp_path / "cut.avi"
    data = face_video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    csv_path = tmp_path / "cut.csv"
    rc, _, err = run_main(capsys, "--video", cut, "--model", tiny_model, "--no-display",
                          "--csv", csv_path)
    assert rc == 3 and err.count("\n") == 1 and "truncated" in err
    rows = list(csv.reader(csv_path.open()))[1:]
    assert rows and all(len(r) == N_COLS for r in rows)


def test_two_sources_is_usage_error(capsys, face_video):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--camera", "0", "--video", str(face_video)])
    assert exc.value.code == 2


@pytest.mark.parametrize("argv", [["--camera-size", "1280", "--video", "V"],
                                  ["--camera-size", "640x480", "--video", "V"],
                                  ["--camera-size", "640x480", "rtsp://cam/1"]])
def test_camera_size_is_checked(capsys, face_video, argv):
    """A malformed size, or a size for a file or a stream: usage error (2) in one line."""
    argv = [str(face_video) if a == "V" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--no-display"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--camera-size" in err.splitlines()[-1]
    assert frame_size("1280x720") == (1280, 720)


def _default_sigint() -> None:
    """A shell without job control starts background jobs with SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler; the child must see Ctrl-C however pytest was run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP, signal.SIGKILL])
def test_interrupted_run_keeps_complete_rows(tmp_path, tiny_model, long_video, sig):
    """Ctrl-C, a closed terminal (SIGHUP) and even SIGKILL keep every finished row; the first
    two also finish the --out video, so that it plays."""
    csv_path, video_path = tmp_path / "run.csv", tmp_path / "run.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fkp.tracker.cli", "--video", str(long_video), "--model",
         str(tiny_model), "--no-display", "--csv", str(csv_path), "--threads", "1",
         "--redetect-every", "1", "--out", str(video_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.time() + 30
    while time.time() < deadline:
        if csv_path.exists() and len(csv_path.read_bytes().splitlines()) > 20:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0, "finished before it was interrupted"
    if sig != signal.SIGKILL:
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
        cap = cv2.VideoCapture(str(video_path))
        assert cap.read()[0], "the --out video does not play"
        cap.release()
    rows = list(csv.reader(csv_path.open()))
    assert rows[0][0] == "frame" and len(rows) > 20
    assert all(len(r) == N_COLS for r in rows)
    frames = [int(r[0]) for r in rows[1:]]
    assert frames == sorted(frames) and frames[-1] < 1200 - 1
    [float(x) for r in rows[1:] for x in r]


def test_runtime_never_imports_torch():
    code = ("import sys, pkgutil, importlib, fkp.tracker as t\n"
            "for m in pkgutil.iter_modules(t.__path__):\n"
            "    importlib.import_module('fkp.tracker.' + m.name)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print('ok', len(list(pkgutil.iter_modules(t.__path__))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ok")


def test_scan_runs_in_the_loop_for_files_and_on_a_worker_for_cameras():
    from fkp.tracker.cli import async_scan, build_parser
    ap = build_parser()
    assert async_scan(ap.parse_args(["--video", "v.mp4"]), "video") is False
    assert async_scan(ap.parse_args(["--video", "v.mp4", "--async-detect"]), "video") is True
    assert async_scan(ap.parse_args(["--camera", "0"]), "camera") is True
    assert async_scan(ap.parse_args(["--camera", "0", "--sync-detect"]), "camera") is False
    with pytest.raises(SystemExit):
        ap.parse_args(["--sync-detect", "--async-detect"])
