"""The shipped model on the rendered demo when the camera goes blind or the scene changes.

A robot that fuses the odometry needs the published covariance to rise, and the frames to be
reported as low confidence, when the images stop carrying information. These tests cover ten
black frames in the middle of the sequence and a cut to a different rendered scene.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vo_node.demo_data import render_demo_sequence
from vo_node.io.sequence import open_sequence
from vo_node.odometry.frontend import STATE_TRACKING, VisualOdometry
from vo_node.run import load_engine

FRAMES = 60
BLIND = slice(30, 40)
"""Frames replaced by black images (or, for the cut, the first frame of the other scene)."""
BEFORE = slice(20, 30)
AFTER = slice(50, 60)
OTHER_SCENE_SEED = 2
BLIND_COVARIANCE_RATIO = 30.0
"""Minimum ratio of the median position variance on black frames to the one before. The
shipped model gives about 450 on this sequence."""
CUT_COVARIANCE_RATIO = 5.0
"""Minimum ratio at the first frame of the other scene (about 33 with the shipped model)."""
CONFIDENT_MAX_RATIO = 6.0
"""Maximum ``variance_ratio`` on the unchanged sequence (about 2 with the shipped model)."""
RECOVERED_COVARIANCE_RATIO = 20.0
"""Maximum ratio 10 to 20 frames after the blind frames (about 4 with the shipped model)."""


def render_scenes(folder):
    """Render the main and the other demo sequence into ``folder`` and return both, opened."""
    main = open_sequence(render_demo_sequence(folder / "main", num_frames=FRAMES))
    other = open_sequence(
        render_demo_sequence(folder / "other", num_frames=FRAMES, seed=OTHER_SCENE_SEED)
    )
    return main, other


def blacked_out(main):
    """Return the main sequence's images with the ``BLIND`` frames replaced by black ones."""
    images = [frame.image for frame in main]
    for index in range(BLIND.start, BLIND.stop):
        images[index] = np.zeros_like(images[index])
    return images


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return render_scenes(tmp_path_factory.mktemp("blind"))


def track(main, images, *overrides):
    """Track ``images`` with the main sequence's stamps and return the results, the position
    variance per frame (trace of the covariance's translation block, NaN without one) and the
    finished trajectory."""
    torch.set_num_threads(1)
    config, network, device = load_engine("small", list(overrides), None, "cpu")
    odometry = VisualOdometry(config, network, device)
    intrinsics = main.camera.intrinsics
    results = [
        odometry.track(image, frame.timestamp_ns, intrinsics)
        for image, frame in zip(images, main)
    ]
    variance = np.array([
        np.nan if result.pose_covariance is None else np.trace(result.pose_covariance[:3, :3])
        for result in results
    ])
    return results, variance, odometry.finish()


def test_black_frames_raise_covariance(scenes):
    main, _ = scenes
    images = blacked_out(main)

    results, variance, trajectory = track(main, images)

    before = np.nanmedian(variance[BEFORE])
    assert np.isfinite(before)
    assert np.nanmedian(variance[BLIND]) > BLIND_COVARIANCE_RATIO * before
    assert np.nanmedian(variance[AFTER]) < RECOVERED_COVARIANCE_RATIO * before
    assert all(result.state == STATE_TRACKING for result in results[BEFORE.start :])
    assert all(result.low_confidence for result in results[BLIND])
    assert not any(result.low_confidence for result in results[: BLIND.start])
    assert not any(result.low_confidence for result in results[AFTER])
    assert len(trajectory.timestamps_ns) == FRAMES
    assert np.isfinite(trajectory.poses).all()


def test_unchanged_sequence_stays_confident(scenes):
    main, _ = scenes

    results, _, _ = track(main, [frame.image for frame in main])

    ratios = [result.variance_ratio for result in results if result.variance_ratio is not None]
    assert len(ratios) > FRAMES // 2
    assert max(ratios) < CONFIDENT_MAX_RATIO
    assert not any(result.low_confidence for result in results)


def test_low_confidence_check_can_be_off(scenes):
    main, _ = scenes
    images = blacked_out(main)

    results, _, _ = track(main, images, "frontend.low_confidence_ratio=0")

    assert results[BLIND.start].variance_ratio > BLIND_COVARIANCE_RATIO
    assert not any(result.low_confidence for result in results)


def test_scene_cut_raises_covariance(scenes):
    main, other = scenes
    images = [frame.image for frame in main][: BLIND.start]
    images += [frame.image for frame in other][BLIND.start :]

    results, variance, trajectory = track(main, images)

    before = np.nanmedian(variance[BEFORE])
    assert np.isfinite(variance[BLIND.start])
    assert variance[BLIND.start] > CUT_COVARIANCE_RATIO * before
    assert results[BLIND.start].low_confidence
    assert results[BLIND.start].variance_ratio > CUT_COVARIANCE_RATIO
    assert len(trajectory.timestamps_ns) == FRAMES
    assert np.isfinite(trajectory.poses).all()


def print_ratios() -> None:
    """Print the figures that the constants above quote: each case's variance ratios, and the
    largest ``variance_ratio`` of the unchanged sequence."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        main, other = render_scenes(Path(folder))
        results, variance, _ = track(main, blacked_out(main))
        before = np.nanmedian(variance[BEFORE])
        ratios = [result.variance_ratio for result in results[BLIND]]
        flagged = [index for index, result in enumerate(results) if result.low_confidence]
        print(f"black frames: variance_ratio {min(ratios):.0f} to {max(ratios):.0f}; median "
              f"variance {np.nanmedian(variance[BLIND]) / before:.0f} times the one before, "
              f"{np.nanmedian(variance[AFTER]) / before:.1f} times after; flagged {flagged}")

        images = [frame.image for frame in main][: BLIND.start]
        images += [frame.image for frame in other][BLIND.start :]
        results, _, _ = track(main, images)
        print(f"scene cut: variance_ratio {results[BLIND.start].variance_ratio:.1f} at the cut")

        results, _, _ = track(main, [frame.image for frame in main])
        ratios = [result.variance_ratio for result in results if result.variance_ratio is not None]
        print(f"unchanged sequence: largest variance_ratio {max(ratios):.2f}")


if __name__ == "__main__":
    # Prints the figures quoted in docs/ros2.md: .venv/bin/python tests/test_blind_frames.py
    print_ratios()
