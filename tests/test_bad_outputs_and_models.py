"""Outputs that would destroy an input or each other, models whose outputs do not fit their
metadata, and out-of-range numbers: each is refused in one line before any work."""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_tiny_model
from datasets import constant_model, run_module as run, write_folder
from fkp.tracker import cli
from fkp.tracker.argtypes import number, whole
from fkp.tracker.writers import OutputError, check_outputs


# ----------------------------------------------------------------------------- outputs
def test_check_outputs_finds_shared_files_and_inputs(tmp_path):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"x")
    (tmp_path / "link.mp4").symlink_to(video)
    (tmp_path / "sub").mkdir()
    check_outputs({"--csv": tmp_path / "a.csv", "--json": tmp_path / "a.jsonl", "--out": None},
                  [video, "0", "rtsp://cam/1", ""])
    for outputs, inputs, says in (
            ({"--csv": tmp_path / "a.csv", "--json": tmp_path / "sub/../a.csv"}, [], "both name"),
            ({"--csv": "-", "--json": "-"}, [], "both name"),
            ({"--csv": video}, [video], "is an input"),
            ({"--out": tmp_path / "link.mp4"}, [video], "is an input"),   # another name
            ({"--csv": tmp_path / "x.csv"}, [tmp_path / "x.csv"], None)):  # not there yet
        if says is None:
            check_outputs(outputs, inputs)
            continue
        with pytest.raises(OutputError, match=says):
            check_outputs(outputs, inputs)


def test_track_refuses_to_write_over_its_video_or_one_file_twice(capsys, tmp_path, face_video,
                                                                   tiny_model):
    video = shutil.copy(face_video, tmp_path / "v.avi")
    before = video.read_bytes()
    for argv, says in (
            (["--csv", video], "is an input"),
            (["--out", video], "is an input"),
            (["--csv", tmp_path / "a.csv", "--json", tmp_path / "a.csv"], "both name"),
            (["--csv", "-", "--json", "-"], "both name"),
            (["--csv", tiny_model], "is an input")):              # the model file
        rc = cli.main([str(a) for a in (video, "--model", tiny_model, "--no-display",
                                        "--max-frames", 2, *argv)])
        err = capsys.readouterr().err
        assert rc == 1 and says in err and err.count("\n") == 1, err
    assert video.read_bytes() == before and not (tmp_path / "a.csv").exists()


def test_track_ends_quietly_when_its_stdout_closes(face_video, tiny_model):
    """``fkp-track ... --csv - | head -1``: status 1, no traceback, no error message."""
    p = subprocess.Popen([sys.executable, "-m", "fkp.tracker.cli", str(face_video), "--model",
                          str(tiny_model), "--no-display", "--csv", "-"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()                          # the reader is gone before the first row
    err = p.stderr.read()
    assert p.wait(timeout=60) == 1
    assert "Traceback" not in err and "error" not in err, err


def test_export_quantize_and_ensemble_refuse_to_overwrite_an_input(tmp_path):
    a = make_tiny_model(tmp_path / "a.onnx")
    b = make_tiny_model(tmp_path / "b.onnx")
    ckpt = tmp_path / "final.pt"
    ckpt.write_bytes(b"not read: the destination is checked first")
    before = {p: p.read_bytes() for p in (a, b, ckpt)}
    data = tmp_path / "no-data"              # never read either
    for module, argv, prog, says in (
            ("fkp.export.onnx_export", [ckpt, ckpt], "fkp-export", "is an input"),
            ("fkp.export.quantize", [a, a, "--data", data], "fkp-quantize", "is an input"),
            ("fkp.export.ensemble", [a, b, b, "--data", data], "fkp-ensemble", "is an input"),
            ("fkp.export.onnx_export", [ckpt, tmp_path], "fkp-export", "is a directory")):
        p = run(module, *map(str, argv), check=False)
        assert p.returncode == 1 and p.stderr.startswith(f"{prog}: error:"), p.stderr
        assert says in p.stderr, p.stderr
        assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert all(p.read_bytes() == v for p, v in before.items())
    assert not list(tmp_path.glob("*.tmp"))


def test_quantize_refuses_a_model_that_is_already_int8(tmp_path):
    q = make_tiny_model(tmp_path / "q.onnx",
                        metadata={"training": {"quantization": {"method": "minmax"}}})
    p = run("fkp.export.quantize", str(q), str(tmp_path / "qq.onnx"), "--data",
            str(tmp_path), check=False)
    assert p.returncode == 1 and "already quantized" in p.stderr, p.stderr
    assert not (tmp_path / "qq.onnx").exists()


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("points, says", [
    (np.full((5, 2), 0.5), "[1, 5, 2]"),                      # 5 points, metadata says 68
    (np.full((68, 2), np.nan), "finite")])                    # NaN weights
def test_a_model_whose_points_do_not_fit_its_metadata_fails_at_load(tmp_path, capsys, points,
                                                                     says, face_video):
    from fkp.tracker.runtime import LandmarkModel, ModelError

    bad = constant_model(tmp_path / "bad.onnx", points, num_points=68)
    with pytest.raises(ModelError, match=r"does not fit the metadata") as exc:
        LandmarkModel(bad, "cpu")
    assert says in str(exc.value)
    rc = cli.main([str(face_video), "--model", str(bad), "--no-display", "--max-frames", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "does not fit the metadata" in err and err.count("\n") == 1, err


def test_yunet_with_a_graph_that_is_no_yunet_fails_at_construction(tiny_model, tmp_path):
    from fkp.tracker.detectors import DetectorError, YuNetDetector

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 20)
    for path in (tiny_model, junk):
        with pytest.raises(DetectorError, match="as a YuNet face detector: ") as exc:
            YuNetDetector(path)
        msg = str(exc.value)
        assert "OpenCV(" not in msg and "in function" not in msg and len(msg.split(": ", 1)[1]) > 5


def test_eval_refuses_bad_requests_before_evaluating(tmp_path):
    data, _ = write_folder(tmp_path / "d", n=4, people=2)
    m68 = make_tiny_model(tmp_path / "m68.onnx")
    one = constant_model(tmp_path / "one.onnx", np.full((1, 2), 0.5))
    for argv, says, status in (                       # 2: bad usage, 1: a bad file
            (["--ced", tmp_path / "c.txt"], "--ced writes .png", 2),
            (["--ced", tmp_path / "none" / "c.png"], "does not exist", 1),
            (["--model", m68, "--model", one], "68-point models", 1),
            (["--model", one, "--point-bias"], "68-point models", 1),
            (["--limit", "-1"], "--limit", 2),
            (["--val-fraction", "nan"], "--val-fraction", 2)):
        p = run("fkp.tracker.evaluate", str(data), *map(str, argv), check=False)
        assert p.returncode == status and says in p.stderr, p.stderr
        assert "NME" not in p.stdout and "Traceback" not in p.stderr


# ----------------------------------------------------------------------------- numbers
def test_argument_types_refuse_out_of_range_and_non_finite_values():
    assert whole(0)("0") == 0 and whole(1, 4)("4") == 4
    assert number()("0") == 0.0 and number(1)("2.5") == 2.5
    for parse, text in ((whole(1), "0"), (whole(0, 8), "9"), (whole(0), "1.5"),
                        (number(), "-1"), (number(), "nan"), (number(), "inf"),
                        (number(above=True), "0"), (number(), "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert math.isfinite(number()("1e300"))


@pytest.mark.parametrize("module, argv, option", [
    ("fkp.tracker.cli", ["--threads", "0"], "--threads"),
    ("fkp.tracker.cli", ["--max-faces", "0"], "--max-faces"),
    ("fkp.tracker.cli", ["--smooth", "nan"], "--smooth"),
    ("fkp.tracker.cli", ["--prefetch", "100000"], "--prefetch"),
    ("fkp.tracker.bench", ["--infer-only", "--batch", "100000"], "--batch"),
    ("fkp.tracker.testvideo", ["make", "d", "o.mp4", "--seconds", "nan"], "--seconds"),
    ("fkp.train.cli", ["--data", "d", "--out", "o", "--threads", "-1"], "--threads"),
    ("fkp.train.cli", ["--data", "d", "--out", "o", "--ema", "1.5"], "--ema"),
    ("fkp.train.cli", ["--data", "d", "--out", "o", "--epochs", "0"], "--epochs"),
    ("fkp.train.cli", ["--data", "d", "--out", __file__], "is a file")])
def test_commands_refuse_numbers_out_of_range_in_one_line(module, argv, option):
    p = run(module, *argv, check=False)
    assert p.returncode == 2 and option in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1, p.stderr          # one line, no usage block


def test_score_names_a_file_that_is_no_csv(tmp_path, face_video):
    truth = tmp_path / "t.truth.csv"
    truth.write_text("frame,face," + ",".join(f"x{i},y{i}" for i in range(68)) + "\n"
                     + "0,0," + ",".join(["10"] * 136) + "\n")
    for track, says in ((face_video, "not a text (CSV) file"),
                        (tmp_path, "a directory, not a CSV file")):
        p = run("fkp.tracker.testvideo", "score", str(truth), str(track), check=False)
        assert p.returncode == 1 and f"{track}: {says}" in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1


def test_a_frame_that_is_empty_or_float_is_refused_in_one_line():
    from fkp.tracker.results import as_image

    for frame, says in ((np.zeros((0, 0, 3), np.uint8), "empty"),
                        (np.zeros((4, 0), np.uint8), "empty"),
                        (np.zeros((4, 4, 3), np.float32), r"astype\(np.uint8\)")):
        with pytest.raises(ValueError, match=says):
            as_image(frame)


def test_bench_on_a_truncated_mp4_says_one_line(tmp_path, astronaut_bgr, tiny_model):
    """FFmpeg's own complaints (``moov atom not found``) stay out of the one error line."""
    from conftest import face_frame, write_video

    whole_video = write_video(tmp_path / "v.mp4", [face_frame(astronaut_bgr, i) for i in range(8)],
                              fourcc="mp4v")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole_video.read_bytes()[:4000])       # the index (moov) is at the end
    p = run("fkp.tracker.bench", "--video", str(cut), "--model", str(tiny_model), check=False)
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("fkp-bench: error: cannot read video")


def test_bench_on_a_half_video_times_what_it_read_and_exits_3(tmp_path, face_video,
                                                              tiny_model):
    """A video that ends before its container says: the frames read are timed and reported
    (the JSON line, ``"truncated": true``), then one error line and status 3, as fkp-track."""
    import json

    cut = tmp_path / "cut.avi"
    data = face_video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    p = run("fkp.tracker.bench", "--video", str(cut), "--model", str(tiny_model),
            "--vs", str(tiny_model), "--rounds", "2", check=False)
    assert p.returncode == 3, p.stderr
    assert p.stderr.count("\n") == 1 and "truncated" in p.stderr, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["truncated"] is True and result["frames"] > 0 and "_truncated" not in result
    p = run("fkp.tracker.bench", "--video", str(face_video), "--model", str(tiny_model),
            check=False)
    assert p.returncode == 0 and json.loads(p.stdout.splitlines()[-1])["truncated"] is False


@pytest.mark.parametrize("argv, says", [
    (["--track-images"], "--track-images is for an image folder"),
    (["--smooth", "2", "--no-smooth"], "not allowed with argument --smooth")])
def test_track_refuses_options_it_would_ignore(capsys, face_video, tiny_model, argv, says):
    with pytest.raises(SystemExit) as exc:
        cli.main([str(face_video), "--model", str(tiny_model), "--no-display", *argv])
    assert exc.value.code == 2 and says in capsys.readouterr().err.splitlines()[-1]


def test_eval_says_why_no_face_was_left_to_score(tmp_path):
    data, _ = write_folder(tmp_path / "d", n=2, people=1)
    m68 = make_tiny_model(tmp_path / "m68.onnx")
    p = run("fkp.tracker.evaluate", str(data), "--model", str(m68), "--split", "val",
            "--val-fraction", "0.01", check=False)
    assert p.returncode == 1 and "no faces of val people in its split" in p.stderr, p.stderr
    for image in (data / "images").iterdir():
        image.write_bytes(b"garbage")
    p = run("fkp.tracker.evaluate", str(data), "--model", str(m68), "--skip-bad", check=False)
    assert p.returncode == 1 and "every face was skipped as bad (2)" in p.stderr, p.stderr


def test_a_file_read_as_a_camera_gets_a_warning(face_video, caplog):
    """``--camera talk.mp4`` works (a file read live) but drops frames: the user is told
    that ``--video`` processes every frame."""
    from fkp.tracker.sources import open_source

    with caplog.at_level("WARNING", logger="fkp.tracker.sources"):
        source = open_source(str(face_video), "camera")
        source.close()
    assert any("--video" in r.getMessage() and "is a file" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("module, target, argv, prog", [
    ("fkp.export.onnx_export", "export", ["ck.pt", "out.onnx"], "fkp-export"),
    ("fkp.export.quantize", "quantize", ["m.onnx", "q.onnx", "--data", "d"], "fkp-quantize"),
    ("fkp.export.ensemble", "ensemble", ["a.onnx", "b.onnx", "e.onnx", "--data", "d"],
     "fkp-ensemble"),
    ("fkp.tracker.testvideo", "score_pooled", ["score", "t.truth.csv", "t.csv"],
     "fkp-testvideo"),
    ("fkp.tracker.evaluate", "LandmarkModel", ["d"], "fkp-eval"),
    ("fkp.tracker.bench", "bench", ["--video", "v.mp4"], "fkp-bench")])
def test_ctrl_c_ends_a_command_with_one_line_and_status_130(monkeypatch, capsys, module,
                                                           target, argv, prog):
    import importlib

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    mod = importlib.import_module(module)
    monkeypatch.setattr(mod, target, interrupted)
    monkeypatch.setattr(mod, "resolve_model", lambda name, device: name, raising=False)
    try:
        status = mod.main(argv)
    except KeyboardInterrupt:
        pytest.fail(f"{prog}: Ctrl-C escaped main() (a traceback for the user)")
    assert status == 130 and capsys.readouterr().err == f"{prog}: interrupted\n"
