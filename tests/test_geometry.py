"""Crop transform, its inverse, the flip permutation, and points following pixels."""
import numpy as np
import pytest

from fkp.tracker.geometry import (apply_affine, box_from_points, crop, crop_gray,
                                  crop_matrix, invert_affine, roll_angle, source_region,
                                  uncrop)
from fkp.tracker.landmarks import FLIP_PERM, NUM_POINTS, nme, shape_plausibility


def test_flip_permutation_is_an_involution_and_swaps_sides():
    assert sorted(FLIP_PERM) == list(range(NUM_POINTS))
    assert np.array_equal(FLIP_PERM[FLIP_PERM], np.arange(NUM_POINTS))
    assert FLIP_PERM[36] == 45 and FLIP_PERM[0] == 16 and FLIP_PERM[30] == 30
    assert FLIP_PERM[48] == 54 and FLIP_PERM[8] == 8 and FLIP_PERM[62] == 62


def test_crop_matrix_maps_box_centre_to_crop_centre_and_inverts():
    box = np.array([40.0, 60.0, 140.0, 180.0])
    m = crop_matrix(box, 128, margin=0.25, angle_deg=17.0, flip=True)
    c = apply_affine(np.array([[90.0, 120.0]]), m)
    assert np.allclose(c, 63.5)
    pts = np.random.default_rng(0).uniform(0, 200, (68, 2))
    back = apply_affine(apply_affine(pts, m), invert_affine(m))
    assert np.allclose(back, pts, atol=1e-9)
    # the square side is max(w, h) * (1 + 2 margin)
    m0 = crop_matrix(box, 100, margin=0.25)
    assert m0[0, 0] == pytest.approx(100 / (120 * 1.5))


def test_batched_inverse_matches_single():
    ms = np.stack([crop_matrix(np.array([0, 0, 50 + i, 60.0]), 64, 0.2, 5.0 * i) for i in range(4)])
    inv = invert_affine(ms)
    for m, i in zip(ms, inv):
        assert np.allclose(i, invert_affine(m))
    assert invert_affine(ms[:0]).shape == (0, 2, 3)
    with pytest.raises(np.linalg.LinAlgError):
        invert_affine(np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0]]))


def test_uncrop_maps_crop_points_back_through_each_crops_inverse():
    rng = np.random.default_rng(3)
    boxes = rng.uniform(0, 300, (5, 2)).repeat(2, axis=1) + [0, 0, 80, 90]
    boxes = boxes[:, [0, 2, 1, 3]]                                   # x0, y0, x1, y1
    mats = np.stack([crop_matrix(b, 160, 0.25, a, flip) for b, a, flip in
                     zip(boxes, rng.uniform(-40, 40, 5), [False, True, False, True, False])])
    frame_pts = rng.uniform(0, 400, (5, 68, 2))
    crop_pts = np.stack([apply_affine(p, m) for p, m in zip(frame_pts, mats)])
    back = uncrop(crop_pts, mats)
    assert back.shape == (5, 68, 2) and back.dtype == np.float64
    np.testing.assert_allclose(back, frame_pts, atol=1e-9)
    np.testing.assert_allclose(back, apply_affine(crop_pts, invert_affine(mats)), atol=1e-9)
    assert uncrop(np.zeros((0, 68, 2)), np.zeros((0, 2, 3))).shape == (0, 68, 2)
    with pytest.raises(np.linalg.LinAlgError):
        uncrop(crop_pts[:1], np.array([[[1.0, 2.0, 3.0], [2.0, 4.0, 5.0]]]))


def test_roll_angle_makes_crop_upright():
    pts = np.zeros((68, 2))
    pts[36:42] = [100, 100]
    pts[42:48] = [150, 130]      # right eye lower: rolled clockwise in the image
    a = roll_angle(pts)
    m = crop_matrix(box_from_points(pts), 128, 0.25, a)
    eyes = apply_affine(pts[[36, 42]], m)
    assert eyes[0, 1] == pytest.approx(eyes[1, 1], abs=1e-6)
    assert eyes[1, 0] > eyes[0, 0]


def test_crop_pads_past_the_frame_edge():
    img = np.full((50, 50), 200, np.uint8)
    out, m = crop(img, np.array([-30.0, -30.0, 10.0, 10.0]), 32)
    assert out.shape == (32, 32) and (out == 200).all()


@pytest.mark.parametrize("box, angle", [((250, 150, 390, 300), 5.0), ((-50, -20, 100, 120), -30.0),
                                        ((560, 380, 700, 520), 40.0), ((0, 0, 639, 479), 0.0),
                                        ((-900, -900, -700, -700), 0.0)])
def test_gray_crop_of_a_colour_frame_is_the_crop_of_the_gray_frame(box, angle):
    """crop_gray converts only the region the crop reads: inside, across the edge, off the
    frame and turned, the pixels are those of cropping the whole frame made gray."""
    import cv2
    rng = np.random.default_rng(1)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (5, 5), 0)
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    m = crop_matrix(np.array(box, np.float64), 96, 0.25, angle)
    want = crop(gray, np.array(box, np.float64), 96, 0.25, angle)[0]
    assert np.array_equal(crop_gray(frame, m, 96), want)
    assert np.array_equal(crop_gray(gray, m, 96), want)
    x0, y0, x1, y1 = source_region(m, 96, 640, 480)
    assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
    # every crop pixel's source lies in the region (or the crop is off the frame)
    corners = apply_affine(np.array([[0, 0], [95, 0], [0, 95], [95, 95]], float),
                           invert_affine(m))
    inside = np.clip(corners, 0, [639, 479])
    assert (inside[:, 0] >= x0).all() and (inside[:, 0] < x1).all()
    assert (inside[:, 1] >= y0).all() and (inside[:, 1] < y1).all()


def test_nme_and_plausibility():
    t = np.random.default_rng(1).uniform(0, 100, (3, 68, 2))
    t[:, 36], t[:, 45] = [10, 50], [60, 50]
    p = t.copy()
    p[..., 0] += 5.0
    assert np.allclose(nme(p, t), 10.0)
    assert shape_plausibility(t[:1] * 2 + 3, t[0])[0] == pytest.approx(1.0)


def _marked_image():
    """A 480x480 image with 68 distinct-intensity 9x9 marks on a grid, and their points."""
    img = np.zeros((480, 480, 3), np.uint8)
    pts = np.array([[80 + 40 * (i % 9), 80 + 40 * (i // 9)] for i in range(68)], np.float32)
    for i, (x, y) in enumerate(pts.astype(int)):
        img[y - 4:y + 5, x - 4:x + 5] = 40 + 3 * i
    return img, pts


def _marks_found_through_augmentation(offset: np.ndarray, seed: int, warp: float = 0.0,
                                      size: int = 160) -> None:
    """Labels = marks + ``offset`` (a label convention offset, image px): over 40 augmented
    samples, each target minus the unmirrored offset lands on its mark (flips included).
    With ``warp`` the crop is interpolated twice: a ``size`` that keeps the marks several
    pixels wide keeps their centres at their own grey level."""
    from fkp.train.dataset import AugmentConfig, FaceDataset

    img, pts = _marked_image()
    aug = AugmentConfig(flip=0.5, rotation=30, brightness=0, contrast=0, saturation=0, hue=0,
                        blur=0, noise=0, warp=warp, warp_strength=0.02)
    ds = FaceDataset([img], (pts + offset)[None], size, 0.25, augment=aug, seed=seed,
                     label_offset=offset)
    flipped = checked = 0
    for _ in range(40):
        gray, out, mat = ds.sample(0)
        flip = np.linalg.det(mat[:, :2]) < 0
        flipped += flip
        lin = mat[:, :2] * (np.array([[-1.0], [1.0]]) if flip else 1.0)
        marks = out - lin @ offset
        src = FLIP_PERM if flip else np.arange(68)
        for k, (x, y) in enumerate(np.round(marks).astype(int)):
            if 0 <= x < size and 0 <= y < size:
                assert abs(int(gray[y, x]) - (40 + 3 * src[k])) <= 1, (k, flip)
                checked += 1
    assert 0 < flipped < 40 and checked > 40 * 60


def test_points_follow_pixels_through_every_augmentation():
    """Marks drawn at the points are found where the transformed points say, flips included."""
    _marks_found_through_augmentation(np.zeros(2), seed=3)


def test_points_follow_pixels_through_the_random_warp():
    """--aug warp=1: every crop is also warped smoothly (up to 6.4 px here); the marks are
    still found where the points say, and the warp did move them off the affine map."""
    _marks_found_through_augmentation(np.zeros(2), seed=4, warp=1.0, size=320)
    from fkp.train.dataset import AugmentConfig, FaceDataset

    img, pts = _marked_image()
    plain = AugmentConfig(enabled=False)
    warped = AugmentConfig(flip=0, rotation=0, shift=0, scale=(1, 1), aspect=0, brightness=0,
                           contrast=0, saturation=0, hue=0, blur=0, noise=0, warp=1.0)
    _, p0, _ = FaceDataset([img], pts[None], 160, 0.25, augment=plain).sample(0)
    _, p1, _ = FaceDataset([img], pts[None], 160, 0.25, augment=warped, seed=2).sample(0)
    moved = np.linalg.norm(p1 - p0, axis=1)
    assert 0.5 < moved.max() <= 0.03 * 160 * 2 ** 0.5 and moved.mean() > 0.3


def test_label_offset_stays_in_image_axes_under_the_mirror():
    """Labels drawn 1.5 px right of the marks: the offset is not mirrored with the face."""
    _marks_found_through_augmentation(np.array([1.5, 0.0]), seed=5)


def test_occlusion_paints_one_rectangle_and_keeps_the_points():
    """--occlusion: the crop changes inside one rectangle of the configured size only; the
    targets stay where the face is (hidden points are still learned)."""
    from fkp.train.dataset import AugmentConfig, FaceDataset

    img, pts = _marked_image()
    still = dict(shift=0, scale=(1, 1), aspect=0, rotation=0, flip=0, brightness=0, contrast=0,
                 saturation=0, hue=0, blur=0, noise=0)
    for seed in range(8):       # fresh datasets: the same random draws up to the occlusion
        g0, p0, _ = FaceDataset([img], pts[None], 160, 0.25, augment=AugmentConfig(**still),
                                seed=seed).sample(0)
        g1, p1, _ = FaceDataset([img], pts[None], 160, 0.25, seed=seed,
                                augment=AugmentConfig(**still, occlusion=1.0)).sample(0)
        assert np.array_equal(p0, p1)
        ys, xs = np.nonzero(g0 != g1)
        assert len(ys) > 0
        assert ys.max() - ys.min() < 0.45 * 160 + 1 and xs.max() - xs.min() < 0.45 * 160 + 1


def test_jpeg_round_trip_is_cv2s_and_keeps_the_points():
    """--aug jpeg=P: the crop goes through JPEG at a quality in jpeg_quality (close to the
    plain crop, not equal to it, worse at lower quality); points and the RNG draws before it
    are unchanged."""
    import cv2

    from fkp.train.dataset import AugmentConfig, FaceDataset

    img, pts = _marked_image()
    still = dict(shift=0, scale=(1, 1), aspect=0, rotation=0, flip=0, brightness=0, contrast=0,
                 saturation=0, hue=0, blur=0, noise=3)
    g0, p0, _ = FaceDataset([img], pts[None], 160, 0.25, augment=AugmentConfig(**still),
                            seed=1).sample(0)
    diffs = []
    for q in (20, 90):
        g1, p1, _ = FaceDataset([img], pts[None], 160, 0.25, seed=1, augment=AugmentConfig(
            **still, jpeg=1.0, jpeg_quality=(q, q))).sample(0)
        assert np.array_equal(p0, p1) and g1.shape == g0.shape and g1.dtype == np.uint8
        ok, buf = cv2.imencode(".jpg", g0, [cv2.IMWRITE_JPEG_QUALITY, q])
        assert np.array_equal(g1, cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))
        diffs.append(np.abs(g1.astype(int) - g0).mean())
    assert 0 < diffs[1] < diffs[0] < 10
    with pytest.raises(ValueError, match="jpeg_quality needs 1 <= LO <= HI <= 100"):
        AugmentConfig().override(["jpeg_quality=50:120"])
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig().override(["jpeg=1.5"])


def test_loader_workers_draw_different_augmentations_reproducibly():
    """With --workers, each DataLoader worker gets its own augmentation stream (forked workers
    used to inherit one Generator state and draw identical rotations, flips and noise), and
    the same torch seed gives the same batches again."""
    import torch
    from torch.utils.data import DataLoader

    from fkp.train.dataset import AugmentConfig, FaceDataset, seed_worker

    img, pts = _marked_image()
    ds = FaceDataset([img] * 8, np.stack([pts] * 8), 64, 0.25, augment=AugmentConfig(), seed=0)

    def batches() -> list[np.ndarray]:
        torch.manual_seed(0)
        loader = DataLoader(ds, batch_size=2, num_workers=2, worker_init_fn=seed_worker)
        return [x.numpy() for x, _, _ in loader]

    first = batches()
    assert len(first) == 4
    # batches 0 and 1 come from workers 0 and 1: the same images, so only their draws differ
    assert not np.allclose(first[0], first[1])
    assert all(np.array_equal(a, b) for a, b in zip(first, batches()))


def test_aug_overrides_set_ranges_and_name_bad_items():
    """fkp-train --aug NAME=VALUE: ranges are replaced (pairs as LO:HI); a misspelt name, a
    missing value or a negative range is refused with the item in the message; all ranges
    at zero leave mirrored, otherwise unchanged crops whose points still match."""
    from fkp.train.dataset import AugmentConfig, FaceDataset

    base = AugmentConfig()
    mild = base.override(["rotation=10", "scale=0.96:1.05", "noise=4"])
    assert mild.rotation == 10.0 and mild.scale == (0.96, 1.05) and mild.shift == base.shift
    assert base.override([]) == base
    for bad, words in ((["rotaton=3"], "rotation"), (["scale=1"], "LO:HI"),
                       (["noise=x"], "number"), (["noise"], "NAME=VALUE"),
                       (["shift=-1"], ">= 0"),
                       (["scale=1.2:1"], "LO <= HI"), (["flip=2"], "probability")):
        with pytest.raises(ValueError, match=words):
            base.override(bad)

    img, pts = _marked_image()
    plain = FaceDataset([img], pts[None], 160, 0.25).sample(0)
    zero = [f"{k}=0" for k in ("shift", "aspect", "rotation", "brightness", "contrast",
                               "saturation", "hue", "blur", "noise")] + ["scale=1:1"]
    ds = FaceDataset([img], pts[None], 160, 0.25, augment=base.override(zero), seed=3)
    flipped = 0
    for _ in range(12):
        g, p, m = ds.sample(0)
        same = np.allclose(m, plain[2])
        flipped += not same
        if same:                        # no geometric or photometric change at all
            assert np.array_equal(g, plain[0]) and np.allclose(p, plain[1])
        else:                           # the mirror image only
            assert np.array_equal(g, plain[0][:, ::-1])
    assert 0 < flipped < 12


def test_fkp_train_refuses_a_bad_aug_item_in_one_line(capsys):
    """fkp-train --aug with a misspelt name stops before loading data, with one line."""
    from fkp.train.cli import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["--data", "nowhere", "--out", "x", "--aug", "rotatio=3"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "rotatio=3" in err and "rotation" in err


def test_track_checks():
    """tracks.alive: score, size, centre in frame, finite; drop_converged keeps the older."""
    from fkp.tracker.tracks import Track, alive, drop_converged
    face = np.array([[100.0, 100.0], [140.0, 100.0], [120.0, 150.0]])   # box 100..140 x 100..150
    pts = np.stack([face, face, face * 0.02, face + 500, face, face, face, face - 125])
    pts[4, 0, 0] = np.nan
    pts[5, 1, 1] = np.inf
    pts[6, 0, 0], pts[6, 1, 0] = -np.inf, np.inf
    ok = alive(pts, np.array([0.9, 0.4, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]), 0.5, 400, 300)
    assert ok.tolist() == [True, False, False, False, False, False, False, False]
    pts[7] += 10    # the box centre (-5, 0) moves to (5, 10), inside the frame
    assert alive(pts[7:], np.array([0.9]), 0.5, 400, 300).tolist() == [True]
    t = [Track(i, p, 0.9, None) for i, p in enumerate([face, face + 2, face + 300])]
    assert [x.id for x in drop_converged(t)] == [0, 2]
    assert t[0].output(0.0) is t[0].points and t[0].crop_points() is t[0].points


def test_choose_new_and_frame_result():
    """tracks.choose_new: best first, at most ``room``, not over a live track or a box
    already chosen; frame_result: empty arrays without tracks, smoothed points otherwise."""
    from fkp.tracker.tracks import Track, choose_new, frame_result
    live = np.array([[0.0, 0.0, 100.0, 100.0]])
    boxes = np.array([[5.0, 5.0, 100.0, 100.0],          # on the live track
                      [200.0, 0.0, 300.0, 100.0],
                      [205.0, 5.0, 300.0, 100.0],        # on the one chosen just before
                      [400.0, 0.0, 500.0, 100.0],
                      [0.0, 200.0, 100.0, 300.0]])
    assert choose_new(boxes, live, 0.3, 4).tolist() == boxes[[1, 3, 4]].tolist()
    assert choose_new(boxes, live, 0.3, 2).tolist() == boxes[[1, 3]].tolist()
    assert choose_new(boxes, np.zeros((0, 4)), 0.3, 9).tolist() == boxes[[0, 1, 3, 4]].tolist()
    assert choose_new(boxes[:0], live, 0.3, 2).shape == (0, 4)
    assert choose_new(boxes, live, 0.3, 0).shape == (0, 4)
    r = frame_result([], 3, 40.0, 68, False)
    assert r.points.shape == (0, 68, 2) and r.ids.shape == (0,) and r.boxes.shape == (0, 4)
    face = np.array([[100.0, 100.0], [140.0, 100.0], [120.0, 150.0]])
    gray = np.zeros((240, 320), np.uint8)
    t = Track.start(7, face, 0.8, gray, smooth=1.0, still_hold=True)
    assert t.smoother is not None and t.still_check is not None
    r = frame_result([t], 3, 40.0, 3, True)
    assert r.ids.tolist() == [7] and r.detected and r.scores.tolist() == [0.8]
    assert np.allclose(r.points[0], face) and r.raw_points[0] is not r.points[0]
    assert r.boxes[0].tolist() == [100.0, 100.0, 140.0, 150.0]
    assert Track.start(8, face, 0.8, gray, smooth=0.0, still_hold=True).still_check is None
