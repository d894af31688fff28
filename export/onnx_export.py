"""``fkp-export``: an fkp-train checkpoint -> a self-describing ONNX model (+ model card).

The graph takes ``image`` float32 (B, 1, S, S) with a dynamic batch and returns ``points``
(B, K, 2) in normalised crop coordinates and, for models with one, ``score`` (B,). The JSON
metadata (:class:`fkp.tracker.metadata.ModelMeta`) is stored under the key ``fkp``. Export
fails unless torch and onnxruntime agree to 1e-3 on the same batch.

Example::

    fkp-export runs/fastnet/final.pt weights/fastnet.onnx
"""
from __future__ import annotations

import copy
import logging
import os
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np

from fkp.tracker.argtypes import OneLineParser, first_paragraph
from fkp.tracker.landmarks import NUM_POINTS
from fkp.tracker.metadata import METADATA_KEY, ModelMeta
from fkp.tracker.writers import OutputError, check_outputs, interruptible

log = logging.getLogger("fkp.export")
TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """Export failed; the message is one line for the user."""


def portable_path(path: str) -> str:
    """A training path as the model card shows it: relative to the current directory when
    that is shorter (``../shared/data/x`` rather than ``/home/me/shared/data/x``)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:                       # another drive on Windows
        return path
    return rel if len(rel) < len(path) else path


def build_meta(ck: dict, has_score: bool) -> ModelMeta:
    """Metadata from a checkpoint's arguments, history and final metrics."""
    a = dict(ck["args"])
    a["data"] = [portable_path(d) for d in a["data"]]
    a["out"] = portable_path(a["out"])
    if a.get("init"):
        a["init"] = portable_path(a["init"])
    metrics = dict(ck.get("metrics") or (ck["history"][-1] if ck.get("history") else {}))
    cmd = ["fkp-train"]
    for k, v in a.items():
        optional = ("max_steps", "threads", "precise_bn", "workers", "skip_bad", "sam")
        if k in ("resume", "verbose") or v is None or (v in (False, 0) and k in optional):
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            cmd.append(flag)
        elif isinstance(v, list):
            cmd += [flag, *map(str, v)]
        elif v is not False:
            cmd += [flag, str(v)]
    training = {
        "datasets": ck.get("datasets") or [Path(d).name for d in a["data"]],
        "split": f"by person/photo (group hash, val_fraction={a['val_fraction']}, fixed seed 0)",
        "val_fraction": float(a["val_fraction"]),
        # epochs trained (the weights may be an earlier epoch's: "weights" says which)
        "command": shlex.join(cmd), "epochs": len(ck.get("history") or []) or ck["epoch"],
        "input_size": a["input_size"],
        "loss": a["loss"], "train_seconds": round(float(ck.get("elapsed", 0.0)), 1),
        "weights": ck.get("selection", f"epoch {ck['epoch']}"),
    }
    if ck.get("init"):                       # fkp-train --init: the run it started from
        training["init"] = {**ck["init"], "from": portable_path(ck["init"]["from"])}
    return ModelMeta(
        arch=ck["arch"], input_size=int(a["input_size"]), num_points=len(ck["point_indices"]),
        crop_margin=float(a["margin"]), has_score=has_score,
        score_threshold=float(ck.get("score_threshold", 0.0)),
        point_indices=[] if len(ck["point_indices"]) == NUM_POINTS else list(ck["point_indices"]),
        mean_shape=[[round(x, 5), round(y, 5)] for x, y in
                    np.asarray(ck["mean_shape"])[ck["point_indices"]].tolist()],
        training=training,
        metrics={k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
                 if k.split("/")[0] in ("nme", "mae", "failure_rate", "n")
                 or k.startswith("score_")})


def check_destination(out: str | os.PathLike, inputs: list) -> None:
    """Before any work of fkp-export, fkp-quantize or fkp-ensemble: raise
    :class:`~fkp.tracker.writers.OutputError` when ``out`` is a folder or names one of the
    ``inputs`` (writing it would destroy that input)."""
    if Path(out).is_dir():
        raise OutputError(f"cannot write {out}: it is a directory")
    check_outputs({"the output": out}, inputs)


def export(checkpoint: Path, out: Path, check_batch: int = 4, card: bool = True) -> float:
    """Export and verify. Returns the max torch/onnxruntime difference. Raises ExportError
    (OutputError where ``out`` cannot be written or is the checkpoint)."""
    import onnx
    import onnxruntime as ort
    import torch

    from fkp.train.models import create_model
    from fkp.train.trainer import load_checkpoint

    check_destination(out, [checkpoint])
    try:
        ck = load_checkpoint(checkpoint)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    try:
        model = create_model(ck["arch"], input_size=ck["args"]["input_size"])
        model.load_state_dict(ck["model"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ExportError(f"{checkpoint}: {str(exc).splitlines()[0]}") from None
    model.eval()
    meta = build_meta(ck, bool(getattr(model, "has_score", False)))
    meta.validate()
    names = ["points", "score"] if meta.has_score else ["points"]

    class Graph(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, image):
            o = self.net(image)
            return tuple(o[n] for n in names)

    size = meta.input_size
    x = torch.rand(check_batch, 1, size, size, generator=torch.Generator().manual_seed(0)) - 0.5
    with torch.no_grad():
        ref = Graph(model)(x)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:                                  # never a half-written model, nor a stray .tmp
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Graph(copy.deepcopy(model)), (x,), str(tmp),
                              input_names=["image"], output_names=names,
                              dynamic_axes={"image": {0: "batch"},
                                            **{n: {0: "batch"} for n in names}},
                              opset_version=17, dynamo=False)
        proto = onnx.load(str(tmp))
        set_metadata(proto, meta)
        proto.producer_name = "fkp-export"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"image": x.numpy()})
        diff = max(float(np.abs(r.numpy() - g).max()) for r, g in zip(ref, got))
        print(f"max |torch - onnxruntime| = {diff:.2e} (batch {check_batch})")
        if not diff <= TOLERANCE:
            raise ExportError(f"torch and onnxruntime differ by {diff:.2e} > {TOLERANCE:g}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if card:
        write_card(out.with_suffix(".md"), meta, out)
    return diff


def set_metadata(proto, meta: ModelMeta) -> None:
    """Store ``meta`` as the model's fkp metadata (JSON under ``METADATA_KEY``), replacing
    any earlier entry of that key."""
    for entry in [e for e in proto.metadata_props if e.key == METADATA_KEY]:
        proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()


def publish(proto, meta: ModelMeta, tmp: Path, out: Path, card: bool = True) -> None:
    """The last step of fkp-quantize and fkp-ensemble: ``proto`` with its final ``meta``
    saved to ``tmp``, checked to load in the runtime with that metadata, then moved over
    ``out`` in one step (never a half-written model); ``OUT.md`` beside it with ``card``."""
    import onnx

    from fkp.tracker.runtime import LandmarkModel

    set_metadata(proto, meta)
    onnx.save(proto, str(tmp))
    LandmarkModel(tmp, "cpu")
    os.replace(tmp, out)
    if card:
        write_card(out.with_suffix(".md"), meta, out)


def scoring_fraction(metas: list, requested: float | None) -> float:
    """The ``--val-fraction`` to score models of metadata ``metas`` on: ``requested``, else
    the smallest fraction they were trained with (whose held-out people none of them trained
    on), else 0.1. A requested fraction above that is used with a warning: its held-out part
    then includes people some model trained on."""
    known = [f for f in (m.val_fraction for m in metas) if f is not None]
    safe = min(known) if known else 0.1
    if requested is None:
        return safe
    if requested > safe + 1e-12:
        log.warning("--val-fraction %g: a model was trained with %g, so the held-out faces "
                    "include people it trained on", requested, safe)
    return requested


def held_out_metrics(model, datasets: list[str], val_fraction: float = 0.1
                     ) -> tuple[dict[str, float | int], dict[str, float]]:
    """Evaluate a runtime ``LandmarkModel`` on the held-out people of each dataset (as
    ``fkp-eval --split val``). Returns the metadata metrics (``n/``, ``nme/``, ``mae/``,
    ``failure_rate/`` per dataset name) and ``{dataset name: NME}``."""
    from fkp.tracker.evaluate import evaluate

    metrics: dict[str, float | int] = {}
    nme: dict[str, float] = {}
    for data in datasets:
        name = Path(data).name
        r = evaluate(model, data, split="val", val_fraction=val_fraction)
        metrics[f"n/{name}"] = int(r["n"])
        for k in ("nme", "mae", "failure_rate"):
            metrics[f"{k}/{name}"] = round(float(r[k]), 4)
        nme[name] = float(r["nme"])
    return metrics, nme


def _init_chain(training: dict) -> list[dict]:
    """The runs a model was fine-tuned from (``fkp-train --init``), newest first."""
    chain, src = [], training.get("init")
    while isinstance(src, dict) and len(chain) < 10:
        chain.append(src)
        src = src.get("init")
    return chain


def write_card(path: Path, meta: ModelMeta, onnx_path: Path) -> None:
    """A model card from the metadata (data, split, command, epochs, size, metrics, time)."""
    t, m = meta.training, meta.metrics
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(m.items()))
    mb = onnx_path.stat().st_size / 1e6
    q = t.get("quantization")
    quant = (f"- quantized from `{q['from']}` by fkp-quantize: {q['method']}; calibration: "
             f"{q['calibration']}; float model: "
             f"{', '.join(f'{k} {v}' for k, v in q['float_metrics'].items())}\n") if q else ""
    members = "".join(f"  - `{e['file']}` ({e['epochs']} epochs; "
                      f"{', '.join(f'{k} {v}' for k, v in e['metrics'].items())}): "
                      f"`{e['command']}`\n" for e in t.get("ensemble", []))
    if members:
        how = ("weights of these members (fkp-ensemble --soup)"
               if t.get("combine") == "weights" else "outputs of these members (fkp-ensemble)")
        members = f"- averages the {how}:\n" + members
    init = ""
    for src in _init_chain(t):
        init += (f"- initialised from `{src['from']}` ({src.get('arch', '?')}, "
                 f"{src.get('input_size', '?')} px, {src.get('epochs', '?')} epochs, "
                 f"{float(src.get('train_seconds') or 0.0) / 60:.1f} min)"
                 + (f": `{src['command']}`" if src.get("command") else "") + "\n")
    summed = " (both summed over the members)" if members else ""
    chosen = "" if members else (" (chosen on validation: best or last epoch, BatchNorm\n"
                                 "  statistics as trained or re-estimated)")
    text = f"""# {onnx_path.name}

- architecture: `{meta.arch}`, input {meta.input_size}x{meta.input_size} gray,
  pixels `x * {meta.norm_scale:.6g} + {meta.norm_offset}`, crop margin {meta.crop_margin},
  {meta.num_points} points{', face score output' if meta.has_score else ''}; {mb:.1f} MB
- training data: {', '.join(t.get('datasets', ['not recorded']))} (research-only licences)
- split: {t.get('split', 'not recorded')}
- epochs: {t.get('epochs', '?')}, loss: {t.get('loss', '?')}, training time: \
{t.get('train_seconds', 0.0) / 60:.1f} min{summed}
- weights: {t.get('weights', '')}{chosen}
- command: `{t.get('command', 'not recorded')}`
{init}{members}{quant}- score threshold (face/no-face): {meta.score_threshold:.4f}

## Validation (person-wise held-out part of each dataset, crops from the true point box)

| metric | value |
|---|---|
{rows}
"""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@interruptible("fkp-export")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="fkp-export", description=first_paragraph(__doc__))
    p.add_argument("checkpoint", type=Path, help="fkp-train checkpoint (final.pt, best.pt, ...)")
    p.add_argument("out", type=Path, help="output .onnx path")
    p.add_argument("--no-card", action="store_true", help="do not write OUT.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        export(args.checkpoint, args.out, card=not args.no_card)
    except (ExportError, OutputError, OSError) as exc:
        print(f"fkp-export: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
