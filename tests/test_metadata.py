"""The ONNX metadata schema: round trip and clear errors."""
import json

import pytest

from fkp.tracker.metadata import SCHEMA_VERSION, MetadataError, ModelMeta


def test_round_trip():
    m = ModelMeta(arch="fastnet", input_size=128, has_score=True, score_threshold=0.3,
                  mean_shape=[[0.5, 0.5]] * 68, training={"epochs": 3}, metrics={"nme/x": 4.2})
    back = ModelMeta.from_json(m.to_json())
    assert back == m and back.indices == list(range(68))
    assert ModelMeta(arch="nosetip", input_size=96, num_points=1,
                     point_indices=[30]).indices == [30]


@pytest.mark.parametrize("text,words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"arch": "x", "input_size": 64, "schema_version": 99}), "schema version 99"),
    (json.dumps({"arch": "x", "schema_version": SCHEMA_VERSION}), "lacks ['input_size']"),
    (json.dumps({"arch": "x", "input_size": 3, "schema_version": SCHEMA_VERSION}), "input_size"),
    (json.dumps({"arch": "x", "input_size": 64, "num_points": 2, "point_indices": [1],
                 "schema_version": SCHEMA_VERSION}), "point_indices"),
])
def test_bad_metadata(text, words):
    with pytest.raises(MetadataError, match=words.replace("[", r"\[").replace("]", r"\]")):
        ModelMeta.from_json(text)
