"""Dataset readers (folder, .pts, iBUG XML), bad input, and the fixed person-wise split."""
import numpy as np
import pytest

from datasets import face_shape, write_folder, write_pts, write_xml
from fkp.tracker.data import (DatasetError, group_of, load_all, read_dataset, split_by_group)


def test_three_formats_give_the_same_points(tmp_path):
    root, shapes = write_folder(tmp_path / "f", n=3)
    a = read_dataset(root)
    b = read_dataset(write_pts(tmp_path / "p", shapes))
    c = read_dataset(write_xml(tmp_path / "x", shapes))
    assert len(a) == len(b) == len(c) == 3
    for s, pts in zip(a, shapes):
        assert s.points.shape == (68, 2) and np.allclose(s.points, pts, atol=0.01)
    assert np.allclose(b[1].points, shapes[1], atol=1e-3)
    assert np.allclose(c[2].points, np.trunc(shapes[2]))
    assert a[0].group == "Person_0" and b[0].group == "helen_100"


def test_group_names():
    assert group_of("George_W_Bush_03.jpg") == "George_W_Bush"
    assert group_of("afw_111076519_2.jpg") == "afw_111076519"
    assert group_of("image_0457.png", "lfpw/trainset") == "lfpw/trainset/image_0457"
    assert group_of("indoor_001.png") == "indoor_001"


def test_dlib_xml_mirrored_twins_stay_on_their_original_side(tmp_path):
    """dlib's 300-W XML holds every photo twice (``X.jpg`` and ``X_mirror.jpg``): the twins
    are one group, so no held-out face has its mirror image in training; LFPW's numbered
    photos (``image_0457.png``) are a group each, not one group ``image``."""
    parts = "".join(f"<part name='{k:02d}' x='{10 + k}' y='{20 + k % 7}'/>" for k in range(68))
    items = [f"<image file='{sub}/{stem}{twin}.jpg'><box top='1' left='1' width='30' "
             f"height='30'>{parts}</box></image>"
             for i in range(150)
             for sub, stem in (("helen/trainset", f"{1000 + i}_1"),
                               ("lfpw/trainset", f"image_{i:04d}"))
             for twin in ("", "_mirror")]
    xml = tmp_path / "labels_ibug_300W_train.xml"
    xml.write_text(f"<dataset><images>{''.join(items)}</images></dataset>")
    samples = read_dataset(xml)
    assert len(samples) == 600 and len({s.group for s in samples}) == 300
    train, val = split_by_group(samples, 0.2)[:2]
    held = {s.group for s in val}
    assert val and train and not held & {s.group for s in train}
    assert {s.path.name.replace("_mirror", "") for s in val} == \
        {s.path.name for s in val if "_mirror" not in s.path.name}
    assert any(g.startswith("lfpw/") for g in held) and any(g.startswith("helen/") for g in held)


def test_malformed_row_names_file_and_row(tmp_path):
    root, _ = write_folder(tmp_path / "f", n=3)
    csv = root / "landmarks.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 2)[0]            # row 3: two coordinates missing
    lines[3] = lines[3].replace(",", ",x", 1)        # row 4: not a number
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"landmarks.csv:3: expected 136 coordinates, got 134"):
        read_dataset(root)
    bad: list[str] = []
    assert len(read_dataset(root, bad)) == 1 and len(bad) == 2 and ":4:" in bad[1]


def test_missing_image_and_skip_bad(tmp_path):
    root, _ = write_folder(tmp_path / "f", n=3)
    (root / "images" / "Person_1_01.jpg").unlink()
    samples = read_dataset(root)
    with pytest.raises(DatasetError, match="Person_1_01.jpg: missing or unreadable"):
        load_all(samples)
    kept, images, skipped = load_all(samples, skip_bad=True)
    assert len(kept) == len(images) == 2 and skipped == 1


def test_xml_with_wrong_number_of_parts(tmp_path):
    xml = write_xml(tmp_path / "x", [face_shape()])
    xml.write_text(xml.read_text().replace("<part name='67'", "<skip name='67'"))
    with pytest.raises(DatasetError, match="67 parts, expected 68"):
        read_dataset(xml)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="not a dataset"):
        read_dataset(tmp_path)


def test_split_is_by_group_fixed_and_stable(tmp_path):
    root, _ = write_folder(tmp_path / "f", n=60, people=30)
    samples = read_dataset(root)
    train, val = split_by_group(samples, 0.3)
    assert {s.group for s in train}.isdisjoint({s.group for s in val})
    assert 0 < len(val) < len(samples)
    # adding or removing other people never moves anyone
    train2, val2 = split_by_group(samples[::2], 0.3)
    assert {s.group for s in val2} <= {s.group for s in val}
    assert [s.path for s in split_by_group(samples, 0.3)[1]] == [s.path for s in val]
