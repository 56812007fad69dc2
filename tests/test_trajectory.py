"""Trajectory container and TUM files: round trip, exact stamps, atomic writes, bad input."""

import numpy as np
import pytest

from vo_node.io.trajectory import Trajectory, TrajectoryError, read_tum, write_tum


def _trajectory(count=5):
    stamps = 1_403_638_538_577_800_000 + np.arange(count, dtype=np.int64) * 50_000_000
    poses = np.zeros((count, 7))
    poses[:, 0] = np.arange(count) * 0.5
    poses[:, 6] = 1.0
    return Trajectory(stamps, poses)


def test_tum_round_trip_keeps_nanoseconds(tmp_path):
    trajectory = _trajectory()
    path = write_tum(tmp_path / "out.txt", trajectory)
    loaded = read_tum(path)
    np.testing.assert_array_equal(loaded.timestamps_ns, trajectory.timestamps_ns)
    np.testing.assert_allclose(loaded.poses, trajectory.poses, atol=1e-9)


def test_path_length():
    assert _trajectory(5).path_length() == pytest.approx(2.0)


def test_non_monotonic_stamps_rejected():
    with pytest.raises(TrajectoryError, match="increase strictly"):
        Trajectory(np.array([0, 2, 1]), np.tile([0, 0, 0, 0, 0, 0, 1.0], (3, 1)))


def test_malformed_tum_line_names_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("# header\n1.0 0 0 0 0 0 0 1\n2.0 0 0 0\n")
    with pytest.raises(TrajectoryError, match="bad.txt:3"):
        read_tum(path)


def test_failed_write_keeps_old_file(tmp_path):
    path = write_tum(tmp_path / "out.txt", _trajectory(3))
    before = path.read_text()
    broken = _trajectory(3)
    # A value that cannot be formatted makes the write fail after the first line.
    broken.poses = broken.poses.astype(object)
    broken.poses[2, 0] = "not a number"
    with pytest.raises(ValueError):
        write_tum(path, broken)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_written_file_is_world_readable(tmp_path):
    path = write_tum(tmp_path / "out.txt", _trajectory(2))
    assert path.stat().st_mode & 0o044 == 0o044


def test_tum_writes_no_negative_zero(tmp_path):
    poses = np.array([[-1e-12, -0.0, 1.5, 0.0, 0.0, -1e-13, 1.0]])
    path = write_tum(tmp_path / "trajectory.tum", Trajectory(np.array([1]), poses))
    line = path.read_text().strip()
    assert "-0.000000000" not in line
    assert line == "0.000000001 0.000000000 0.000000000 1.500000000 0.000000000 0.000000000 0.000000000 1.000000000"
