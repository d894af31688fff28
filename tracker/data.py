"""Readers for labelled face datasets (numpy + OpenCV only; training and fkp-eval share them).

Three formats, one record type. Points are (68, 2) float32 in pixels of the original image.

* folder format (``../shared/data/*``): ``images/`` and ``landmarks.csv`` with rows
  ``image,x0,y0,...,x67,y67``;
* 300-W ``.pts`` files beside images (``version: 1`` / ``n_points: 68`` / ``{`` ... ``}``);
* dlib / iBUG XML (``labels_ibug_300W_train.xml``): ``<image file=..><box ..><part name=..
  x=.. y=../>`` with paths relative to the XML file.
"""
from __future__ import annotations

import csv
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .landmarks import NUM_POINTS

log = logging.getLogger(__name__)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset file or row is unusable; the message names it."""


@dataclass
class Sample:
    """One labelled face: image path, (68, 2) points in image pixels, group for splitting."""

    path: Path
    points: np.ndarray
    group: str


#: Names that number photos rather than people or faces: each is a group of its own
#: (LFPW's ``image_0457.png``, 300-W's ``indoor_001.png``).
_NUMBERED_PHOTO = re.compile(r"(image|indoor|outdoor)_\d+", re.IGNORECASE)


def group_of(name: str, folder: str = "") -> str:
    """Split group of an image name: the person or the source photo, never the frame.

    ``George_W_Bush_03.jpg`` -> ``George_W_Bush`` (youtube-faces-68: person);
    ``helen_100040721_2.jpg`` -> ``helen_100040721`` (300-W: one photo, several faces);
    ``2965035072_1_mirror.jpg`` -> ``2965035072`` (dlib's mirrored copy goes with its
    original); ``image_0457.png`` -> ``image_0457`` (LFPW: one photo each). ``folder``
    (e.g. ``lfpw/trainset``, for formats whose images sit in subfolders) prefixes the group.
    """
    stem = re.sub(r"_mirror$", "", Path(name).stem, flags=re.IGNORECASE)
    group = stem if _NUMBERED_PHOTO.fullmatch(stem) else re.sub(r"_\d+$", "", stem)
    return f"{folder.strip('/')}/{group}" if folder.strip("/.") else group


def _parse_points(values: list[str], where: str) -> np.ndarray:
    if len(values) != 2 * NUM_POINTS:
        raise DatasetError(f"{where}: expected {2 * NUM_POINTS} coordinates, got {len(values)}")
    try:
        pts = np.array([float(v) for v in values], dtype=np.float32).reshape(NUM_POINTS, 2)
    except ValueError:
        raise DatasetError(f"{where}: a coordinate is not a number") from None
    if not np.all(np.isfinite(pts)):
        raise DatasetError(f"{where}: a coordinate is not finite")
    return pts


def read_folder(root: Path, bad: list[str] | None = None) -> list[Sample]:
    """Read the folder format: ``root/landmarks.csv`` + ``root/images/``.

    A malformed row raises :class:`DatasetError`, or is appended to ``bad`` when given.
    """
    root = Path(root)
    csv_path = root / "landmarks.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{root}: no landmarks.csv")
    out: list[Sample] = []
    with open(csv_path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or header[0] != "image":
            raise DatasetError(f"{csv_path}:1: header must start with 'image'")
        for row_no, row in enumerate(reader, start=2):
            if not row:
                continue
            where = f"{csv_path}:{row_no}"
            try:
                pts = _parse_points(row[1:], where)
            except DatasetError as exc:
                if bad is None:
                    raise
                bad.append(str(exc))
                continue
            out.append(Sample(root / "images" / row[0], pts, group_of(row[0])))
    return out


def read_pts_file(path: Path) -> np.ndarray:
    """Parse one 300-W ``.pts`` file -> (68, 2) float32."""
    text = Path(path).read_text()
    m = re.search(r"\{(.*)\}", text, re.S)
    if not m:
        raise DatasetError(f"{path}: no '{{ ... }}' block")
    return _parse_points(m.group(1).split(), str(path))


def read_pts_dir(root: Path) -> list[Sample]:
    """Every image under ``root`` with a ``.pts`` file of the same stem beside it."""
    out = []
    for pts in sorted(Path(root).rglob("*.pts")):
        image = next((pts.with_suffix(e) for e in IMAGE_EXTS if pts.with_suffix(e).exists()),
                     None)
        if image is None:
            raise DatasetError(f"{pts}: no image beside it")
        out.append(Sample(image, read_pts_file(pts),
                          group_of(image.name, image.parent.relative_to(root).as_posix())))
    return out


def read_ibug_xml(xml_path: Path) -> list[Sample]:
    """Parse a dlib/iBUG landmark XML (one sample per ``<box>``)."""
    xml_path = Path(xml_path)
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as exc:
        raise DatasetError(f"{xml_path}: not valid XML ({exc})") from None
    out = []
    for img in tree.getroot().iter("image"):
        file = img.get("file")
        for b, box in enumerate(img.iter("box")):
            where = f"{xml_path}: image {file!r} box {b}"
            pts = np.zeros((NUM_POINTS, 2), np.float32)
            seen = set()
            for part in box.iter("part"):
                try:
                    i = int(part.get("name", ""))
                    pts[i] = float(part.get("x", "")), float(part.get("y", ""))
                except (ValueError, IndexError):
                    raise DatasetError(f"{where}: bad part {part.attrib}") from None
                seen.add(i)
            if len(seen) != NUM_POINTS:
                raise DatasetError(f"{where}: {len(seen)} parts, expected {NUM_POINTS}")
            out.append(Sample(xml_path.parent / file, pts,
                              group_of(Path(file).name, Path(file).parent.as_posix())))
    return out


def read_dataset(spec: str | Path, bad: list[str] | None = None) -> list[Sample]:
    """Read any supported dataset: a folder-format dir, a dir of .pts files, or an XML.

    With ``bad`` given, malformed rows of the folder format are listed there, not raised.
    """
    p = Path(spec)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory")
    if p.is_file() and p.suffix.lower() == ".xml":
        return read_ibug_xml(p)
    if (p / "landmarks.csv").is_file():
        return read_folder(p, bad)
    if p.is_dir():
        samples = read_pts_dir(p)
        if samples:
            return samples
    raise DatasetError(f"{p}: not a dataset (want landmarks.csv + images/, .pts files, "
                       "or an iBUG .xml)")


def load_image(sample: Sample, color: bool = True) -> np.ndarray:
    """Read a sample's image (BGR or gray uint8); raises DatasetError naming the file."""
    img = cv2.imread(str(sample.path), cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DatasetError(f"{sample.path}: missing or unreadable image")
    return img


def load_all(samples: list[Sample], skip_bad: bool = False,
             color: bool = True) -> tuple[list[Sample], list[np.ndarray], int]:
    """Load every image. Returns (kept samples, images, number skipped).

    Without ``skip_bad`` the first bad image raises; with it, bad ones are counted and logged.
    """
    kept, images, skipped = [], [], 0
    for s in samples:
        try:
            img = load_image(s, color)
        except DatasetError as exc:
            if not skip_bad:
                raise
            log.warning("skipped: %s", exc)
            skipped += 1
            continue
        kept.append(s)
        images.append(img)
    return kept, images, skipped


def split_by_group(samples: list[Sample], val_fraction: float = 0.1,
                   seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Fixed person-wise split: groups are hashed with the seed, never shuffled by image.

    A group goes to validation when ``crc32(seed:group) / 2**32 < val_fraction``, so the split
    of a person never changes when other images are added or removed.
    """
    import zlib

    train, val = [], []
    for s in samples:
        h = zlib.crc32(f"{seed}:{s.group}".encode()) / 2**32
        (val if h < val_fraction else train).append(s)
    return train, val


def select_split(samples: list[Sample], split: str = "all",
                 val_fraction: float = 0.1) -> list[Sample]:
    """``split`` "all", or only the "train" or "val" people of the fixed split above."""
    if split == "all":
        return samples
    train, val = split_by_group(samples, val_fraction)
    return val if split == "val" else train
