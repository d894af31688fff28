"""The origin report's two small nets, as it described them.

* ``NoseTipNet``: 3 conv layers, each followed by ReLU and 2x2 max-pool, then a linear layer
  to the nose tip (point 30).
* ``SimpleNet``: 5 conv layers (ReLU + max-pool) and 2 fully connected layers, 68 points.

Both regress normalised crop coordinates directly (offset by the crop centre).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fkp.tracker.landmarks import NOSE_TIP, NUM_POINTS


def _conv_pool(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class _Regressor(nn.Module):
    has_score = False

    def __init__(self, features: nn.Sequential, head: nn.Module, indices: list[int]):
        super().__init__()
        self.features = features
        self.head = head
        self.point_indices = indices

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(torch.flatten(self.features(x), 1))
        return {"points": out.view(x.shape[0], -1, 2) + 0.5}


class NoseTipNet(_Regressor):
    """3 conv + ReLU + max-pool, one linear layer -> (B, 1, 2) nose tip."""

    def __init__(self, input_size: int = 96):
        feats = nn.Sequential(_conv_pool(1, 16), _conv_pool(16, 32), _conv_pool(32, 64))
        n = 64 * (input_size // 8) ** 2
        super().__init__(feats, nn.Linear(n, 2), [NOSE_TIP])


class SimpleNet(_Regressor):
    """5 conv + ReLU + max-pool, FC 512, FC 136 -> (B, 68, 2)."""

    def __init__(self, input_size: int = 96):
        chans = [1, 32, 64, 128, 128, 256]
        feats = nn.Sequential(*[_conv_pool(a, b) for a, b in zip(chans, chans[1:])])
        n = 256 * (input_size // 32) ** 2
        head = nn.Sequential(nn.Linear(n, 512), nn.ReLU(inplace=True), nn.Dropout(0.2),
                             nn.Linear(512, 2 * NUM_POINTS))
        super().__init__(feats, head, list(range(NUM_POINTS)))
