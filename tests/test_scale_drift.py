"""Scale drift per window (vo_node.evaluation.scale) on trajectories with a known scale change."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vo_node.evaluation.scale import main, scale_profile
from vo_node.io.trajectory import Trajectory, write_tum

POSES = 41
WINDOW = 11
NS_PER_S = 1_000_000_000


def curve(steps: np.ndarray) -> np.ndarray:
    """Positions ``(len(steps) + 1, 3)`` along a planar arc, one step length per pose pair."""
    headings = np.linspace(0.0, 1.2, len(steps))
    moves = np.stack([np.cos(headings), np.sin(headings), 0.3 * np.ones_like(headings)], axis=1)
    moves *= (steps / np.linalg.norm(moves, axis=1))[:, None]
    return np.vstack([np.zeros(3), np.cumsum(moves, axis=0)])


def trajectory(positions: np.ndarray) -> Trajectory:
    stamps = (np.arange(len(positions)) * 0.1 * NS_PER_S).astype(np.int64)
    quaternions = np.tile([0.0, 0.0, 0.0, 1.0], (len(positions), 1))
    return Trajectory(stamps, np.hstack([positions, quaternions]))


def test_uniform_scale_gives_unit_ratios():
    truth = curve(np.full(POSES - 1, 0.2))
    estimate = 3.7 * truth + np.array([1.0, -2.0, 0.5])
    profile = scale_profile(trajectory(estimate), trajectory(truth), WINDOW)
    assert len(profile.ratio) == (POSES - 1) // (WINDOW - 1)
    np.testing.assert_allclose(profile.ratio, 1.0, atol=1e-6)
    assert profile.drift_factor == pytest.approx(1.0, abs=1e-6)
    assert profile.alignment_scale == pytest.approx(1 / 3.7, rel=1e-6)
    # Consecutive windows share their boundary pose, so the lengths add up to the path.
    assert profile.true_length.sum() == pytest.approx(0.2 * (POSES - 1), rel=1e-9)


def test_scale_jump_between_halves_gives_its_factor():
    truth_steps = np.full(POSES - 1, 0.2)
    estimate_steps = truth_steps.copy()
    estimate_steps[(POSES - 1) // 2:] *= 3.0
    profile = scale_profile(
        trajectory(curve(estimate_steps)), trajectory(curve(truth_steps)), WINDOW
    )
    assert profile.drift_factor == pytest.approx(3.0, rel=0.02)
    first, last = profile.ratio[0], profile.ratio[-1]
    assert last / first == pytest.approx(3.0, rel=0.02)
    assert first < 1.0 < last


def test_window_where_truth_stands_still_is_left_out():
    steps = np.full(POSES - 1, 0.2)
    steps[: WINDOW - 1] = 1e-6
    positions = curve(steps)
    jitter = np.random.default_rng(0).normal(0.0, 0.01, positions.shape)
    profile = scale_profile(trajectory(positions + jitter), trajectory(positions), WINDOW)
    assert math.isnan(profile.ratio[0])
    assert np.isfinite(profile.ratio[1:]).all()
    assert np.isfinite(profile.drift_factor)


def test_window_below_two_poses_is_rejected():
    truth = trajectory(curve(np.full(POSES - 1, 0.2)))
    with pytest.raises(ValueError, match="window must be at least 2 poses, got 1"):
        scale_profile(truth, truth, 1)


def test_command_writes_table_and_plot(tmp_path, capsys):
    truth_steps = np.full(POSES - 1, 0.2)
    estimate_steps = truth_steps * np.linspace(1.0, 2.0, POSES - 1)
    estimate = write_tum(tmp_path / "estimate.tum", trajectory(curve(estimate_steps)))
    truth = write_tum(tmp_path / "truth.tum", trajectory(curve(truth_steps)))
    output = tmp_path / "scale"
    assert main([str(estimate), str(truth), "--window", str(WINDOW), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "drift factor" in printed
    rows = np.loadtxt(output / "scale.csv", delimiter=",", skiprows=1)
    assert rows.shape == ((POSES - 1) // (WINDOW - 1), 7)
    np.testing.assert_array_equal(rows[:, 0], np.arange(0, POSES - 1, WINDOW - 1))
    assert np.all(np.diff(rows[:, 6]) > 0)  # the estimate's scale grows along the path
    assert (output / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_names_a_missing_ground_truth(tmp_path, capsys):
    estimate = write_tum(tmp_path / "estimate.tum", trajectory(curve(np.full(POSES - 1, 0.2))))
    missing = tmp_path / "nowhere"
    assert main([str(estimate), str(missing)]) == 2
    assert f"ground truth {missing} not found" in capsys.readouterr().err


def test_short_last_window_joins_the_one_before():
    truth = curve(np.full(POSES + 2, 0.2))  # 43 poses: 4 windows of 10 steps, then 2 steps
    profile = scale_profile(trajectory(truth), trajectory(truth), WINDOW)
    assert list(profile.last) == [10, 20, 30, POSES + 2]


def test_negative_min_length_is_rejected():
    truth = trajectory(curve(np.full(POSES - 1, 0.2)))
    with pytest.raises(ValueError, match="min_length must be 0 or more, got -1"):
        scale_profile(truth, truth, WINDOW, min_length=-1.0)


@pytest.mark.parametrize(
    "case, message",
    [
        ("window", "windows are long enough to compare"),
        ("nanoseconds", "is not in seconds"),
        ("corrupt_truth", "is not a TUM file"),
        ("output_is_file", "cannot write to --output"),
    ],
)
def test_command_errors_name_the_problem(tmp_path, capsys, case, message):
    positions = curve(np.full(POSES - 1, 0.2))
    estimate = write_tum(tmp_path / "estimate.tum", trajectory(positions))
    truth = write_tum(tmp_path / "truth.tum", trajectory(positions))
    arguments = [str(estimate), str(truth)]
    if case == "window":
        arguments += ["--window", str(2 * POSES)]
    elif case == "nanoseconds":
        (tmp_path / "estimate.tum").write_text("1403638538000000000 0 0 0 0 0 0 1\n")
    elif case == "corrupt_truth":
        (tmp_path / "truth.tum").write_text("not a pose\n")
    elif case == "output_is_file":
        (tmp_path / "taken").write_text("")
        arguments += ["--output", str(tmp_path / "taken")]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error
