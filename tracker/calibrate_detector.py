"""Measure the detector-box -> landmark-box factors (:class:`fkp.tracker.detectors.BoxFactors`).

For every labelled image the detector runs on the full image; the detection overlapping the
tight box of the true 68 points most is kept (IoU >= 0.3) and the four ratios
``dx = (lcx - cx) / w``, ``dy = (lcy - cy) / h``, ``sx = lw / w``, ``sy = lh / h`` are recorded;
the medians are the factors. ``--astronaut`` adds skimage's astronaut with a hand-read
landmark box (below). Usage::

    python -m fkp.tracker.calibrate_detector /work/shared/data/youtube-faces-68 --count 300 \
        --astronaut [--detector haar-single|yunet.onnx]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from .data import read_folder
from .detectors import iou, make_detector
from .geometry import box_from_points

# Tight landmark box of skimage.data.astronaut() read by eye from a 4x zoom (x0, y0, x1, y1):
# jaw ends at eye height x ~180 / ~270, top of the brows y ~87, chin y ~172. About +-3 px.
ASTRONAUT_LANDMARK_BOX = (180.0, 87.0, 270.0, 172.0)


def ratios(det_box: np.ndarray, lm_box: np.ndarray) -> np.ndarray:
    """(dx, dy, sx, sy) of one detector box against one landmark box (both x0, y0, x1, y1)."""
    w, h = det_box[2] - det_box[0], det_box[3] - det_box[1]
    lw, lh = lm_box[2] - lm_box[0], lm_box[3] - lm_box[1]
    dcx, dcy = (det_box[0] + det_box[2]) / 2, (det_box[1] + det_box[3]) / 2
    lcx, lcy = (lm_box[0] + lm_box[2]) / 2, (lm_box[1] + lm_box[3]) / 2
    return np.array([(lcx - dcx) / w, (lcy - dcy) / h, lw / w, lh / h])


def measure(detector, items) -> tuple[np.ndarray, int]:
    """items: iterable of (gray image, landmark box (4,)). Returns ((M, 4) ratios, misses)."""
    rows, misses = [], 0
    for gray, lm_box in items:
        dets = detector.detect(gray)
        if len(dets) == 0:
            misses += 1
            continue
        ov = iou(dets[:, :4], lm_box[None])[:, 0]
        best = int(np.argmax(ov))
        if ov[best] < 0.3:
            misses += 1
            continue
        rows.append(ratios(dets[best, :4], lm_box))
    return np.array(rows).reshape(-1, 4), misses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="calibrate_detector", description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="folder with images/ and landmarks.csv")
    ap.add_argument("--count", type=int, default=300, help="images to use (one per person first)")
    ap.add_argument("--detector", default="haar-single",
                    help="haar-single (the default cascade alone) or a YuNet .onnx file")
    ap.add_argument("--astronaut", action="store_true", help="add skimage's astronaut")
    args = ap.parse_args(argv)

    det = make_detector(args.detector)
    samples = read_folder(args.data)
    # spread over people: first image of each person, then the rest, in a fixed order
    seen: set[str] = set()
    firsts = [s for s in samples if not (s.group in seen or seen.add(s.group))]
    rest = [s for s in samples if s not in firsts]
    chosen = (firsts + rest)[: args.count]

    def items():
        for s in chosen:
            gray = cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE)
            if gray is not None:
                yield gray, box_from_points(s.points.astype(np.float64))

    r, misses = measure(det, items())
    print(f"{args.data.name}: {len(r)} images measured, {misses} without a matching detection")
    if args.astronaut:
        from skimage.data import astronaut
        gray = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2GRAY)
        ra, _ = measure(det, [(gray, np.array(ASTRONAUT_LANDMARK_BOX))])
        if len(ra):
            print("astronaut:      dx %+.3f  dy %+.3f  sx %.3f  sy %.3f" % tuple(ra[0]))
            r = np.vstack([r, ra])
    if not len(r):
        print("no detections matched; nothing measured", file=sys.stderr)
        return 1
    med = np.median(r, axis=0)
    q1, q3 = np.percentile(r, [25, 75], axis=0)
    for name, m, a, b in zip(("dx", "dy", "sx", "sy"), med, q1, q3):
        print(f"{name}: median {m:+.3f}  (IQR {a:+.3f} .. {b:+.3f})")
    print("BoxFactors(dx=%.2f, dy=%.2f, sx=%.2f, sy=%.2f)" % tuple(med))
    return 0


if __name__ == "__main__":
    sys.exit(main())
