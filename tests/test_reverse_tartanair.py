"""scripts/reverse_tartanair.py: a TartanAir folder played backwards, read by the engine's reader."""

import numpy as np
import pytest

from tests.conftest import SCRIPTS_DIR, load_module_from_file
from tests.test_train_data import write_tartanair
from vo_node.io.sequence import open_sequence


@pytest.fixture(scope="module")
def reverse_tartanair():
    return load_module_from_file(SCRIPTS_DIR / "reverse_tartanair.py", "reverse_tartanair")


def write_camera(folder):
    (folder / "camera_info_left.yaml").write_text(
        "image_width: 48\nimage_height: 32\n"
        "camera_matrix: {rows: 3, cols: 3, data: [40.0, 0, 23.5, 0, 40.0, 15.5, 0, 0, 1]}\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients: {rows: 1, cols: 5, data: [0, 0, 0, 0, 0]}\n"
    )


def test_reversed_frames_and_poses(tmp_path, reverse_tartanair):
    source = write_tartanair(tmp_path / "P000", count=5, depth_count=2)
    output = tmp_path / "reversed"
    assert reverse_tartanair.reverse_sequence(source, output) == 5
    for index in range(5):
        image = (output / "image_left" / f"{index:06d}_left.png").resolve()
        assert image == (source / "image_left" / f"{4 - index:06d}_left.png").resolve()
    depths = sorted(path.name for path in (output / "depth_left").iterdir())
    assert depths == ["000003_left_depth.npy", "000004_left_depth.npy"]
    assert np.load(output / "depth_left" / "000004_left_depth.npy")[0, 0] == pytest.approx(2.0)
    poses = (output / "pose_left.txt").read_text().splitlines()
    assert poses == list(reversed((source / "pose_left.txt").read_text().splitlines()))


def test_reader_sees_reversed_ground_truth(tmp_path, reverse_tartanair):
    source = write_tartanair(tmp_path / "P000", count=6)
    write_camera(source)
    output = tmp_path / "reversed"
    reverse_tartanair.reverse_sequence(source, output)
    forward = open_sequence(source).ground_truth
    backward = open_sequence(output).ground_truth
    assert len(backward.poses) == 6
    # Same timestamps, poses in reverse order: the camera now moves backwards.
    np.testing.assert_array_equal(backward.timestamps_ns, forward.timestamps_ns)
    np.testing.assert_allclose(backward.poses, forward.poses[::-1])


def test_existing_output_is_rejected(tmp_path, reverse_tartanair):
    source = write_tartanair(tmp_path / "P000", count=3)
    output = tmp_path / "reversed"
    output.mkdir()
    (output / "keep.txt").write_text("earlier output")
    with pytest.raises(FileExistsError, match="give a new folder"):
        reverse_tartanair.reverse_sequence(source, output)
    assert (output / "keep.txt").read_text() == "earlier output"


def test_pose_count_mismatch_is_named(tmp_path, reverse_tartanair):
    source = write_tartanair(tmp_path / "P000", count=3, pose_lines=["0 0 0 0 0 0 1"] * 2)
    with pytest.raises(ValueError, match="2 poses for 3 images"):
        reverse_tartanair.reverse_sequence(source, tmp_path / "reversed")
    assert not (tmp_path / "reversed").exists()


def test_missing_sequence_is_named(tmp_path, reverse_tartanair):
    with pytest.raises(FileNotFoundError, match="is not a TartanAir sequence"):
        reverse_tartanair.reverse_sequence(tmp_path, tmp_path / "reversed")


def test_gap_in_frame_numbers_is_rejected(tmp_path, reverse_tartanair):
    source = write_tartanair(tmp_path / "P000", count=3)
    (source / "image_left" / "000001_left.png").rename(source / "image_left" / "000007_left.png")
    with pytest.raises(ValueError, match="frame number 7, outside 0..2"):
        reverse_tartanair.reverse_sequence(source, tmp_path / "reversed")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["P000"]


def test_depth_beyond_last_image_is_rejected(tmp_path, reverse_tartanair):
    source = write_tartanair(tmp_path / "P000", count=3)
    (source / "depth_left" / "000002_left_depth.npy").rename(
        source / "depth_left" / "000050_left_depth.npy"
    )
    with pytest.raises(ValueError, match="frame number 50"):
        reverse_tartanair.reverse_sequence(source, tmp_path / "reversed")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["P000"]


def test_bad_image_name_leaves_no_output(tmp_path, reverse_tartanair):
    source = write_tartanair(tmp_path / "P000", count=3, pose_lines=["0 0 0 0 0 0 1"] * 4)
    (source / "image_left" / "x3_left.png").write_bytes(b"")
    with pytest.raises(ValueError, match="is not named NNNNNN_left.png"):
        reverse_tartanair.reverse_sequence(source, tmp_path / "reversed")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["P000"]


def test_missing_source_is_named(tmp_path, reverse_tartanair):
    with pytest.raises(FileNotFoundError, match="source folder .* not found"):
        reverse_tartanair.reverse_sequence(tmp_path / "absent", tmp_path / "reversed")
