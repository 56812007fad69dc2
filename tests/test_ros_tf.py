"""Optical-to-body pose conversion, twist and covariance, and /tf, /tf_static over real DDS."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from scipy.linalg import expm
from test_ros_support import (
    NETWORK_ISOLATED,
    NOT_ISOLATED_REASON,
    model_parameter,
    ros_context,
    spin_until,
)

from vo_node.ros.messages import make_transform, ns_to_stamp, stamp_to_ns
from vo_node.ros.tf import (
    DEFAULT_CAMERA_TO_BASE,
    OdometryFrame,
    StaticTransformPublisher,
    TransformPublisher,
    check_transform,
    covariance_to_ros,
    invert,
    matrix_to_pose,
    matrix_to_quaternion,
    pose_to_matrix,
    quaternion_to_matrix,
    rotation_vector,
    tf2_messages_available,
    twist_in_body,
)

BASE_FROM_CAMERA = pose_to_matrix(DEFAULT_CAMERA_TO_BASE)


def camera_pose(translation, rotation_vector_cam=(0.0, 0.0, 0.0)) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = expm(_skew(rotation_vector_cam))
    matrix[:3, 3] = translation
    return matrix


def _skew(v):
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=float)


def twist_matrix(xi):
    matrix = np.zeros((4, 4))
    matrix[:3, :3] = _skew(xi[3:])
    matrix[:3, 3] = xi[:3]
    return matrix


def test_default_extrinsic_is_optical_rotation():
    expected = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
    np.testing.assert_allclose(BASE_FROM_CAMERA[:3, :3], expected, atol=1e-12)
    np.testing.assert_allclose(BASE_FROM_CAMERA[:3, 3], 0.0)


@pytest.mark.parametrize(
    "optical_motion, body_motion",
    [
        ([0, 0, 1], [1, 0, 0]),  # optical forward (z) is body forward (x)
        ([1, 0, 0], [0, -1, 0]),  # optical right (x) is body -y (y points left)
        ([0, 1, 0], [0, 0, -1]),  # optical down (y) is body -z (z points up)
    ],
)
def test_optical_motion_maps_to_body_axes(optical_motion, body_motion):
    frame = OdometryFrame(BASE_FROM_CAMERA)
    start = frame.odom_from_base(camera_pose([0, 0, 0]))
    moved = frame.odom_from_base(camera_pose(optical_motion))
    np.testing.assert_allclose(start, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(moved[:3, 3], body_motion, atol=1e-12)
    np.testing.assert_allclose(moved[:3, :3], np.eye(3), atol=1e-12)


def test_optical_yaw_maps_to_body_yaw():
    # Turning left is a rotation about optical -y, which is body +z.
    frame = OdometryFrame(BASE_FROM_CAMERA)
    frame.odom_from_base(camera_pose([0, 0, 0]))
    turned = frame.odom_from_base(camera_pose([0, 0, 0], [0, -0.3, 0]))
    np.testing.assert_allclose(rotation_vector(turned[:3, :3]), [0, 0, 0.3], atol=1e-12)


def test_first_pose_is_identity_and_scale_applies():
    frame = OdometryFrame(BASE_FROM_CAMERA, scale=2.0)
    first = camera_pose([5, 1, -2], [0.1, 0.2, 0.3])
    second = first @ camera_pose([0, 0, 1.5])
    np.testing.assert_allclose(frame.odom_from_base(first), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(frame.odom_from_base(second)[:3, 3], [3.0, 0, 0], atol=1e-12)


def test_new_segment_continues_from_last_pose():
    frame = OdometryFrame(BASE_FROM_CAMERA)
    frame.odom_from_base(camera_pose([0, 0, 0]))
    last = frame.odom_from_base(camera_pose([0, 0, 2.0], [0, -0.5, 0]))
    frame.start_segment()
    # After a reset the engine starts again at identity in a new world frame.
    restart = frame.odom_from_base(camera_pose([0, 0, 0]))
    np.testing.assert_allclose(restart, last, atol=1e-12)
    onwards = frame.odom_from_base(camera_pose([0, 0, 1.0]))
    expected = last @ pose_to_matrix([1.0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(onwards, expected, atol=1e-12)


def test_segment_scale_ratio_keeps_previous_scale():
    frame = OdometryFrame(BASE_FROM_CAMERA, scale=2.0)
    frame.odom_from_base(camera_pose([0, 0, 0]))
    last = frame.odom_from_base(camera_pose([0, 0, 1.0]))
    # The new hypothesis moves 4 engine units per step where the old one moved 1.
    frame.start_segment(0.25)
    assert frame.segment_scale == 0.25
    frame.odom_from_base(camera_pose([3, 3, -20.0]))
    onwards = frame.odom_from_base(camera_pose([3, 3, -16.0]))
    np.testing.assert_allclose(onwards[:3, 3] - last[:3, 3], [2.0, 0, 0], atol=1e-12)
    # A second switch multiplies the factors; a reset or an invalid ratio restores 1.
    frame.start_segment(2.0)
    assert frame.segment_scale == 0.5
    assert frame.translation_scale == 1.0
    frame.start_segment()
    assert frame.segment_scale == 1.0
    frame.start_segment(0.5)
    frame.start_segment(float("nan"))
    assert frame.segment_scale == 1.0


def test_camera_pose_inverts_body_conversion():
    frame = OdometryFrame(pose_to_matrix([0.1, 0.0, 0.3, -0.5, 0.5, -0.5, 0.5]))
    poses = [camera_pose([0, 0, 0]), camera_pose([0.3, -0.2, 1.0], [0.05, -0.1, 0.02])]
    recovered = [frame.camera_pose(frame.odom_from_base(pose)) for pose in poses]
    np.testing.assert_allclose(recovered[1], poses[1], atol=1e-12)


def test_twist_of_forward_motion_with_yaw():
    start = pose_to_matrix([1.0, 2.0, 0.0, 0, 0, np.sin(0.4), np.cos(0.4)])
    delta = np.eye(4)
    delta[:3, :3] = expm(_skew([0, 0, 0.1]))
    delta[:3, 3] = [0.2, 0.0, 0.0]
    twist = twist_in_body(start, start @ delta, dt_s=0.1)
    # Body-frame velocity of this motion, rotated into the new body frame.
    expected_linear = delta[:3, :3].T @ np.array([2.0, 0.0, 0.0])
    np.testing.assert_allclose(twist[:3], expected_linear, atol=1e-12)
    np.testing.assert_allclose(twist[3:], [0, 0, 1.0], atol=1e-12)
    with pytest.raises(ValueError, match="positive time step"):
        twist_in_body(start, start, 0.0)


def test_covariance_matches_finite_differences():
    # Propagate camera-frame perturbations of T_cam_world through the conversion numerically
    # and compare J Sigma J^T with the closed form.
    base_from_camera = pose_to_matrix([0.2, -0.1, 0.4, -0.5, 0.5, -0.5, 0.5])
    world_from_camera = camera_pose([0.5, -0.3, 2.0], [0.2, -0.4, 0.1])
    origin = camera_pose([0, 0, 0])

    def body_pose(world_from_cam):
        frame = OdometryFrame(base_from_camera)
        frame.odom_from_base(origin)
        return frame.odom_from_base(world_from_cam)

    reference = body_pose(world_from_camera)
    step = 1e-7
    jacobian = np.zeros((6, 6))
    for index in range(6):
        xi = np.zeros(6)
        xi[index] = step
        camera_from_world = expm(twist_matrix(xi)) @ invert(world_from_camera)
        perturbed = body_pose(invert(camera_from_world))
        jacobian[:3, index] = (perturbed[:3, 3] - reference[:3, 3]) / step
        jacobian[3:, index] = rotation_vector(perturbed[:3, :3] @ reference[:3, :3].T) / step
    generator = np.random.default_rng(0)
    factor = generator.normal(size=(6, 6))
    covariance = factor @ factor.T
    expected = jacobian @ covariance @ jacobian.T
    result = covariance_to_ros(covariance, base_from_camera, reference)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result, result.T)


def test_quaternion_round_trip_and_checks():
    generator = np.random.default_rng(1)
    for _ in range(20):
        quaternion = generator.normal(size=4)
        quaternion /= np.linalg.norm(quaternion)
        quaternion *= np.sign(quaternion[3])
        recovered = matrix_to_quaternion(quaternion_to_matrix(quaternion))
        np.testing.assert_allclose(recovered, quaternion, atol=1e-12)
    pose = [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]
    np.testing.assert_allclose(matrix_to_pose(pose_to_matrix(pose)), pose)
    with pytest.raises(ValueError, match="7 values"):
        check_transform([0, 0, 0, 1], "camera_to_base")
    with pytest.raises(ValueError, match="norm 2.0"):
        check_transform([0, 0, 0, 0, 0, 0, 2.0], "camera_to_base")


# --------------------------------------------------------------------------------------------
# DDS


pytestmark_dds = pytest.mark.skipif(not NETWORK_ISOLATED, reason=NOT_ISOLATED_REASON)


def _tf_subscription(node, topic, received, static=False):
    from tf2_msgs.msg import TFMessage

    qos = QoSProfile(
        depth=1 if static else 100,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE,
    )
    return node.create_subscription(TFMessage, topic, received.append, qos)


@pytestmark_dds
@pytest.mark.skipif(not tf2_messages_available(), reason="tf2_msgs not built; run make")
def test_tf_and_late_joining_tf_static():
    with ros_context() as context:
        publisher_node = Node("tf_publisher", context=context)
        listener = Node("tf_listener", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(publisher_node)
        executor.add_node(listener)

        static = StaticTransformPublisher(publisher_node)
        static.publish([make_transform(BASE_FROM_CAMERA, ns_to_stamp(5), "base_link", "cam")])
        dynamic = TransformPublisher(publisher_node)
        received, static_received = [], []
        _tf_subscription(listener, "/tf", received)
        assert spin_until(executor, lambda: dynamic._publisher.get_subscription_count() > 0, 5.0)
        odom_from_base = pose_to_matrix([1.0, 2.0, 0.0, 0, 0, 0, 1])
        dynamic.publish([make_transform(odom_from_base, ns_to_stamp(99), "odom", "base_link")])
        assert spin_until(executor, lambda: received, 5.0)

        # The static subscription is created after publishing: transient local delivers it.
        _tf_subscription(listener, "/tf_static", static_received, static=True)
        assert spin_until(executor, lambda: static_received, 5.0)
        executor.shutdown()

    transform = received[0].transforms[0]
    assert (transform.header.frame_id, transform.child_frame_id) == ("odom", "base_link")
    assert stamp_to_ns(transform.header.stamp) == 99
    assert transform.transform.translation.y == 2.0
    static_transform = static_received[0].transforms[0]
    assert (static_transform.header.frame_id, static_transform.child_frame_id) == (
        "base_link", "cam",
    )
    assert static_transform.transform.rotation.x == pytest.approx(-0.5)


@pytestmark_dds
@pytest.mark.skipif(not tf2_messages_available(), reason="tf2_msgs not built; run make")
@pytest.mark.parametrize("publish_camera_tf", [True, False])
def test_node_static_camera_transform(tiny_model, publish_camera_tf):
    from vo_node.ros.node import VONode

    arguments = ["-p", model_parameter(tiny_model), "-p", "camera_frame:=front_optical",
                 "-p", "base_frame:=body",
                 "-p", f"publish_camera_tf:={str(publish_camera_tf).lower()}",
                 "-p", "camera_to_base:=[0.1, 0.0, 0.2, -0.5, 0.5, -0.5, 0.5]"]
    with ros_context(arguments) as context:
        node = VONode(context=context)
        listener = Node("tf_listener", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.add_node(listener)
        received = []
        _tf_subscription(listener, "/tf_static", received, static=True)
        spin_until(executor, lambda: received, 3.0 if publish_camera_tf else 1.0)
        node.shutdown()
        executor.shutdown()
        node.destroy_node()

    if not publish_camera_tf:
        assert received == []
        return
    transform = received[0].transforms[0]
    assert transform.header.frame_id == "body"
    assert transform.child_frame_id == "front_optical"
    assert transform.transform.translation.x == pytest.approx(0.1)
    assert transform.transform.translation.z == pytest.approx(0.2)


@pytestmark_dds
@pytest.mark.skipif(not tf2_messages_available(), reason="tf2_msgs not built; run make")
def test_header_frame_equal_to_base_not_published(tiny_model):
    # camera_frame is empty, so the image header's frame id names the camera. A header that
    # names base_frame would make base_link -> base_link, which tf2 rejects.
    from vo_node.ros.node import VONode

    with ros_context(["-p", model_parameter(tiny_model)]) as context:
        node = VONode(context=context)
        published = []
        node.tf_static_publisher.publish = published.append
        errors = []
        node.get_logger = lambda: SimpleNamespace(error=errors.append)
        node._publish_camera_transform("base_link")
        del node.get_logger
        node.shutdown()
        node.destroy_node()
    assert published == []
    assert len(errors) == 1
    assert "header.frame_id 'base_link' equals base_frame or odom_frame" in errors[0]
    assert "-p camera_frame:=" in errors[0]
