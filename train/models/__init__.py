"""Model registry: ``create_model(name, **kwargs)``; one file per family.

Every model maps a grayscale crop (B, 1, S, S) to a dict with ``points`` (B, K, 2) in
normalised crop coordinates (see :mod:`fkp.tracker.geometry`), optionally ``score`` (B,)
in [0, 1] and ``heatmaps`` (B, K, h, w) probabilities, and carries the attributes
``point_indices`` (which of the 68 points it predicts) and ``has_score``.
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

from .fastnet import FastNet, fastnet_deep, fastnet_wide
from .origin import NoseTipNet, SimpleNet
from .resnet import aa_resnet50, aa_resnet50_heatmap

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "nosetip": NoseTipNet,
    "simple": SimpleNet,
    "resnet50": aa_resnet50,
    "resnet50-heatmap": aa_resnet50_heatmap,
    "fastnet": FastNet,
    "fastnet-deep": fastnet_deep,
    "fastnet-wide": fastnet_wide,
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def create_model(name: str, input_size: int = 128, **kwargs) -> nn.Module:
    """Build a registered network for ``input_size`` x ``input_size`` gray crops."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (known: {', '.join(list_models())})") \
            from None
    model = factory(input_size=input_size, **kwargs)
    model.arch = name
    return model
