"""Ground-truth depth and flow of TartanAir depth frames (vo_node.evaluation.depth_flow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vo_node.evaluation.depth_flow import frame_motions, main
from vo_node.io.readers.tartanair import DEFAULT_CAMERA

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tartanair_hospital"
PLANE_DEPTH = 2.0
STEP = 0.1


def write_folder(root: Path, depth: np.ndarray, east_steps: list[float]) -> Path:
    """Write a TartanAir-layout folder: one depth map for frame 0 and NED body poses that move
    east (optical +x) by the given cumulative offsets."""
    (root / "depth_left").mkdir(parents=True)
    np.save(root / "depth_left" / "000000_left_depth.npy", depth.astype(np.float32))
    lines = [f"0 {east} 0 0 0 0 1" for east in east_steps]
    (root / "pose_left.txt").write_text("\n".join(lines) + "\n")
    return root


def plane() -> np.ndarray:
    return np.full((DEFAULT_CAMERA.height, DEFAULT_CAMERA.width), PLANE_DEPTH)


def test_sideways_step_flow_is_f_t_over_z(tmp_path):
    folder = write_folder(tmp_path / "seq", plane(), [0.0, STEP])
    [motion] = frame_motions(folder, tracked_width=DEFAULT_CAMERA.width // 2)
    expected = DEFAULT_CAMERA.fx * STEP / PLANE_DEPTH  # 16 px
    assert motion.frame == 0
    assert motion.step == pytest.approx(STEP)
    assert motion.depth_median == pytest.approx(PLANE_DEPTH)
    assert motion.flow_median == pytest.approx(expected, rel=1e-6)
    assert motion.flow_mean == pytest.approx(expected, rel=1e-6)
    assert motion.flow_p90 == pytest.approx(expected, rel=1e-6)
    assert motion.flow_median_tracked == pytest.approx(expected / 2, rel=1e-6)
    assert motion.pixels == DEFAULT_CAMERA.width * DEFAULT_CAMERA.height


def test_closer_surface_larger_flow(tmp_path):
    depth = plane()
    depth[:, : DEFAULT_CAMERA.width // 2] = PLANE_DEPTH / 4  # left half four times closer
    depth[0, :] = np.nan
    folder = write_folder(tmp_path / "seq", depth, [0.0, STEP])
    [motion] = frame_motions(folder)
    assert motion.pixels == DEFAULT_CAMERA.width * (DEFAULT_CAMERA.height - 1)
    assert motion.depth_p10 == pytest.approx(PLANE_DEPTH / 4)
    assert motion.flow_p90 == pytest.approx(4 * DEFAULT_CAMERA.fx * STEP / PLANE_DEPTH, rel=1e-6)


def test_last_frame_without_successor_is_left_out(tmp_path):
    folder = write_folder(tmp_path / "seq", plane(), [0.0])
    assert frame_motions(folder) == []


def break_folder(folder: Path, case: str) -> None:
    """Damage the folder written by :func:`write_folder` in the way ``case`` names."""
    depth_file = folder / "depth_left" / "000000_left_depth.npy"
    poses = folder / "pose_left.txt"
    if case == "no_poses":
        poses.unlink()
    elif case == "no_depth":
        depth_file.unlink()
    elif case == "wrong_shape":
        np.save(depth_file, np.ones((10, 10), np.float32))
    elif case == "corrupt":
        depth_file.write_bytes(b"\x93NUMPY garbage")
    elif case == "empty_npy":
        depth_file.write_bytes(b"")
    elif case == "no_valid_depth":
        np.save(depth_file, np.zeros((DEFAULT_CAMERA.height, DEFAULT_CAMERA.width), np.float32))
    elif case == "misnamed":
        depth_file.rename(depth_file.with_name("abc_left_depth.npy"))
    elif case == "empty_poses":
        poses.write_text("")
    elif case == "short_pose":
        poses.write_text("0 0 0 0 0 0 1\n0 0.1 0 0 0 1\n")
    elif case == "text_pose":
        poses.write_text("0 0 0 0 0 0 1\n0 x 0 0 0 0 1\n")
    elif case == "nan_pose":
        poses.write_text("0 0 0 0 0 0 1\n0 nan 0 0 0 0 1\n")
    elif case == "zero_quaternion":
        poses.write_text("0 0 0 0 0 0 1\n0 0.1 0 0 0 0 0\n")


@pytest.mark.parametrize("case, message", [
    ("no_poses", "pose_left.txt not found"),
    ("no_depth", "needs depth maps"),
    ("wrong_shape", "expected (480, 640)"),
    ("corrupt", "cannot read the depth map"),
    ("empty_npy", "cannot read the depth map"),
    ("no_valid_depth", "no pixel with a positive, finite depth"),
    ("misnamed", "does not start with a frame number"),
    ("empty_poses", "is empty; expected lines of 7"),
    ("short_pose", "line 2 has 6 values; expected 7"),
    ("text_pose", "line 2 contains a value that is not a number"),
    ("nan_pose", "line 2 contains a non-finite value"),
    ("zero_quaternion", "pose 2 has a zero quaternion"),
])
def test_bad_folder_exits_with_one_line(tmp_path, capsys, case, message):
    folder = write_folder(tmp_path / "seq", plane(), [0.0, STEP])
    break_folder(folder, case)
    assert main([str(folder)]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1


@pytest.mark.parametrize("arguments, message", [
    (["--width", "0"], "--width must be a positive"),
    (["--width", "100000"], "--width 100000 is outside 1..640"),
    (["--output", "OUT_DIR"], "is a folder; give a file path such as"),
    (["--output", "OUT_FILE/table.csv"], "OUT_FILE is not a folder; choose a file path"),
])
def test_bad_option_exits_with_one_line(tmp_path, capsys, arguments, message):
    folder = write_folder(tmp_path / "seq", plane(), [0.0, STEP])
    (tmp_path / "OUT_DIR").mkdir()
    (tmp_path / "OUT_FILE").write_text("")
    arguments = [value.replace("OUT_", str(tmp_path / "OUT_")) for value in arguments]
    assert main([str(folder), *arguments]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""  # rejected before any table is printed or computed


def test_csv_output_in_new_folder(tmp_path):
    folder = write_folder(tmp_path / "seq", plane(), [0.0, STEP])
    table = tmp_path / "new" / "flow.csv"
    assert main([str(folder), "--width", "320", "--output", str(table)]) == 0
    rows = table.read_text().splitlines()
    assert rows[0].startswith("frame,depth_p10")
    assert len(rows) == 2


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent")
def test_hospital_starts_close_and_fast():
    motions = {motion.frame: motion for motion in frame_motions(DATA, tracked_width=376)}
    assert motions[0].depth_median < 0.5
    assert motions[50].depth_median > 2.0
    assert motions[0].flow_median > 5 * motions[50].flow_median
