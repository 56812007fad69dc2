"""The demo through the ROS 2 node, bags written from sequences, and ground truth of a body frame.

The demo runs as a subprocess on a tiny rendered sequence (20 frames of 96x64) with a randomly
initialised network of tiny sizes (seed 0) and the engine configuration of ``quick_init_config``.
So it checks the plumbing, not accuracy: every frame reaches the node, the engine initialises on
the third frame and every later frame is tracked, and the summary and output files are complete.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_ros_support import (
    DATA,
    NETWORK_ISOLATED,
    NOT_ISOLATED_REASON,
    QUICK_INIT_FRAMES,
    REPO,
    write_engine_config,
    write_image_bag,
)

from vo_node import demo
from vo_node.demo_data import CAMERA_FILE, TIMES_FILE, render_demo_sequence
from vo_node.io.readers.poses import matrices_to_poses, poses_to_matrices
from vo_node.io.sequence import open_sequence
from vo_node.io.trajectory import read_tum
from vo_node.ros.bagwrite import (
    SOURCE_FILE,
    BagWriteError,
    cached_sequence_bag,
    write_sequence_bag,
)
from vo_node.ros.replay import (
    EUROC_CAM0_T_BODY_CAM,
    ReplayError,
    extrinsic_matrix,
    read_groundtruth,
)

DEMO_FRAMES = 20
HEIGHT, WIDTH = 64, 96
COMMAND_TIMEOUT_S = 300
EUROC = DATA / "euroc_MH_05_difficult"
EUROC_BAG = DATA / "ros2_bags" / "euroc_MH_05_cam0_derived"


@pytest.fixture(scope="module")
def tiny_sequence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo") / "sequence"
    return render_demo_sequence(folder, num_frames=DEMO_FRAMES, height=HEIGHT, width=WIDTH)


@pytest.fixture(scope="module")
def grey_sequence(tiny_sequence: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sequence as grey PNGs with its camera and times, without ground truth."""
    folder = tmp_path_factory.mktemp("grey") / "sequence"
    folder.mkdir()
    for image in sorted(tiny_sequence.glob("*.png"))[:5]:
        grey = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(folder / image.name), grey)
    shutil.copy(tiny_sequence / CAMERA_FILE, folder / CAMERA_FILE)
    times = (tiny_sequence / TIMES_FILE).read_text().splitlines()[:5]
    (folder / TIMES_FILE).write_text("\n".join(times) + "\n")
    return folder


# --------------------------------------------------------------------------------------------
# Writing bags (no DDS)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("source", ["tiny_sequence", "grey_sequence"])
def test_written_bag_reads_back(storage, source, request, tmp_path):
    sequence = open_sequence(request.getfixturevalue(source))
    bag = write_sequence_bag(sequence, tmp_path / "bag", storage=storage)

    reread = open_sequence(bag)
    assert reread.layout == "ros2_bag"
    assert reread.image_topic == "/camera/image_raw"
    np.testing.assert_array_equal(reread.timestamps_ns, sequence.timestamps_ns)
    assert reread.camera == sequence.camera
    assert reread.camera.distortion_model == "none"
    count = 0
    for original, copy in zip(sequence, reread):
        assert copy.image.shape == original.image.shape
        np.testing.assert_array_equal(copy.image, original.image)
        count += 1
    assert count == len(sequence)
    # No staging folders are left next to the bag.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


def test_written_bag_ground_truth_is_camera_pose(tiny_sequence, tmp_path):
    sequence = open_sequence(tiny_sequence)
    bag = write_sequence_bag(sequence, tmp_path / "bag", storage="mcap")

    truth = read_groundtruth(bag, "/groundtruth/pose")
    np.testing.assert_array_equal(truth.timestamps_ns, sequence.ground_truth.timestamps_ns)
    np.testing.assert_allclose(truth.poses, sequence.ground_truth.poses, atol=1e-12)


def test_write_bag_without_ground_truth(grey_sequence, tmp_path):
    from vo_node.ros.replay import bag_topics

    bag = write_sequence_bag(open_sequence(grey_sequence), tmp_path / "bag")
    assert bag_topics(bag) == {
        "/camera/image_raw": "sensor_msgs/msg/Image",
        "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
    }


def test_write_bag_rejects_bad_arguments(grey_sequence, tmp_path):
    sequence = open_sequence(grey_sequence)
    with pytest.raises(BagWriteError, match="storage must be one of sqlite3, mcap"):
        write_sequence_bag(sequence, tmp_path / "bag", storage="zip")
    with pytest.raises(BagWriteError, match="topic names must differ"):
        write_sequence_bag(sequence, tmp_path / "bag", camera_info_topic="/camera/image_raw")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        write_sequence_bag(sequence, tmp_path / "taken")
    with pytest.raises(FileExistsError, match="not a ROS 2 bag folder"):
        write_sequence_bag(sequence, tmp_path / "taken", overwrite=True)


def test_cached_bag_reused_until_sequence_changes(tiny_sequence, tmp_path):
    bag = tmp_path / "bag"
    cached_sequence_bag(open_sequence(tiny_sequence), bag)
    storage_file = bag / "bag.db3"
    first = storage_file.stat().st_ino

    cached_sequence_bag(open_sequence(tiny_sequence), bag)
    assert storage_file.stat().st_ino == first

    shorter = open_sequence(tiny_sequence, max_frames=5)
    cached_sequence_bag(shorter, bag)
    assert storage_file.stat().st_ino != first
    assert len(open_sequence(bag)) == 5
    assert json.loads((bag / SOURCE_FILE).read_text())["frames"] == 5


def test_cached_bag_rewritten_after_frames_overwritten(grey_sequence, tmp_path):
    # Overwriting files in place leaves the folder's modification time as it was.
    source = tmp_path / "sequence"
    shutil.copytree(grey_sequence, source)
    bag = tmp_path / "bag"
    cached_sequence_bag(open_sequence(source), bag)
    first = (bag / "bag.db3").stat().st_ino
    folder_times = source.stat()

    for image in sorted(source.glob("*.png")):
        cv2.imwrite(str(image), 255 - cv2.imread(str(image), cv2.IMREAD_GRAYSCALE))
    os.utime(source, ns=(folder_times.st_atime_ns, folder_times.st_mtime_ns))
    cached_sequence_bag(open_sequence(source), bag)

    assert (bag / "bag.db3").stat().st_ino != first
    replayed = next(iter(open_sequence(bag))).image
    expected = 255 - cv2.imread(str(grey_sequence / "000000.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(replayed, expected)


def test_cached_bag_rewritten_after_frame_added_or_removed(grey_sequence, tmp_path):
    source = tmp_path / "sequence"
    shutil.copytree(grey_sequence, source)
    bag = tmp_path / "bag"
    cached_sequence_bag(open_sequence(source), bag)
    fingerprint = json.loads((bag / SOURCE_FILE).read_text())
    first = (bag / "bag.db3").stat().st_ino

    (source / "notes.txt").write_text("an unrelated file\n")
    cached_sequence_bag(open_sequence(source), bag)
    second = (bag / "bag.db3").stat().st_ino
    (source / "notes.txt").unlink()
    cached_sequence_bag(open_sequence(source), bag)

    assert fingerprint["source_files"] == len(list(source.iterdir()))
    assert second != first
    assert (bag / "bag.db3").stat().st_ino != second
    assert json.loads((bag / SOURCE_FILE).read_text())["source_files_sha1"] == (
        fingerprint["source_files_sha1"]
    )


def test_demo_folder_of_one_bag_replays_it(tiny_sequence, tmp_path):
    from vo_node.demo import BAG_FOLDER, prepare_bag

    recorded = write_sequence_bag(open_sequence(tiny_sequence), tmp_path / "recordings" / "run1")
    output = tmp_path / "out"
    bag = prepare_bag(tmp_path / "recordings", output, max_frames=None)
    assert bag.path == recorded
    assert bag.image_topic == "/camera/image_raw"
    assert bag.groundtruth_topic == "/groundtruth/pose"
    assert bag.frames == DEMO_FRAMES
    assert not (output / BAG_FOLDER).exists()


def test_demo_folder_of_several_bags_lists_them(tiny_sequence, tmp_path):
    from vo_node.demo import prepare_bag
    from vo_node.io.sequence import SequenceError

    sequence = open_sequence(tiny_sequence)
    first = write_sequence_bag(sequence, tmp_path / "recordings" / "run1")
    second = write_sequence_bag(sequence, tmp_path / "recordings" / "run2")
    with pytest.raises(SequenceError) as error:
        prepare_bag(tmp_path / "recordings", tmp_path / "out", max_frames=None)
    assert "contains 2 sequences" in str(error.value)
    assert str(first) in str(error.value)
    assert str(second) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_written_folders_follow_umask(tiny_sequence, tmp_path):
    from vo_node.demo_data import render_demo_sequence

    umask = os.umask(0)
    os.umask(umask)
    expected = 0o777 & ~umask
    rendered = render_demo_sequence(tmp_path / "sequence", num_frames=3, height=32, width=48)
    bag = write_sequence_bag(open_sequence(rendered), tmp_path / "bags" / "demo")
    for folder in (rendered, bag, bag.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == expected, folder


# --------------------------------------------------------------------------------------------
# Ground truth of a body frame


def test_groundtruth_extrinsic_maps_body_to_camera(tmp_path):
    stamps = [1_000_000_000 + 50_000_000 * index for index in range(4)]
    frames = [np.full((8, 8), 100 + index, dtype=np.uint8) for index in range(4)]
    angles = np.linspace(0.0, 0.6, len(stamps))
    body_poses = {
        stamp: [0.3 * i, 0.1 * i, 0.0, 0.0, 0.0, np.sin(a / 2), np.cos(a / 2)]
        for i, (stamp, a) in enumerate(zip(stamps, angles))
    }
    bag = write_image_bag(tmp_path / "bag", "sqlite3", stamps, frames, poses=body_poses)
    body_from_camera = extrinsic_matrix(EUROC_CAM0_T_BODY_CAM)

    camera = read_groundtruth(bag, "/groundtruth/pose", body_from_camera)
    body = read_groundtruth(bag, "/groundtruth/pose")

    np.testing.assert_array_equal(camera.timestamps_ns, stamps)
    expected = poses_to_matrices(body.poses) @ body_from_camera
    np.testing.assert_allclose(poses_to_matrices(camera.poses), expected, atol=1e-12)
    # The camera sits 6.9 cm from the body origin, so positions differ by that lever arm.
    offsets = np.linalg.norm(camera.positions - body.positions, axis=1)
    np.testing.assert_allclose(offsets, np.linalg.norm(EUROC_CAM0_T_BODY_CAM[:3]), atol=1e-9)


def test_groundtruth_extrinsic_rejects_bad_values():
    assert extrinsic_matrix(None) is None
    with pytest.raises(ReplayError, match="must have 7 values"):
        extrinsic_matrix([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    with pytest.raises(ReplayError, match="has norm 2.000000"):
        extrinsic_matrix([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0])


def test_euroc_extrinsic_matches_sensor_yaml():
    sensor = EUROC / "mav0" / "cam0" / "sensor.yaml"
    if not sensor.is_file():
        pytest.skip(f"EuRoC calibration not found at {sensor}; set VO_NODE_DATA")
    import yaml

    from vo_node.io.readers.euroc import euroc_body_from_sensor

    expected = euroc_body_from_sensor(yaml.safe_load(sensor.read_text()))
    np.testing.assert_allclose(extrinsic_matrix(EUROC_CAM0_T_BODY_CAM), expected, atol=1e-8)


def test_euroc_bag_groundtruth_matches_euroc_reader():
    if not EUROC_BAG.is_dir() or not (EUROC / "mav0").is_dir():
        pytest.skip(f"EuRoC bag or frames not found under {DATA}; set VO_NODE_DATA")
    from_bag = read_groundtruth(EUROC_BAG, "/groundtruth/imu_pose",
                                extrinsic_matrix(EUROC_CAM0_T_BODY_CAM))
    reader = open_sequence(EUROC)
    truth = reader.ground_truth
    common, in_bag, in_reader = np.intersect1d(from_bag.timestamps_ns, truth.timestamps_ns,
                                               return_indices=True)
    assert len(common) == len(from_bag) == 32
    # Both interpolate the same 200 Hz body poses and apply T_BS: the camera poses agree.
    np.testing.assert_allclose(from_bag.positions[in_bag], truth.positions[in_reader], atol=1e-6)
    rotation_difference = np.abs(
        poses_to_matrices(from_bag.poses[in_bag])[:, :3, :3]
        - poses_to_matrices(truth.poses[in_reader])[:, :3, :3]
    )
    assert rotation_difference.max() < 1e-6


# --------------------------------------------------------------------------------------------
# The demo through the node (DDS)


@pytest.mark.skipif(not NETWORK_ISOLATED, reason=NOT_ISOLATED_REASON)
def test_demo_through_node(tiny_model, tiny_sequence, tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "vo_node.demo", str(tiny_sequence), "--model",
               str(tiny_model), "--output", str(output), "--device", "cpu",
               "--config", str(write_engine_config(tmp_path))]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT_S, env=dict(os.environ))

    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert f"frames in bag: {DEMO_FRAMES}" in lines, completed.stdout
    # The frames before the engine initialised give no odometry.
    tracked = DEMO_FRAMES - (QUICK_INIT_FRAMES - 1)
    assert f"frames received: {DEMO_FRAMES}" in lines
    assert f"frames processed: {tracked}" in lines
    initialising = DEMO_FRAMES - tracked
    assert f"frames used to initialise (no odometry): {initialising}" in lines
    assert "frames dropped: 0" in lines
    assert "frames lost: 0" in lines
    assert any(line.startswith("latency median/p95: ") for line in lines)
    ate_lines = [line for line in lines if line.startswith("ATE")]
    assert len(ate_lines) == 1
    assert ate_lines[0].startswith("ATE RMSE: ") or ate_lines[0].startswith("ATE: not computed (")
    assert "scene units" in ate_lines[0] or "not computed" in ate_lines[0]

    # The bag was written under the output folder; the node's poses carry the image stamps.
    bag = output / "bags" / "images_sequence"
    assert (bag / "metadata.yaml").is_file()
    trajectory = read_tum(output / "trajectory.tum")
    np.testing.assert_array_equal(trajectory.timestamps_ns,
                                  open_sequence(tiny_sequence).timestamps_ns[-tracked:])
    report = json.loads((output / "metrics.json").read_text())
    assert report["frames_received"] == DEMO_FRAMES
    assert report["frames_initialising"] == initialising
    assert report["frames_processed"] + report["frames_initialising"] == DEMO_FRAMES
    assert report["groundtruth_topic"] == "/groundtruth/pose"
    assert (report["metrics"] is None) == (report["metrics_error"] is not None)


@pytest.mark.skipif(not NETWORK_ISOLATED, reason=NOT_ISOLATED_REASON)
def test_demo_on_short_euroc_bag_with_shipped_model(tmp_path):
    # The shared bag has 32 frames: fewer than initialisation plus a full depth-hypothesis
    # trial. The node must publish during the trial, or the bag gives no odometry at all.
    if not EUROC_BAG.is_dir():
        pytest.skip(f"ROS 2 bag {EUROC_BAG} is absent (set VO_NODE_DATA)")
    output = tmp_path / "out"
    extrinsic = [str(value) for value in EUROC_CAM0_T_BODY_CAM]
    command = [sys.executable, "-m", "vo_node.demo", str(EUROC_BAG), "--output", str(output),
               "--device", "cpu", "--groundtruth-extrinsic", *extrinsic]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT_S, env=dict(os.environ))

    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((output / "metrics.json").read_text())
    assert report["frames_received"] == 32
    assert report["frames_initialising"] < 16
    assert report["frames_processed"] + report["frames_initialising"] == 32
    assert report["metrics"] is not None, report["metrics_error"]
    assert report["metrics"]["ate_percent"] < 5.0


def node_report(**fields):
    from test_ros_replay import evaluation_report, segmented_report

    from vo_node.io.trajectory import Trajectory

    empty = Trajectory(np.zeros(0, dtype=np.int64), np.zeros((0, 7)))
    if fields.pop("segmented", False):
        return segmented_report(trajectory=empty, **fields)
    return evaluation_report(trajectory=empty, **fields)


def reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def test_demo_summary_and_report_list_segment_ates(tmp_path):
    report = node_report(segmented=True)
    bag = demo.DemoBag(tmp_path / "bag", "/camera/image_raw", None, "/groundtruth/pose")

    lines = demo.format_node_summary(report, bag, {})
    demo.write_node_outputs(report, bag, tmp_path, {})
    document = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=reject_constant)

    assert any(line.startswith("WARNING: the odometry has 3 segments") for line in lines)
    first_segment = [line for line in lines if line.startswith("segment 1 (18 poses):")]
    assert len(first_segment) == 1
    assert "ATE RMSE 0.007 m" in first_segment[0]
    assert "segment 3 (2 poses):      ATE not computed (2 poses, fewer than 3)" in lines
    assert [segment["poses"] for segment in document["segments"]] == [18, 6, 2]
    assert document["segments"][1]["metrics"]["ate_rmse"] == 0.004
    assert document["segments"][2]["metrics"] is None
    assert document["segments"][2]["metrics_error"] == "2 poses, fewer than 3"


def test_demo_report_without_odometry_is_valid_json(tmp_path):
    report = node_report(frames_processed=0, odometry_messages=0, latency_median_ms=None,
                         latency_p95_ms=None, ate_error="only 0 poses were recorded")
    bag = demo.DemoBag(tmp_path / "bag", "/camera/image_raw", None, None)

    lines = demo.format_node_summary(report, bag, {})
    demo.write_node_outputs(report, bag, tmp_path, {})
    document = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=reject_constant)

    assert "latency median/p95: n/a (no odometry received)" in lines
    assert not any("nan" in line for line in lines)
    assert document["latency_median_ms"] is None
    assert document["latency_p95_ms"] is None


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_demo_rejects_non_positive_frame_timeout(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.build_parser().parse_args(["--frame-timeout", value])
    assert exit_info.value.code == 2
    assert f"--frame-timeout: must be a positive number of seconds, got {value}" in (
        capsys.readouterr().err
    )


def test_demo_missing_model_before_dds(tiny_sequence, tmp_path):
    missing = tmp_path / "absent.pt"
    command = [sys.executable, "-m", "vo_node.demo", str(tiny_sequence), "--model", str(missing),
               "--output", str(tmp_path / "out")]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT_S)

    assert completed.returncode == 2
    assert f"model file {missing} not found" in completed.stderr
    assert completed.stdout == ""
