"""fkp-testvideo make / score: self-consistency on a tiny labelled folder built in the test."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fkp.tracker import testvideo
from fkp.tracker.data import read_folder
from fkp.tracker.landmarks import NUM_POINTS, interocular
from fkp.tracker.videoscore import read_points_csv, score_files

# Tight landmark box of skimage's astronaut (x0, y0, x1, y1), read by eye.
ASTRONAUT_BOX = (180.0, 87.0, 270.0, 172.0)


def unit_face() -> np.ndarray:
    """A plausible 68-point iBUG shape in its own tight unit box [0, 1]^2 (x right, y down)."""
    p = np.zeros((NUM_POINTS, 2))
    th = np.linspace(0, np.pi, 17)
    p[0:17] = np.c_[0.5 - 0.5 * np.cos(th), 0.2 + 0.8 * np.sin(th)]           # jaw
    arc = 0.08 - 0.08 * np.sin(np.linspace(0, np.pi, 5))
    p[17:22] = np.c_[np.linspace(0.10, 0.42, 5), arc]                          # brows
    p[22:27] = np.c_[np.linspace(0.58, 0.90, 5), arc]
    p[27:31] = np.c_[np.full(4, 0.5), np.linspace(0.2, 0.5, 4)]                # nose
    p[31:36] = np.c_[np.linspace(0.4, 0.6, 5), [0.56, 0.58, 0.59, 0.58, 0.56]]
    eye = np.array([[-.08, 0], [-.03, -.03], [.03, -.03], [.08, 0], [.03, .03], [-.03, .03]])
    p[36:42] = eye + [0.28, 0.25]
    p[42:48] = eye + [0.72, 0.25]
    ph = np.pi + np.arange(12) * np.pi / 6
    p[48:60] = np.c_[0.5 + 0.17 * np.cos(ph), 0.75 + 0.07 * np.sin(ph)]        # lips
    ph = np.pi + np.arange(8) * np.pi / 4
    p[60:68] = np.c_[0.5 + 0.13 * np.cos(ph), 0.75 + 0.025 * np.sin(ph)]
    return p


def astronaut_points() -> np.ndarray:
    x0, y0, x1, y1 = ASTRONAUT_BOX
    return unit_face() * [x1 - x0, y1 - y0] + [x0, y0]


def write_folder(root: Path, images: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Folder format: root/images/NAME + root/landmarks.csv."""
    (root / "images").mkdir(parents=True)
    with open(root / "landmarks.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image"] + [f"{a}{i}" for i in range(NUM_POINTS) for a in "xy"])
        for name, (img, pts) in images.items():
            cv2.imwrite(str(root / "images" / name), img)
            w.writerow([name] + [f"{v:.3f}" for v in pts.reshape(-1)])
    return root


@pytest.fixture(scope="module")
def astro_folder(tmp_path_factory) -> Path:
    from skimage.data import astronaut

    img = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
    pts = astronaut_points()
    flipped = pts.copy()
    flipped[:, 0] = img.shape[1] - 1 - flipped[:, 0]
    from fkp.tracker.landmarks import FLIP_PERM
    return write_folder(tmp_path_factory.mktemp("astro"), {
        "astronaut_00.png": (img, pts),
        "mirror_00.png": (img[:, ::-1].copy(), flipped[FLIP_PERM]),
    })


@pytest.fixture(scope="module")
def video(astro_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video") / "two.mp4"
    assert testvideo.main(["make", str(astro_folder), str(out), "--faces", "2",
                           "--seconds", "2", "--fps", "10", "--seed", "3"]) == 0
    return out


def run_score(capsys, *files: Path | str) -> dict:
    """``fkp-testvideo score TRUTH TRACK [TRUTH TRACK ...]`` -> its last-line JSON."""
    assert testvideo.main(["score", *map(str, files)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) > 1
    return json.loads(lines[-1])


def write_track(path: Path, rows: list[tuple[int, int, np.ndarray]], fps: float = 10.0) -> None:
    """A file in the fkp-track --csv layout."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "timestamp_ms", "face", "score"]
                   + [f"{a}{i}" for i in range(NUM_POINTS) for a in "xy"])
        for frame, face, pts in rows:
            w.writerow([frame, f"{1000 * frame / fps:.1f}", face, "0.9"]
                       + [f"{v:.4f}" for v in pts.reshape(-1)])


def test_make_writes_video_and_truth(video):
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 20 and frames[0].shape == (480, 640, 3)
    truth = read_points_csv(testvideo.truth_path_for(video))
    assert sorted(truth) == list(range(20))
    assert [f for f, _ in truth[0]] == [0]                 # second face appears later
    assert [f for f, _ in truth[19]] == [0, 1]
    for faces in truth.values():
        for _, p in faces:
            assert p.shape == (68, 2)
            assert (p >= 0).all() and (p[:, 0] < 640).all() and (p[:, 1] < 480).all()
    # first second still (10 frames), then moving
    p0 = [dict(truth[i])[0] for i in range(20)]
    assert all(np.array_equal(p0[0], p0[i]) for i in range(10))
    assert not np.allclose(p0[9], p0[15])


def test_points_follow_pixels(tmp_path):
    """A bright dot at point 30 in the source stays under the warped point 30 in every frame."""
    img = np.full((200, 200, 3), 60, np.uint8)
    pts = unit_face() * 100 + 50
    cv2.circle(img, tuple(int(v) for v in np.rint(pts[30])), 0, (255, 255, 255), -1)
    img = cv2.GaussianBlur(img, (0, 0), 1.5)
    # put the dot exactly at the labelled point (the drawn circle is at the rounded pixel)
    pts[30] = np.rint(pts[30])
    folder = write_folder(tmp_path / "dot", {"dot_00.png": (img, pts)})
    rng = np.random.default_rng(0)
    faces = testvideo.plan_faces(read_folder(folder), 1, 4.0, 0.2, rng)
    bg = np.full((480, 640, 3), 60, np.uint8)
    for t in (0.0, 0.7, 1.9, 3.3):
        frame, truth = testvideo.render(bg, faces, t, 0.0, rng)
        g = frame[..., 0].astype(np.float64)
        x, y = truth[0][1][30]
        ix, iy = int(round(x)), int(round(y))
        win = g[iy - 4:iy + 5, ix - 4:ix + 5] - 60
        yy, xx = np.mgrid[iy - 4:iy + 5, ix - 4:ix + 5]
        cx, cy = (win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()
        assert abs(cx - x) < 0.5 and abs(cy - y) < 0.5, (t, cx, cy, x, y)


def test_score_truth_against_itself(video, capsys):
    truth = testvideo.truth_path_for(video)
    res = run_score(capsys, truth, truth)
    assert res["detected_pct"] == 100.0 and res["nme_pct"] == 0.0
    assert res["failure_pct"] == 0.0 and res["jitter_pct"] == 0.0
    assert res["false_positives"] == 0 and res["still_pairs"] > 0
    assert res["true_faces"] == 20 + sum(1 for _ in range(20) if _ / 10 >= 0.6)
    # the video path finds its sidecar
    assert run_score(capsys, video, truth)["nme_pct"] == 0.0


def test_score_known_errors(video, tmp_path, capsys):
    truth = read_points_csv(testvideo.truth_path_for(video))
    d = 2.0  # px: +d on even frames, -d on odd frames, in x
    rows, dropped, n_true, expect_nme = [], 0, 0, []
    for frame, faces in truth.items():
        for face, p in faces:
            n_true += 1
            if face == 1 and frame % 5 == 0:
                dropped += 1          # missed face
                continue
            rows.append((frame, face, p + [d if frame % 2 == 0 else -d, 0.0]))
            expect_nme.append(100 * d / interocular(p))
    rows.append((3, 7, np.full((68, 2), 5.0)))   # a false positive far from any face
    track = tmp_path / "track.csv"
    write_track(track, rows)
    res = run_score(capsys, testvideo.truth_path_for(video), track)
    assert res["true_faces"] == n_true
    assert res["detected_pct"] == pytest.approx(100 * (n_true - dropped) / n_true, abs=1e-3)
    assert res["failure_pct"] == pytest.approx(100 * dropped / n_true, abs=1e-3)
    assert res["nme_pct"] == pytest.approx(np.mean(expect_nme), rel=1e-3)
    assert res["false_positives"] == 1
    # on still frames the error flips by 2d each frame
    sq = []
    kept = {(f, k) for f, k, _ in rows}
    for frame in sorted(truth)[1:]:
        prev = dict(truth.get(frame - 1, []))
        for face, p in truth[frame]:
            if face in prev and np.array_equal(prev[face], p) and \
                    {(frame, face), (frame - 1, face)} <= kept:
                sq.append((2 * d / interocular(p)) ** 2)
    s = score_files(testvideo.truth_path_for(video), track)
    assert s.still_pairs == len(sq) > 0
    assert res["jitter_pct"] == pytest.approx(100 * np.sqrt(np.mean(sq)), rel=1e-3)

    # pooled with a second video where nothing was tracked: every count adds up, the
    # errors are those of the first video alone
    none = tmp_path / "none.csv"
    write_track(none, [])
    t = str(testvideo.truth_path_for(video))
    both = run_score(capsys, t, track, t, none)
    assert both["true_faces"] == 2 * n_true and both["still_pairs"] == s.still_pairs
    assert both["detected_pct"] == pytest.approx(res["detected_pct"] / 2, abs=1e-3)
    assert both["failure_pct"] == pytest.approx(50 + res["failure_pct"] / 2, abs=1e-3)
    assert (both["nme_pct"], both["jitter_pct"]) == (res["nme_pct"], res["jitter_pct"])
    assert both["false_positives"] == 1
    twice = run_score(capsys, t, track, t, track)      # no jitter pair spans the two videos
    assert twice["still_pairs"] == 2 * s.still_pairs and twice["jitter_pct"] == \
        res["jitter_pct"]


def test_bad_input_one_line(tmp_path, capsys):
    assert testvideo.main(["score", str(tmp_path / "none.csv"), str(tmp_path / "t.csv")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    (tmp_path / "empty").mkdir()
    assert testvideo.main(["make", str(tmp_path / "empty"), str(tmp_path / "x.mp4")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "landmarks.csv" in err[0]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert testvideo.main(["score", str(bad), str(bad)]) != 0
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert testvideo.main(["score", str(bad), str(bad), str(bad)]) != 0
    assert "pairs" in capsys.readouterr().err


def test_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        testvideo.main(["make", "--help"])
    assert e.value.code == 0 and "--faces" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        testvideo.main(["make", "only_one_arg"])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
