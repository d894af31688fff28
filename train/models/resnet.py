"""Anti-aliased ResNet-50 (Zhang, ICML 2019, package ``antialiased-cnns``) for 68 points.

Changed from the classifier: a 1-channel stem (grayscale input) and a 136-output linear
head; trained from scratch (no pretrained weights are downloaded).
"""
from __future__ import annotations

import antialiased_cnns
import torch
import torch.nn as nn

from fkp.tracker.landmarks import NUM_POINTS


class AAResNet50(nn.Module):
    """(B, 1, S, S) -> points (B, 68, 2) in normalised crop coordinates."""

    has_score = False

    def __init__(self, input_size: int = 128, filter_size: int = 4):
        super().__init__()
        net = antialiased_cnns.resnet50(pretrained=False, filter_size=filter_size)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Linear(net.fc.in_features, 2 * NUM_POINTS)
        nn.init.zeros_(net.fc.bias)
        nn.init.normal_(net.fc.weight, std=1e-3)
        self.net = net
        self.point_indices = list(range(NUM_POINTS))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"points": self.net(x).view(x.shape[0], NUM_POINTS, 2) + 0.5}


def aa_resnet50(input_size: int = 128, **kwargs) -> AAResNet50:
    return AAResNet50(input_size=input_size, **kwargs)
