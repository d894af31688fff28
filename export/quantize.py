"""``fkp-quantize``: an fkp ONNX model -> the same network with 8-bit weights and activations.

Static post-training quantization with onnxruntime (QDQ format: per-channel int8 weights
in 7 bits, uint8 activations, min-max calibration by default). Convolutions, additions,
ReLUs, resizes and pools run in int8; the last convolution and everything after it (heatmap
softmax, soft-argmax, score, fully connected heads) stay in float, where sub-pixel
coordinates are made. On CPUs with AVX-512 VNNI / AVX-VNNI this makes the shipped fast net
1.9-2.5x faster (2 / 1 threads); on session 8's AVX2-only CPU, about 1.3x.

Weights use 7 of the 8 bits (onnxruntime's ``reduce_range``). On x86 CPUs without VNNI
(AVX2 only) onnxruntime multiplies uint8 activations by int8 weights with an instruction that
adds pairs of products into 16 bits and saturates: full-range weights overflow there. Measured
on an AVX2-only AMD EPYC (session 8): the session-6 ``fastnet-int8``, quantized with full-range
weights, gave 4.21 / 4.07 % NME on the held-out people, against 3.86 / 3.64 % on the VNNI CPU it
was made on; with 7-bit weights the same float net gives 3.85 / 3.65 % there.

Calibration crops come from faces of the *training* people of the fixed person-wise split
(``--count`` of them, spread over the ``--data`` sets), cut with the runtime's own crop from
the box of the true points. The quantized model is then evaluated on the held-out people of
every dataset next to the float one, through the tracker's runtime (as ``fkp-eval --split
val``), and refused when its NME is worse by more than ``--max-loss`` percent (relative).
Its metadata copies the float model's, with its own validation metrics and a
``training.quantization`` record; a model card is written beside it.

Example::

    fkp-quantize weights/fastnet.onnx weights/fastnet-int8.onnx \\
        --data ../shared/data/youtube-faces-68 ../shared/data/300w-train
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from fkp.tracker.argtypes import OneLineParser, first_paragraph
from fkp.tracker.data import DatasetError, load_image, read_dataset, select_split
from fkp.tracker.geometry import box_from_points
from fkp.tracker.runtime import LandmarkModel, ModelError, resolve_model
from fkp.tracker.writers import OutputError, interruptible

from .onnx_export import (check_destination, held_out_metrics, portable_path, publish,
                          scoring_fraction, set_metadata)

INT8_OPS = ["Conv", "Add", "Relu", "Resize", "MaxPool", "AveragePool"]
# activation range estimators (onnxruntime's): min-max of the calibration crops, or a
# percentile / entropy fit of their histograms, which clips rare outliers
CALIBRATIONS = {"minmax": ("MinMax", {}, "min-max"),
                "percentile": ("Percentile", {"CalibPercentile": 99.999}, "99.999th percentile"),
                "entropy": ("Entropy", {}, "entropy (KL)")}


class QuantizeError(RuntimeError):
    """Quantization failed or lost too much accuracy; one-line message."""


def calibration_inputs(model: LandmarkModel, datasets: list[str], count: int,
                       val_fraction: float, seed: int = 0) -> list[np.ndarray]:
    """``count`` model inputs (1, 1, S, S) float32 from training people, spread evenly over
    the datasets, each the runtime crop of the box of the true points."""
    rng = np.random.default_rng(seed)
    inputs = []
    for i, data in enumerate(datasets):
        samples = select_split(read_dataset(data), "train", val_fraction)
        share = count // len(datasets) + (i < count % len(datasets))
        for j in rng.choice(len(samples), min(share, len(samples)), replace=False):
            s = samples[j]
            crop = model.crops(load_image(s, color=False),
                               model.matrices(box_from_points(s.points)[None]))
            inputs.append(model.inputs(crop))
    if not inputs:
        raise QuantizeError("no calibration faces")
    return inputs


def float_nodes(graph) -> list[str]:
    """Names of the nodes to keep in float: on every path, the last convolution and all
    after it (the nodes with no convolution downstream). For one network that is its head;
    for an fkp-ensemble graph, every member's head."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    feeds_conv: dict[str, bool] = {}      # node name -> some convolution strictly downstream

    def downstream_conv(node) -> bool:
        if node.name not in feeds_conv:
            feeds_conv[node.name] = any(c.op_type == "Conv" or downstream_conv(c)
                                        for o in node.output for c in consumers.get(o, []))
        return feeds_conv[node.name]

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph.node) + 100))
    return [n.name for n in graph.node if not downstream_conv(n)]


def quantize(src: Path, out: Path, datasets: list[str], count: int = 256,
             val_fraction: float | None = None, max_loss: float = 2.0, card: bool = True,
             calibration: str = "minmax") -> dict:
    """Quantize ``src`` into ``out`` (written atomically, only if it passes the accuracy check).
    ``calibration``: a key of :data:`CALIBRATIONS`; ``val_fraction``: see
    :func:`~fkp.export.onnx_export.scoring_fraction`. Returns ``{dataset: (float NME, int8
    NME)}``."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method, extra, described = CALIBRATIONS[calibration]
    check_destination(out, [src])
    ref = LandmarkModel(src, "cpu")
    if ref.meta.training.get("quantization"):
        raise QuantizeError(f"{src} is already quantized to 8 bits; give the float model it "
                            "was made from")
    val_fraction = scoring_fraction([ref.meta], val_fraction)
    inputs = calibration_inputs(ref, datasets, count, val_fraction)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{ref.input_name: x} for x in inputs])

        def get_next(self):
            return next(self._it, None)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tempfile.TemporaryDirectory() as work:
            pre = Path(work) / "pre.onnx"
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                keep = float_nodes(onnx.load(str(pre)).graph)
                quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=INT8_OPS, nodes_to_exclude=keep,
                                per_channel=True, reduce_range=True,
                                activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8,
                                calibrate_method=getattr(CalibrationMethod, method),
                                extra_options=extra)
            except Exception as exc:  # onnx / onnxruntime raise many types
                msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                raise QuantizeError(f"cannot quantize {src}: {type(exc).__name__} {msg}") \
                    from None
        meta = ref.meta
        proto = onnx.load(str(tmp))
        set_metadata(proto, meta)
        onnx.save(proto, str(tmp))
        quant = LandmarkModel(tmp, "cpu")
        _, before = held_out_metrics(ref, datasets, val_fraction)
        metrics, after = held_out_metrics(quant, datasets, val_fraction)
        results = {name: (before[name], after[name]) for name in before}
        for name, (a, b) in results.items():
            print(f"{name}: NME float {a:.3f} %, int8 {b:.3f} % "
                  f"(n={metrics[f'n/{name}']} held-out faces)")
            if b > a * (1 + max_loss / 100):
                raise QuantizeError(f"int8 NME {b:.3f} % on {name} is more than "
                                    f"{max_loss:g} % above the float model's {a:.3f} %")
        meta.metrics = metrics
        meta.training = dict(meta.training, quantization={
            "from": src.name,
            "method": "onnxruntime static QDQ, int8 per-channel weights in 7 bits "
                      f"(reduce_range), uint8 activations, {described}",
            "float_nodes": len(keep),
            "calibration": f"{len(inputs)} training-people crops of "
                           f"{', '.join(portable_path(d) for d in datasets)}",
            "float_metrics": {f"nme/{k}": round(v[0], 4) for k, v in results.items()}})
        publish(proto, meta, tmp, out, card)
    finally:
        tmp.unlink(missing_ok=True)
    return results


@interruptible("fkp-quantize")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="fkp-quantize", description=first_paragraph(__doc__),
                                epilog=__doc__.split("Example::")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="fkp .onnx model (float), a path or a shipped name")
    p.add_argument("out", type=Path, help="output .onnx path")
    p.add_argument("--data", nargs="+", required=True,
                   help="labelled datasets: calibration from their training people, the "
                        "accuracy check on their held-out people")
    p.add_argument("--count", type=int, default=256, help="calibration crops (default 256)")
    p.add_argument("--calibration", choices=sorted(CALIBRATIONS), default="minmax",
                   help="how activation ranges are set from the calibration crops: min-max "
                        "(default), 99.999th percentile or entropy of their histograms")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="the split's held-out fraction for the accuracy check (default: the "
                        "one the model was trained with, as recorded in it; else 0.1)")
    p.add_argument("--max-loss", type=float, default=2.0, metavar="PCT",
                   help="refuse if int8 NME is more than PCT %% above float (default 2)")
    p.add_argument("--no-card", action="store_true", help="do not write OUT.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.count < 1:
        p.error("--count must be >= 1")
    try:
        src = resolve_model(args.model, "cpu")
        quantize(src, args.out, args.data, args.count, args.val_fraction, args.max_loss,
                 card=not args.no_card, calibration=args.calibration)
    except (QuantizeError, ModelError, DatasetError, OutputError, OSError) as exc:
        print(f"fkp-quantize: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
