"""Low-latency GPU inference: onnxruntime CUDA graphs, one captured graph per batch capacity.

Without graphs, a single face on a GPU costs about as much as a batch of eight (H200,
ResNet-50: 2.1-2.6 ms against 2.2 ms): onnxruntime launches each kernel (68 convolutions and
the rest) separately, and the launches, not the arithmetic, set the pace. A CUDA graph
records the whole launch sequence once and replays it with one call (1.0 ms there). A graph
replays fixed shapes and fixed buffer addresses, so :class:`GraphRunner` keeps one session
per batch capacity (1, 2, 4, 8, 16 crops), each with its batch dimension fixed (a
free-dimension override, which also lets onnxruntime fold the model's shape arithmetic so
that every node runs on the GPU), its input and outputs bound to device buffers that never
move, and pads a batch of n crops up to the next capacity. Batches past the largest capacity
are left to the caller's ordinary session.

On a machine without a GPU the same class runs on CPU buffers without graphs, which is how
the tests check the padding and the bindings.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)
CAPACITIES = (1, 2, 4, 8, 16)
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                "tensor(double)": np.float64}


def capacity(n: int) -> int | None:
    """The smallest capacity that holds ``n`` crops, or None past the largest."""
    return next((c for c in CAPACITIES if c >= n), None)


@dataclass
class _Slot:
    session: object            # onnxruntime.InferenceSession with batch fixed to ``cap``
    binding: object            # its IOBinding
    host: np.ndarray           # (cap, 1, S, S) float32 staging buffer, padded with zeros
    input: object              # OrtValue on the device, bound as the input
    outputs: list              # OrtValues on the device, bound as the outputs, in order


class GraphRunner:
    """Runs one ONNX model through fixed-capacity sessions with bound device buffers.

    ``make_options``: a callable returning fresh ``onnxruntime.SessionOptions`` (the
    caller's thread and logging settings). ``batch_dim``: the name of the model's dynamic
    batch dimension (``fkp-export`` writes "batch"). ``device``: "cuda" captures CUDA
    graphs; "cpu" binds CPU buffers and runs without graphs (for tests).
    ``provider_options``: more CUDA provider options (strings), e.g. ``{"prefer_nhwc": "1"}``.
    ``path`` may also be the model's serialized bytes (a converted copy), named in the log as
    ``name``.
    :meth:`run` returns the outputs in ``output_names`` order for a (N, 1, S, S) float32
    batch, or None when N is past the largest capacity or the GPU path failed once (it then
    stays off, with one warning).
    """

    def __init__(self, path: str | Path | bytes, make_options: Callable[[], object], size: int,
                 output_names: list[str], batch_dim: str = "batch", device: str = "cuda",
                 device_id: int = 0, provider_options: dict | None = None,
                 name: str | None = None) -> None:
        self.model = path if isinstance(path, bytes) else str(path)
        self.name = name or ("model" if isinstance(path, bytes) else Path(path).name)
        self.size, self.output_names = size, list(output_names)
        self.batch_dim = batch_dim
        self.device, self.device_id = device, device_id
        self.provider_options = dict(provider_options or {})
        self._make_options = make_options
        self._slots: dict[int, _Slot] = {}
        self.failed = False

    def _providers(self) -> list:
        if self.device == "cuda":
            return [("CUDAExecutionProvider", {**self.provider_options,
                                               "device_id": str(self.device_id),
                                               "enable_cuda_graph": "1"})]
        return ["CPUExecutionProvider"]

    def _slot(self, cap: int) -> _Slot:
        import onnxruntime as ort

        opts = self._make_options()
        opts.add_free_dimension_override_by_name(self.batch_dim, cap)
        sess = ort.InferenceSession(self.model, opts, providers=self._providers())
        dev, did = self.device, self.device_id
        host = np.zeros((cap, 1, self.size, self.size), np.float32)
        x = ort.OrtValue.ortvalue_from_numpy(host, dev, did)
        binding = sess.io_binding()
        binding.bind_ortvalue_input(sess.get_inputs()[0].name, x)
        by_name = {o.name: o for o in sess.get_outputs()}
        outputs = []
        for name in self.output_names:
            o = by_name[name]
            shape = [d if isinstance(d, int) else cap for d in o.shape]
            ov = ort.OrtValue.ortvalue_from_shape_and_type(
                shape, _NUMPY_TYPES.get(o.type, np.float32), dev, did)
            binding.bind_ortvalue_output(name, ov)
            outputs.append(ov)
        log.info("%s: %s session for batches of up to %d", self.name,
                 "CUDA-graph" if dev == "cuda" else "bound-buffer", cap)
        return _Slot(sess, binding, host, x, outputs)

    def run(self, x: np.ndarray) -> list[np.ndarray] | None:
        """Outputs for a (N, 1, S, S) float32 batch, each cut back to N rows; None where the
        caller must run its ordinary session instead."""
        n = len(x)
        cap = capacity(n)
        if cap is None or self.failed:
            return None
        try:
            slot = self._slots.get(cap)
            if slot is None:
                slot = self._slots[cap] = self._slot(cap)
            slot.host[:n] = x
            slot.host[n:] = 0.0
            slot.input.update_inplace(slot.host)
            slot.session.run_with_iobinding(slot.binding)
            return [ov.numpy()[:n] for ov in slot.outputs]
        except Exception as exc:  # capture can fail (a node the GPU cannot run): fall back
            self.failed = True
            self._slots.clear()
            log.warning("CUDA graphs off for %s (%s); using the plain session",
                        self.name, str(exc).splitlines()[0][:200])
            return None
