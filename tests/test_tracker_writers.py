"""CSV / JSON Lines / video writers and the drawing helpers."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from fkp.tracker.draw import FpsMeter, draw_fps, draw_points, draw_result
from fkp.tracker.tracking import FrameResult
from fkp.tracker.writers import (CsvWriter, ImageDirOutput, JsonLinesWriter, OutputError,
                                 VideoOutput)


def result(index: int, n: int) -> FrameResult:
    rng = np.random.default_rng(index)
    pts = rng.uniform(10, 90, (n, 68, 2))
    return FrameResult(index, index * 40.0, ids=np.arange(n, dtype=np.int64), points=pts,
                       raw_points=pts, scores=np.full(n, 0.9),
                       boxes=np.c_[pts.min(1), pts.max(1)])


def test_csv_rows_and_columns(tmp_path):
    path = tmp_path / "out.csv"
    with CsvWriter(path) as w:
        w.write(result(0, 2))
        w.write(result(1, 0))               # no face: no row
        w.write(result(2, 1))
    rows = list(csv.reader(path.open()))
    header = rows[0]
    assert header[:4] == ["frame", "timestamp_ms", "face", "score"]
    assert header[4:8] == ["x0", "y0", "x1", "y1"] and header[-2:] == ["x67", "y67"]
    assert len(header) == 4 + 136
    assert [r[:3] for r in rows[1:]] == [["0", "0.000", "0"], ["0", "0.000", "1"],
                                         ["2", "80.000", "0"]]
    assert all(len(r) == len(header) for r in rows)
    np.testing.assert_allclose(np.array(rows[3][4:], float).reshape(68, 2),
                               result(2, 1).points[0], atol=0.006)


def test_csv_is_flushed_after_every_frame(tmp_path):
    path = tmp_path / "live.csv"
    w = CsvWriter(path)
    w.write(result(0, 1))
    assert len(path.read_text().splitlines()) == 2        # readable before close
    w.close()


def test_jsonl(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonLinesWriter(path) as w:
        w.write(result(3, 2))
        w.write(result(4, 0))
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["frame"] == 3 and len(obj["faces"]) == 2
    face = obj["faces"][1]
    assert face["id"] == 1 and len(face["points"]) == 68 and len(face["box"]) == 4


@pytest.mark.parametrize("cls", [CsvWriter, JsonLinesWriter])
def test_unwritable_text_output(tmp_path, cls):
    with pytest.raises(OutputError, match="does not exist"):
        cls(tmp_path / "no" / "such" / "dir" / "out.txt")
    with pytest.raises(OutputError, match="directory"):
        cls(tmp_path)


def test_video_output_and_drawing(tmp_path):
    path = tmp_path / "out.mp4"
    frame = np.zeros((100, 120, 3), np.uint8)
    with VideoOutput(path, 25.0, (120, 100)) as v:
        for i in range(5):
            img = draw_result(frame.copy(), result(i, 2), contours=True, boxes=True)
            assert img.any()
            v.write(draw_fps(img, 30.0))
        v.write(np.zeros((50, 60), np.uint8))           # other size, gray: converted
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    with pytest.raises(OutputError):
        VideoOutput(tmp_path / "missing" / "x.mp4", 25.0, (120, 100))


def test_live_frames_keep_real_time_in_the_video(tmp_path):
    """Timestamped frames (a camera: uneven, with dropped frames) are placed on the 10-fps
    timeline: a gap repeats the previous frame, a frame early for its slot is left out."""
    path = tmp_path / "live.avi"
    stamps = [1000.0, 1100.0, 1390.0, 1420.0, 1500.0]       # slots 0, 1, 4 (3.9), 4, 5
    with VideoOutput(path, 10.0, (64, 48), fourcc="MJPG") as v:
        for i, t in enumerate(stamps):
            v.write(np.full((48, 64, 3), 40 * (i + 1), np.uint8), t)
    assert v.frames_written == 6
    cap = cv2.VideoCapture(str(path))
    levels = []
    while (got := cap.read())[0]:
        levels.append(int(round(got[1].mean() / 40)))
    assert levels == [1, 2, 2, 2, 3, 5]          # 1.0 s .. 1.5 s at 10 fps; frame 4 dropped


def test_draw_empty_and_fps_meter():
    img = np.zeros((50, 50, 3), np.uint8)
    draw_result(img, FrameResult(0, 0.0))
    assert not img.any()
    m = FpsMeter()
    for i in range(10):
        fps = m.tick(i * 0.02)
    assert fps == pytest.approx(50.0)


@pytest.mark.parametrize("radius", [1, 2])
def test_dots_are_disks_at_the_rounded_points_clipped_to_the_image(radius):
    """Each dot: the pixels within ``radius`` (+ a half-pixel allowance) of the rounded point,
    whatever falls inside the image; the same on colour, gray and non-contiguous images,
    with every dot inside (one flat assignment) or some across the edge."""
    def reference(shape, pts):
        out = np.zeros(shape[:2], bool)
        for x, y in np.rint(pts[np.isfinite(pts).all(axis=1)]).astype(int):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    if dx * dx + dy * dy <= radius * radius + radius \
                            and 0 <= x + dx < shape[1] and 0 <= y + dy < shape[0]:
                        out[y + dy, x + dx] = True
        return out

    inside = np.array([[10.4, 7.6], [30.0, 20.0], [np.nan, 5.0], [44.5, 25.5]])
    edge = np.vstack([inside, [[0.2, 0.0], [49.7, 29.9], [-5.0, 10.0], [1e9, -1e9]]])
    for pts in (inside, edge):
        want = reference((30, 50), pts)
        colour = draw_points(np.zeros((30, 50, 3), np.uint8), pts, radius=radius)
        assert ((colour == (0, 255, 0)).all(axis=2) == want).all()
        assert (colour.any(axis=2) == want).all()
        gray = draw_points(np.zeros((30, 50), np.uint8), pts, radius=radius)
        assert ((gray == 255) == want).all() and ((gray > 0) == want).all()
        big = np.zeros((30, 70, 3), np.uint8)
        view = draw_points(big[:, 10:60], pts, radius=radius)      # not contiguous
        assert (view.any(axis=2) == want).all() and not big[:, :10].any() and not big[:, 60:].any()


def test_json_names_the_image_file(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonLinesWriter(path) as w:
        w.write(result(0, 1), tmp_path / "photos" / "a.jpg")
        w.write(result(1, 1))
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["image"] == str(tmp_path / "photos" / "a.jpg") and "image" not in second


def test_image_dir_names_and_atomic_files(tmp_path):
    out = ImageDirOutput(tmp_path / "ann")              # created
    img = np.zeros((30, 40, 3), np.uint8)
    img[10:20, 10:30] = 200
    assert out.write(img, 0, "x/a.png").name == "a.png"
    assert out.write(img, 1, "y/a.png").name == "a-1.png"   # same name from another folder
    assert out.write(img, 7).name == "000007.jpg"            # camera / video frames
    assert sorted(q.name for q in (tmp_path / "ann").iterdir()) == ["000007.jpg", "a-1.png",
                                                                    "a.png"]
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "ann" / "a.png")), img)  # lossless
    # a renamed file never replaces one written before (nor one written later)
    names = [out.write(img, i, f"{d}/{n}").name
             for i, (d, n) in enumerate([("p", "x-2.png"), ("q", "x.png"), ("r", "x.png"),
                                         ("s", "x-2.png"), ("t", "x.png")])]
    assert len(set(names)) == 5 and names[:2] == ["x-2.png", "x.png"]
    with pytest.raises(OutputError, match="does not exist"):
        ImageDirOutput(tmp_path / "no" / "ann")
