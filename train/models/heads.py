"""The heatmap head shared by the heatmap networks (FastNet, ResNet-50 heatmap variant).

A small FPN decoder takes an encoder's four feature maps (strides 4, 8, 16, 32) back to
stride 4, one heatmap per point, and a soft-argmax (integral regression, as in DSNT) turns
each softmax heatmap into sub-pixel coordinates. The soft-argmax always runs in float32,
also under bfloat16 autocast (``fkp-train --bf16``): bfloat16 keeps only 8 bits of mantissa,
about 0.3 px of a 160-px crop.

``score`` is the mean, over points, of the heatmap probability mass in the 3x3 window
around its peak: high on faces, low on crops without one (the tracker's "lost" signal).
Only Conv, BatchNorm, ReLU, Resize, Softmax and reductions: exports cleanly to ONNX.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def cell_centres(input_size: int, stride: int) -> torch.Tensor:
    """(input_size // stride,) centre of each heatmap cell in normalised crop coordinates
    (pixel centres at integers)."""
    return (torch.arange(input_size // stride, dtype=torch.float32) * stride
            + (stride - 1) / 2) / input_size


class HeatmapNet(nn.Module):
    """Base class: subclasses build their encoder as ``stem`` + ``layer1`` .. ``layer4``
    (strides 4, 8, 16, 32 after each layer), then call :meth:`build_head` (in that order, so
    that a seed gives the same initial weights as before the head was shared).

    ``decode([c1, c2, c3, c4])`` with feature maps at strides 4, 8, 16, 32 (channels
    ``channels``) -> ``points`` (B, K, 2) in normalised crop coordinates, ``score`` (B,),
    ``heatmaps`` (B, K, S/4, S/4) probabilities.
    """

    has_score = True
    stride = 4

    def build_head(self, channels: tuple[int, int, int, int], decoder: int, num_points: int,
                   input_size: int) -> None:
        if input_size % 32:
            raise ValueError(f"input size {input_size}: a heatmap net needs a multiple of 32")
        self.lateral = nn.ModuleList([conv_bn(c, decoder, 1, relu=False) for c in channels])
        self.smooth = nn.ModuleList([conv_bn(decoder, decoder) for _ in range(3)])
        self.head = nn.Conv2d(decoder, num_points, 1)
        self.point_indices = list(range(num_points))
        self.register_buffer("grid", cell_centres(input_size, self.stride), persistent=False)

    def decode(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        c1, c2, c3, c4 = feats
        y = self.lateral[3](c4)
        for i, c in ((2, c3), (1, c2), (0, c1)):
            y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lateral[i](c)
            y = self.smooth[i](y)
        logits = self.head(y).float()                           # (B, K, h, w), float32
        b, k, h, w = logits.shape
        prob = F.softmax(logits.reshape(b, k, h * w), dim=-1).reshape(b, k, h, w)
        px = (prob.sum(dim=2) * self.grid[:w]).sum(dim=-1)      # (B, K)
        py = (prob.sum(dim=3) * self.grid[:h]).sum(dim=-1)
        points = torch.stack([px, py], dim=-1)
        peak = F.avg_pool2d(prob, 3, stride=1, padding=1, count_include_pad=True) * 9.0
        score = peak.flatten(2).amax(dim=-1).mean(dim=-1)       # (B,)
        return {"points": points, "score": score, "heatmaps": prob}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 1, S, S) crops -> points (B, K, 2), score (B,), heatmaps (B, K, S/4, S/4)."""
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return self.decode([c1, c2, c3, self.layer4(c3)])
