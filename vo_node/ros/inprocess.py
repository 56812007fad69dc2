"""Run the vo_node node in this process beside a recorder node: the set-up that the bag
evaluation (:func:`vo_node.ros.replay.evaluate_bag`) and the latency tool
(:func:`vo_node.ros.latency.measure_latency`) share.

Both nodes live on a private rclpy context, so no signal handler is installed and the caller's
SIGINT/SIGTERM handling stays in force. One background thread spins both nodes.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

SPINNER_JOIN_TIMEOUT_S = 5.0
POLL_PERIOD_S = 0.01


@contextmanager
def node_in_process(
    arguments: Sequence[str],
    recorder_name: str,
    error: type[Exception],
    ready_timeout_s: float,
    node_class: type | None = None,
) -> Iterator[tuple[object, object]]:
    """Start the node and a recorder node, wait for the model, and yield ``(node, recorder)``.

    Args:
        arguments: the node's command-line arguments, starting with ``--ros-args``.
        recorder_name: name of the second node, which the caller uses to subscribe and publish.
        error: exception class raised when the node does not start.
        ready_timeout_s: maximum wait for the model to load, seconds.
        node_class: a :class:`vo_node.ros.node.VONode` subclass; None uses ``VONode``.

    On exit the node shuts down (stopping its worker and writing ``trajectory_file`` while the
    context is still valid), then the executor, both nodes and the context.

    Raises:
        error: a node parameter is invalid, or the model failed to load or timed out.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from vo_node.ros.node import VONode
    from vo_node.ros.parameters import ParameterError

    context = rclpy.Context()
    rclpy.init(args=list(arguments), context=context)
    executor = SingleThreadedExecutor(context=context)
    node = recorder = spinner = None
    try:
        try:
            node = (node_class or VONode)(ros_arguments=arguments, context=context)
        except ParameterError as problem:
            raise error(f"the node did not start: {problem}") from None
        recorder = rclpy.create_node(recorder_name, context=context)
        executor.add_node(node)
        executor.add_node(recorder)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        if not node.wait_until_ready(ready_timeout_s):
            reason = node.fatal_error or f"the model load timed out after {ready_timeout_s:.0f} s"
            raise error(f"the node did not start: {reason}")
        yield node, recorder
    finally:
        if node is not None:
            node.shutdown()
        executor.shutdown()
        if spinner is not None:
            spinner.join(timeout=SPINNER_JOIN_TIMEOUT_S)
        for owned in (node, recorder):
            if owned is not None:
                owned.destroy_node()
        rclpy.try_shutdown(context=context)


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` until it is true or ``timeout_s`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_PERIOD_S)
    return condition()
