"""Anti-aliased ResNet-50 (Zhang, ICML 2019, package ``antialiased-cnns``) for 68 points.

Changed from the classifier: a 1-channel stem (grayscale input) and a 136-output linear
head (``resnet50``, the origin's network); trained from scratch (no pretrained weights are
downloaded). ``resnet50-heatmap`` keeps the same anti-aliased body and replaces global pooling
and the linear layer with the heatmap head of the fast net (:mod:`.heads`): an FPN decoder
over its four stages, soft-argmax, a face score. Its output is the same 68 x 2 = 136
coordinates.
"""
from __future__ import annotations

import antialiased_cnns
import torch
import torch.nn as nn

from fkp.tracker.landmarks import NUM_POINTS

from .heads import HeatmapNet


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


class AAResNet50Heatmap(HeatmapNet):
    """(B, 1, S, S) -> points (B, 68, 2), score (B,), heatmaps (B, 68, S/4, S/4).

    Stages 1-4 of the anti-aliased ResNet-50 (256, 512, 1024, 2048 channels at strides 4, 8,
    16, 32) feed the shared FPN decoder (``decoder`` channels). Residual branches end in a
    zero-initialised BatchNorm, so every block starts as the identity (trains from scratch).
    """

    def __init__(self, input_size: int = 128, filter_size: int = 4, decoder: int = 128):
        super().__init__()
        net = antialiased_cnns.resnet50(pretrained=False, filter_size=filter_size,
                                        zero_init_residual=True)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = \
            net.layer1, net.layer2, net.layer3, net.layer4
        self.build_head((256, 512, 1024, 2048), decoder, NUM_POINTS, input_size)


def aa_resnet50_heatmap(input_size: int = 128, **kwargs) -> AAResNet50Heatmap:
    return AAResNet50Heatmap(input_size=input_size, **kwargs)


def aa_resnet50(input_size: int = 128, **kwargs) -> AAResNet50:
    return AAResNet50(input_size=input_size, **kwargs)
