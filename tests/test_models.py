"""Model registry: names, shapes, and a clear error with close matches."""
import pytest
import torch

from fkp.train.models import create_model, list_models


@pytest.mark.parametrize("name,size,k", [("nosetip", 64, 1), ("simple", 64, 68),
                                         ("fastnet", 64, 68), ("resnet50", 64, 68)])
def test_shapes(name, size, k):
    m = create_model(name, input_size=size).eval()
    with torch.no_grad():
        out = m(torch.zeros(2, 1, size, size))
    assert out["points"].shape == (2, k, 2)
    assert len(m.point_indices) == k
    assert ("score" in out) == m.has_score
    if m.has_score:
        assert out["score"].shape == (2,) and ((out["score"] >= 0) & (out["score"] <= 1)).all()


def test_registry_lists_all_and_suggests():
    assert set(list_models()) == {"nosetip", "simple", "resnet50", "fastnet"}
    with pytest.raises(ValueError, match="did you mean fastnet"):
        create_model("fastnett")
    with pytest.raises(ValueError, match="known: fastnet"):
        create_model("zzzz")
