"""The shipped fast nets (float and int8) on real held-out faces, where ../shared/data exists (skipped elsewhere)."""
from pathlib import Path

import numpy as np
import pytest

from fkp.tracker.data import load_image, read_dataset, split_by_group
from fkp.tracker.geometry import box_from_points
from fkp.tracker.landmarks import nme
from fkp.tracker.runtime import LandmarkModel, weights_dir

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize("name", ["fastnet", "fastnet-int8"])
@pytest.mark.parametrize("dataset", ["youtube-faces-68", "300w-train"])
def test_fastnet_on_held_out_people(dataset, name):
    root = SHARED / dataset
    if not (root / "landmarks.csv").is_file():
        pytest.skip(f"{root} not here")
    if not (weights_dir() / f"{name}.onnx").is_file():
        pytest.skip(f"weights/{name}.onnx not there yet")
    _, val = split_by_group(read_dataset(root), 0.1)       # people fkp-train never saw
    model = LandmarkModel(name, "cpu")
    errors, above = [], []
    for s in val[:: max(1, len(val) // 40)][:40]:
        pts, scores = model.predict(load_image(s, color=False), box_from_points(s.points)[None])
        errors.append(nme(pts, s.points[None])[0])
        above.append(scores[0] >= model.meta.score_threshold)
    assert len(errors) >= 30
    assert np.mean(errors) < 7.0 and np.max(errors) < 25.0
    assert np.mean(above) >= 0.9          # the face score keeps (nearly) all true faces
