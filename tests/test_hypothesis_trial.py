"""The depth-hypothesis trial after initialisation (``frontend.hypothesis_frames``).

The initial window of a real sequence fits its depth-mirrored alternative almost as well as the
true scene, so the frontend tracks both for a while and keeps the one with the lower BA cost per
residual. Meanwhile each frame reports the leading hypothesis. These tests track synthetic clips with the correspondence oracle: the true hypothesis
then costs nearly nothing, and the mirrored one clearly more.
"""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import numpy as np
import pytest

import vo_node.odometry.frontend as frontend
from vo_node.config import ConfigError, apply_overrides, load_engine_config
from vo_node.odometry.frontend import VisualOdometry
from vo_node.odometry.initialization import initialize_window
from vo_node.odometry.oracle import CorrespondenceOracle
from vo_node.synthetic.clip import SyntheticClip, generate_clip
from tests.test_oracle_tracking import MAX_ATE_PERCENT, ate_percent, single_thread  # noqa: F401 (autouse fixture)

NUM_FRAMES = 40
HEIGHT, WIDTH = 240, 320


@pytest.fixture(scope="module")
def clip() -> SyntheticClip:
    return generate_clip(1, NUM_FRAMES, HEIGHT, WIDTH, motion="lateral", scene="room")


def track(clip: SyntheticClip, overrides: dict | None = None):
    """Track ``clip`` with the oracle; return the TrackResults and the finished trajectory."""
    config = apply_overrides(load_engine_config("small"), overrides or {})
    oracle = CorrespondenceOracle(clip.depths, clip.poses_wc, clip.intrinsics)
    odometry = VisualOdometry(config, None, "cpu", oracle=oracle)
    results = [
        odometry.track(image, int(stamp), clip.intrinsics)
        for image, stamp in zip(clip.images, clip.timestamps_ns)
    ]
    return results, odometry.finish()


def settled_from(results) -> int:
    """Index of the first frame that tracks with the trial over."""
    return next(
        index for index, result in enumerate(results)
        if result.state == "tracking" and not result.on_trial
    )


def swapped_initial_window(*args, **kwargs):
    """:func:`initialize_window` with the result and its alternative exchanged."""
    window = initialize_window(*args, **kwargs)
    return dataclasses.replace(
        window,
        poses_cw=window.alternative_poses_cw,
        patches=window.alternative_patches,
        cost=window.alternative_cost,
        alternative_poses_cw=window.poses_cw,
        alternative_patches=window.patches,
        alternative_cost=window.cost,
    )


def test_trial_frames_report_the_leader(clip):
    without, _ = track(clip, {"frontend.hypothesis_frames": 0})
    with_trial, trajectory = track(clip)
    first_tracking = [r.state for r in without].index("tracking")
    assert [r.state for r in with_trial].index("tracking") == first_tracking
    # The oracle's true hypothesis costs almost nothing, so the trial ends at its earliest: the
    # initialisation frame and EARLY_DECISION_FRAMES frames tracked in both hypotheses.
    assert settled_from(with_trial) == first_tracking + 1 + frontend.EARLY_DECISION_FRAMES
    trial = with_trial[first_tracking:settled_from(with_trial)]
    assert all(result.on_trial for result in trial)
    assert all(result.pose_covariance is not None for result in trial[1:])
    assert not any(result.on_trial for result in without)
    assert not any(result.restarted for result in with_trial)
    assert len(trajectory.poses) == NUM_FRAMES
    assert ate_percent(trajectory.poses, clip.poses_wc) < MAX_ATE_PERCENT


def test_trial_runs_full_length_on_close_costs(clip, monkeypatch):
    monkeypatch.setattr(frontend, "EARLY_DECISION_RATIO", float("inf"))
    without, _ = track(clip, {"frontend.hypothesis_frames": 0})
    results, _ = track(clip, {"frontend.hypothesis_frames": 6})
    assert settled_from(results) == settled_from(without) + 1 + 6


def test_trial_goes_on_while_costs_are_close(clip, monkeypatch):
    monkeypatch.setattr(frontend, "EARLY_DECISION_RATIO", float("inf"))
    without, _ = track(clip, {"frontend.hypothesis_frames": 0})
    trial = {"frontend.hypothesis_frames": 4, "frontend.hypothesis_extra_frames": 5}
    # No cost ratio reaches a margin of 1e12, so the trial runs its extra frames too.
    undecided, trajectory = track(clip, {**trial, "frontend.hypothesis_margin": 1e12})
    assert settled_from(undecided) == settled_from(without) + 1 + 4 + 5
    # The oracle's mirrored hypothesis costs far more than the true one, so the default margin
    # decides the trial after its first 4 frames.
    decided, _ = track(clip, trial)
    assert settled_from(decided) == settled_from(without) + 1 + 4
    assert len(trajectory.poses) == NUM_FRAMES
    assert ate_percent(trajectory.poses, clip.poses_wc) < MAX_ATE_PERCENT


def test_trial_shorter_than_early_decision(clip, monkeypatch):
    monkeypatch.setattr(frontend, "EARLY_DECISION_RATIO", float("inf"))
    without, _ = track(clip, {"frontend.hypothesis_frames": 0})
    results, _ = track(clip, {"frontend.hypothesis_frames": 1})
    assert frontend.EARLY_DECISION_FRAMES > 1
    assert settled_from(results) == settled_from(without) + 1 + 1


def test_trial_recovers_from_a_wrong_initial_choice(clip, monkeypatch, caplog):
    monkeypatch.setattr(frontend, "initialize_window", swapped_initial_window)
    # Without the trial, the mirrored scene is kept and the trajectory is far off.
    _, trapped = track(clip, {"frontend.hypothesis_frames": 0})
    assert ate_percent(trapped.poses, clip.poses_wc) > 10 * MAX_ATE_PERCENT

    with caplog.at_level(logging.INFO, logger="vo_node.odometry.frontend"):
        results, trajectory = track(clip)
    assert "kept the alternative depth hypothesis" in caplog.text
    assert ate_percent(trajectory.poses, clip.poses_wc) < MAX_ATE_PERCENT
    # The initialisation frame reports the mirrored scene; the first trial frame switches to
    # the true one and is the only frame marked as a restart.
    first_tracking = [r.state for r in results].index("tracking")
    restarts = [index for index, result in enumerate(results) if result.restarted]
    assert restarts == [first_tracking + 1]
    # Only the restart carries a scale ratio, for the consumer to keep the reported scale.
    ratios = [index for index, result in enumerate(results) if result.scale_ratio is not None]
    assert ratios == restarts
    assert 0 < results[restarts[0]].scale_ratio < float("inf")


def fake_graph(frame_ids, centres):
    """A graph stand-in with the attributes :func:`frontend.graph_scale_ratio` reads."""
    import torch

    from vo_node.geometry import se3

    poses_wc = torch.zeros(len(frame_ids), 7, dtype=torch.float64)
    poses_wc[:, :3] = torch.as_tensor(centres, dtype=torch.float64)
    poses_wc[:, 6] = 1.0
    return SimpleNamespace(
        frame_ids=np.asarray(frame_ids, dtype=np.int64), n=len(frame_ids),
        active_poses=se3.invert(poses_wc).float(),
    )


def test_graph_scale_ratio_uses_shared_keyframes():
    centres = np.array([[0, 0, 0], [1, 0, 0], [1, 2, 0], [1, 2, 2], [5, 5, 5]], dtype=float)
    reference = fake_graph([3, 4, 6, 7, 9], centres)
    # The other graph lacks keyframe 4 and has an extra keyframe 8. Its path through keyframes
    # 3, 6, 7 and 9 is the reference's, scaled by 4 and shifted.
    other_centres = 4.0 * centres[[0, 2, 3, 4]] + 1.0
    other = fake_graph([3, 6, 7, 8, 9], np.insert(other_centres, 3, [[9, 9, 9]], axis=0))
    assert frontend.graph_scale_ratio(reference, other) == pytest.approx(0.25, rel=1e-5)


def test_graph_scale_ratio_needs_shared_motion():
    reference = fake_graph([1, 2, 3], [[0, 0, 0], [1, 0, 0], [2, 0, 0]])
    assert frontend.graph_scale_ratio(reference, fake_graph([1, 2, 5], np.zeros((3, 3)))) is None
    assert frontend.graph_scale_ratio(reference, fake_graph([1, 2, 3], np.zeros((3, 3)))) is None


def test_finish_during_the_trial_keeps_a_hypothesis(clip, monkeypatch):
    monkeypatch.setattr(frontend, "EARLY_DECISION_RATIO", float("inf"))
    config = apply_overrides(load_engine_config("small"), {"frontend.hypothesis_frames": 1000})
    oracle = CorrespondenceOracle(clip.depths, clip.poses_wc, clip.intrinsics)
    odometry = VisualOdometry(config, None, "cpu", oracle=oracle)
    for image, stamp in zip(clip.images[:20], clip.timestamps_ns[:20]):
        odometry.track(image, int(stamp), clip.intrinsics)
    assert odometry.track(clip.images[20], int(clip.timestamps_ns[20]), clip.intrinsics).on_trial
    trajectory = odometry.finish()
    assert odometry.state == "tracking"
    np.testing.assert_array_equal(trajectory.timestamps_ns, clip.timestamps_ns[:21])
    assert ate_percent(trajectory.poses, clip.poses_wc[:21]) < MAX_ATE_PERCENT


@pytest.mark.parametrize("key, value", [
    ("hypothesis_frames", -1),
    ("hypothesis_extra_frames", -1),
    ("hypothesis_margin", 0.99),
])
def test_invalid_trial_settings_are_rejected(key, value):
    config = load_engine_config("small")
    setattr(config.frontend, key, value)
    with pytest.raises(ConfigError, match=f"frontend.{key} must be"):
        config.validate()


def test_initialisation_frame_reports_primary_cost(clip):
    without, _ = track(clip, {"frontend.hypothesis_frames": 0})
    with_trial, _ = track(clip)
    first_tracking = [r.state for r in without].index("tracking")
    # The alternative is optimised after the primary window; the frame still reports the
    # primary graph's BA cost and residual count, as without the trial.
    assert with_trial[first_tracking].ba_cost == without[first_tracking].ba_cost
    assert with_trial[first_tracking].ba_residuals == without[first_tracking].ba_residuals
