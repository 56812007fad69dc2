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


def test_sideways_step_over_plane_gives_f_t_over_z(tmp_path):
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


def test_closer_surface_gives_larger_flow_and_skips_invalid_depth(tmp_path):
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


@pytest.mark.parametrize("case, message", [
    ("no_poses", "pose_left.txt not found"),
    ("no_depth", "needs depth maps"),
    ("wrong_shape", "expected (480, 640)"),
    ("corrupt", "000000_left_depth.npy"),
])
def test_bad_folder_exits_with_one_line(tmp_path, capsys, case, message):
    folder = write_folder(tmp_path / "seq", plane(), [0.0, STEP])
    if case == "no_poses":
        (folder / "pose_left.txt").unlink()
    elif case == "no_depth":
        (folder / "depth_left" / "000000_left_depth.npy").unlink()
    elif case == "wrong_shape":
        np.save(folder / "depth_left" / "000000_left_depth.npy", np.ones((10, 10), np.float32))
    else:
        (folder / "depth_left" / "000000_left_depth.npy").write_bytes(b"\x93NUMPY garbage")
    assert main([str(folder)]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1


def test_csv_output_and_width_check(tmp_path, capsys):
    folder = write_folder(tmp_path / "seq", plane(), [0.0, STEP])
    table = tmp_path / "out" / "flow.csv"
    table.parent.mkdir()
    assert main([str(folder), "--width", "320", "--output", str(table)]) == 0
    rows = table.read_text().splitlines()
    assert rows[0].startswith("frame,depth_p10")
    assert len(rows) == 2
    assert main([str(folder), "--width", "0"]) == 2
    assert "--width must be a positive" in capsys.readouterr().err


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent")
def test_hospital_starts_close_and_fast():
    motions = {motion.frame: motion for motion in frame_motions(DATA, tracked_width=376)}
    assert motions[0].depth_median < 0.5
    assert motions[50].depth_median > 2.0
    assert motions[0].flow_median > 5 * motions[50].flow_median
