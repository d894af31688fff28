"""Shared fixtures for the tracker tests: a tiny ONNX landmark model built with onnx.helper
(no torch), and short synthetic videos of skimage's astronaut. Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fkp.tracker.metadata import ModelMeta

TINY_SIZE = 64
MARGIN = 0.25
FACE_FRAMES, BLANK_FRAMES, FACE_FRAMES_2 = 30, 5, 15
FRAME_W, FRAME_H = 320, 240


def template_shape() -> np.ndarray:
    """A plausible 68-point face in its own tight unit box [0, 1]^2 (x right, y down)."""
    p = np.zeros((68, 2))
    t = np.linspace(0, np.pi, 17)
    p[0:17] = np.c_[0.5 - 0.5 * np.cos(t), 0.25 + 0.75 * np.sin(t)]           # jaw
    u = np.linspace(0, 1, 5)
    brow = np.c_[0.1 + 0.32 * u, 0.1 - 0.1 * np.sin(np.pi * u)]
    p[17:22] = brow
    p[22:27] = np.c_[1 - brow[::-1, 0], brow[::-1, 1]]
    p[27:31] = np.c_[np.full(4, 0.5), np.linspace(0.25, 0.55, 4)]            # nose bridge
    p[31:36] = np.c_[np.linspace(0.4, 0.6, 5), [0.62, 0.63, 0.64, 0.63, 0.62]]
    eye = np.array([[0.22, 0.3], [0.27, 0.27], [0.33, 0.27], [0.38, 0.3], [0.33, 0.33],
                    [0.27, 0.33]])
    p[36:42] = eye
    mirror = np.c_[1 - eye[:, 0], eye[:, 1]]
    p[42:48] = mirror[[3, 2, 1, 0, 5, 4]]
    phi = np.pi + np.arange(12) * np.pi / 6
    p[48:60] = np.c_[0.5 + 0.18 * np.cos(phi), 0.8 + 0.07 * np.sin(phi)]
    phi = np.pi + np.arange(8) * np.pi / 4
    p[60:68] = np.c_[0.5 + 0.11 * np.cos(phi), 0.8 + 0.03 * np.sin(phi)]
    return p


def mean_shape_normalised(size: int = TINY_SIZE, margin: float = MARGIN) -> np.ndarray:
    """The template placed where ``geometry.crop_matrix`` puts the tight box, in normalised
    crop coordinates (crop px / size; the box centre lands on crop px (size - 1) / 2)."""
    side = size / (1 + 2 * margin)
    return ((size - 1) / 2 + (template_shape() - 0.5) * side) / size


def make_tiny_model(path: Path, size: int = TINY_SIZE, with_score: bool = True,
                    metadata: dict | None | bool = None) -> Path:
    """Write a tiny landmark model: ``points = mean_shape + 0.001 * mean(image)`` and
    ``score = clip(50 * var(image), 0, 1)`` (a blank crop scores 0, a face ~1).

    ``metadata``: dict of ModelMeta overrides, or False for a model without fkp metadata.
    """
    mean = mean_shape_normalised(size).astype(np.float32)[None]              # (1, 68, 2)
    inits = [numpy_helper.from_array(mean, "mean_shape"),
             numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3"),
             numpy_helper.from_array(np.array([-1], np.int64), "shape1"),
             numpy_helper.from_array(np.array(0.001, np.float32), "gain"),
             numpy_helper.from_array(np.array(50.0, np.float32), "sgain"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["m"]),
             helper.make_node("Reshape", ["m", "shape3"], ["m3"]),
             helper.make_node("Mul", ["m3", "gain"], ["dm"]),
             helper.make_node("Add", ["mean_shape", "dm"], ["points"])]
    outputs = [helper.make_tensor_value_info("points", TensorProto.FLOAT, ["B", 68, 2])]
    if with_score:
        nodes += [helper.make_node("Mul", ["image", "image"], ["sq"]),
                  helper.make_node("GlobalAveragePool", ["sq"], ["msq"]),
                  helper.make_node("Mul", ["m", "m"], ["m2"]),
                  helper.make_node("Sub", ["msq", "m2"], ["var"]),
                  helper.make_node("Mul", ["var", "sgain"], ["s4"]),
                  helper.make_node("Clip", ["s4", "zero", "one"], ["sc"]),
                  helper.make_node("Reshape", ["sc", "shape1"], ["score"])]
        outputs.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["B"]))
    graph = helper.make_graph(
        nodes, "tiny_fkp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 1, size, size])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="fkp-tests")
    model.ir_version = 8
    if metadata is not False:
        meta = ModelMeta(arch="tiny-test", input_size=size, crop_margin=MARGIN,
                         has_score=with_score, score_threshold=0.5 if with_score else 0.0,
                         mean_shape=mean[0].tolist())
        for k, v in (metadata or {}).items():
            setattr(meta, k, v)
        helper.set_model_props(model, {"fkp": meta.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    from skimage.data import astronaut
    return np.ascontiguousarray(astronaut()[:, :, ::-1])


def face_frame(astronaut_bgr: np.ndarray, i: int) -> np.ndarray:
    """320x240 frame with the astronaut's head (210x210 patch) swaying +-10 px."""
    frame = np.full((FRAME_H, FRAME_W, 3), 128, np.uint8)
    patch = astronaut_bgr[20:230, 120:330]
    x = 55 + int(round(10 * np.sin(i / 5.0)))
    y = 15 + int(round(4 * np.cos(i / 7.0)))
    frame[y:y + 210, x:x + 210] = patch
    return frame


def write_video(path: Path, frames, fps: float = 25.0, fourcc: str = "MJPG") -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (FRAME_W, FRAME_H))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()
    return path


def synthetic_frames(astronaut_bgr: np.ndarray):
    """FACE_FRAMES face frames, BLANK_FRAMES uniform gray frames, FACE_FRAMES_2 face frames."""
    blank = np.full((FRAME_H, FRAME_W, 3), 128, np.uint8)
    for i in range(FACE_FRAMES):
        yield face_frame(astronaut_bgr, i)
    for _ in range(BLANK_FRAMES):
        yield blank
    for i in range(FACE_FRAMES_2):
        yield face_frame(astronaut_bgr, i)


@pytest.fixture(scope="session")
def face_video(tmp_path_factory, astronaut_bgr) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "faces.avi",
                       synthetic_frames(astronaut_bgr))


@pytest.fixture(scope="session")
def long_video(tmp_path_factory, astronaut_bgr) -> Path:
    """A longer clip (face throughout) for interruption tests."""
    frames = [face_frame(astronaut_bgr, i) for i in range(40)]
    return write_video(tmp_path_factory.mktemp("video") / "long.avi",
                       (frames[i % 40] for i in range(1200)))
