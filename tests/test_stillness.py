"""The still-face check (tracker/stillness.py), the One Euro filter's still samples, and what
the two do for a tracked face that holds still."""
import cv2
import numpy as np
import pytest

from fkp.tracker import Tracker
from fkp.tracker.smoothing import OneEuroFilter, _alpha
from fkp.tracker.stillness import StillCheck

BOX = np.array([70.0, 40.0, 210.0, 200.0])     # around the astronaut's face in ``scene``


@pytest.fixture
def scene(astronaut_bgr) -> np.ndarray:
    """320x240 BGR frame holding the astronaut's head."""
    return np.ascontiguousarray(astronaut_bgr[0:240, 100:420])


def noisy(img: np.ndarray, rng, sigma: float = 4.0) -> np.ndarray:
    return np.clip(img + rng.normal(0.0, sigma, img.shape), 0, 255).astype(np.uint8)


def shifted(img: np.ndarray, dx: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, 0]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def test_a_still_face_in_sensor_noise_reads_still(scene):
    rng = np.random.default_rng(0)
    check = StillCheck()
    assert not check.update(noisy(scene, rng), BOX)        # no reference yet
    assert all(check.update(noisy(scene, rng), BOX) for _ in range(40))
    gray = cv2.cvtColor(scene, cv2.COLOR_BGR2GRAY)          # gray frames work alike
    check.reset()
    assert [check.update(noisy(gray, rng), BOX) for _ in range(3)] == [False, True, True]


def test_the_threshold_follows_a_noisy_camera(scene):
    """Sensor noise of sigma 16 per pixel: the fixed 4 grey levels read every frame as
    moving; within a few seconds the threshold has risen with the noise floor, so the face
    reads still, and a 2-px move still reads as one."""
    rng = np.random.default_rng(6)
    check = StillCheck()
    check.update(noisy(scene, rng, 16.0), BOX)
    verdicts = [check.update(noisy(scene, rng, 16.0), BOX) for _ in range(120)]
    assert not any(verdicts[:10]) and sum(verdicts[-40:]) >= 36, verdicts
    assert not check.update(noisy(shifted(scene, 2.0), rng, 16.0), BOX + [2, 0, 2, 0])


def test_a_face_first_seen_moving_does_not_raise_the_threshold(scene):
    """Motion is no noise: a face that moves from its first frame on keeps reading as
    moving, and once it stops it reads still."""
    rng = np.random.default_rng(7)
    check = StillCheck()
    moving = [check.update(noisy(shifted(scene, 1.5 * i), rng), BOX + [1.5 * i, 0, 1.5 * i, 0])
              for i in range(30)]
    assert not any(moving), moving
    check.update(noisy(shifted(scene, 45.0), rng), BOX + [45, 0, 45, 0])   # the stop frame
    assert all(check.update(noisy(shifted(scene, 45.0), rng), BOX + [45, 0, 45, 0])
               for _ in range(5))


def test_a_one_pixel_move_reads_moving_then_still_at_the_new_place(scene):
    rng = np.random.default_rng(1)
    check = StillCheck()
    check.update(noisy(scene, rng), BOX)
    moved = shifted(scene, 1.0)
    assert not check.update(noisy(moved, rng), BOX + [1, 0, 1, 0])
    assert check.update(noisy(moved, rng), BOX + [1, 0, 1, 0])


def test_a_wandering_box_alone_does_not_end_still(scene):
    """The raw points of a still face wander a little; a box that pokes out of the region
    is no change of the picture, so the face stays still."""
    rng = np.random.default_rng(5)
    check = StillCheck()
    check.update(noisy(scene, rng), BOX)
    boxes = [BOX + rng.uniform(-12, 12, 4) for _ in range(30)]
    assert all(check.update(noisy(scene, rng), b) for b in boxes)


def test_a_slow_drift_adds_up_until_it_counts(scene):
    """0.1 px per frame: each step alone is below the noise, the sum against the reference
    is not, so the face never reads still for long while it creeps."""
    rng = np.random.default_rng(2)
    check = StillCheck()
    verdicts = [check.update(noisy(shifted(scene, 0.1 * i), rng), BOX) for i in range(30)]
    assert verdicts[1]                                       # 0.1 px: still
    moving = [i for i, v in enumerate(verdicts) if i and not v]
    assert moving and moving[0] <= 10                        # caught by 1 px of drift
    assert max(np.diff([0] + moving)) <= 10                  # and again after each reset


def test_a_local_change_ends_still(scene):
    """An eye or the mouth changing, the head not moving: the face is no longer still."""
    rng = np.random.default_rng(3)
    check = StillCheck()
    check.update(noisy(scene, rng), BOX)
    assert check.update(noisy(scene, rng), BOX)
    mouth = scene.copy()
    mouth[150:165, 120:160] //= 3                            # a 40x15 px patch darkens
    assert not check.update(noisy(mouth, rng), BOX)


def test_boxes_too_small_or_off_the_frame_never_read_still(scene):
    check = StillCheck()
    for box in ([10.0, 10.0, 25.0, 25.0], [-300.0, -300.0, -200.0, -200.0],
                [310.0, 230.0, 420.0, 330.0]):
        assert not any(check.update(scene, np.array(box)) for _ in range(3))


def test_one_euro_still_samples_use_the_still_cutoff():
    dt = 1.0 / 30.0
    f = OneEuroFilter(1.0, 20.0, 4.0, still_cutoff=0.25)
    f(np.zeros((3, 2)), 0.0)
    assert np.allclose(f(np.ones((3, 2)), 1000.0 * dt, still=True), _alpha(0.25, dt))
    g = OneEuroFilter(1.0, 0.0, 4.0)                         # no still cutoff: flag ignored
    g(np.zeros((3, 2)), 0.0)
    assert np.allclose(g(np.ones((3, 2)), 1000.0 * dt, still=True), _alpha(1.0, dt))
    assert OneEuroFilter.from_strength(2.0).still_cutoff == pytest.approx(0.125)
    with pytest.raises(ValueError):
        OneEuroFilter(still_cutoff=0.0)


def test_a_tracked_face_that_holds_still_holds_its_points_still(astronaut_bgr):
    """The shipped fast net on a still face in sensor noise: with the still hold (default)
    the shown points move far less from frame to frame than without it."""
    rng = np.random.default_rng(4)
    frame = np.full((240, 320, 3), 128, np.uint8)
    frame[15:225, 55:265] = astronaut_bgr[20:230, 120:330]
    frames = [noisy(frame, rng) for _ in range(40)]
    steps = {}
    for hold in (True, False):
        with Tracker("fastnet-int8", device="cpu", async_scan=False, still_hold=hold) as tr:
            pts = [tr.process(f, timestamp_ms=40.0 * i).points for i, f in enumerate(frames)]
        assert all(len(p) == 1 for p in pts)
        pts = np.stack([p[0] for p in pts[10:]])
        steps[hold] = float(np.sqrt((np.diff(pts, axis=0) ** 2).sum(axis=2).mean()))
    assert steps[True] < 0.5 * steps[False], steps
