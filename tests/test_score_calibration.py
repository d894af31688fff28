"""fkp-train's face/no-face threshold: the rule, and that every validation dataset counts."""
import numpy as np

from fkp.train import evaluation
from fkp.train.evaluation import calibrate_score, choose_score_threshold


def test_separated_scores_give_the_weakest_true_face():
    pos = np.linspace(0.6, 0.8, 100)
    neg = np.linspace(0.1, 0.5, 100)
    assert choose_score_threshold(pos, neg) == 0.6


def test_overlapping_scores_lean_towards_keeping_faces():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.7, 0.05, 500), rng.normal(0.55, 0.05, 500)
    thr = choose_score_threshold(pos, neg)
    assert thr <= np.percentile(pos, 2) + 1e-12
    assert (neg < thr).mean() > 0.8                     # still rejects most non-faces


class _Set:
    """Stands in for a FaceDataset: ``level`` is the score every crop of it gets."""

    def __init__(self, level: float, n: int = 20, negative: bool = False) -> None:
        self.level, self.negative = level, negative
        self.images = [np.zeros((8, 8, 3), np.uint8)] * n
        self.points = np.tile(np.array([[2.0, 2.0], [6.0, 6.0]]), (n, 1, 1))
        self.size, self.margin, self.indices = 32, 0.25, np.arange(2)


def test_every_validation_dataset_counts(monkeypatch):
    """One dataset's faces all score 0.70-0.75, another's 0.62-0.66: a threshold from the
    first alone (0.70) would drop every face of the second."""
    monkeypatch.setattr(evaluation, "FaceDataset",
                        lambda images, points, size, margin, indices: _Set(0.3, len(images),
                                                                           negative=True))

    def fake_predict(model, ds):
        n = len(ds.images)
        if ds.negative:
            return {"scores": np.full(n, ds.level)}
        return {"scores": np.linspace(ds.level, ds.level + 0.05, n)}
    monkeypatch.setattr(evaluation, "predict", fake_predict)
    strong, weak = _Set(0.70), _Set(0.62, n=10)
    only_first = calibrate_score(None, [strong], np.zeros((2, 2)))
    both = calibrate_score(None, [strong, weak], np.zeros((2, 2)))
    assert only_first["score_threshold"] == 0.70
    assert both["score_threshold"] == 0.62
    assert both["score_balanced_accuracy"] == 1.0
    assert both["score_neg_median"] == 0.3
