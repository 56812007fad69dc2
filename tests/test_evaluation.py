"""Trajectory metrics against evo's own API, Sim(3) invariance, noise bounds, plots and outputs."""

from __future__ import annotations

import copy
import json
import logging
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from evo.core import metrics as evo_metrics
from evo.core import sync
from evo.core.units import Unit
from scipy.spatial.transform import Rotation

from vo_node.evaluation import EvaluationError, evaluate_trajectory
from vo_node.evaluation.metrics import align_trajectories, to_evo
from vo_node.evaluation.plots import plot_trajectory, top_view_axes, trajectory_figure
from vo_node.io.trajectory import Trajectory, read_tum
from vo_node.run import RunOutputs, RunResult, format_summary, write_outputs

PERIOD_NS = 50_000_000
START_NS = 1_403_638_538_577_829_376
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def helix(count: int = 200) -> Trajectory:
    """A camera flying a 3D helix (radius 2 m, 1 m climb) while yawing and pitching."""
    angle = np.linspace(0.0, 3.0 * np.pi, count)
    positions = np.stack([2.0 * np.cos(angle), 2.0 * np.sin(angle), np.linspace(0.0, 1.0, count)], axis=1)
    rotations = Rotation.from_euler("zyx", np.stack([angle, 0.2 * np.sin(angle), 0.1 * angle], axis=1))
    poses = np.concatenate([positions, rotations.as_quat()], axis=1)
    return Trajectory(START_NS + np.arange(count) * PERIOD_NS, poses)


def transform_sim3(trajectory: Trajectory, scale: float, rotation: Rotation, translation: np.ndarray) -> Trajectory:
    """Apply ``x -> scale * R x + t`` to every pose (the world frame changes, the body does not)."""
    positions = scale * rotation.apply(trajectory.positions) + translation
    orientations = (rotation * Rotation.from_quat(trajectory.poses[:, 3:])).as_quat()
    return Trajectory(trajectory.timestamps_ns, np.concatenate([positions, orientations], axis=1))


def test_sim3_copy_has_zero_error_and_inverse_scale():
    ground_truth = helix()
    rotation = Rotation.from_rotvec([0.3, -1.1, 0.7])
    estimate = transform_sim3(ground_truth, 0.25, rotation, np.array([5.0, -3.0, 1.0]))
    metrics = evaluate_trajectory(estimate, ground_truth)
    assert metrics.ate_rmse < 1e-9
    assert metrics.ate_max < 1e-9
    assert metrics.rpe_translation_rmse < 1e-9
    assert metrics.rpe_rotation_rmse_deg < 1e-6
    assert metrics.rpe_distance_translation_rmse < 1e-9
    assert metrics.scale == pytest.approx(4.0, rel=1e-9)
    assert metrics.associated_poses == 200
    assert metrics.path_length == pytest.approx(ground_truth.path_length(), rel=1e-12)
    assert metrics.ate_percent < 1e-7


def test_position_noise_gives_bounded_ate():
    ground_truth = helix(400)
    sigma = 0.01
    generator = np.random.default_rng(7)
    noisy = ground_truth.poses.copy()
    noisy[:, :3] += generator.normal(0.0, sigma, size=(400, 3))
    metrics = evaluate_trajectory(Trajectory(ground_truth.timestamps_ns, noisy), ground_truth)
    expected = math.sqrt(3.0) * sigma  # RMSE of a 3D isotropic Gaussian
    assert 0.85 * expected < metrics.ate_rmse < 1.1 * expected
    assert metrics.ate_median < metrics.ate_rmse < metrics.ate_max
    assert metrics.scale == pytest.approx(1.0, abs=0.01)
    # Consecutive differences of independent noise: sqrt(2) times larger than the noise itself.
    assert metrics.rpe_translation_rmse == pytest.approx(math.sqrt(2.0) * expected, rel=0.15)
    assert metrics.ate_percent == pytest.approx(100.0 * metrics.ate_rmse / metrics.path_length)


def test_rotation_drift_shows_in_rpe_rotation():
    # With a fixed ground-truth orientation, a body rotation growing by step_deg per frame is
    # exactly step_deg of relative rotation error per frame.
    poses = helix(100).poses
    poses[:, 3:] = [0.0, 0.0, 0.0, 1.0]
    ground_truth = Trajectory(helix(100).timestamps_ns, poses)
    drifted = ground_truth.poses.copy()
    step_deg = 0.5
    extra = Rotation.from_euler("x", np.arange(100)[:, None] * step_deg, degrees=True)
    drifted[:, 3:] = (Rotation.from_quat(drifted[:, 3:]) * extra).as_quat()
    metrics = evaluate_trajectory(Trajectory(ground_truth.timestamps_ns, drifted), ground_truth)
    assert metrics.ate_rmse < 1e-9
    assert metrics.rpe_rotation_rmse_deg == pytest.approx(step_deg, rel=1e-6)


def test_matches_evo_api():
    ground_truth = helix(150)
    generator = np.random.default_rng(11)
    estimate_poses = transform_sim3(ground_truth, 0.5, Rotation.from_rotvec([0.0, 0.0, 1.0]), np.zeros(3)).poses
    estimate_poses[:, :3] += generator.normal(0.0, 0.02, size=(150, 3))
    # The estimate runs on a clock 4 ms behind and misses every 10th frame.
    keep = np.arange(150) % 10 != 0
    estimate = Trajectory(ground_truth.timestamps_ns[keep] - 4_000_000, estimate_poses[keep])
    metrics = evaluate_trajectory(estimate, ground_truth, max_time_difference_s=0.02, rpe_distance_m=2.0)

    reference, estimated = sync.associate_trajectories(to_evo(ground_truth), to_evo(estimate), max_diff=0.02)
    aligned = copy.deepcopy(estimated)
    _, _, scale = aligned.align(reference, correct_scale=True)
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((reference, aligned))
    stats = ape.get_all_statistics()
    rpe = evo_metrics.RPE(evo_metrics.PoseRelation.translation_part, 1, Unit.frames)
    rpe.process_data((reference, aligned))
    rpe_rotation = evo_metrics.RPE(evo_metrics.PoseRelation.rotation_angle_deg, 2.0, Unit.meters,
                                   pairs_from_reference=True)
    rpe_rotation.process_data((reference, aligned))

    assert metrics.associated_poses == int(keep.sum())
    assert metrics.ate_rmse == pytest.approx(stats["rmse"], rel=1e-12)
    assert metrics.ate_mean == pytest.approx(stats["mean"], rel=1e-12)
    assert metrics.ate_median == pytest.approx(stats["median"], rel=1e-12)
    assert metrics.ate_max == pytest.approx(stats["max"], rel=1e-12)
    assert metrics.scale == pytest.approx(scale, rel=1e-12)
    assert metrics.scale == pytest.approx(2.0, rel=0.02)
    assert metrics.rpe_translation_rmse == pytest.approx(rpe.get_statistic(evo_metrics.StatisticsType.rmse), rel=1e-12)
    assert metrics.rpe_distance_rotation_rmse_deg == pytest.approx(
        rpe_rotation.get_statistic(evo_metrics.StatisticsType.rmse), rel=1e-12
    )
    assert metrics.path_length == pytest.approx(reference.path_length, rel=1e-12)


def test_too_few_associated_poses_names_time_ranges():
    ground_truth = helix(50)
    shifted = Trajectory(ground_truth.timestamps_ns + 10 * 10**9, ground_truth.poses)
    with pytest.raises(EvaluationError) as error:
        evaluate_trajectory(shifted, ground_truth)
    message = str(error.value)
    assert "only 0 poses associate within 0.02 s" in message
    assert "1403638548.577829 s" in message  # start of the shifted estimate
    assert "1403638538.577829 s" in message  # start of the ground truth
    assert "same clock" in message


def test_two_pose_estimate_asks_for_more_frames():
    ground_truth = helix(50)
    with pytest.raises(EvaluationError) as error:
        evaluate_trajectory(Trajectory(ground_truth.timestamps_ns[:2], ground_truth.poses[:2]), ground_truth)
    message = str(error.value)
    assert "the estimate has only 2 poses" in message
    assert "--max-frames" in message
    assert "same clock" not in message


def test_two_associated_poses_are_too_few():
    ground_truth = helix(50)
    stamps = ground_truth.timestamps_ns[:4].copy()
    stamps[2:] += ground_truth.timestamps_ns[-1] - stamps[0] + 10**9  # after the ground truth
    estimate = Trajectory(stamps, ground_truth.poses[:4])
    with pytest.raises(EvaluationError, match="only 2 poses associate"):
        evaluate_trajectory(estimate, ground_truth)


def test_empty_trajectories_raise_evaluation_error():
    ground_truth = helix(20)
    empty = Trajectory(np.zeros(0, dtype=np.int64), np.zeros((0, 7)))
    with pytest.raises(EvaluationError, match="the estimate has only 0 poses"):
        evaluate_trajectory(empty, ground_truth)
    with pytest.raises(EvaluationError, match="only 0 poses associate.*ground truth empty"):
        evaluate_trajectory(ground_truth, empty)


def test_static_estimate_is_degenerate():
    ground_truth = helix(20)
    static = np.tile([0.0, 0, 0, 0, 0, 0, 1], (20, 1))
    with pytest.raises(EvaluationError, match="does not move enough"):
        evaluate_trajectory(Trajectory(ground_truth.timestamps_ns, static), ground_truth)


def test_standstill_reference_is_rms_about_centroid():
    ground_truth = helix(60)
    metrics = evaluate_trajectory(ground_truth, ground_truth)
    positions = ground_truth.positions
    expected = math.sqrt(np.mean(np.sum((positions - positions.mean(axis=0)) ** 2, axis=1)))
    assert metrics.standstill_ate_rmse == pytest.approx(expected, rel=1e-9)
    assert metrics.standstill_ate_percent == pytest.approx(100 * expected / metrics.path_length)
    # A perfect estimate sits far below the standstill reference. An estimate that only jitters
    # in place, unrelated to the motion, cannot get below it and lands close to it.
    assert metrics.ate_rmse < 1e-6 * metrics.standstill_ate_rmse
    jitter = np.random.default_rng(0).normal(scale=1e-3, size=positions.shape)
    frozen = evaluate_trajectory(
        Trajectory(ground_truth.timestamps_ns, np.concatenate([jitter, ground_truth.poses[:, 3:]], axis=1)),
        ground_truth,
    )
    assert 0.85 * expected < frozen.ate_rmse <= expected * (1 + 1e-9)


def test_short_path_leaves_distance_rpe_undefined():
    ground_truth = helix(40)
    metrics = evaluate_trajectory(ground_truth, ground_truth, rpe_distance_m=1000.0)
    assert math.isnan(metrics.rpe_distance_translation_rmse)
    assert metrics.to_dict()["rpe_distance_translation_rmse"] is None
    json.dumps(metrics.to_dict())


def test_short_path_summary_states_why(tmp_path, caplog):
    ground_truth = helix(40)
    result = RunResult(ground_truth, frames=40, seconds=1.0, peak_memory_bytes=0, memory_kind="cpu_rss")
    with caplog.at_level(logging.DEBUG):
        metrics = evaluate_trajectory(ground_truth, ground_truth, rpe_distance_m=1000.0)
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert "less strict tolerance" not in caplog.text
    outputs = RunOutputs(tmp_path / "trajectory.tum", metrics=metrics)
    lines = format_summary(result, outputs)
    assert "RPE per 1000 m: n/a (ground-truth path shorter than 1000 m)" in lines
    assert "nan" not in "\n".join(lines)


def test_alignment_maps_positions():
    ground_truth = helix(60)
    estimate = transform_sim3(ground_truth, 3.0, Rotation.from_rotvec([1.0, 0.5, 0.0]), np.array([1.0, 2.0, 3.0]))
    pair = align_trajectories(estimate, ground_truth)
    np.testing.assert_allclose(pair.apply(estimate.positions), ground_truth.positions, atol=1e-9)


def test_top_view_axes_pick_largest_extent():
    positions = np.zeros((10, 3))
    positions[:, 0] = np.linspace(0, 5, 10)
    positions[:, 2] = np.linspace(0, 3, 10)
    positions[:, 1] = np.linspace(0, 0.1, 10)
    assert top_view_axes(positions) == (0, 2)


def test_plot_with_and_without_ground_truth(tmp_path):
    ground_truth = helix(80)
    estimate = transform_sim3(ground_truth, 0.5, Rotation.identity(), np.zeros(3))
    metrics = evaluate_trajectory(estimate, ground_truth)
    with_truth = plot_trajectory(estimate, ground_truth, metrics, tmp_path / "out" / "trajectory.png")
    assert with_truth.read_bytes().startswith(PNG_SIGNATURE)
    alone = plot_trajectory(estimate, None, None, tmp_path / "alone.png")
    assert alone.read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["trajectory.png"]  # no temporary left


def test_low_confidence_frames_counted(tmp_path):
    estimate = helix(4)
    trace = [{"low_confidence": flag} for flag in (0, 1, 1, 0)]
    result = RunResult(estimate, frames=4, seconds=1.0, peak_memory_bytes=2**20,
                       memory_kind="cpu_rss", trace=trace)
    assert result.low_confidence_frames == 2
    outputs = write_outputs(result, tmp_path, helix(4), {})
    assert json.loads(outputs.metrics_path.read_text())["low_confidence_frames"] == 2
    lines = format_summary(result, outputs)
    assert any(line.startswith("low-confidence frames: 2 (") for line in lines)


def test_write_outputs_with_ground_truth(tmp_path):
    ground_truth = helix(60)
    estimate = transform_sim3(ground_truth, 0.5, Rotation.from_rotvec([0, 0, 0.4]), np.ones(3))
    result = RunResult(estimate, frames=60, seconds=2.0, peak_memory_bytes=3 * 2**20, memory_kind="cpu_rss")
    outputs = write_outputs(result, tmp_path, ground_truth, {"sequence": "helix"})
    written = read_tum(outputs.trajectory_path)
    np.testing.assert_array_equal(written.timestamps_ns, estimate.timestamps_ns)
    np.testing.assert_allclose(written.poses, estimate.poses, atol=1e-8)
    report = json.loads(outputs.metrics_path.read_text())
    assert report["frames"] == 60
    assert report["frames_per_second"] == pytest.approx(30.0)
    assert report["sequence"] == "helix"
    assert report["metrics"]["ate_rmse"] < 1e-6
    assert report["metrics"]["scale"] == pytest.approx(2.0)
    assert outputs.plot_path.read_bytes().startswith(PNG_SIGNATURE)
    assert report["length_unit"] == "m"
    lines = format_summary(result, outputs)
    assert "speed: 30.00 frames/s over 2.0 s" in lines
    assert any(line.startswith("ATE RMSE: ") for line in lines)
    standstill = outputs.metrics.standstill_ate_rmse
    assert f"standstill reference: ATE RMSE {standstill:.4f} m" in "\n".join(lines)
    assert f"trajectory: {tmp_path / 'trajectory.tum'}" in lines
    assert f"metrics: {tmp_path / 'metrics.json'}" in lines
    assert f"plot: {tmp_path / 'trajectory.png'}" in lines


def test_write_outputs_without_ground_truth(tmp_path):
    estimate = helix(10)
    result = RunResult(estimate, frames=10, seconds=1.0, peak_memory_bytes=0, memory_kind="cpu_rss", interrupted=True)
    outputs = write_outputs(result, tmp_path, None)
    assert outputs.metrics_path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trajectory.partial.tum"]
    lines = format_summary(result, outputs)
    assert "interrupted" in lines[0]
    assert "ATE: not computed (no ground truth)" in lines
    assert [line for line in lines if line.startswith(("metrics:", "plot:"))] == []


def test_reused_output_folder_drops_old_metrics(tmp_path, caplog):
    ground_truth = helix(30)
    result = RunResult(ground_truth, frames=30, seconds=1.0, peak_memory_bytes=0, memory_kind="cpu_rss")
    (tmp_path / "notes.txt").write_text("kept")
    write_outputs(result, tmp_path, ground_truth)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json", "notes.txt", "trajectory.png", "trajectory.tum"
    ]
    with caplog.at_level(logging.INFO, logger="vo_node.run"):
        outputs = write_outputs(result, tmp_path, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "trajectory.tum"]
    assert outputs.removed == [tmp_path / "metrics.json", tmp_path / "trajectory.png"]
    assert f"removed {tmp_path / 'metrics.json'} of an earlier run" in caplog.text
    assert f"removed {tmp_path / 'trajectory.png'} of an earlier run" in caplog.text


def test_scene_units_label_plot_and_metrics(tmp_path):
    ground_truth = helix(40)
    estimate = transform_sim3(ground_truth, 0.5, Rotation.identity(), np.zeros(3))
    result = RunResult(estimate, frames=40, seconds=1.0, peak_memory_bytes=0, memory_kind="cpu_rss")
    outputs = write_outputs(result, tmp_path, ground_truth, length_unit="scene units")
    assert json.loads(outputs.metrics_path.read_text())["length_unit"] == "scene units"
    assert all(" m " not in line and not line.endswith(" m") for line in format_summary(result, outputs))

    figure = trajectory_figure(estimate, ground_truth, outputs.metrics, length_unit="scene units")
    top, over_time = figure.axes
    assert top.get_xlabel().endswith("[scene units]")
    assert top.get_ylabel().endswith("[scene units]")
    assert over_time.get_ylabel() == "ATE [scene units]"
    assert "scene units" in over_time.get_title()
    assert " m " not in over_time.get_title()
    plt.close(figure)


def test_partial_plot_crops_ground_truth(tmp_path):
    ground_truth = helix(80)
    first = Trajectory(ground_truth.timestamps_ns[:30], ground_truth.poses[:30])
    estimate = transform_sim3(first, 0.5, Rotation.identity(), np.zeros(3))
    metrics = evaluate_trajectory(estimate, ground_truth)
    figure = trajectory_figure(estimate, ground_truth, metrics, partial=True)
    top = figure.axes[0]
    drawn = next(line for line in top.get_lines() if line.get_label() == "ground truth")
    assert len(drawn.get_xdata()) == 30
    assert "partial" in figure._suptitle.get_text()
    assert "partial" in top.get_title()
    plt.close(figure)

    complete = trajectory_figure(estimate, ground_truth, metrics)
    drawn = next(line for line in complete.axes[0].get_lines() if line.get_label() == "ground truth")
    assert len(drawn.get_xdata()) == 80
    assert complete._suptitle is None
    plt.close(complete)
