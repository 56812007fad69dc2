"""Shutdown of the node process on SIGINT and SIGTERM: exit status 0, last log lines, no errors.

With rclpy's own signal handlers the context shuts down before the node's shutdown runs, and
its last log lines fail with "Failed to publish log message to rosout". These tests start the
node as a process with a tiny random model and signal it once the worker is tracking. A
trajectory file that can no longer be written at shutdown gives one error, not a traceback.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
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


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_node_signal_shutdown_is_clean(tiny_model, tmp_path, signal_number):
    log_path = tmp_path / "node.log"
    trajectory_file = tmp_path / "trajectory.tum"
    command = [
        sys.executable, "-m", "vo_node.ros.node", "--ros-args",
        "-p", f"model.weights:={tiny_model}", "-p", "model.device:=cpu",
        "-p", f"trajectory_file:={trajectory_file}",
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while READY_LINE not in log_path.read_text() and process.poll() is None:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            process.send_signal(signal_number)
            status = process.wait(timeout=EXIT_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text()
    assert status == 0, output
    assert f"received {signal.Signals(signal_number).name}" in output
    # The shutdown ran with a valid context: its warning was logged, and nothing failed.
    assert f"no pose was published, so {trajectory_file} was not written" in output
    assert "rosout" not in output
    assert "Traceback" not in output
    assert not trajectory_file.exists()


def test_failed_trajectory_write_logs_one_error(tiny_model, tmp_path):
    from vo_node.ros.node import VONode
    from vo_node.ros.pipeline import OdometryEstimate

    folder = tmp_path / "runs"
    trajectory_file = folder / "vo.tum"
    arguments = ["-p", model_parameter(tiny_model), "-p", f"trajectory_file:={trajectory_file}"]
    with ros_context(arguments) as context:
        node = VONode(context=context)
        try:
            # One recorded pose, as the worker records it before publishing.
            node._record(OdometryEstimate(
                stamp_ns=1_000, odom_from_base=np.eye(4), world_from_camera=np.eye(4),
                twist=np.zeros(6), pose_covariance=None, state="tracking", is_keyframe=True,
            ))
            # The path was valid at start-up; a regular file now takes the folder's place.
            folder.write_text("not a folder")
            node.shutdown()
        finally:
            node.destroy_node()
    assert node.trajectory_error is not None
    assert f"writing trajectory_file {trajectory_file} failed" in node.trajectory_error
    assert "the 1 published poses were not saved" in node.trajectory_error
    assert folder.read_text() == "not a folder"
