"""``fkp-train --init``: start a run from trained weights instead of random ones.

Two sources:

* an fkp-train checkpoint (``.pt``): its ``model`` weights (the EMA copy with ``--ema``);
* an fkp-export model (``.onnx``, e.g. a shipped ``weights/*.onnx``): the exporter folds
  every BatchNorm into the convolution before it, so the weights are *unfolded*: convolution
  ``k`` of the graph (in execution order) gives torch convolution ``k`` its weight, and the
  BatchNorm after it gets running mean / variance equal to the per-channel mean / variance of
  that convolution's output on training crops, with scale ``sqrt(var + eps)`` and shift
  ``bias + mean``. In evaluation mode the torch network then computes exactly the ONNX
  function (checked against onnxruntime, else ``ValueError``); in training mode batch
  statistics stay close to those running ones, so fine-tuning starts where the file ended.

Input size may differ from the source's (a fully convolutional net: fine-tuning a 96-px
net at 128 px). Optimiser and schedule start fresh; ``--epochs`` counts the new run only.
The source and its own training record go into the checkpoint (``init``) and from there
into the exported metadata and model card.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from fkp.tracker.metadata import METADATA_KEY, MetadataError, ModelMeta

log = logging.getLogger(__name__)


def _execution_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Conv2d, BatchNorm2d and Linear modules in the order one eval forward pass runs them."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def _conv_bn_pairs(order: list[nn.Module]) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Each convolution with the BatchNorm that directly follows it (None for none)."""
    pairs = []
    for i, m in enumerate(order):
        if isinstance(m, nn.Conv2d):
            nxt = order[i + 1] if i + 1 < len(order) else None
            bn = nxt if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels \
                else None
            pairs.append((m, bn))
    return pairs


def _onnx_weights(proto, op: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias) of each learned ``op`` node (Conv or Gemm) in graph order. Fixed
    anti-aliasing filters (BlurPool's ``filt`` buffers) are buffers of the torch model, not
    weights: skipped."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in proto.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    out = []
    for node in proto.graph.node:
        if node.op_type != op or node.input[1].endswith("filt"):
            continue
        if op == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
            raise ValueError(f"Gemm node {node.name!r} is not a torch Linear layer")
        tensors = []
        for name in node.input[1:3]:
            t = inits.get(name) if name in inits else consts.get(name)
            tensors.append(None if t is None else numpy_helper.to_array(t))
        if tensors[0] is None:
            raise ValueError(f"{op} node {node.name!r}: its weight is not a stored tensor (a "
                             "quantized model? start from its float parent)")
        out.append((tensors[0], tensors[1] if len(tensors) > 1 else None))
    return out


def _read_onnx(path: Path):
    import onnx

    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    raw = {e.key: e.value for e in proto.metadata_props}.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: no fkp metadata (was it exported with fkp-export?)")
    try:
        meta = ModelMeta.from_json(raw)
    except MetadataError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return proto, meta


@torch.no_grad()
def load_onnx_weights(model: nn.Module, arch: str, path: Path,
                      crops: Callable[[], torch.Tensor], check: bool = True) -> ModelMeta:
    """Unfold an fkp-export ONNX model's weights into ``model`` (registry name ``arch``).
    ``crops()`` gives a batch (B, 1, S, S) of normalised training crops for the BatchNorm
    statistics. Returns the file's metadata. Raises ValueError when it does not fit."""
    proto, meta = _read_onnx(path)
    if meta.arch != arch:
        raise ValueError(f"{path}: model is {meta.arch!r}, not {arch!r}")
    x = crops()
    order = _execution_order(model, x[:1])
    pairs = _conv_bn_pairs(order)
    linears = [m for m in order if isinstance(m, nn.Linear)]
    try:
        convs, gemms = _onnx_weights(proto, "Conv"), _onnx_weights(proto, "Gemm")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if len(convs) != len(pairs) or len(gemms) != len(linears):
        raise ValueError(f"{path}: {len(convs)} convolutions and {len(gemms)} linear layers "
                         f"in the file, {len(pairs)} and {len(linears)} in {meta.arch!r}")
    for k, (lin, (w, b)) in enumerate(zip(linears, gemms)):
        if tuple(lin.weight.shape) != w.shape or (b is None) != (lin.bias is None):
            raise ValueError(f"{path}: linear layer {k} is {w.shape}, the model's "
                             f"{tuple(lin.weight.shape)} (another input size?)")
        lin.weight.copy_(torch.from_numpy(np.array(w)))
        if b is not None:
            lin.bias.copy_(torch.from_numpy(np.array(b)))
    for k, ((conv, bn), (w, b)) in enumerate(zip(pairs, convs)):
        if tuple(conv.weight.shape) != w.shape:
            raise ValueError(f"{path}: convolution {k} is {w.shape}, the model's "
                             f"{tuple(conv.weight.shape)}")
        conv.weight.copy_(torch.from_numpy(np.array(w)))
        bias = torch.from_numpy(np.array(b)) if b is not None else torch.zeros(w.shape[0])
        if bn is None:
            if conv.bias is None:
                raise ValueError(f"{path}: convolution {k} has a bias the model lacks")
            conv.bias.copy_(bias)
            continue
        if conv.bias is not None:
            conv.bias.zero_()
        # identity BatchNorm plus the folded bias: eval output == ONNX, before the statistics
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.fill_(1.0)
        bn.bias.copy_(bias)
    # per-channel statistics of every convolution's raw output on training crops
    stats: dict[nn.Conv2d, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [conv.register_forward_hook(
        lambda mod, _i, o: stats.__setitem__(mod, (o.mean((0, 2, 3)),
                                                   o.var((0, 2, 3), unbiased=False))))
        for conv, bn in pairs if bn is not None]
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    for conv, bn in pairs:
        if bn is None:
            continue
        mean, var = stats[conv]
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.add_(mean)
    if check:
        _check_parity(model, proto, path, x[:4], meta.input_size)
    return meta


def _check_parity(model: nn.Module, proto, path: Path, x: torch.Tensor, size: int) -> None:
    """Eval-mode torch vs onnxruntime on the same crops (at the file's own input size)."""
    import onnxruntime as ort

    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    grid = getattr(model, "grid", None)
    if grid is not None:                     # heatmap cells of the file's input size
        from .models.heads import cell_centres

        model.grid = cell_centres(size, model.stride)
    try:
        got = model.eval()(x)["points"].numpy()
    finally:
        if grid is not None:
            model.grid = grid
    diff = float(np.abs(got - ref.reshape(got.shape)).max())
    if diff > 1e-3:
        raise ValueError(f"{path}: unfolded weights differ from the file by {diff:.2e}")
    log.info("--init %s: weights unfolded, torch vs onnxruntime max difference %.1e",
             path, diff)


def init_record(meta_training: dict, arch: str, input_size: int, path: Path) -> dict:
    """What the checkpoint keeps about the source (for the metadata and the model card)."""
    from fkp.tracker.metadata import recorded_val_fraction

    keep = ("command", "epochs", "train_seconds", "datasets", "init")
    fraction = recorded_val_fraction(meta_training)
    return {"from": str(path), "arch": arch, "input_size": input_size,
            **{k: meta_training[k] for k in keep if k in meta_training},
            **({"val_fraction": fraction} if fraction is not None else {})}


def initialise(model: nn.Module, arch: str, path: str | Path,
               crops: Callable[[], torch.Tensor]) -> dict:
    """Load ``path`` (.pt checkpoint or .onnx) into ``model``; returns its ``init`` record."""
    from .trainer import load_checkpoint

    path = Path(path)
    if path.suffix == ".onnx":
        meta = load_onnx_weights(model, arch, path, crops)
        return init_record(meta.training, meta.arch, meta.input_size, path)
    ck = load_checkpoint(path)
    if ck["arch"] != arch:
        raise ValueError(f"{path}: checkpoint is {ck['arch']!r}, not {arch!r}")
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: {str(exc).splitlines()[0]}") from None
    training = {"epochs": ck.get("epoch"), "train_seconds": round(float(ck.get("elapsed", 0.0)), 1),
                "val_fraction": ck.get("args", {}).get("val_fraction"),
                **({"init": ck["init"]} if ck.get("init") else {})}
    return init_record(training, ck["arch"], ck.get("args", {}).get("input_size"), path)
