"""Shutdown of the node process on SIGINT and SIGTERM: exit status 0, last log lines, no errors.

With rclpy's own signal handlers the context shuts down before the node's shutdown runs, and
its last log lines fail with "Failed to publish log message to rosout". These tests start the
node as a process with a tiny random model and signal it once the worker is tracking. A
trajectory file that can no longer be written at shutdown gives one error, not a traceback.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from rclpy.duration import Duration
from test_ros_support import (
    NETWORK_ISOLATED,
    NOT_ISOLATED_REASON,
    REPO,
    model_parameter,
    ros_context,
)

pytestmark = pytest.mark.skipif(not NETWORK_ISOLATED, reason=NOT_ISOLATED_REASON)

READY_LINE = "tracking images from"
START_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 60.0


@contextlib.contextmanager
def node_process(command: list[str], log_path) -> Iterator[subprocess.Popen]:
    """Start the node ``command`` with its output in ``log_path``, wait until it tracks images,
    and kill it on the way out if it still runs."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while READY_LINE not in log_path.read_text() and process.poll() is None:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_node_signal_shutdown_is_clean(tiny_model, tmp_path, signal_number):
    log_path = tmp_path / "node.log"
    trajectory_file = tmp_path / "trajectory.tum"
    command = [
        sys.executable, "-m", "vo_node.ros.node", "--ros-args",
        "-p", f"model.weights:={tiny_model}", "-p", "model.device:=cpu",
        "-p", f"trajectory_file:={trajectory_file}",
    ]
    with node_process(command, log_path) as process:
        process.send_signal(signal_number)
        status = process.wait(timeout=EXIT_TIMEOUT_S)
    output = log_path.read_text()
    assert status == 0, output
    assert f"received {signal.Signals(signal_number).name}" in output
    # The shutdown ran with a valid context: its warning was logged, and nothing failed.
    assert f"no pose was published, so {trajectory_file} was not written" in output
    assert "rosout" not in output
    assert "Traceback" not in output
    assert not trajectory_file.exists()
    assert output.count("final counts:") == 1
    assert ("final counts: 0 frames received, 0 processed (odometry published), 0 used for "
            "initialisation, 0 dropped, 0 rejected, 0 skipped, 0 lost, 0 failed; 0 odometry "
            f"segments; 0 poses written to {trajectory_file}") in output


FINAL_COUNTS = re.compile(
    r"final counts: (?P<received>\d+) frames received, (?P<processed>\d+) processed \(odometry "
    r"published\), (?P<initialising>\d+) used for initialisation, (?P<dropped>\d+) dropped, "
    r"(?P<rejected>\d+) rejected, (?P<skipped>\d+) skipped, (?P<lost>\d+) lost, "
    r"(?P<failed>\d+) failed(, (?P<waiting>\d+) not tracked before the stop)?; "
    r"(?P<segments>\d+) odometry segments?; trajectory_file not set"
)
DROP_RATES = re.compile(
    r"Over the last [\d.]+ s, (?P<received>[\d.]+) Hz were received and "
    r"(?P<taken>[\d.]+) Hz taken for tracking"
)
SLOW_IMAGES = 4
BURST_IMAGES = 30


def test_final_counts_after_image_burst(tiny_model, tmp_path):
    # Images arrive faster than the worker tracks them, so the slot replaces some: the drop
    # warning gives a tracked rate below the input rate, and after SIGINT one line accounts for
    # every received frame.
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from vo_node.ros.messages import array_to_image, ns_to_stamp

    log_path = tmp_path / "node.log"
    command = [
        sys.executable, "-m", "vo_node.ros.node", "--ros-args",
        "-p", f"model.weights:={tiny_model}", "-p", "model.device:=cpu",
        "-p", "intrinsics:=[60.0, 60.0, 31.5, 23.5]", "-p", "image_qos:=reliable",
        # Every image reaches the node's callback, so the counts can be checked against the
        # number sent.
        "-p", f"queue_depth:={SLOW_IMAGES + BURST_IMAGES}",
    ]
    generator = np.random.default_rng(3)
    with node_process(command, log_path) as process:
        with ros_context() as context:
            node = Node("camera", context=context)
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            publisher = node.create_publisher(Image, "/image", qos)
            deadline = time.monotonic() + START_TIMEOUT_S
            while publisher.get_subscription_count() == 0:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            sent = 0
            for index in range(SLOW_IMAGES + BURST_IMAGES):
                pixels = generator.integers(0, 255, size=(48, 64), dtype=np.uint8)
                stamp = ns_to_stamp(1_000_000_000 + index * 50_000_000)
                publisher.publish(array_to_image(pixels, "mono8", stamp, "camera"))
                sent += 1
                time.sleep(0.5 if index < SLOW_IMAGES else 0.001)
            assert publisher.wait_for_all_acked(Duration(seconds=10))
            time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=EXIT_TIMEOUT_S)
    output = log_path.read_text()
    assert status == 0, output
    assert output.count("final counts:") == 1, output
    counts = FINAL_COUNTS.search(output)
    assert counts is not None, output
    values = {key: int(value or 0) for key, value in counts.groupdict().items()}
    assert values["received"] == sent
    parts = ("processed", "initialising", "dropped", "rejected", "skipped", "lost", "failed",
             "waiting")
    assert sum(values[part] for part in parts) == values["received"]
    assert values["dropped"] >= 1, output
    rates = DROP_RATES.search(output)
    assert rates is not None, output
    assert float(rates["taken"]) < float(rates["received"]), rates.group(0)


def record_pose(node, stamp_ns):
    """Record one identity pose at ``stamp_ns``, as the worker records it before publishing."""
    from vo_node.ros.pipeline import OdometryEstimate

    node._record(OdometryEstimate(
        stamp_ns=stamp_ns, odom_from_base=np.eye(4), world_from_camera=np.eye(4),
        twist=np.zeros(6), pose_covariance=None, state="tracking", is_keyframe=True,
    ))


def test_failed_trajectory_write_logs_one_error(tiny_model, tmp_path):
    from vo_node.ros.node import VONode

    folder = tmp_path / "runs"
    trajectory_file = folder / "vo.tum"
    arguments = ["-p", model_parameter(tiny_model), "-p", f"trajectory_file:={trajectory_file}"]
    with ros_context(arguments) as context:
        node = VONode(context=context)
        try:
            record_pose(node, 1_000)
            # The path was valid at start-up; a regular file now takes the folder's place.
            folder.write_text("not a folder")
            node.shutdown()
        finally:
            node.destroy_node()
    assert node.trajectory_error is not None
    assert f"writing trajectory_file {trajectory_file} failed" in node.trajectory_error
    assert "the 1 published poses were not saved" in node.trajectory_error
    assert folder.read_text() == "not a folder"


SECOND_SIGNAL = re.compile(
    r"(received SIGINT again: exiting at once|exiting now that the write is done) with status "
    r"130: ((?P<poses>\d+) poses? written to (?P<path>\S+)|no pose written to \S+ yet)"
)
TRACKED_IMAGES = 12
MIN_ODOMETRY = 5


@pytest.mark.parametrize("delay_s", [0.0, 0.05, 0.15])
def test_second_signal_exits_130_and_keeps_poses(tiny_model, tmp_path, delay_s):
    # Two SIGINTs in a row while the node tracks. The second may arrive during the shutdown
    # (exit 130 at once), while the interpreter ends (killed by SIGINT, also 130 in a shell) or
    # after the exit (0). The process must never abort, and the trajectory file must match the
    # count in the log.
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from test_ros_support import spin_until, write_engine_config
    from vo_node.io.trajectory import read_tum
    from vo_node.ros.messages import array_to_image, ns_to_stamp

    log_path = tmp_path / "node.log"
    trajectory_file = tmp_path / "out" / "trajectory.tum"
    command = [
        sys.executable, "-m", "vo_node.ros.node", "--ros-args",
        "-p", f"model.weights:={tiny_model}", "-p", "model.device:=cpu",
        "-p", f"model.config:={write_engine_config(tmp_path)}",
        "-p", "intrinsics:=[60.0, 60.0, 31.5, 23.5]", "-p", "image_qos:=reliable",
        "-p", f"trajectory_file:={trajectory_file}",
    ]
    texture = np.random.default_rng(5).integers(0, 255, size=(48, 64 + TRACKED_IMAGES),
                                                dtype=np.uint8)
    with node_process(command, log_path) as process:
        with ros_context() as context:
            node = Node("camera", context=context)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            odometry = []
            node.create_subscription(Odometry, "/odom", odometry.append, 100)
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            publisher = node.create_publisher(Image, "/image", qos)
            assert spin_until(executor, lambda: publisher.get_subscription_count() > 0,
                              START_TIMEOUT_S), log_path.read_text()
            # On a loaded machine the worker may fall behind and frames get replaced, so
            # images keep coming until enough odometry has arrived.
            deadline = time.monotonic() + START_TIMEOUT_S
            index = 0
            while len(odometry) < MIN_ODOMETRY:
                assert time.monotonic() < deadline, log_path.read_text()
                shift = index % TRACKED_IMAGES
                pixels = np.ascontiguousarray(texture[:, shift:shift + 64])
                stamp = ns_to_stamp(1_000_000_000 + index * 50_000_000)
                publisher.publish(array_to_image(pixels, "mono8", stamp, "camera"))
                index += 1
                spin_until(executor, lambda: False, 0.1)
            executor.shutdown()
        process.send_signal(signal.SIGINT)
        time.sleep(delay_s)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        status = process.wait(timeout=EXIT_TIMEOUT_S)
    output = log_path.read_text()
    assert status in (0, 130, -signal.SIGINT), output
    assert "terminate called" not in output
    assert "Traceback" not in output
    # No temporary file of an interrupted write is left next to the trajectory.
    folder = trajectory_file.parent
    leftovers = [path.name for path in folder.iterdir()] if folder.exists() else []
    assert set(leftovers) <= {trajectory_file.name}, leftovers
    second = SECOND_SIGNAL.search(output)
    if status != 130:
        assert second is None, output
        written = re.findall(r"wrote (\d+) poses to", output)
        assert "final counts:" in output
        assert len(read_tum(trajectory_file)) == int(written[-1])
        assert int(written[-1]) >= MIN_ODOMETRY
        return
    assert second is not None, output
    if second["poses"] is None:
        assert not trajectory_file.exists()
    else:
        assert second["path"] == str(trajectory_file)
        assert len(read_tum(trajectory_file)) == int(second["poses"])
        assert int(second["poses"]) >= MIN_ODOMETRY


HARD_EXIT_CHILD = """
import os, signal, sys, threading, time
import rclpy
from rclpy.executors import SingleThreadedExecutor
from vo_node.run import StopRequest

rclpy.init()
node = rclpy.create_node("hard_exit_probe")
executor = SingleThreadedExecutor()
executor.add_node(node)
# A native executor thread still runs when the second signal arrives, as in the node.
threading.Thread(target=executor.spin, daemon=False).start()
stop = StopRequest("stopping", hard_exit=True)
stop.second_signal_note = lambda: "7 poses written to probe.tum"
stop.install()
os.kill(os.getpid(), signal.SIGINT)
while not stop():
    time.sleep(0.01)
print("first signal handled", flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(5)
print("still running", flush=True)
"""


HARD_EXIT_DEFERRED_CHILD = HARD_EXIT_CHILD.replace(
    """os.kill(os.getpid(), signal.SIGINT)
time.sleep(5)""",
    """with stop.exit_deferred():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    print("write finished", flush=True)
time.sleep(5)""",
)


def run_child(code: str) -> tuple[int, str]:
    """Run ``python -c code`` in the repository and return its exit status and its output."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
        timeout=EXIT_TIMEOUT_S,
    )
    return result.returncode, result.stdout + result.stderr


def test_second_signal_during_write_exits_after_it():
    assert HARD_EXIT_DEFERRED_CHILD != HARD_EXIT_CHILD
    status, output = run_child(HARD_EXIT_DEFERRED_CHILD)
    assert status == 130, output
    assert "write finished" in output
    assert "still running" not in output
    assert "once the file being written is complete" in output
    assert ("exiting now that the write is done with status 130: 7 poses written to probe.tum"
            in output)


def test_second_signal_hard_exit_is_130_with_note():
    # The node's StopRequest ends the process with os._exit on a second signal: status 130 with
    # rclpy's native threads alive, where SystemExit aborted with 134 ("terminate called").
    status, output = run_child(HARD_EXIT_CHILD)
    assert status == 130, output
    assert "first signal handled" in output
    assert "still running" not in output
    assert "terminate called" not in output
    assert ("received SIGINT again: exiting at once with status 130: 7 poses written to "
            "probe.tum") in output


def test_second_signal_waits_for_deferred_write():
    import os

    from vo_node.run import StopRequest

    stop = StopRequest("stopping")
    stop.install()
    steps = []
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop()
        with pytest.raises(SystemExit) as exit_info:
            with stop.exit_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                steps.append("write finished")
        assert exit_info.value.code == 130
        assert steps == ["write finished"]
    finally:
        stop.restore()


@contextlib.contextmanager
def trajectory_node(tiny_model, trajectory_file) -> Iterator:
    """Yield a ``VONode`` with the tiny model that writes its trajectory to ``trajectory_file``,
    destroyed on exit."""
    from vo_node.ros.node import VONode

    arguments = ["-p", model_parameter(tiny_model), "-p", f"trajectory_file:={trajectory_file}"]
    with ros_context(arguments) as context:
        node = VONode(context=context)
        try:
            yield node
        finally:
            node.destroy_node()


def test_stop_writes_trajectory_once_without_new_poses(tiny_model, tmp_path, monkeypatch):
    import vo_node.ros.node as node_module

    writes = []
    original = node_module.write_tum
    monkeypatch.setattr(node_module, "write_tum",
                        lambda path, trajectory: writes.append(len(trajectory)) or original(
                            path, trajectory))
    trajectory_file = tmp_path / "vo.tum"
    with trajectory_node(tiny_model, trajectory_file) as node:
        record_pose(node, 1_000)
        node.write_published_so_far()
        node.shutdown()
    # The shutdown found no pose recorded since the early write, so it wrote nothing again.
    assert writes == [1]
    assert node.second_signal_note() == f"1 pose written to {trajectory_file}"


def test_shutdown_rewrites_after_new_pose_and_retries(tiny_model, tmp_path, monkeypatch):
    import vo_node.ros.node as node_module
    from vo_node.io.trajectory import read_tum

    writes = []
    original = node_module.write_tum

    def failing_once(path, trajectory):
        writes.append(len(trajectory))
        if len(writes) == 1:
            raise OSError(28, "No space left on device")
        original(path, trajectory)

    monkeypatch.setattr(node_module, "write_tum", failing_once)
    trajectory_file = tmp_path / "vo.tum"
    with trajectory_node(tiny_model, trajectory_file) as node:
        record_pose(node, 1_000)
        node.write_published_so_far()
        assert node.trajectory_error is not None
        # The worker finishes one more frame before the shutdown.
        record_pose(node, 2_000)
        node.shutdown()
    assert writes == [1, 2]
    assert node.trajectory_error is None
    assert len(read_tum(trajectory_file)) == 2
    assert node.second_signal_note() == f"2 poses written to {trajectory_file}"
