"""Tiny labelled datasets written by the tests, in all three formats (nothing downloaded)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np


def face_shape(cx: float = 48.0, cy: float = 50.0, scale: float = 30.0) -> np.ndarray:
    """A plausible 68-point face (jaw, brows, nose, eyes, mouth) as (68, 2) pixels."""
    p = np.zeros((68, 2))
    p[0:17] = np.c_[np.linspace(-1, 1, 17), 0.2 + 0.9 * np.sqrt(1 - np.linspace(-1, 1, 17) ** 2)]
    p[17:22] = np.c_[np.linspace(-0.8, -0.2, 5), -0.55 - 0.08 * np.sin(np.linspace(0, np.pi, 5))]
    p[22:27] = np.c_[np.linspace(0.2, 0.8, 5), -0.55 - 0.08 * np.sin(np.linspace(0, np.pi, 5))]
    p[27:31] = np.c_[np.zeros(4), np.linspace(-0.35, 0.15, 4)]
    p[31:36] = np.c_[np.linspace(-0.2, 0.2, 5), np.full(5, 0.25)]
    a = np.linspace(0, 2 * np.pi, 7)[:-1]
    p[36:42] = np.c_[-0.45 + 0.15 * np.cos(a + np.pi), -0.3 + 0.06 * np.sin(a)]
    p[42:48] = np.c_[0.45 + 0.15 * np.cos(a + np.pi), -0.3 + 0.06 * np.sin(a)]
    b = np.linspace(0, 2 * np.pi, 13)[:-1]
    p[48:60] = np.c_[0.35 * np.cos(b + np.pi), 0.55 + 0.12 * np.sin(b)]
    c = np.linspace(0, 2 * np.pi, 9)[:-1]
    p[60:68] = np.c_[0.25 * np.cos(c + np.pi), 0.55 + 0.05 * np.sin(c)]
    return p * scale + [cx, cy]


def write_folder(root: Path, n: int = 8, size: int = 96, seed: int = 0,
                 people: int = 4) -> tuple[Path, list[np.ndarray]]:
    """Folder format: images/Person_K_NN.jpg drawn from their points, and landmarks.csv."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, shapes = [], []
    for i in range(n):
        pts = face_shape(size / 2 + rng.uniform(-5, 5), size / 2 + rng.uniform(-5, 5),
                         size * rng.uniform(0.25, 0.32))
        img = np.full((size, size, 3), 90, np.uint8)
        cv2.ellipse(img, (int(size / 2), int(size / 2)), (int(size * .33), int(size * .42)), 0, 0,
                    360, (160, 170, 200), -1)
        for x, y in pts.astype(int):
            cv2.circle(img, (int(x), int(y)), 1, (30, 30, 30), -1)
        name = f"Person_{i % people}_{i:02d}.jpg"
        cv2.imwrite(str(root / "images" / name), img)
        rows.append(name + "," + ",".join(f"{v:.2f}" for v in pts.ravel()))
        shapes.append(pts)
    header = "image," + ",".join(f"x{i},y{i}" for i in range(68))
    (root / "landmarks.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return root, shapes


def write_pts(root: Path, shapes: list[np.ndarray], size: int = 64) -> Path:
    """300-W style: image + .pts beside it."""
    root.mkdir(parents=True, exist_ok=True)
    for i, pts in enumerate(shapes):
        cv2.imwrite(str(root / f"helen_{100 + i}_1.png"), np.zeros((size, size), np.uint8))
        body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in pts)
        (root / f"helen_{100 + i}_1.pts").write_text(f"version: 1\nn_points:  68\n{{\n{body}\n}}\n")
    return root


def write_xml(root: Path, shapes: list[np.ndarray], size: int = 64) -> Path:
    """dlib/iBUG XML with one box per image."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i, pts in enumerate(shapes):
        cv2.imwrite(str(root / f"img{i}.jpg"), np.zeros((size, size, 3), np.uint8))
        parts = "".join(f"<part name='{k:02d}' x='{int(x)}' y='{int(y)}'/>"
                        for k, (x, y) in enumerate(pts))
        items.append(f"<image file='img{i}.jpg'><box top='1' left='1' width='30' height='30'>"
                     f"{parts}</box></image>")
    xml = root / "labels_ibug_300W_train.xml"
    xml.write_text(f"<dataset><images>{''.join(items)}</images></dataset>")
    return xml


def run_module(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS...`` in a subprocess (a CLI as a user runs it); with ``check``
    a non-zero exit fails the test with the end of its stderr."""
    p = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-2000:])
    return p


def int8_conv_weights(proto) -> list[np.ndarray]:
    """The int8 convolution weights (as int arrays) that a QDQ ONNX graph dequantizes."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return [inits[n.input[0]].astype(int) for n in proto.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 4]


def constant_model(path: Path, points: np.ndarray, size: int = 32,
                   num_points: int | None = None) -> Path:
    """An ONNX model whose points are always ``points`` (K, 2) (crop pixels / ``size``) for
    every ``size`` crop: a known answer. Its metadata claims ``num_points`` (default K)."""
    import onnx
    from onnx import TensorProto, helper

    from fkp.tracker.metadata import METADATA_KEY, ModelMeta

    const = helper.make_tensor("c", TensorProto.FLOAT, [1, *points.shape],
                               points.astype(np.float32).ravel().tolist())
    nodes = [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=0),  # (B,)
             helper.make_node("Mul", ["m", "zero"], ["z"]),
             helper.make_node("Unsqueeze", ["z", "ax"], ["z3"]),
             helper.make_node("Add", ["c", "z3"], ["points"])]
    graph = helper.make_graph(
        nodes, "const", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                       ["B", 1, size, size])],
        [helper.make_tensor_value_info("points", TensorProto.FLOAT, ["B", *points.shape])],
        initializer=[const, helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                     helper.make_tensor("ax", TensorProto.INT64, [2], [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMeta(arch="const", input_size=size, crop_margin=0.25,
                     num_points=len(points) if num_points is None else num_points)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    onnx.save(model, str(path))
    return Path(path)
