"""The classic dlib landmark loop, as a baseline for ``fkp-bench --vs dlib``.

Every frame: dlib's HOG face detector (``get_frontal_face_detector``) on the gray frame, then
the 68-point ``shape_predictor_68_face_landmarks.dat`` regression-tree model on every
detection. No tracking, no smoothing. Points are in frame pixels (dlib's ``part(i).x/.y``,
integer pixel coordinates, same convention as fkp-track's).

Needs the optional packages ``dlib-bin`` (prebuilt dlib wheels) and ``face-recognition-models``
(the model file): ``pip install dlib-bin face-recognition-models`` (or ``pip install
.[bench]``). This module imports nothing of them at import time.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install dlib-bin face-recognition-models"
MODEL_FILE = "shape_predictor_68_face_landmarks.dat"


class DlibUnavailable(RuntimeError):
    """dlib or the model file is missing; the message says how to install them."""


def predictor_path() -> Path:
    """Path of ``shape_predictor_68_face_landmarks.dat`` from ``face-recognition-models``.

    Uses ``face_recognition_models.pose_predictor_model_location()``; that package imports
    ``pkg_resources``, which recent setuptools no longer ship, so the file is also looked up
    directly in the installed package.
    """
    try:
        import face_recognition_models as frm
        p = Path(frm.pose_predictor_model_location())
    except ImportError:
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise DlibUnavailable(f"face-recognition-models is not installed ({INSTALL_HINT})") \
                from None
        p = Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILE
    if not p.is_file():
        raise DlibUnavailable(f"{p} is missing (reinstall: {INSTALL_HINT})")
    return p


class DlibLoop:
    """HOG detector + 68-point shape predictor on every frame.

    ``upsample``: HOG pyramid upsampling (1 = dlib's usual setting, finds faces down to about
    40 px; 0 is about 3-4x faster but needs faces of about 80 px).
    """

    def __init__(self, upsample: int = 1) -> None:
        try:
            import dlib
        except ImportError:
            raise DlibUnavailable(f"dlib is not installed ({INSTALL_HINT})") from None
        path = predictor_path()
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(path))
        self.upsample = int(upsample)
        self.version = str(getattr(dlib, "__version__", "?"))
        self._rect = dlib.rectangle

    def process(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Gray frame (H, W) uint8 -> points (N, 68, 2) frame px, scores (N,), stage ms.

        Stages: ``detect`` (HOG) and ``infer`` (shape predictor, all faces).
        """
        t0 = time.perf_counter()
        rects, scores, _ = self.detector.run(gray, self.upsample, 0.0)
        t1 = time.perf_counter()
        pts = np.zeros((len(rects), 68, 2))
        for i, r in enumerate(rects):
            shape = self.predictor(gray, r)
            pts[i] = [(shape.part(k).x, shape.part(k).y) for k in range(68)]
        t2 = time.perf_counter()
        return pts, np.asarray(scores, np.float64), {"detect": (t1 - t0) * 1e3,
                                                     "infer": (t2 - t1) * 1e3}
