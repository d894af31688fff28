"""``fkp-ensemble``: several fkp ONNX models of one crop format -> one model that averages them.

The members' graphs are copied side by side into one ONNX graph (names prefixed ``m0/``,
``m1/``, ...) that reads the shared ``image`` input once and returns the mean of their
``points`` (B, K, 2) and, where they all have one, of their ``score`` (B,). The result is
an ordinary fkp model: the tracker, ``fkp-eval`` and ``fkp-quantize`` take it as they take
any other. Members must agree on input size, normalisation, crop margin and points.

Averaging independently trained nets cancels part of their independent errors; the cost
is one inference per member.

``--soup`` averages the members' *weights* instead (a uniform model soup, Wortsman et al.
2022): one network, one inference. That only works for members that are one network in one
basin, such as fine-tunes of one model (``fkp-train --init``) and that model itself; the
members must be the same graph (same architecture and fkp-export), else it is refused. The
exported weights have every BatchNorm folded into its convolution, so each convolution's
folded weight and bias are averaged. Quantized members are refused: average the float
models, then quantize the soup (``fkp-quantize``).

Either way the result is evaluated on the held-out people of every ``--data`` set (as
``fkp-eval --split val``), next to each member, and those figures go into its metadata and
model card. Its face-score threshold is the mean of the members'.

Example::

    fkp-ensemble runs/a.onnx runs/b.onnx weights/fastnet2.onnx \\
        --data ../shared/data/youtube-faces-68 ../shared/data/300w-train
    fkp-ensemble weights/fastnet.onnx runs/ft1.onnx runs/ft2.onnx soup.onnx --soup \\
        --data ../shared/data/youtube-faces-68 ../shared/data/300w-train
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import numpy as np

from fkp.tracker.argtypes import OneLineParser, first_paragraph
from fkp.tracker.data import DatasetError
from fkp.tracker.metadata import ModelMeta
from fkp.tracker.runtime import LandmarkModel, ModelError, resolve_model
from fkp.tracker.writers import OutputError, interruptible

from .onnx_export import (check_destination, held_out_metrics, portable_path, publish,
                          scoring_fraction, set_metadata)

# metadata fields every member must share (the crop format and what comes out)
SHARED = ("input_size", "num_points", "crop_margin", "norm_scale", "norm_offset",
          "has_score", "point_indices")


class EnsembleError(RuntimeError):
    """The members cannot be combined; one-line message."""


def merge_graphs(protos: list, output_names: list[str]):
    """One ONNX model running every member on the shared input; outputs the mean of each
    name in ``output_names`` over the members. Members need one input and the same opset."""
    import onnx
    from onnx import compose, helper

    opsets = {tuple((o.domain, o.version) for o in p.opset_import) for p in protos}
    if len(opsets) != 1:
        raise EnsembleError("members use different ONNX opsets; re-export them with one "
                            "fkp-export")
    first = protos[0].graph.input[0]
    nodes, inits, values = [], [], []
    for i, p in enumerate(protos):
        if len(p.graph.input) != 1:
            raise EnsembleError(f"member {i} has {len(p.graph.input)} inputs, want 1")
        g = compose.add_prefix(p, f"m{i}/").graph
        nodes.append(helper.make_node("Identity", [first.name], [g.input[0].name],
                                      name=f"m{i}/input"))
        nodes += g.node
        inits += g.initializer
        values += g.value_info
        names = {o.name for o in g.output}
        missing = [n for n in output_names if f"m{i}/{n}" not in names]
        if missing:
            raise EnsembleError(f"member {i} lacks outputs {missing}")
    outputs = []
    for n in output_names:
        nodes.append(helper.make_node("Mean", [f"m{i}/{n}" for i in range(len(protos))], [n],
                                      name=f"mean/{n}"))
        outputs.append(next(o for o in protos[0].graph.output if o.name == n))
    graph = helper.make_graph(nodes, "fkp_ensemble", [first], outputs, inits,
                              value_info=values)
    model = helper.make_model(graph, opset_imports=list(protos[0].opset_import),
                              producer_name="fkp-ensemble")
    model.ir_version = protos[0].ir_version
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise EnsembleError(f"the merged graph is invalid: {str(exc).splitlines()[0][:200]}") \
            from None
    return model


def average_weights(protos: list):
    """The first member's graph with every float initializer replaced by the mean over the
    members (averaged in float64). The members must be the same graph: the same nodes in the
    same order and the same initializer names, shapes and types."""
    import copy

    from onnx import numpy_helper

    def layout(p) -> tuple:
        return ([(n.op_type, tuple(n.input), tuple(n.output)) for n in p.graph.node],
                [(i.name, tuple(i.dims), i.data_type) for i in p.graph.initializer])

    first = layout(protos[0])
    for i, p in enumerate(protos[1:], 1):
        if layout(p) != first:
            raise EnsembleError(f"member {i}'s graph differs from member 0's; --soup needs one "
                                "network exported by one fkp-export (fine-tunes of one model)")
    model = copy.deepcopy(protos[0])
    arrays = [[numpy_helper.to_array(t) for t in p.graph.initializer] for p in protos]
    for k, t in enumerate(model.graph.initializer):
        first_value = arrays[0][k]
        if first_value.dtype.kind == "f":
            mean = np.mean([a[k].astype(np.float64) for a in arrays], axis=0)
            t.CopyFrom(numpy_helper.from_array(mean.astype(first_value.dtype), t.name))
        elif any(not np.array_equal(first_value, a[k]) for a in arrays[1:]):
            raise EnsembleError(f"members differ in the integer tensor {t.name!r}: --soup "
                                "averages float weights; average the float models, then "
                                "quantize the result (fkp-quantize)")
    model.producer_name = "fkp-ensemble --soup"
    return model


def ensemble(members: list[Path], out: Path, datasets: list[str],
             val_fraction: float | None = None, card: bool = True,
             soup: bool = False) -> dict[str, list[float]]:
    """Write the averaging ensemble of ``members`` to ``out`` (atomically) with validation
    metrics; ``soup``: average their weights instead of their outputs. Returns ``{dataset:
    [member NMEs..., ensemble NME]}``."""
    import onnx

    if len(members) < 2:
        raise EnsembleError("an ensemble needs at least two models")
    check_destination(out, members)
    models = [LandmarkModel(m, "cpu") for m in members]
    metas = [m.meta for m in models]
    for f in SHARED + (("arch",) if soup else ()):
        values = [getattr(m, f) for m in metas]
        if any(v != values[0] for v in values):
            raise EnsembleError(f"members differ in {f}: {values}")
    val_fraction = scoring_fraction(metas, val_fraction)
    names = ["points", "score"] if metas[0].has_score else ["points"]
    protos = [onnx.load(str(m.path)) for m in models]
    merged = average_weights(protos) if soup else merge_graphs(protos, names)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        meta = ModelMeta(**{**vars(metas[0]), "metrics": {}})
        if not soup:
            meta.arch = "ensemble(" + ", ".join(m.arch for m in metas) + ")"
        meta.score_threshold = float(np.mean([m.score_threshold for m in metas]))
        set_metadata(merged, meta)
        onnx.save(merged, str(tmp))
        joint = LandmarkModel(tmp, "cpu")
        results: dict[str, list[float]] = {}
        member_nme = [held_out_metrics(m, datasets, val_fraction)[1] for m in models]
        meta.metrics, nme = held_out_metrics(joint, datasets, val_fraction)
        for name in nme:
            results[name] = [mn[name] for mn in member_nme] + [nme[name]]
            print(f"{name}: NME members {', '.join(f'{v:.3f}' for v in results[name][:-1])} "
                  f"%, {'soup' if soup else 'ensemble'} {nme[name]:.3f} %")
        worse = [n for n, v in results.items() if soup and v[-1] > max(v[:-1])]
        if worse:
            raise EnsembleError(
                f"the soup is worse than every member on {', '.join(worse)}: averaging "
                "weights works for fine-tunes of one net, not for nets trained apart (without "
                "--soup their outputs are averaged)")
        command = shlex.join(["fkp-ensemble", *(portable_path(str(m.path)) for m in models),
                              portable_path(str(out)), *(["--soup"] if soup else []), "--data",
                              *(portable_path(d) for d in datasets)])
        meta.training = dict(
            metas[0].training, command=command, val_fraction=val_fraction,
            combine="weights" if soup else "outputs",
            weights=f"mean of {len(models)} members' {'weights' if soup else 'outputs'}",
            loss=" / ".join(dict.fromkeys(str(m.training.get("loss", "?")) for m in metas)),
            epochs=sum(m.training.get("epochs", 0) for m in metas),
            train_seconds=sum(m.training.get("train_seconds", 0.0) for m in metas),
            ensemble=[{"file": m.path.name, "command": mt.training.get("command"),
                       "epochs": mt.training.get("epochs"),
                       "metrics": {f"nme/{k}": round(v, 4) for k, v in mn.items()}}
                      for m, mt, mn in zip(models, metas, member_nme)])
        publish(merged, meta, tmp, out, card)
    finally:
        tmp.unlink(missing_ok=True)
    return results


@interruptible("fkp-ensemble")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="fkp-ensemble", description=first_paragraph(__doc__),
                                epilog=__doc__.split("Example::")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="two or more fkp .onnx models (paths or shipped "
                   "names), then the output .onnx path")
    p.add_argument("--data", nargs="+", required=True,
                   help="labelled datasets: the ensemble and its members are evaluated on "
                        "their held-out people")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="the split's held-out fraction for the evaluation (default: the "
                        "smallest the members were trained with, as recorded in them; else "
                        "0.1)")
    p.add_argument("--soup", action="store_true",
                   help="average the members' weights, not their outputs: one network's "
                        "inference cost; for fine-tunes of one model and that model")
    p.add_argument("--no-card", action="store_true", help="do not write OUT.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if len(args.models) < 3:
        p.error("give at least two models and the output path")
    *members, out = args.models
    try:
        ensemble([resolve_model(m, "cpu") for m in members], Path(out), args.data,
                 args.val_fraction, card=not args.no_card, soup=args.soup)
    except (EnsembleError, ModelError, DatasetError, OutputError, OSError) as exc:
        print(f"fkp-ensemble: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
