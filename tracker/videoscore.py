"""Score a tracker CSV against the true points of a synthetic test video (``fkp-testvideo``).

Both files are CSV with one row per face and frame, points in frame pixels (x right, y down,
pixel centres at integer coordinates, as everywhere in fkp-track):

* truth (``fkp-testvideo make``): ``frame,face,x0,y0,...,x67,y67``;
* track (``fkp-track --csv``, ``fkp-bench --vs dlib --csv``):
  ``frame,timestamp_ms,face,score,x0,y0,...,x67,y67``. Only ``frame`` and the 136
  coordinates are read; a row with an empty coordinate is ignored (no face).

``frame`` is the 0-based index of the decoded frame in both files. The metrics:

* detected %: true faces (face x frame) matched by a tracked face. A tracked face matches a true
  face when the distance of their point centroids is below ``MATCH_IOD`` x IOD; pairs are
  assigned greedily, closest first, one tracked face per true face;
* NME %: mean point error / IOD (points 36 and 45 of the truth), over matched faces;
* failure %: true faces that were missed or matched with NME > ``FAIL_NME`` %;
* jitter %: on still frames (a true face whose points equal those of the previous frame), the
  RMS over points and frame pairs of the change of the error vector ``pred - true`` from one
  frame to the next, in % of the IOD; pairs where either frame is unmatched are skipped.
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .landmarks import NUM_POINTS, interocular, nme

MATCH_IOD = 1.0    # centroid distance gate, in IODs of the true face
FAIL_NME = 10.0    # NME (%) above which a matched face counts as a failure

#: frame -> list of (face id, (68, 2) points)
FaceRows = dict[int, list[tuple[int, np.ndarray]]]


class ScoreError(ValueError):
    """An input file is missing or malformed; the message is one line naming it."""


def read_points_csv(path: str | Path, id_column: str = "face") -> FaceRows:
    """Read a truth or track CSV -> {frame: [(face, points (68, 2) float64), ...]}.

    Columns are found by name (``frame``, ``id_column``, ``x0``..``y67``); other columns are
    ignored. Rows with an empty coordinate are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: " + ("a directory, not a CSV file" if path.is_dir()
                                        else "no such file"))
    try:
        return _read_points_csv(path, id_column)
    except UnicodeDecodeError:
        raise ScoreError(f"{path}: not a text (CSV) file") from None


def _read_points_csv(path: Path, id_column: str) -> FaceRows:
    out: FaceRows = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise ScoreError(f"{path}: empty file")
        col = {name.strip(): i for i, name in enumerate(header)}
        coords = [f"{a}{i}" for i in range(NUM_POINTS) for a in "xy"]
        missing = [c for c in ["frame", *coords] if c not in col]
        if missing:
            raise ScoreError(f"{path}: not a points CSV (missing columns {missing[:3]}...)")
        idx = [col[c] for c in coords]
        fid = col.get(id_column)
        for row_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                values = [row[i] for i in idx]
                if any(v.strip() == "" for v in values):
                    continue
                pts = np.array(values, dtype=np.float64).reshape(NUM_POINTS, 2)
                frame = int(row[col["frame"]])
                face = int(float(row[fid])) if fid is not None and row[fid] != "" else -1
            except (ValueError, IndexError):
                raise ScoreError(f"{path}:{row_no}: malformed row") from None
            if not np.all(np.isfinite(pts)):
                continue
            out.setdefault(frame, []).append((face, pts))
    return out


def match_faces(true: list[np.ndarray], pred: list[np.ndarray]) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of true and predicted shapes (each (68, 2)).

    Returns (true index, pred index) pairs whose centroid distance is below MATCH_IOD x IOD.
    """
    pairs = []
    for i, t in enumerate(true):
        iod = max(float(interocular(t)), 1e-6)
        ct = t.mean(axis=0)
        for j, p in enumerate(pred):
            d = float(np.linalg.norm(p.mean(axis=0) - ct)) / iod
            if d < MATCH_IOD:
                pairs.append((d, i, j))
    pairs.sort()
    used_t: set[int] = set()
    used_p: set[int] = set()
    out = []
    for _, i, j in pairs:
        if i not in used_t and j not in used_p:
            used_t.add(i)
            used_p.add(j)
            out.append((i, j))
    return out


@dataclass
class Score:
    """Accuracy of one track file against one truth file (percentages, NaN when undefined)."""

    frames: int            # frames with at least one true face
    true_faces: int        # face x frame instances in the truth
    matched: int           # of those, matched by a tracked face
    false_positives: int   # tracked faces matched to no true face
    detected_pct: float
    nme_pct: float         # mean over matched faces
    nme_median_pct: float
    failure_pct: float
    jitter_pct: float
    still_pairs: int       # frame pairs used for jitter

    def to_json_dict(self) -> dict:
        """As a dict with NaN replaced by None (valid JSON)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else
                    (round(v, 4) if isinstance(v, float) else v))
                for k, v in asdict(self).items()}

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        return [
            f"true faces: {self.true_faces} in {self.frames} frames, matched {self.matched}, "
            f"false positives {self.false_positives}",
            f"detected:   {self.detected_pct:6.2f} %",
            f"NME:        {self.nme_pct:6.2f} % of IOD (median {self.nme_median_pct:.2f} %)",
            f"failure:    {self.failure_pct:6.2f} % (missed or NME > {FAIL_NME:g} %)",
            f"jitter:     {self.jitter_pct:6.3f} % of IOD RMS on still frames "
            f"({self.still_pairs} frame pairs)",
        ]


def score(truth: FaceRows, track: FaceRows) -> Score:
    """Compare tracked faces with the truth, frame by frame (see the module docstring)."""
    errors: list[float] = []
    n_true = n_match = n_fail = n_fp = 0
    # (true face id) -> (frame, true points, error vector or None) of the previous frame
    last: dict[int, tuple[int, np.ndarray, np.ndarray | None]] = {}
    jitter_sq: list[float] = []
    for frame in sorted(truth):
        faces = truth[frame]
        preds = [p for _, p in track.get(frame, [])]
        trues = [t for _, t in faces]
        pairs = dict(match_faces(trues, preds))
        n_true += len(trues)
        n_match += len(pairs)
        n_fp += len(preds) - len(pairs)
        for i, (fid, t) in enumerate(faces):
            err_vec = None
            if i in pairs:
                p = preds[pairs[i]]
                e = float(nme(p[None], t[None])[0])
                errors.append(e)
                n_fail += e > FAIL_NME
                err_vec = p - t
            else:
                n_fail += 1
            prev = last.get(fid)
            if prev is not None and prev[0] == frame - 1 and np.array_equal(prev[1], t) \
                    and prev[2] is not None and err_vec is not None:
                d = err_vec - prev[2]
                iod = max(float(interocular(t)), 1e-6)
                jitter_sq.append(float((d ** 2).sum(axis=1).mean()) / iod ** 2)
            last[fid] = (frame, t, err_vec)
    n_fp += sum(len(v) for f, v in track.items() if f not in truth)
    nan = float("nan")
    pct = (lambda k: 100.0 * k / n_true) if n_true else (lambda k: nan)
    return Score(
        frames=len(truth), true_faces=n_true, matched=n_match, false_positives=n_fp,
        detected_pct=pct(n_match),
        nme_pct=float(np.mean(errors)) if errors else nan,
        nme_median_pct=float(np.median(errors)) if errors else nan,
        failure_pct=pct(n_fail),
        jitter_pct=100.0 * math.sqrt(float(np.mean(jitter_sq))) if jitter_sq else nan,
        still_pairs=len(jitter_sq),
    )


def _load(truth_path: str | Path, track_path: str | Path, frames: int) -> tuple[FaceRows, FaceRows]:
    """Truth and track rows of one video, the first ``frames`` frames only when > 0."""
    truth = read_points_csv(truth_path)
    if frames > 0:
        truth = {f: v for f, v in truth.items() if f < frames}
    if not truth:
        raise ScoreError(f"{truth_path}: no faces in the truth file")
    track = read_points_csv(track_path)
    if frames > 0:
        track = {f: v for f, v in track.items() if f < frames}
    return truth, track


def score_files(truth_path: str | Path, track_path: str | Path, frames: int = 0) -> Score:
    """:func:`score` on two CSV files, on the first ``frames`` frames only when > 0 (raises
    :class:`ScoreError` for unusable input)."""
    return score(*_load(truth_path, track_path, frames))


def score_pooled(pairs: list[tuple[str | Path, str | Path]], frames: int = 0) -> Score:
    """One :class:`Score` over several (truth, track) file pairs, every face in every frame
    counting once: as if the videos were played one after another (no jitter pair spans two
    videos; ``frames`` counts frames with a face over all of them)."""
    truth: FaceRows = {}
    track: FaceRows = {}
    offset = 0
    for truth_path, track_path in pairs:
        t, k = _load(truth_path, track_path, frames)
        truth.update((offset + f, faces) for f, faces in t.items())
        track.update((offset + f, faces) for f, faces in k.items())
        # one empty frame between videos: a jitter pair needs frames f - 1 and f
        offset += max(max(t), max(k, default=0)) + 2
    return score(truth, track)
