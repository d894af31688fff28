"""The ONNX metadata schema: the contract between ``fkp-export`` and the tracker.

Every exported model stores one JSON document under the ONNX metadata key ``fkp`` so that
the runtime configures itself from the file alone. Inputs and outputs of the graph:

* input ``image``: float32 (B, 1, S, S), grayscale crop, ``pixel * scale + offset``.
* output ``points``: float32 (B, K, 2), crop coordinates divided by S (see ``geometry``).
* output ``score`` (optional, ``has_score``): float32 (B,), face confidence in [0, 1].
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
METADATA_KEY = "fkp"


class MetadataError(ValueError):
    """The model file carries no usable fkp metadata."""


def recorded_val_fraction(training: dict) -> float | None:
    """The ``--val-fraction`` of the person-wise split a model was trained with, from its
    ``training`` record (``val_fraction``; files exported before it was recorded: the
    ``split`` text), or None. People are held out where their group's hash falls below the
    fraction, so the held-out people at a fraction are held out at every larger one too:
    scoring a model at its own fraction or below never scores faces it trained on."""
    value = training.get("val_fraction")
    if value is None:
        m = re.search(r"val_fraction=([0-9.eE+-]+)", str(training.get("split", "")))
        value = m.group(1) if m else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass
class ModelMeta:
    """Everything the runtime needs to know about a model."""

    arch: str
    input_size: int
    num_points: int = 68
    crop_margin: float = 0.25
    norm_scale: float = 1.0 / 255.0
    norm_offset: float = -0.5
    has_score: bool = False
    score_threshold: float = 0.0
    point_indices: list[int] = field(default_factory=list)  # which of the 68 points
    mean_shape: list[list[float]] = field(default_factory=list)  # (K, 2) normalised crop
    training: dict[str, Any] = field(default_factory=dict)  # data, split, command, epochs
    metrics: dict[str, Any] = field(default_factory=dict)   # validation figures
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMeta":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"metadata is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise MetadataError("metadata is not a JSON object")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise MetadataError(f"metadata schema version {version!r}, this fkp-track reads "
                                f"version {SCHEMA_VERSION}")
        known = set(cls.__dataclass_fields__)
        missing = {"arch", "input_size"} - set(raw)
        if missing:
            raise MetadataError(f"metadata lacks {sorted(missing)}")
        meta = cls(**{k: v for k, v in raw.items() if k in known})
        meta.validate()
        return meta

    def validate(self) -> None:
        if not (isinstance(self.input_size, int) and 8 <= self.input_size <= 1024):
            raise MetadataError(f"input_size {self.input_size!r} out of range")
        if not (isinstance(self.num_points, int) and self.num_points >= 1):
            raise MetadataError(f"num_points {self.num_points!r} invalid")
        if self.point_indices and len(self.point_indices) != self.num_points:
            raise MetadataError("point_indices does not match num_points")
        if not -0.45 < float(self.crop_margin) < 2.0:
            raise MetadataError(f"crop_margin {self.crop_margin!r} out of range")

    @property
    def val_fraction(self) -> float | None:
        """The split's held-out fraction at training (:func:`recorded_val_fraction`)."""
        return recorded_val_fraction(self.training)

    @property
    def indices(self) -> list[int]:
        """Indices into the 68-point scheme of the K predicted points."""
        return self.point_indices or list(range(self.num_points))
