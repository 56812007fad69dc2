"""Bag replay over DDS: bags built at test time (sqlite3 and mcap), stamps, /clock and sim time."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from test_ros_support import (
    NETWORK_ISOLATED,
    NOT_A_MODEL,
    NOT_ISOLATED_REASON,
    REPO,
    model_parameter,
    ros_context,
    spin_until,
    write_image_bag,
)

from vo_node.io.trajectory import Trajectory, write_tum
from vo_node.ros.messages import image_to_array, stamp_to_ns
from vo_node.ros.replay import (
    SCENE_UNITS,
    BagMessage,
    BagPlayer,
    EvaluationReport,
    ReplayError,
    SegmentEvaluation,
    bag_length_unit,
    camera_info_topic_beside,
    images_after_other_topics,
    message_class,
    read_bag,
    read_groundtruth,
    split_segments,
)

pytestmark = pytest.mark.skipif(not NETWORK_ISOLATED, reason=NOT_ISOLATED_REASON)

START_NS = 1_403_638_543_577_829_376
STEPS_NS = (0, 50_000_000, 100_000_001, 150_000_000, 400_000_000)
"""Irregular spacing, so pacing and stamps are both visible."""


def small_frames(count: int) -> list[np.ndarray]:
    generator = np.random.default_rng(7)
    return [generator.integers(0, 255, size=(48, 64), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(params=["sqlite3", "mcap"])
def image_bag(request, tmp_path):
    stamps = [START_NS + step for step in STEPS_NS]
    frames = small_frames(len(stamps))
    poses = {stamp: [0.1 * i, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0] for i, stamp in enumerate(stamps)}
    path = write_image_bag(tmp_path / f"bag_{request.param}", request.param, stamps, frames,
                           poses=poses)
    return path, stamps, frames


def reliable(depth: int = 100) -> QoSProfile:
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def test_read_bag_and_groundtruth(image_bag, tmp_path):
    path, stamps, frames = image_bag
    messages = list(read_bag(path))
    assert [m.topic for m in messages].count("/cam0/image_raw") == len(stamps)
    assert all(isinstance(m.data, bytes) for m in messages)
    truth = read_groundtruth(path, "/groundtruth/pose")
    np.testing.assert_array_equal(truth.timestamps_ns, stamps)
    np.testing.assert_allclose(truth.poses[:, 0], 0.1 * np.arange(len(stamps)))

    tum = write_tum(tmp_path / "truth.tum", truth)
    from_file = read_groundtruth(path, str(tum))
    np.testing.assert_array_equal(from_file.timestamps_ns, stamps)
    with pytest.raises(ReplayError, match="has type sensor_msgs/msg/Image"):
        read_groundtruth(path, "/cam0/image_raw")
    with pytest.raises(ReplayError, match=r"topics \['/missing'\] are not in bag"):
        list(read_bag(path, ["/missing"]))
    from vo_node.ros.replay import _check_groundtruth

    with pytest.raises(ReplayError, match="is not in bag .*; its pose topics are: /groundtruth/pose"):
        _check_groundtruth(path, "/groundtruth/imu_pose")


def test_images_follow_other_topics_at_equal_time():
    def message(topic, stamp):
        return BagMessage(topic, "x/msg/Y", stamp, b"")

    ordered = images_after_other_topics(
        [message("/image", 1), message("/info", 1), message("/image", 2), message("/other", 3),
         message("/info", 2)],
        {"/image"},
    )
    assert [(m.topic, m.timestamp_ns) for m in ordered] == [
        ("/info", 1), ("/image", 1), ("/image", 2), ("/other", 3), ("/info", 2),
    ]


def test_message_class_lookup():
    assert message_class("sensor_msgs/msg/Image") is Image
    with pytest.raises(ReplayError, match="install ros-jazzy-no-such-msgs"):
        message_class("no_such_msgs/msg/Thing")


def test_replay_keeps_stamps_and_publishes_clock(image_bag):
    path, stamps, frames = image_bag
    images, infos, clocks = [], [], []
    with ros_context() as context:
        listener = Node("listener", context=context)
        player_node = Node("vo_replay", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        listener.create_subscription(Image, "/cam0/image_raw", images.append, reliable())
        listener.create_subscription(CameraInfo, "/cam0/camera_info", infos.append, reliable())
        listener.create_subscription(Clock, "/clock", clocks.append, reliable())
        player = BagPlayer(player_node, path, rate=4.0, publish_clock=True)
        assert player.wait_for_subscribers(["/cam0/image_raw", "/cam0/camera_info"], 5.0)
        thread = threading.Thread(target=player.play)
        thread.start()
        def finished():
            last_clock_seen = clocks and stamp_to_ns(clocks[-1].clock) == stamps[-1]
            # Images, camera infos and the clock travel on separate topics, so wait for all three.
            return len(images) == len(stamps) and len(infos) == len(stamps) and last_clock_seen

        spin_until(executor, finished, 10.0)
        thread.join()
        # Everything arrived, so every reliable subscriber has acknowledged every message.
        assert player.wait_for_delivery(5.0)
        executor.shutdown()

    assert [stamp_to_ns(m.header.stamp) for m in images] == stamps
    assert [stamp_to_ns(m.header.stamp) for m in infos] == stamps
    for message, frame in zip(images, frames):
        assert message.header.frame_id == "cam0"
        np.testing.assert_array_equal(image_to_array(message), frame)
    clock_ns = [stamp_to_ns(m.clock) for m in clocks]
    assert clock_ns == sorted(clock_ns)
    assert clock_ns[0] >= stamps[0]
    assert clock_ns[-1] == stamps[-1]
    # 0.25 s of bag time between the last two images at rate 4 is about 0.06 s of wall time,
    # so /clock ticks at least once in between.
    assert any(stamps[-2] < value < stamps[-1] for value in clock_ns)


def play_with_listener(path, arguments, topics, count, timeout_s):
    """Run ``vo_replay PATH ARGUMENTS`` while a listener subscribes to ``topics``, a mapping of
    topic name to message type. Return the exit status, the output and the messages received
    per topic.

    The listener spins until each topic has ``count`` messages or the player exits, then for at
    most 2 s more for messages still in flight.
    """
    received = {topic: [] for topic in topics}
    with ros_context() as context:
        listener = Node("listener", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        for topic, message_type in topics.items():
            listener.create_subscription(message_type, topic, received[topic].append, reliable())
        command = [sys.executable, "-m", "vo_node.ros.replay", str(path), *arguments]
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)

        def all_received() -> bool:
            return all(len(messages) == count for messages in received.values())

        spin_until(executor, lambda: all_received() or process.poll() is not None, timeout_s)
        spin_until(executor, all_received, 2.0)
        output, _ = process.communicate(timeout=30)
        executor.shutdown()
    return process.returncode, output, received


def test_replay_command_line(tmp_path):
    stamps = [START_NS + step for step in STEPS_NS]
    path = write_image_bag(tmp_path / "bag", "mcap", stamps, small_frames(len(stamps)))
    arguments = ["--rate", "5", "--topics", "/cam0/image_raw", "--wait-for-subscribers", "30",
                 "--start-delay", "0.2"]
    status, output, received = play_with_listener(
        path, arguments, {"/cam0/image_raw": Image}, len(stamps), 30.0
    )
    assert status == 0, output
    assert [stamp_to_ns(m.header.stamp) for m in received["/cam0/image_raw"]] == stamps


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    """Poll ``condition()`` until it holds; return it after at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_wait_for_subscribers_skips_groundtruth(tmp_path):
    # The bag has a ground-truth topic that nothing subscribes to. Playback needs a subscriber
    # on the image topic and on the camera_info beside it, and no more.
    stamps = [START_NS + step for step in STEPS_NS]
    poses = {stamp: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0] for stamp in stamps}
    path = write_image_bag(tmp_path / "bag", "sqlite3", stamps, small_frames(len(stamps)),
                           poses=poses)
    with ros_context() as context:
        listener = Node("listener", context=context)
        player = BagPlayer(Node("vo_replay", context=context), path)
        assert sorted(player.topics) == [
            "/cam0/camera_info", "/cam0/image_raw", "/groundtruth/pose",
        ]
        assert player.topics_without_subscriber() == ["/cam0/image_raw"]
        assert not player.wait_for_subscribers(None, 0.2)
        listener.create_subscription(Image, "/cam0/image_raw", lambda _: None, reliable())
        assert wait_until(lambda: player.topics_without_subscriber() == ["/cam0/camera_info"])
        assert not player.wait_for_subscribers(None, 0.2)
        listener.create_subscription(CameraInfo, "/cam0/camera_info", lambda _: None, reliable())
        assert player.wait_for_subscribers(None, 10.0)
        assert player.topics_without_subscriber() == []
        # Explicit topics are still waited for one by one.
        assert not player.wait_for_subscribers(["/groundtruth/pose"], 0.2)


def test_camera_info_topic_beside():
    assert camera_info_topic_beside("/cam0/image_raw") == "/cam0/camera_info"
    assert camera_info_topic_beside("/cam0/image_raw/compressed") == "/cam0/camera_info"
    assert camera_info_topic_beside("/image") == "/camera_info"


def test_replay_command_line_waits_for_image_subscribers(tmp_path):
    stamps = [START_NS + step for step in STEPS_NS]
    poses = {stamp: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0] for stamp in stamps}
    path = write_image_bag(tmp_path / "bag", "mcap", stamps, small_frames(len(stamps)),
                           poses=poses)
    topics = {"/cam0/image_raw": Image, "/cam0/camera_info": CameraInfo}
    status, output, received = play_with_listener(
        path, ["--rate", "5", "--wait-for-subscribers", "30"], topics, len(stamps), 25.0
    )
    assert status == 0, output
    # Playback started without a subscriber on /groundtruth/pose, which nothing subscribes to.
    assert len(received["/cam0/image_raw"]) == len(stamps), output
    assert len(received["/cam0/camera_info"]) == len(stamps), output
    assert "subscribers matched after" in output
    assert "playing anyway" not in output


def test_replay_command_line_names_missing_subscriber(tmp_path):
    path = write_image_bag(tmp_path / "bag", "sqlite3", [START_NS], small_frames(1))
    with ros_context() as context:
        listener = Node("listener", context=context)
        listener.create_subscription(Image, "/cam0/image_raw", lambda _: None, reliable())
        command = [sys.executable, "-m", "vo_node.ros.replay", str(path),
                   "--wait-for-subscribers", "1"]
        completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                   timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert ("no subscriber on /cam0/camera_info after 1.0 s; playing anyway"
            in completed.stderr)


def test_replay_command_line_missing_topic(tmp_path):
    path = write_image_bag(tmp_path / "bag", "sqlite3", [START_NS], small_frames(1))
    command = [sys.executable, "-m", "vo_node.ros.replay", str(path), "--topics", "/nope"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 1
    assert "topics ['/nope'] are not in bag" in completed.stderr


def test_node_sim_time_follows_replay_clock(tmp_path, tiny_model):
    """Two seconds of bag time played at rate 4: the node's clock follows /clock, so the
    diagnostics sent after playback are stamped with the last bag time.

    The 1 s diagnostics timer runs on steady time, so that diagnostics keep coming before the
    first /clock and after playback ends. This playback lasts only 0.5 s, so the test waits for
    a diagnostics message after it rather than during it.
    """
    stamps = [START_NS + step for step in range(0, 2_000_000_001, 250_000_000)]
    path = write_image_bag(tmp_path / "bag", "sqlite3", stamps, small_frames(len(stamps)),
                           camera_info_topic=None, image_topic="/other/image")
    from diagnostic_msgs.msg import DiagnosticArray

    from vo_node.ros.node import VONode

    diagnostics = []
    with ros_context(["-p", model_parameter(tiny_model), "-p", "use_sim_time:=true"]) as context:
        node = VONode(context=context)
        player_node = Node("vo_replay", context=context)
        listener = Node("listener", context=context)
        listener.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.add_node(listener)
        assert node.wait_until_ready(60.0)
        player = BagPlayer(player_node, path, rate=4.0, publish_clock=True)
        assert spin_until(executor, lambda: player.clock_publisher.get_subscription_count() > 0,
                          5.0)
        thread = threading.Thread(target=player.play)
        thread.start()
        spin_until(executor, lambda: not thread.is_alive(), 10.0)
        thread.join()
        played = len(diagnostics)
        # The timer period plus a margin for the executor.
        assert spin_until(executor, lambda: len(diagnostics) > played, 3.0)
        node_time_ns = node.get_clock().now().nanoseconds
        node.shutdown()
        executor.shutdown()
        node.destroy_node()

    assert node_time_ns == stamps[-1]
    diagnostic_stamps = [stamp_to_ns(d.header.stamp) for d in diagnostics]
    assert diagnostic_stamps[-1] == stamps[-1], diagnostic_stamps
    # The images went to /other/image, so the node is still waiting for its first image.
    status = diagnostics[-1].status[0]
    assert status.level == status.WARN
    assert status.message == "waiting for images"


def test_evaluate_reports_unreadable_model(tmp_path):
    from vo_node.ros.replay import evaluate_bag

    path = write_image_bag(tmp_path / "bag", "sqlite3", [START_NS], small_frames(1))
    with pytest.raises(ReplayError) as error:
        evaluate_bag(path, "/cam0/image_raw", "/cam0/camera_info", None,
                     ["-p", model_parameter(NOT_A_MODEL)], ready_timeout_s=30.0)
    message = str(error.value)
    assert message.startswith("the node did not start: invalid parameter values")
    assert f"model.weights: {NOT_A_MODEL} is not a vo_node model file" in message


METRICS = {
    "ate_rmse": 0.11828080697882999, "ate_mean": 0.1, "ate_median": 0.09, "ate_max": 0.3,
    "rpe_translation_rmse": 0.0123, "rpe_rotation_rmse_deg": 0.456,
    "rpe_distance_translation_rmse": None, "rpe_distance_rotation_rmse_deg": None,
    "rpe_distance_m": 1.0, "path_length": 5.03, "ate_percent": 2.3515, "scale": 1.2345678,
    "associated_poses": 120, "standstill_ate_rmse": 0.9, "standstill_ate_percent": 17.89,
}


def evaluation_report(**fields) -> EvaluationReport:
    values = dict(
        frames_in_bag=20, frames_received=20, frames_processed=17, frames_dropped=0,
        frames_skipped=1, frames_lost=0, odometry_messages=17, latency_median_ms=12.34,
        latency_p95_ms=20.0, wall_time_s=3.21, odometry_stamps_ns=[], image_stamps_ns=[],
        frame_ids=("odom", "base_link"), trajectory=None, frames_initialising=2,
    )
    values.update(fields)
    return EvaluationReport(**values)


def test_evaluation_summary_has_units():
    lines = evaluation_report(ate=METRICS).summary().splitlines()
    assert "frames initialising:      2 (used to initialise, no odometry)" in lines
    assert "latency median / p95:     12.3 / 20.0 ms" in lines
    assert ("ATE RMSE:                 0.118 m (2.35 % of the 5.030 m path, Sim(3)-aligned)"
            in lines)
    assert "ATE mean / median / max:  0.100 m / 0.090 m / 0.300 m" in lines
    assert "RPE between frames:       0.012 m, 0.46 deg (RMSE)" in lines
    assert "RPE over 1 m:             n/a, n/a (RMSE)" in lines
    assert ("standstill ATE RMSE:      0.900 m (17.89 %), for an estimate that never moves"
            in lines)
    assert "alignment scale:          1.235" in lines
    assert "associated poses:         120" in lines
    # No raw key or unrounded float is printed.
    text = "\n".join(lines)
    assert "ate_rmse" not in text
    assert "0.11828" not in text


def test_evaluation_summary_scene_units():
    text = evaluation_report(ate=METRICS, length_unit=SCENE_UNITS).summary()
    assert ("ATE RMSE:                 0.118 scene units (2.35 % of the 5.030 scene units path"
            in text)
    missing = evaluation_report(ate=None, ate_error="no ground truth given").summary()
    assert missing.splitlines()[-1] == "ATE: not computed (no ground truth given)"


def segmented_report(**fields) -> EvaluationReport:
    segments = [
        SegmentEvaluation(start=0, poses=18, first_stamp_ns=START_NS, ate={
            **METRICS, "ate_rmse": 0.007, "ate_percent": 0.84, "path_length": 0.836,
            "scale": 1.001}),
        SegmentEvaluation(start=18, poses=6, first_stamp_ns=START_NS + 18, ate={
            **METRICS, "ate_rmse": 0.004, "ate_percent": 1.51, "path_length": 0.237,
            "scale": 0.2118}),
        SegmentEvaluation(start=24, poses=2, first_stamp_ns=START_NS + 24,
                          ate_error="2 poses, fewer than 3"),
    ]
    return evaluation_report(ate=METRICS, segments=segments, **fields)


def test_evaluation_summary_segments():
    lines = segmented_report().summary().splitlines()
    assert "odometry segments:        3 (18, 6, 2 poses)" in lines
    warning = ("WARNING: the odometry has 3 segments, whose scales may differ; the ATE above "
               "fits one Sim(3) to all of them. Each segment on its own:")
    assert warning in lines
    # The whole-trajectory lines come first and keep their form.
    assert lines.index(warning) > lines.index("associated poses:         120")
    assert ("segment 1 (18 poses):     ATE RMSE 0.007 m (0.84 % of the 0.836 m path), alignment "
            "scale 1.001, the longest segment") in lines
    assert ("segment 2 (6 poses):      ATE RMSE 0.004 m (1.51 % of the 0.237 m path), alignment "
            "scale 0.2118") in lines
    assert "segment 3 (2 poses):      ATE not computed (2 poses, fewer than 3)" in lines


def test_evaluation_summary_one_segment():
    segment = SegmentEvaluation(start=0, poses=17, first_stamp_ns=START_NS)
    lines = evaluation_report(ate=METRICS, segments=[segment]).summary().splitlines()
    assert "odometry segments:        1" in lines
    assert not any(line.startswith(("WARNING", "segment ")) for line in lines)


def test_summary_without_odometry_has_no_nan():
    report = evaluation_report(frames_processed=0, odometry_messages=0, latency_median_ms=None,
                               latency_p95_ms=None)
    summary = report.summary()
    assert "latency median / p95:     n/a (no odometry received)" in summary.splitlines()
    assert "nan" not in summary


def test_latency_percentiles_none_without_values():
    from vo_node.ros.pipeline import LatencyWindow
    from vo_node.ros.replay import latency_percentiles

    assert latency_percentiles(LatencyWindow()) == (None, None)


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_replay_rejects_non_positive_frame_timeout(value, capsys):
    from vo_node.ros.replay import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bag", "--evaluate", "--frame-timeout", value])
    assert exit_info.value.code == 2
    assert f"--frame-timeout: must be a positive number of seconds, got {value}" in (
        capsys.readouterr().err
    )


def test_split_segments_groups_labels():
    segments = split_segments([10, 20, 30, 40, 50], [0, 0, 1, 1, 1])
    assert [(s.start, s.poses, s.first_stamp_ns) for s in segments] == [(0, 2, 10), (2, 3, 30)]
    assert split_segments([], []) == []


def test_segment_ate_separates_scales(tmp_path):
    # The ground truth moves along a bent path. The estimate follows it exactly for 14 poses,
    # then continues from its last pose at a fifth of the scale, as after a change of depth
    # hypothesis. One Sim(3) over both segments leaves a large error, each segment on its own
    # none.
    from vo_node.ros.replay import _add_ate

    count, split = 24, 14
    stamps = START_NS + 50_000_000 * np.arange(count)
    angles = np.linspace(0.0, 1.5, count)
    truth = np.zeros((count, 7))
    truth[:, 0], truth[:, 1], truth[:, 2] = np.sin(angles), 1.0 - np.cos(angles), 0.1 * angles
    truth[:, 6] = 1.0
    estimate = truth.copy()
    estimate[split:, :3] = truth[split - 1, :3] + 0.2 * (truth[split:, :3] - truth[split - 1, :3])
    reference = write_tum(tmp_path / "truth.tum", Trajectory(stamps, truth))
    labels = [0] * split + [1] * (count - split)
    report = evaluation_report(trajectory=Trajectory(stamps, estimate),
                               segments=split_segments(list(stamps), labels))

    _add_ate(report, bag=None, groundtruth=str(reference))

    assert report.ate is not None, report.ate_error
    assert report.ate["ate_percent"] > 5.0
    assert [segment.poses for segment in report.segments] == [split, count - split]
    for segment in report.segments:
        assert segment.ate is not None, segment.ate_error
        assert segment.ate["ate_rmse"] < 1e-6
    assert report.segments[0].ate["scale"] == pytest.approx(1.0)
    assert report.segments[1].ate["scale"] == pytest.approx(5.0)
    assert report.longest_segment is report.segments[0]


def test_bag_length_unit_from_source(tmp_path):
    from vo_node.demo_data import render_demo_sequence
    from vo_node.io.sequence import open_sequence
    from vo_node.ros.bagwrite import cached_sequence_bag

    rendered = render_demo_sequence(tmp_path / "sequence", num_frames=3, height=32, width=48)
    bag = cached_sequence_bag(open_sequence(rendered), tmp_path / "bag")
    assert bag_length_unit(bag) == SCENE_UNITS
    other = write_image_bag(tmp_path / "other", "sqlite3", [START_NS], small_frames(1))
    assert bag_length_unit(other) == "m"


def test_trajectory_type_for_reports():
    # The evaluation converts recorded odometry to this container; an empty run is valid.
    empty = Trajectory(np.zeros(0, dtype=np.int64), np.zeros((0, 7)))
    assert len(empty) == 0


@pytest.mark.parametrize("kind", ["missing", "not_a_bag", "evaluate_not_a_bag"])
def test_replay_command_line_bad_bag_path(tmp_path, kind):
    path = tmp_path / "recording"
    if kind != "missing":
        path.mkdir()
        (path / "notes.txt").write_text("not a bag")
    extra = []
    if kind.startswith("evaluate"):
        extra = ["--evaluate", "--image-topic", "/cam0/image_raw"]
    command = [sys.executable, "-m", "vo_node.ros.replay", str(path), *extra]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 1, completed.stderr
    if kind == "missing":
        assert f"bag {path} not found" in completed.stderr
    else:
        assert f"{path} could not be read as a bag" in completed.stderr
    assert "pass a ROS 2 bag folder (with metadata.yaml) or a ROS 1 .bag file" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_too_few_poses_names_initialisation():
    from vo_node.ros.replay import _add_ate

    empty = Trajectory(np.zeros(0, dtype=np.int64), np.zeros((0, 7)))
    report = evaluation_report(trajectory=empty, frames_received=32, frames_initialising=32)
    _add_ate(report, bag=None, groundtruth="/groundtruth/pose")
    assert report.ate is None
    assert report.ate_error == (
        "only 0 poses were recorded; the engine spent 32 of the 32 frames received on "
        "initialising, so replay a longer bag"
    )
