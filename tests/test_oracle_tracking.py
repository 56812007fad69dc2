"""End-to-end tracking with ground-truth correspondences: the frontend and the BA without training.

A synthetic clip is tracked with the correspondence oracle in place of the network. With exact
correspondences the finished trajectory must match the ground truth up to a similarity
transform, with one pose per input frame.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vo_node.config import load_engine_config
from vo_node.geometry import se3
from vo_node.odometry.frontend import VisualOdometry
from vo_node.odometry.oracle import CorrespondenceOracle
from vo_node.synthetic.clip import generate_clip

CLIP_SEED = 0
NUM_FRAMES = 50
HEIGHT, WIDTH = 120, 160
MAX_ATE_FRACTION = 0.01
"""Largest allowed RMS position error after Sim(3) alignment, as a fraction of the path length."""


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors run faster on one thread, and the suite shares two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip(single_thread):
    return generate_clip(CLIP_SEED, NUM_FRAMES, HEIGHT, WIDTH, motion="lateral")


@pytest.fixture(scope="module")
def tracked(clip):
    """Track the clip with the small preset and the oracle; return the odometry, results and
    finished trajectory."""
    oracle = CorrespondenceOracle(clip.depths, clip.poses_wc, clip.intrinsics)
    odometry = VisualOdometry(load_engine_config("small"), None, "cpu", oracle=oracle)
    results = [
        odometry.track(image, int(stamp), clip.intrinsics)
        for image, stamp in zip(clip.images, clip.timestamps_ns)
    ]
    return odometry, results, odometry.finish()


def umeyama_sim3(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Return scale, rotation and translation minimising ``|s R x + t - y|^2`` over point pairs."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / (source_centred**2).sum(axis=1).mean()
    translation = target_mean - scale * rotation @ source_mean
    return float(scale), rotation, translation


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(20, 3))
    rotation = se3.quaternion_to_matrix(torch.tensor([0.1, -0.3, 0.2, 0.9])).numpy()
    rotation = np.linalg.qr(rotation)[0] * np.sign(np.linalg.det(np.linalg.qr(rotation)[0]))
    moved = 2.5 * points @ rotation.T + np.array([1.0, -2.0, 0.5])
    scale, estimated, translation = umeyama_sim3(points, moved)
    assert scale == pytest.approx(2.5)
    np.testing.assert_allclose(estimated, rotation, atol=1e-9)
    np.testing.assert_allclose(translation, [1.0, -2.0, 0.5], atol=1e-9)


def test_oracle_trajectory_matches_ground_truth(clip, tracked):
    _, _, trajectory = tracked
    truth = clip.poses_wc[:, :3]
    scale, rotation, translation = umeyama_sim3(trajectory.positions, truth)
    aligned = scale * trajectory.positions @ rotation.T + translation
    ate = float(np.sqrt(((aligned - truth) ** 2).sum(axis=1).mean()))
    path_length = float(np.linalg.norm(np.diff(truth, axis=0), axis=1).sum())
    assert path_length > 0
    assert ate < MAX_ATE_FRACTION * path_length, f"ATE {ate:.4f} on a path of {path_length:.3f}"


def test_oracle_trajectory_has_every_input_frame(clip, tracked):
    _, _, trajectory = tracked
    assert len(trajectory) == NUM_FRAMES
    np.testing.assert_array_equal(trajectory.timestamps_ns, clip.timestamps_ns)
    assert np.all(np.isfinite(trajectory.poses))
    np.testing.assert_allclose(np.linalg.norm(trajectory.poses[:, 3:], axis=1), 1.0, atol=1e-6)


def test_oracle_tracking_removes_keyframes(tracked):
    odometry, results, _ = tracked
    removed = [d for d in odometry.graph.dropped.values() if d.relative_pose is not None]
    keyframes_left = odometry.graph.num_frames
    assert len(removed) > 0
    assert keyframes_left < NUM_FRAMES
    assert sum(r.is_keyframe for r in results) >= keyframes_left


def test_oracle_tracking_reports_states_and_times(tracked):
    odometry, results, _ = tracked
    states = [r.state for r in results]
    assert states[0] == "initializing"
    assert states[-1] == "tracking"
    assert "lost" not in states
    # Once tracking, a state never goes back to initialising.
    first_tracking = states.index("tracking")
    assert set(states[first_tracking:]) == {"tracking"}
    tracking = [r for r in results if r.state == "tracking" and r.is_keyframe]
    assert all(r.num_edges > 0 for r in tracking)
    assert all(r.times.ba > 0 for r in tracking)
    assert all(r.times.total >= r.times.ba for r in results)
    assert all(np.all(np.isfinite(r.pose)) for r in results)
    covariances = [r.pose_covariance for r in tracking if r.pose_covariance is not None]
    assert covariances, "the BA returned no pose covariance while tracking"
    assert all(c.shape == (6, 6) for c in covariances)
    assert odometry.points.shape[1] == 3
    assert len(odometry.points) > 0


def test_oracle_matches_own_frame_and_rejects_unknown_frames(clip):
    oracle = CorrespondenceOracle(clip.depths, clip.poses_wc, clip.intrinsics)
    intrinsics = torch.as_tensor(clip.intrinsics / 4, dtype=torch.float32)
    centres = torch.tensor([[10.0, 8.0], [20.0, 15.0], [30.0, 20.0]])
    frames = torch.zeros(3, dtype=torch.long)
    true, weight = oracle.correspondences(frames, frames, centres, intrinsics)
    torch.testing.assert_close(true, centres, atol=1e-4, rtol=0)
    assert torch.all(weight == 1)
    with pytest.raises(IndexError, match="ground-truth frames"):
        oracle.correspondences(frames, frames + NUM_FRAMES, centres, intrinsics)


def test_finish_before_initialisation_returns_every_frame(clip, single_thread):
    oracle = CorrespondenceOracle(clip.depths, clip.poses_wc, clip.intrinsics)
    odometry = VisualOdometry(load_engine_config("small"), None, "cpu", oracle=oracle)
    for image, stamp in zip(clip.images[:5], clip.timestamps_ns[:5]):
        odometry.track(image, int(stamp), clip.intrinsics)
    trajectory = odometry.finish()
    np.testing.assert_array_equal(trajectory.timestamps_ns, clip.timestamps_ns[:5])
    assert np.all(np.isfinite(trajectory.poses))


def test_track_rejects_non_increasing_timestamps(clip):
    oracle = CorrespondenceOracle(clip.depths, clip.poses_wc, clip.intrinsics)
    odometry = VisualOdometry(load_engine_config("small"), None, "cpu", oracle=oracle)
    odometry.track(clip.images[0], 1000, clip.intrinsics)
    with pytest.raises(ValueError, match="increase strictly"):
        odometry.track(clip.images[1], 1000, clip.intrinsics)
    odometry.reset()
    assert odometry.frame_count == 0
    odometry.track(clip.images[1], 500, clip.intrinsics)
