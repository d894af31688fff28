"""FastNet: the CPU real-time net of fkp-track (our design).

A narrow ResNet-style encoder (strides 4-32) with the shared heatmap head
(:mod:`.heads`: a small FPN decoder back to stride 4, one heatmap per point, soft-argmax).
Trained on the coordinates (L1 / wing) plus a Jensen-Shannon pull of each heatmap towards a
small Gaussian, which keeps heatmaps peaked.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fkp.tracker.landmarks import NUM_POINTS

from .heads import HeatmapNet, conv_bn


class Block(nn.Module):
    """Residual basic block (two 3x3 convs), optional stride-2 downsampling."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, relu=False))
        self.skip = (nn.Identity() if stride == 1 and cin == cout
                     else conv_bn(cin, cout, 1, stride, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


def stage(cin: int, cout: int, depth: int, stride: int) -> nn.Sequential:
    """``depth`` residual blocks; the first one changes width and stride."""
    return nn.Sequential(Block(cin, cout, stride), *[Block(cout, cout) for _ in range(depth - 1)])


class FastNet(HeatmapNet):
    """(B, 1, S, S) -> points (B, 68, 2), score (B,), heatmaps (B, 68, S/4, S/4)."""

    def __init__(self, input_size: int = 128, widths: tuple[int, ...] = (24, 32, 64, 128, 192),
                 decoder: int = 64, depths: tuple[int, ...] = (2, 2, 2, 2),
                 num_points: int = NUM_POINTS):
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(conv_bn(1, w0, 3, 2), conv_bn(w0, w1, 3, 2))
        self.layer1 = stage(w1, w1, depths[0], 1)
        self.layer2 = stage(w1, w2, depths[1], 2)
        self.layer3 = stage(w2, w3, depths[2], 2)
        self.layer4 = stage(w3, w4, depths[3], 2)
        self.build_head((w1, w2, w3, w4), decoder, num_points, input_size)


def fastnet_deep(input_size: int = 128, **kwargs) -> FastNet:
    """FastNet with its capacity moved from stride 4 to strides 16-32: thinner stem, stride-4
    stage and decoder, wider and deeper low-resolution stages (3.7 M parameters against 2.1 M,
    about the same onnxruntime time on 2 cores)."""
    return FastNet(input_size, widths=(16, 24, 64, 160, 256), decoder=48, depths=(1, 2, 3, 2),
                   **kwargs)


def fastnet_wide(input_size: int = 128, **kwargs) -> FastNet:
    """FastNet with every width x1.25 (decoder 80): about 1.5x the compute of ``fastnet``."""
    return FastNet(input_size, widths=(30, 40, 80, 160, 240), decoder=80, **kwargs)
