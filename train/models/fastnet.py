"""FastNet: the CPU real-time net of fkp-track (our design).

A narrow ResNet-style encoder (strides 4-32) with a small FPN decoder back to stride 4, one
heatmap per point, and a soft-argmax (integral regression, as in DSNT) that turns each
softmax heatmap into sub-pixel coordinates. Trained on the coordinates (L1 / wing) plus a
Jensen-Shannon pull of each heatmap towards a small Gaussian, which keeps heatmaps peaked.

``score`` is the mean, over points, of the heatmap probability mass in the 3x3 window
around its peak: high on faces, low on crops without one (the tracker's "lost" signal).
Only Conv, BatchNorm, ReLU, Resize, Softmax and reductions: exports cleanly to ONNX.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fkp.tracker.landmarks import NUM_POINTS


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


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


class FastNet(nn.Module):
    """(B, 1, S, S) -> points (B, 68, 2), score (B,), heatmaps (B, 68, S/4, S/4)."""

    has_score = True
    stride = 4

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
        self.lateral = nn.ModuleList([conv_bn(c, decoder, 1, relu=False) for c in (w1, w2, w3, w4)])
        self.smooth = nn.ModuleList([conv_bn(decoder, decoder) for _ in range(3)])
        self.head = nn.Conv2d(decoder, num_points, 1)
        self.point_indices = list(range(num_points))
        h = input_size // self.stride
        # centre of heatmap cell j in normalised crop coords (pixel centres at integers)
        grid = (torch.arange(h, dtype=torch.float32) * self.stride + (self.stride - 1) / 2) \
            / input_size
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        y = self.lateral[3](c4)
        for i, c in ((2, c3), (1, c2), (0, c1)):
            y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lateral[i](c)
            y = self.smooth[i](y)
        logits = self.head(y)                                   # (B, K, h, w)
        b, k, h, w = logits.shape
        prob = F.softmax(logits.reshape(b, k, h * w), dim=-1).reshape(b, k, h, w)
        px = (prob.sum(dim=2) * self.grid[:w]).sum(dim=-1)      # (B, K)
        py = (prob.sum(dim=3) * self.grid[:h]).sum(dim=-1)
        points = torch.stack([px, py], dim=-1)
        peak = F.avg_pool2d(prob, 3, stride=1, padding=1, count_include_pad=True) * 9.0
        score = peak.flatten(2).amax(dim=-1).mean(dim=-1)       # (B,)
        return {"points": points, "score": score, "heatmaps": prob}


def fastnet_deep(input_size: int = 128, **kwargs) -> FastNet:
    """FastNet with its capacity moved from stride 4 to strides 16-32: thinner stem, stride-4
    stage and decoder, wider and deeper low-resolution stages (3.7 M parameters against 2.1 M,
    about the same onnxruntime time on 2 cores)."""
    return FastNet(input_size, widths=(16, 24, 64, 160, 256), decoder=48, depths=(1, 2, 3, 2),
                   **kwargs)


def fastnet_wide(input_size: int = 128, **kwargs) -> FastNet:
    """FastNet with every width x1.25 (decoder 80): about 1.5x the compute of ``fastnet``."""
    return FastNet(input_size, widths=(30, 40, 80, 160, 240), decoder=80, **kwargs)
