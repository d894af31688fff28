"""onnxruntime inference for fkp-track models: load, pick providers, crop, predict.

The model file configures everything (see :mod:`fkp.tracker.metadata`). Points come back in
frame pixels through the inverse of the crop matrix; ``score`` is the model's own face
confidence when it has one, else a landmark-plausibility score (similarity-aligned distance
to the mean shape stored in the metadata).
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import io
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .cudagraph import GraphRunner
from .geometry import crop_gray, crop_matrix, uncrop
from .landmarks import NUM_POINTS, shape_plausibility, unmirror_points
from .metadata import METADATA_KEY, MetadataError, ModelMeta

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")
CPU_DEFAULTS = ("fastnet-int8", "fastnet")   # "auto" on CPU: the first one shipped


class ModelError(RuntimeError):
    """A model cannot be found, loaded or run; the message is one line for the user."""


def weights_dir() -> Path:
    from fkp.weights import WEIGHTS_DIR
    return WEIGHTS_DIR


def available_models() -> list[str]:
    """Names of the shipped models (``weights/NAME.onnx``)."""
    return sorted(p.stem for p in weights_dir().glob("*.onnx"))


def resolve_model(name_or_path: str | os.PathLike | None, device: str = "cpu") -> Path:
    """A path to an ``.onnx`` file from a path, a shipped name, or None/"auto".

    "auto" means the fast net on CPU (its 8-bit ``fastnet-int8`` where shipped, 1.9-2.5x
    faster at the same accuracy; else ``fastnet``) and ``resnet50`` on a GPU.
    """
    if name_or_path in (None, "", "auto"):
        name_or_path = "resnet50" if device == "cuda" else next(
            (n for n in CPU_DEFAULTS if (weights_dir() / f"{n}.onnx").is_file()), "fastnet")
    p = Path(name_or_path)
    if p.suffix == ".onnx" or p.exists():
        if not p.is_file():
            raise ModelError(f"model file {p} " + ("is a directory" if p.is_dir() else
                                                   "does not exist"))
        return p
    shipped = weights_dir() / f"{name_or_path}.onnx"
    if shipped.is_file():
        return shipped
    close = difflib.get_close_matches(str(name_or_path), available_models(), n=3, cutoff=0.75)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    names = ", ".join(available_models()) or "none"
    raise ModelError(f"no model named {str(name_or_path)!r} ({hint}shipped: {names}; or give "
                     "a path to an .onnx file)")


def select_providers(device: str) -> list[str]:
    """onnxruntime providers to ask for. Raises ModelError for --device cuda without a GPU build."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    avail = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in avail]
    if "TensorrtExecutionProvider" in gpu and not tensorrt_loadable():
        # onnxruntime-gpu lists TensorRT whether or not its libraries are installed; asking
        # for it without them costs an error and a retry (printed to stdout) at every load
        gpu.remove("TensorrtExecutionProvider")
    if device == "cuda" and not gpu:
        raise ModelError("--device cuda: this onnxruntime has no CUDA provider "
                         "(pip install onnxruntime-gpu, and check the NVIDIA driver)")
    if gpu:
        preload_cuda_libraries()
    return gpu + ["CPUExecutionProvider"]


@functools.cache
def tensorrt_loadable() -> bool:
    """Whether TensorRT's runtime library (libnvinfer) can be loaded (asked once per
    process)."""
    import ctypes
    import ctypes.util

    for name in ("libnvinfer.so.10", ctypes.util.find_library("nvinfer"),
                 ctypes.util.find_library("nvinfer_10")):
        if name:
            try:
                ctypes.CDLL(name)
                return True
            except OSError:
                pass
    return False


@contextlib.contextmanager
def stdout_to_log(level: int, what: str) -> Iterator[None]:
    """Send what onnxruntime prints inside the block to the log instead of stdout, which may
    carry ``--csv -``."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            yield
    finally:
        text = " ".join(said.getvalue().split())
        if text:
            log.log(level, "%s: %s", what, text[:500])


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of pip's ``nvidia-*`` packages, where installed
    (``pip install onnxruntime-gpu[cuda,cudnn]``), so that the CUDA provider finds them
    without ``LD_LIBRARY_PATH`` (once per process). What onnxruntime's helper prints about
    libraries it cannot load goes to the debug log."""
    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):
        return
    try:
        with stdout_to_log(logging.DEBUG, "onnxruntime.preload_dlls"):
            ort.preload_dlls()
    except Exception as exc:  # a missing folder or library: the default search still runs
        log.debug("onnxruntime.preload_dlls: %s", exc)


def half_precision(path: str | os.PathLike) -> bytes:
    """The model at ``path`` with float16 weights and arithmetic up to its last convolution,
    serialized; what follows it (the soft-argmax head and the face score), the inputs and
    the outputs stay float32. For GPUs, where it shortens a ResNet-50 face (``--half``, see
    the README). Needs the ``onnx`` package (``pip install onnx``); onnxruntime's own
    converter does the work."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise ModelError(f"--half needs the onnx package (pip install onnx): {exc}") from None
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in nodes):
        raise ModelError(f"{Path(path).name} is quantized to 8 bits; --half is for float32 "
                         "models (e.g. resnet50, fastnet)")
    last_conv = max((i for i, n in enumerate(nodes) if n.op_type == "Conv"), default=-1)
    head = [n.name for n in nodes[last_conv + 1:] if n.name]
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=head)
    # onnxruntime 1.31's converter casts a tensor read by several float32 nodes once per
    # reader, under one name: the copies are identical, keep one
    unique = list(dict.fromkeys(n.SerializeToString() for n in half.graph.node))
    del half.graph.node[:]
    half.graph.node.extend(onnx.NodeProto.FromString(b) for b in unique)
    return half.SerializeToString()


# onnxruntime's severities (verbose, info, warning, error, fatal) -> logging levels
ORT_LOG_LEVELS = (logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)


def route_onnxruntime_log() -> Callable[[], None]:
    """Send onnxruntime's own process-wide log to the ``fkp.onnxruntime`` logger: its warnings
    at INFO (shown with ``-v``), its errors at WARNING. Without this, onnxruntime-gpu writes a
    coloured warning line to stderr at every CUDA session it creates ("No registered plugin
    EP device found", seen with 1.31 on an H200). onnxruntime before 1.32 has no log
    callback; there its own log keeps to errors instead. For the command-line programs: it
    changes process-wide state, which the library leaves alone. Returns the function that
    undoes it (onnxruntime's default logger at its default severity, warnings)."""
    import onnxruntime as ort

    ort_log = logging.getLogger("fkp.onnxruntime")

    def forward(severity: int, category: str, logid: str, where: str, message: str) -> None:
        level = ORT_LOG_LEVELS[min(max(int(severity), 0), len(ORT_LOG_LEVELS) - 1)]
        ort_log.log(level, "%s", " ".join(str(message).split())[:500])

    if hasattr(ort, "set_default_logger_callback"):
        ort.set_default_logger_callback(forward, 2)

        def undo() -> None:
            ort.set_default_logger_callback(None)
    else:
        ort.set_default_logger_severity(3)

        def undo() -> None:
            ort.set_default_logger_severity(2)
    return undo


def session_options(threads: int | None = None):
    """onnxruntime session options for fkp models: ``threads`` intra-op threads (default
    :func:`default_cpu_threads`) that spin only while a run lasts, warnings and errors only.

    Spinning pool threads take each layer's work without a wake-up, which the short layers
    of a batch-1 fast net feel; ``session.force_spinning_stop`` puts them to sleep as a run
    returns, so the frame loop's other work (decode, Haar scan, drawing) has the second
    core between inferences (threads that kept spinning slowed the scan by half, session 5).
    Against threads that never spin (session 20, Zen 4, ytf1): 7-13 % more fps."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or default_cpu_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def default_cpu_threads() -> int:
    """onnxruntime threads when none are asked for: the cores, at most 2 (batch-1 inference
    of the fast nets gains little from more). On 2 cores, 2 threads beat 1 end to end (ytf1:
    326-335 against 294-301 fps, session 5; 240-251 against 204-241, session 20)."""
    return max(1, min(2, os.cpu_count() or 1))


def read_meta(session) -> ModelMeta:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise MetadataError("no fkp metadata in the model (was it exported with fkp-export?)")
    return ModelMeta.from_json(raw)


class LandmarkModel:
    """One ONNX landmark model on one device.

    ``provider`` is the execution provider that really runs (checked after loading, since
    onnxruntime-gpu lists CUDA even where no GPU is usable). ``flip_test`` also runs every
    crop mirrored (in the same batch) and averages the two predictions: twice the inference
    work for a smaller error (68-point models only). ``cuda_graph``: where the CUDA provider
    runs, replay captured CUDA graphs for batches of up to 16 crops (see
    :mod:`fkp.tracker.cudagraph`; it falls back to the plain session if capture fails).
    ``half``: run the model's body in float16 (:func:`half_precision`; GPU only, a
    :class:`ModelError` elsewhere).
    """

    def __init__(self, model: str | os.PathLike | None = "auto", device: str = "auto",
                 threads: int | None = None, flip_test: bool = False,
                 cuda_graph: bool = True, half: bool = False) -> None:
        import onnxruntime as ort

        providers = select_providers(device)
        gpu_requested = providers[0] != "CPUExecutionProvider"
        if half and not gpu_requested:
            raise ModelError("--half runs the model in float16 on a GPU; this onnxruntime "
                             "has no CUDA provider (or --device cpu was given)")
        self.path = resolve_model(model, "cuda" if gpu_requested else "cpu")
        try:
            source = half_precision(self.path) if half else str(self.path)
            # onnxruntime prints when a provider fails and it retries with the next
            with stdout_to_log(logging.INFO, "onnxruntime"):
                self.session = ort.InferenceSession(source, session_options(threads),
                                                    providers=providers)
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises several types for a bad file
            raise ModelError(f"cannot load {self.path}: {str(exc).splitlines()[0][:200]}") \
                from None
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider == "CPUExecutionProvider":
            raise ModelError("--device cuda: CUDA could not be initialised (no usable GPU); "
                             "use --device cpu")
        if half and self.provider == "CPUExecutionProvider":
            raise ModelError("--half: CUDA could not be initialised (no usable GPU)")
        if (gpu_requested and self.provider == "CPUExecutionProvider"
                and model in (None, "", "auto")):
            # GPU listed but unusable: fall back to the CPU default model
            self.__init__(model, "cpu", threads, flip_test, cuda_graph)
            return
        self.half = half
        try:
            self.meta = read_meta(self.session)
        except MetadataError as exc:
            raise ModelError(f"{self.path}: {exc}") from None
        if flip_test and self.meta.num_points != NUM_POINTS:
            raise ModelError(f"{self.path}: the flip test needs a {NUM_POINTS}-point model "
                             f"(this one predicts {self.meta.num_points})")
        self._check_io()
        self.flip_test = flip_test
        self.size = self.meta.input_size
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        shape = np.asarray(self.meta.mean_shape, np.float64)
        self.mean_shape = shape if shape.shape == (self.meta.num_points, 2) else None
        self.graphs: GraphRunner | None = None
        batch_dim = self.session.get_inputs()[0].shape[0]
        if cuda_graph and self.provider == "CUDAExecutionProvider" and isinstance(batch_dim, str):
            self.graphs = GraphRunner(source, lambda: session_options(threads), self.size,
                                      self.output_names, batch_dim, "cuda", name=self.path.name)

    @property
    def cuda_graph(self) -> bool:
        """Whether calls replay CUDA graphs (False on CPU, when turned off, or after a failed
        capture)."""
        return self.graphs is not None and not self.graphs.failed

    def describe(self) -> str:
        """One line for headers: file, arch, the provider that really runs it and the modes
        on, e.g. ``resnet50.onnx (resnet50-heatmap) on CUDAExecutionProvider with CUDA graphs,
        float16``."""
        modes = [m for m, on in (("CUDA graphs", self.cuda_graph), ("float16", self.half),
                                 ("flip test", self.flip_test)) if on]
        return (f"{self.path.name} ({self.meta.arch}) on {self.provider}"
                f"{' with ' + ', '.join(modes) if modes else ''}")

    def _check_io(self) -> None:
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        shape = ins[0].shape if len(ins) == 1 else None
        if shape is None or len(shape) != 4 or shape[1] != 1 or \
                any(isinstance(d, int) and d != self.meta.input_size for d in shape[2:]):
            raise ModelError(f"{self.path}: input {shape} does not fit the metadata "
                             f"(want [B, 1, {self.meta.input_size}, {self.meta.input_size}])")
        names = [o.name for o in outs]
        if "points" not in names or (self.meta.has_score and "score" not in names):
            raise ModelError(f"{self.path}: outputs {names} do not fit the metadata")
        # one run on a plain gray crop: output shapes the graph leaves open, NaN weights
        size, k = self.meta.input_size, self.meta.num_points
        x = np.full((1, 1, size, size), 128 * self.meta.norm_scale + self.meta.norm_offset,
                    np.float32)
        try:
            got = dict(zip(names, self.session.run(names, {ins[0].name: x})))
        except Exception as exc:  # onnxruntime raises its own types
            raise ModelError(f"{self.path}: cannot run the model: "
                             f"{str(exc).strip().splitlines()[0][:200]}") from None
        if got["points"].shape != (1, k, 2) or not np.isfinite(got["points"]).all():
            raise ModelError(f"{self.path}: its points output {list(got['points'].shape)} "
                             f"does not fit the metadata ({k} points: want [B, {k}, 2], "
                             "finite)")

    # ------------------------------------------------------------------ inference
    def matrices(self, boxes: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        """Crop matrices (N, 2, 3) for face boxes (N, 4) and optional roll angles (N,)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        ang = np.zeros(len(boxes)) if angles is None else np.asarray(angles, np.float64)
        return np.stack([crop_matrix(b, self.size, self.meta.crop_margin, a)
                         for b, a in zip(boxes, ang)]) if len(boxes) else np.zeros((0, 2, 3))

    def inputs(self, crops: np.ndarray) -> np.ndarray:
        """Gray crops (N, S, S) uint8 -> the network input (N, 1, S, S) float32 (metadata's
        ``pixel * norm_scale + norm_offset``)."""
        return crops.astype(np.float32)[:, None] * self.meta.norm_scale + self.meta.norm_offset

    def predict_crops(self, crops: np.ndarray,
                      flip_test: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Gray crops (N, S, S) uint8 -> points (N, K, 2) in crop pixels, scores (N,).
        ``flip_test`` overrides the model's setting for this call."""
        flip = self.flip_test if flip_test is None else flip_test
        n = len(crops)
        if n == 0:
            return np.zeros((0, self.meta.num_points, 2)), np.zeros(0)
        x = self.inputs(crops)
        if flip:
            x = np.concatenate([x, x[..., ::-1]])
        outs = self.graphs.run(x) if self.graphs is not None else None
        if outs is None:
            outs = self.session.run(self.output_names, {self.input_name: x})
        outs = dict(zip(self.output_names, outs))
        pts = outs["points"].astype(np.float64) * self.size
        if flip:
            mirrored = unmirror_points(pts[n:], self.size)
            # A net trained on labels with a convention offset predicts it in image axes on
            # mirrored crops too, so the mirrored path is off by twice the offset in x: align
            # its mean x to the plain prediction's and average shapes, not positions.
            mirrored[..., 0] += (pts[:n, :, 0] - mirrored[..., 0]).mean(axis=1, keepdims=True)
            pts = (pts[:n] + mirrored) / 2
        if self.meta.has_score:
            scores = outs["score"].astype(np.float64).reshape(-1, n)
            scores = scores.mean(axis=0) if flip else scores[0]
        else:
            scores = self.plausibility(pts / self.size)
        return pts, scores

    def crops(self, image: np.ndarray, mats: np.ndarray) -> np.ndarray:
        """Warp one frame, gray (H, W) or BGR (H, W, 3), into gray crops (N, S, S) uint8 by
        matrices (N, 2, 3); pixels past the frame edge replicate the edge. Of a colour frame
        only the pixels each crop reads are made gray (:func:`~fkp.tracker.geometry.crop_gray`)."""
        out = np.empty((len(mats), self.size, self.size), np.uint8)
        for m, crop in zip(mats, out):
            crop_gray(image, m, self.size, crop)
        return out

    def predict(self, image: np.ndarray, boxes: np.ndarray,
                angles: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All faces of one frame, gray (H, W) or BGR (H, W, 3), in one batch.

        boxes (N, 4) frame pixels -> points (N, K, 2) frame pixels, scores (N,).
        """
        mats = self.matrices(boxes, angles)
        pts, scores = self.predict_crops(self.crops(image, mats))
        return uncrop(pts, mats), scores

    def plausibility(self, pts: np.ndarray) -> np.ndarray:
        """Shape score (N,) for points (N, K, 2) in normalised crop coordinates."""
        if self.mean_shape is None or self.meta.num_points < 3:
            return np.ones(len(pts))
        return shape_plausibility(pts, self.mean_shape)
