"""The node's /diagnostics over DDS: an image outage, and the steady timer under sim time."""

from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image
from test_ros_support import (
    NETWORK_ISOLATED,
    NOT_ISOLATED_REASON,
    model_parameter,
    ros_context,
    spin_until,
)

from vo_node.ros.messages import array_to_image, ns_to_stamp, stamp_to_ns

pytestmark = pytest.mark.skipif(not NETWORK_ISOLATED, reason=NOT_ISOLATED_REASON)

IMAGES = 10
IMAGE_PERIOD_S = 0.05
DIAGNOSTICS_TIMEOUT_S = 4.0
"""Time to wait for a diagnostics message that the 1 s timer should send."""


def status_values(array: DiagnosticArray) -> dict[str, str]:
    return {value.key: value.value for value in array.status[0].values}


def test_diagnostics_warn_when_images_stop(tiny_model):
    from vo_node.ros.node import VONode

    diagnostics: list[DiagnosticArray] = []
    with ros_context(["-p", model_parameter(tiny_model), "-p", "model.device:=cpu"]) as context:
        node = VONode(context=context)
        camera = Node("camera", context=context)
        publisher = camera.create_publisher(Image, "/image", 10)
        camera.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.add_node(camera)
        try:
            assert node.wait_until_ready(60.0)
            assert spin_until(executor, lambda: publisher.get_subscription_count() > 0, 5.0)
            for index in range(IMAGES):
                pixels = np.full((48, 64), index, dtype=np.uint8)
                stamp = ns_to_stamp(1_000_000_000 + index * 50_000_000)
                publisher.publish(array_to_image(pixels, "mono8", stamp, "camera"))
                spin_until(executor, lambda: False, IMAGE_PERIOD_S)
            assert spin_until(executor, lambda: node.input_rate.count == IMAGES, 2.0)
            stopped = len(diagnostics)

            def outage_reported() -> bool:
                return any(d.status[0].message.startswith("no image on /image for ")
                           for d in diagnostics[stopped:])

            assert spin_until(executor, outage_reported, DIAGNOSTICS_TIMEOUT_S), [
                d.status[0].message for d in diagnostics
            ]
        finally:
            node.shutdown()
            executor.shutdown()
            node.destroy_node()
    last = diagnostics[-1]
    assert last.status[0].level == last.status[0].WARN
    assert "outage limit 1.0 s" in last.status[0].message
    assert float(status_values(last)["seconds since the last image"]) > 1.0


def test_diagnostics_sent_before_first_clock(tiny_model):
    # With use_sim_time and no /clock the ROS clock stays at 0, but the steady timer still sends
    # diagnostics, stamped with that clock.
    from vo_node.ros.node import VONode

    diagnostics: list[DiagnosticArray] = []
    arguments = ["-p", model_parameter(tiny_model), "-p", "use_sim_time:=true"]
    with ros_context(arguments) as context:
        node = VONode(context=context)
        listener = Node("listener", context=context)
        listener.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.add_node(listener)
        try:
            assert spin_until(executor, lambda: len(diagnostics) >= 2, DIAGNOSTICS_TIMEOUT_S)
        finally:
            node.shutdown()
            executor.shutdown()
            node.destroy_node()
    assert [stamp_to_ns(d.header.stamp) for d in diagnostics[:2]] == [0, 0]
