"""``fkp-testvideo``: synthetic test videos with known landmarks, and scoring against them.

``make`` cuts faces (with a soft elliptical margin) out of a labelled folder (``images/`` +
``landmarks.csv``), and moves each along a known smooth affine path (translation, roll,
scale) over a plain or textured 640x480 background, with fresh Gaussian sensor noise in
every frame. Image and points go through the same (2, 3) affine (source-image pixels ->
frame pixels, OpenCV's ``warpAffine`` convention: pixel centres at integer coordinates), so
the written points follow the pixels exactly. Each face holds still for ``--still`` seconds
when it appears and, when it is on screen for at least 4x that, once more half-way
(jitter is measured on still frames); faces after the first appear one after another, so
the tracker must pick up new faces. Sidecar ``OUT.truth.csv``: ``frame,face,x0,y0,...,x67,y67`` (``frame`` 0-based).

``score`` compares a ``fkp-track --csv`` file (or ``fkp-bench --vs dlib --csv``) with the
truth, see :mod:`fkp.tracker.videoscore`; its last stdout line is one JSON object.

The standard test set (made from research data: keep it out of git, runs/ is ignored;
15-20 s each, IOD 55-80 px at rest, roll +-25 deg, scale x0.8-1.25)::

    D=../shared/data; V=runs/videos     # held-out people only (--split val)
    fkp-testvideo make $D/youtube-faces-68 $V/ytf1.mp4 --split val --faces 1 --seconds 15 --seed 1
    fkp-testvideo make $D/youtube-faces-68 $V/ytf2.mp4 --split val --faces 2 --seconds 20 --seed 2
    fkp-testvideo make $D/300w-train $V/w1.mp4 --split val --faces 1 --seconds 15 --seed 3
    fkp-testvideo make $D/300w-train $V/w3.mp4 --split val --faces 3 --seconds 20 --seed 4 \
        --background plain
    fkp-track --video $V/ytf1.mp4 --no-display --csv runs/ytf1.fkp.csv
    fkp-testvideo score $V/ytf1.truth.csv runs/ytf1.fkp.csv
    fkp-bench --video $V/ytf1.mp4 --frames 0 --vs dlib --dlib-csv runs/ytf1.dlib.csv
    fkp-testvideo score $V/ytf1.truth.csv runs/ytf1.dlib.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .argtypes import OneLineParser, first_paragraph, number, whole
from .data import DatasetError, Sample, read_folder, select_split
from .landmarks import NUM_POINTS, interocular
from .videoscore import ScoreError, score_pooled
from .writers import interruptible, quiet_broken_pipe

log = logging.getLogger(__name__)
WIDTH, HEIGHT = 640, 480
SCALE_SWING = 0.25     # scale varies within exp(+-log(1 + SCALE_SWING))
ROLL_SWING = 25.0      # degrees


def truth_path_for(video: str | Path) -> Path:
    """Sidecar path of a video: ``OUT.mp4`` -> ``OUT.truth.csv``."""
    video = Path(video)
    return video.with_name(video.stem + ".truth.csv")


@dataclass
class FacePath:
    """One face: its source image and the affine path it follows.

    ``matrix(t)`` maps source-image pixels to frame pixels at time ``t`` seconds; the face is
    on screen from ``start`` on. Motion time excludes the still intervals ``holds`` (seconds
    after ``start``), so position, roll and scale are continuous and constant while holding.
    """

    name: str
    image: np.ndarray          # (h, w, 3) uint8 BGR source image
    alpha: np.ndarray          # (h, w) float32 soft face mask in [0, 1]
    points: np.ndarray         # (68, 2) source-image pixels
    start: float               # seconds
    centre: np.ndarray         # (2,) frame pixels at rest
    base_scale: float          # frame pixels per source pixel at rest
    amp: np.ndarray            # (4,) swings: dx px, dy px, roll deg, log-scale
    freq: np.ndarray           # (4,) Hz
    phase: np.ndarray          # (4,) radians
    holds: list[tuple[float, float]] = field(default_factory=list)

    def motion_time(self, t: float) -> float:
        """Seconds of motion since ``start`` (hold intervals do not count)."""
        rel = t - self.start
        held = sum(max(0.0, min(rel, b) - a) for a, b in self.holds)  # holds do not overlap
        return max(0.0, rel - held)

    def matrix(self, t: float) -> np.ndarray:
        """(2, 3) affine source pixels -> frame pixels at time ``t``."""
        tau = self.motion_time(t)
        # sin(phase + 2 pi f tau) - sin(phase): zero at tau = 0, smooth afterwards
        w = np.sin(self.phase + 2 * np.pi * self.freq * tau) - np.sin(self.phase)
        dx, dy, roll, log_s = self.amp * w / 2.0
        s = self.base_scale * np.exp(log_s)
        a = np.deg2rad(roll)
        lin = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        c_src = self.points.mean(axis=0)
        t_vec = self.centre + np.array([dx, dy]) - lin @ c_src
        return np.hstack([lin, t_vec[:, None]])


def face_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Soft elliptical mask (h, w) float32 around the face of ``points`` (68, 2), forehead
    included, feathered edge."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    w, h = hi - lo
    c = (lo + hi) / 2 - np.array([0.0, 0.12 * h])
    mask = np.zeros(shape, np.float32)
    cv2.ellipse(mask, (int(round(c[0])), int(round(c[1]))),
                (int(round(0.62 * w)), int(round(0.68 * h))), 0, 0, 360, 1.0, -1)
    sigma = max(1.0, 0.06 * w)
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def make_background(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A static (HEIGHT, WIDTH, 3) uint8 BGR background: ``plain`` or ``texture``."""
    base = rng.uniform(60, 190, size=3)
    if kind == "plain":
        ramp = np.linspace(-15, 15, HEIGHT)[:, None, None]
        return np.clip(base + ramp + np.zeros((HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    img = np.zeros((HEIGHT, WIDTH, 3), np.float32) + base.astype(np.float32)
    for cells, amp in ((4, 45.0), (16, 22.0), (64, 8.0)):
        small = rng.normal(0, amp, size=(cells * 3 // 4 + 1, cells, 1)) \
            + rng.normal(0, amp / 5, size=(cells * 3 // 4 + 1, cells, 3))  # mostly luminance
        img += cv2.resize(small.astype(np.float32), (WIDTH, HEIGHT),
                          interpolation=cv2.INTER_CUBIC)
    for _ in range(12):  # furniture-like edges
        p0 = rng.uniform([0, 0], [WIDTH, HEIGHT]).astype(int)
        p1 = p0 + rng.uniform([20, 20], [200, 160]).astype(int)
        color = tuple(float(v) for v in rng.uniform(30, 220, size=3))
        cv2.rectangle(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), color,
                      int(rng.integers(1, 4)))
    return np.clip(img, 0, 255).astype(np.uint8)


def pick_samples(samples: list[Sample], n: int, rng: np.random.Generator) -> list[Sample]:
    """``n`` samples with a large face (IOD in the upper half), different groups if possible."""
    iods = np.array([float(interocular(s.points)) for s in samples])
    pool = [s for s, d in zip(samples, iods) if d >= np.median(iods)] or samples
    order = rng.permutation(len(pool))
    chosen: list[Sample] = []
    groups: set[str] = set()
    for i in order:
        if pool[i].group not in groups:
            chosen.append(pool[i])
            groups.add(pool[i].group)
        if len(chosen) == n:
            return chosen
    while len(chosen) < n:  # fewer groups than faces: repeat
        chosen.append(pool[order[len(chosen) % len(pool)]])
    return chosen


def plan_faces(samples: list[Sample], n: int, seconds: float, still: float,
               rng: np.random.Generator) -> list[FacePath]:
    """Load ``n`` faces and give each a lane (a vertical strip of the frame) and a path."""
    lane_w = WIDTH / n
    out = []
    for k, s in enumerate(pick_samples(samples, n, rng)):
        img = cv2.imread(str(s.path), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"{s.path}: missing or unreadable image")
        pts = s.points.astype(np.float64)
        iod_src = max(float(interocular(pts)), 1.0)
        radius = float(np.linalg.norm(pts - pts.mean(axis=0), axis=1).max()) / iod_src
        grow = 1.0 + SCALE_SWING
        # largest IOD (frame px) that keeps every point inside the lane at the largest scale
        fit = (min(lane_w, HEIGHT) / 2 - 4) / (radius * grow)
        iod = min(rng.uniform(55, 80), fit)
        if iod < 12:
            raise DatasetError(f"{n} faces do not fit into {WIDTH}x{HEIGHT}")
        extent = radius * iod * grow
        start = 0.0 if k == 0 else seconds * 0.3 * k / max(n - 1, 1)
        rel_len = seconds - start
        out.append(FacePath(
            name=s.path.name, image=img, alpha=face_mask(img.shape[:2], pts), points=pts,
            start=round(start * 10) / 10,
            centre=np.array([lane_w * (k + 0.5), HEIGHT / 2]),
            base_scale=iod / iod_src,
            amp=np.array([max(0.0, lane_w / 2 - extent - 2), max(0.0, HEIGHT / 2 - extent - 2),
                          ROLL_SWING, np.log(grow)]),
            freq=rng.uniform([0.08, 0.1, 0.1, 0.08], [0.25, 0.3, 0.35, 0.25]),
            phase=rng.uniform(0, 2 * np.pi, size=4),
            holds=[(0.0, still)] + ([(rel_len / 2, rel_len / 2 + still)]
                                    if rel_len >= 4 * still else []),
        ))
    return out


def render(bg: np.ndarray, faces: list[FacePath], t: float, noise: float,
           rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One frame (HEIGHT, WIDTH, 3) uint8 and its true faces [(face, points (68, 2))]."""
    frame = bg.astype(np.float32)
    truth = []
    for k, f in enumerate(faces):
        if t < f.start:
            continue
        m = f.matrix(t)
        warped = cv2.warpAffine(f.image, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        a = cv2.warpAffine(f.alpha, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        frame = frame * (1.0 - a) + warped.astype(np.float32) * a
        pts = f.points @ m[:, :2].T + m[:, 2]
        truth.append((k, pts))
    if noise > 0:
        frame += rng.normal(0.0, noise, size=frame.shape).astype(np.float32)
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8), truth


def make_video(data_dir: str | Path, out: str | Path, faces: int = 1, seconds: float = 15.0,
               fps: float = 30.0, seed: int = 0, background: str = "texture",
               noise: float = 4.0, still: float = 1.0, split: str = "all",
               val_fraction: float = 0.1) -> Path:
    """Write the video ``out`` and its truth CSV; returns the truth path.

    ``split``: "all" faces, or only the "val" (or "train") people of fkp-train's fixed
    person-wise split (``data.split_by_group`` with ``val_fraction``), so that a model is
    scored on people it never saw.
    """
    from tqdm import tqdm

    samples = read_folder(Path(data_dir))
    samples = select_split(samples, split, val_fraction)
    if not samples:
        raise DatasetError(f"{data_dir}: no labelled faces")
    rng = np.random.default_rng(seed)
    paths = plan_faces(samples, faces, seconds, still, rng)
    bg = make_background(rng, background)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise OSError(f"{out}: OpenCV cannot write this video (try a .mp4 or .avi name)")
    truth_path = truth_path_for(out)
    n_frames = max(1, int(round(seconds * fps)))
    header = ["frame", "face"] + [f"{a}{i}" for i in range(NUM_POINTS) for a in "xy"]
    try:
        with open(truth_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for i in tqdm(range(n_frames), desc="frames", unit="f", disable=None):
                frame, truth = render(bg, paths, i / fps, noise, rng)
                writer.write(frame)
                for k, pts in truth:
                    w.writerow([i, k] + [f"{v:.3f}" for v in pts.reshape(-1)])
    finally:
        writer.release()
    for k, f in enumerate(paths):
        iod = f.base_scale * float(interocular(f.points))
        log.info("face %d: %s from %.1f s, IOD %.0f px", k, f.name, f.start, iod)
        if iod < 30:
            log.warning("face %d is small (IOD %.0f px at rest); use fewer --faces", k, iod)
    return truth_path


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="fkp-testvideo", description=first_paragraph(__doc__),
        epilog="s" + __doc__.split("\nThe s", 1)[1].replace("::", ":"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a synthetic video + OUT.truth.csv",
                       description="Write a 640x480 video of labelled faces moving along known "
                                   "affine paths, and OUT.truth.csv with the true points.")
    m.add_argument("data_dir", metavar="DATA_DIR", help="folder with images/ + landmarks.csv")
    m.add_argument("out", metavar="OUT.mp4", help="video to write (.mp4 or .avi)")
    m.add_argument("--faces", type=whole(1), default=1, help="number of faces (default 1)")
    m.add_argument("--seconds", type=number(above=True), default=15.0, help="length (default 15)")
    m.add_argument("--fps", type=number(1), default=30.0, help="frame rate (default 30)")
    m.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    m.add_argument("--background", choices=("texture", "plain"), default="texture")
    m.add_argument("--noise", type=number(), default=4.0,
                   help="sensor noise sigma in grey levels per frame (default 4)")
    m.add_argument("--still", type=number(), default=1.0,
                   help="seconds each face holds still, at its start and mid-way (default 1)")
    m.add_argument("--split", choices=("all", "train", "val"), default="all",
                   help="use only the held-out (val) or training people of fkp-train's fixed "
                        "person-wise split (default: all)")
    m.add_argument("--val-fraction", type=float, default=0.1,
                   help="the split's fraction of held-out people, as fkp-train (default 0.1)")
    s = sub.add_parser("score", help="score a tracker CSV against a truth CSV",
                       description="Detected %, NME % (IOD = points 36/45), failure % "
                                   "(missed or NME > 10 %), jitter (% of IOD, still frames). "
                                   "Several TRUTH TRACK pairs are pooled: every face in every "
                                   "frame of every video counts once. "
                                   "Last stdout line: one JSON object.")
    s.add_argument("files", nargs="+", metavar="TRUTH TRACK.csv",
                   help="OUT.truth.csv (or the video: its sidecar) and the fkp-track --csv "
                        "output for it; more pairs may follow")
    s.add_argument("--frames", type=whole(0), default=0, metavar="N",
                   help="score only the first N frames (e.g. fkp-bench --frames N); 0 = all")
    for sp in (m, s):
        sp.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    return p


@interruptible("fkp-testvideo")
@quiet_broken_pipe
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "make":
            truth = make_video(args.data_dir, args.out, args.faces, args.seconds, args.fps,
                               args.seed, args.background, args.noise, args.still,
                               args.split, args.val_fraction)
            print(f"wrote {args.out} and {truth}")
            return 0
        if len(args.files) % 2:
            raise ValueError("score takes TRUTH TRACK.csv pairs: an odd number of files given")
        pairs = [(Path(t) if Path(t).suffix.lower() == ".csv" else truth_path_for(t), k)
                 for t, k in zip(args.files[::2], args.files[1::2])]
        result = score_pooled(pairs, args.frames)
        for line in result.lines():
            print(line)
        print(json.dumps(result.to_json_dict()))
        return 0
    except (DatasetError, ScoreError, OSError, ValueError) as exc:
        print(f"fkp-testvideo: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
