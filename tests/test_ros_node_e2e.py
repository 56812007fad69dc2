"""End to end: the node with the real engine on a bag built from real EuRoC frames.

The bag (written to a temporary folder, never committed) contains the first frames of EuRoC MH_05
cam0 at half resolution with their camera_info and ground truth. The node runs in-process through
``evaluate_bag`` in lockstep. The shipped model is used when present, and a freshly initialised
``small`` model otherwise, with the engine configuration of ``quick_init_config`` (it initialises
on the third frame). So the test checks the node's plumbing (nothing published while the engine
initialises, then one odometry message per tracked frame, stamps, frame ids, path bound, TF
switch, trajectory file), not its accuracy.
"""

from __future__ import annotations

import signal
import subprocess
import sys

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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not NETWORK_ISOLATED, reason=NOT_ISOLATED_REASON),
]

EUROC = DATA / "euroc_MH_05_difficult" / "mav0"
FRAME_COUNT = 8
FIRST_FRAME = 100
"""Frames 100 to 107 of MH_05 cam0 span about 0.4 m of ground-truth motion."""
DOWNSCALE = 2
EUROC_INTRINSICS = (458.654, 457.296, 367.215, 248.375)
EUROC_DISTORTION = (-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05, 0.0)
PATH_MAX_LENGTH = 4
TF_OFF_AFTER_IMAGE = 4
JUMP_FACTOR = 10.0
"""A step between consecutive published positions above this multiple of the median step counts
as a jump, such as the step from the engine's placeholder poses to its first initialised pose
(about 36 times the median on EuRoC MH_05)."""
PUBLISHED_IMAGES = 2
"""Images the SIGTERM test sends after the engine's initialisation."""
DIAGNOSTICS_INITIALISING = "frames used for initialisation"


def engine_or_skip():
    try:
        from vo_node.odometry.frontend import VisualOdometry  # noqa: F401
        from vo_node.model.network import load_model  # noqa: F401
    except ImportError as error:
        pytest.skip(f"the engine is not importable yet: {error}")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    engine_or_skip()
    from vo_node.model.network import default_model_path

    try:
        return default_model_path()
    except FileNotFoundError:
        import torch

        from vo_node.config import load_engine_config
        from vo_node.model.network import VONetwork, save_model

        config = load_engine_config("small")
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp("model") / "untrained_small.pt"
        save_model(path, VONetwork(config.network), config, {"purpose": "node plumbing test"})
        return path


@pytest.fixture(scope="module")
def euroc_bag(tmp_path_factory):
    if not (EUROC / "cam0" / "data").is_dir():
        pytest.skip(f"EuRoC frames not found at {EUROC}; set VO_NODE_DATA to the data folder")
    names = sorted((EUROC / "cam0" / "data").glob("*.png"))[FIRST_FRAME:FIRST_FRAME + FRAME_COUNT]
    stamps = [int(name.stem) for name in names]
    frames = []
    for name in names:
        image = cv2.imread(str(name), cv2.IMREAD_GRAYSCALE)
        height, width = image.shape
        frames.append(cv2.resize(image, (width // DOWNSCALE, height // DOWNSCALE),
                                 interpolation=cv2.INTER_AREA))
    intrinsics = [value / DOWNSCALE for value in EUROC_INTRINSICS]
    path = write_image_bag(tmp_path_factory.mktemp("bag") / "euroc", "mcap", stamps, frames,
                           intrinsics=intrinsics, distortion=EUROC_DISTORTION,
                           poses=_groundtruth(stamps))
    return path, stamps


def _groundtruth(stamps: list[int]) -> dict[int, list[float]]:
    rows = np.loadtxt(EUROC / "state_groundtruth_estimate0" / "data.csv", delimiter=",",
                      comments="#", usecols=range(8))
    times = rows[:, 0].astype(np.int64)
    poses = {}
    for stamp in range(stamps[0], stamps[-1] + 1, 50_000_000):
        index = int(np.argmin(np.abs(times - stamp)))
        tx, ty, tz, qw, qx, qy, qz = rows[index, 1:]
        poses[int(times[index])] = [tx, ty, tz, qx, qy, qz, qw]
    return poses


@pytest.fixture(scope="module")
def engine_config(tmp_path_factory):
    return write_engine_config(tmp_path_factory.mktemp("config"))


def test_node_on_euroc_bag(euroc_bag, model_path, engine_config, tmp_path):
    from vo_node.io.trajectory import read_tum
    from vo_node.ros.replay import evaluate_bag

    bag, stamps = euroc_bag
    trajectory_file = tmp_path / "vo.tum"
    arguments = [
        "-p", f"model.weights:={model_path}",
        "-p", f"model.config:={engine_config}",
        "-p", "model.device:=cpu",
        "-p", "odom_frame:=vo_odom",
        "-p", "base_frame:=vo_base",
        "-p", f"path_max_length:={PATH_MAX_LENGTH}",
        "-p", f"trajectory_file:={trajectory_file}",
        # The encoder thread runs here; the other node tests encode on the worker (default).
        "-p", "encode_ahead:=true",
    ]

    def turn_tf_off(index, node):
        if index == TF_OFF_AFTER_IMAGE:
            from rclpy.parameter import Parameter

            assert node.set_parameters([Parameter("publish_tf", value=False)])[0].successful

    report = evaluate_bag(bag, "/cam0/image_raw", "/cam0/camera_info", "/groundtruth/pose",
                          arguments, frame_timeout_s=300.0, after_image=turn_tf_off)

    # Every frame reached the node and was handled; lockstep drops nothing.
    assert report.frames_in_bag == FRAME_COUNT
    assert report.frames_received == FRAME_COUNT
    assert report.frames_dropped == 0
    assert (report.frames_processed + report.frames_initialising + report.frames_skipped
            + report.frames_lost) == FRAME_COUNT
    assert report.frames_skipped == 0
    assert report.frames_initialising >= QUICK_INIT_FRAMES - 1
    assert report.frames_processed >= 1

    # Nothing while the engine initialises, then one odometry message per processed frame,
    # stamped with its image's stamp.
    assert report.image_stamps_ns == stamps
    assert report.odometry_messages == report.frames_processed
    assert report.odometry_stamps_ns[0] == stamps[QUICK_INIT_FRAMES - 1]
    assert report.odometry_stamps_ns == sorted(set(report.odometry_stamps_ns))
    assert set(report.odometry_stamps_ns) <= set(stamps)
    assert report.frame_ids == ("vo_odom", "vo_base")

    # The path is bounded by path_max_length.
    assert len(report.path_lengths) == report.frames_processed
    assert max(report.path_lengths) <= PATH_MAX_LENGTH
    assert report.path_lengths[-1] == min(PATH_MAX_LENGTH, report.frames_processed)

    # /tf carries odom -> base for every published frame until publish_tf was turned off.
    switch_stamp = stamps[TF_OFF_AFTER_IMAGE]
    expected_tf = [s for s in report.odometry_stamps_ns if s <= switch_stamp]
    assert report.tf_stamps_ns == expected_tf

    # The first pose is the odom origin and the odometry does not jump; the trajectory file
    # contains the published poses.
    poses = report.trajectory.poses
    np.testing.assert_allclose(poses[0], [0, 0, 0, 0, 0, 0, 1], atol=1e-9)
    steps = np.linalg.norm(np.diff(poses[:, :3], axis=0), axis=1)
    if len(steps) >= 3:
        assert steps.max() <= JUMP_FACTOR * np.median(steps), steps
    written = read_tum(trajectory_file)
    np.testing.assert_array_equal(written.timestamps_ns, report.trajectory.timestamps_ns)
    np.testing.assert_allclose(written.poses[:, :3], poses[:, :3], atol=1e-6)
    assert report.ate is not None or report.ate_error


def test_evaluation_splits_segments_at_reset(euroc_bag, model_path, tmp_path, caplog):
    # With an engine that initialises on its second frame, a reset after image 3 gives two
    # odometry segments of three poses: frames 1 to 3, then frames 5 to 7 after frame 4
    # initialised the engine again.
    from std_srvs.srv import Trigger

    from vo_node.ros.replay import evaluate_bag

    bag, stamps = euroc_bag
    arguments = [
        "-p", f"model.weights:={model_path}",
        "-p", f"model.config:={write_engine_config(tmp_path, init_frames=2)}",
        "-p", "model.device:=cpu",
    ]

    def reset_after_third(index, node):
        if index == 3:
            assert node._on_reset(Trigger.Request(), Trigger.Response()).success

    with caplog.at_level("WARNING", logger="vo_node.ros.replay"):
        report = evaluate_bag(bag, "/cam0/image_raw", "/cam0/camera_info", "/groundtruth/pose",
                              arguments, frame_timeout_s=300.0, after_image=reset_after_third)

    assert report.frames_initialising == 2
    assert report.frames_processed == 6
    assert [segment.poses for segment in report.segments] == [3, 3]
    assert [segment.first_stamp_ns for segment in report.segments] == [stamps[1], stamps[5]]
    assert [segment.start for segment in report.segments] == [0, 3]
    for segment in report.segments:
        assert segment.ate is not None, segment.ate_error
        assert segment.ate["associated_poses"] == 3
    lines = report.summary().splitlines()
    assert "odometry segments:        2 (3, 3 poses)" in lines
    assert any(line.startswith("WARNING: the odometry has 2 segments") for line in lines)
    assert any(line.startswith("segment 2 (3 poses):      ATE RMSE") for line in lines)
    warnings = [record.getMessage() for record in caplog.records]
    assert any("the odometry has 2 segments (3, 3 poses)" in text for text in warnings), warnings


def diagnostic_count(messages: list, key: str) -> int:
    """Return the newest value of ``key`` in the received DiagnosticArray messages (0 if none)."""
    for message in reversed(messages):
        for status in message.status:
            for value in status.values:
                if value.key == key:
                    return int(value.value)
    return 0


def test_node_process_writes_trajectory_on_sigterm(euroc_bag, model_path, engine_config,
                                                     tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image, PointCloud2
    from test_ros_support import ros_context, spin_until

    from vo_node.io.trajectory import read_tum
    from vo_node.ros.replay import BagPlayer, read_bag

    bag, stamps = euroc_bag
    trajectory_file = tmp_path / "sigterm.tum"
    command = [
        sys.executable, "-m", "vo_node.ros.node", "--ros-args",
        "-p", f"model.weights:={model_path}", "-p", f"model.config:={engine_config}",
        "-p", "model.device:=cpu",
        "-p", "image_qos:=reliable", "-p", f"trajectory_file:={trajectory_file}",
        "-r", "image:=/cam0/image_raw", "-r", "camera_info:=/cam0/camera_info",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    odometry, diagnostics = [], []
    try:
        with ros_context() as context:
            player_node = Node("vo_replay", context=context)
            listener = Node("listener", context=context)
            listener.create_subscription(Odometry, "/odom", odometry.append, 100)
            listener.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
            # Debug outputs are only produced while subscribed.
            clouds, debug_images = [], []
            listener.create_subscription(PointCloud2, "/debug/points", clouds.append, 10)
            listener.create_subscription(Image, "/debug/image", debug_images.append, 10)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(listener)
            player = BagPlayer(player_node, bag, topics=["/cam0/camera_info", "/cam0/image_raw"])
            topics = ["/cam0/camera_info", "/cam0/image_raw"]
            assert spin_until(executor, lambda: all(
                player.publishers[t].get_subscription_count() > 0 for t in topics), 60.0)
            # Camera info first, then the images, each after the node finished the previous
            # one: the diagnostics count the initialisation frames, then odometry arrives.
            messages = list(read_bag(bag))
            info = next(m for m in messages if m.topic == "/cam0/camera_info")
            initialising = QUICK_INIT_FRAMES - 1
            images = [m for m in messages if m.topic == "/cam0/image_raw"]
            images = images[:initialising + PUBLISHED_IMAGES]

            def frames_finished() -> int:
                return diagnostic_count(diagnostics, DIAGNOSTICS_INITIALISING) + len(odometry)

            player.publishers[info.topic].publish(info.data)
            spin_until(executor, lambda: False, 0.5)
            for index, image in enumerate(images):
                player.publishers[image.topic].publish(image.data)
                assert spin_until(executor, lambda: frames_finished() > index, 300.0), index
            assert diagnostic_count(diagnostics, DIAGNOSTICS_INITIALISING) == initialising
            spin_until(executor, lambda: clouds and debug_images, 5.0)
            executor.shutdown()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "rosout" not in output
    assert "Traceback" not in output
    written = read_tum(trajectory_file)
    assert list(written.timestamps_ns) == stamps[QUICK_INIT_FRAMES - 1:][:PUBLISHED_IMAGES]
    assert clouds, "no debug/points message while subscribed"
    assert [field.name for field in clouds[0].fields] == ["x", "y", "z"]
    assert clouds[0].header.frame_id == "odom"
    assert debug_images, "no debug/image message while subscribed"
    assert debug_images[0].encoding == "rgb8"
    assert (debug_images[0].width, debug_images[0].height) == (376, 240)

