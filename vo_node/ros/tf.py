"""Rigid transforms in numpy, the optical-to-body frame change, and TF publishing without tf2_ros.

PyPI carries no tf2_ros, so /tf and /tf_static are published here as plain topics of
``tf2_msgs/msg/TFMessage`` with the QoS that tf2 listeners expect: /tf reliable, volatile,
depth 100; /tf_static reliable, transient local, depth 1. ``tf2_msgs`` itself is generated into
the virtual environment by ``scripts/build_tf2_msgs.sh``; where it is missing, the publishers log
one warning and stay disabled.

Poses follow the package convention: ``[tx, ty, tz, qx, qy, qz, qw]`` (Hamilton, scalar last) and
``T_a_b`` maps coordinates in frame ``b`` to frame ``a``. Matrices are ``(4, 4)`` float64.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

OPTICAL_IN_BODY_QUATERNION = (-0.5, 0.5, -0.5, 0.5)
"""``[qx, qy, qz, qw]`` of ``R_body_optical``: optical z forward, x right, y down expressed in
REP-103 body axes x forward, y left, z up (roll -pi/2, yaw -pi/2)."""

DEFAULT_CAMERA_TO_BASE = (0.0, 0.0, 0.0) + OPTICAL_IN_BODY_QUATERNION
"""``T_base_cam`` as ``[x, y, z, qx, qy, qz, qw]``: the camera at the body origin, pure rotation."""

QUATERNION_NORM_TOLERANCE = 1e-3
"""Largest ``| |q| - 1 |`` accepted before a quaternion is rejected rather than normalised."""

TF_DEPTH = 100
TF_STATIC_DEPTH = 1


# --------------------------------------------------------------------------------------------
# Rotations and poses


def quaternion_to_matrix(quaternion: Sequence[float]) -> np.ndarray:
    """Return the ``(3, 3)`` rotation of a unit quaternion ``[qx, qy, qz, qw]``."""
    x, y, z, w = np.asarray(quaternion, dtype=np.float64) / np.linalg.norm(quaternion)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Return ``[qx, qy, qz, qw]`` with ``qw >= 0`` of a ``(3, 3)`` rotation matrix."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s]
    quaternion = np.array(q) / np.linalg.norm(q)
    return -quaternion if quaternion[3] < 0 else quaternion


def pose_to_matrix(pose: Sequence[float]) -> np.ndarray:
    """Return the ``(4, 4)`` matrix of a pose ``[tx, ty, tz, qx, qy, qz, qw]``."""
    values = np.asarray(pose, dtype=np.float64).reshape(7)
    matrix = np.eye(4)
    matrix[:3, :3] = quaternion_to_matrix(values[3:])
    matrix[:3, 3] = values[:3]
    return matrix


def matrix_to_pose(matrix: np.ndarray) -> np.ndarray:
    """Return ``[tx, ty, tz, qx, qy, qz, qw]`` of a ``(4, 4)`` rigid transform."""
    return np.concatenate([matrix[:3, 3], matrix_to_quaternion(matrix[:3, :3])])


def invert(matrix: np.ndarray) -> np.ndarray:
    """Return the inverse of a ``(4, 4)`` rigid transform."""
    rotation = matrix[:3, :3]
    inverse = np.eye(4)
    inverse[:3, :3] = rotation.T
    inverse[:3, 3] = -rotation.T @ matrix[:3, 3]
    return inverse


def skew(vector: Sequence[float]) -> np.ndarray:
    """Return the ``(3, 3)`` cross-product matrix of a 3-vector."""
    x, y, z = vector
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def adjoint(matrix: np.ndarray) -> np.ndarray:
    """Return the ``(6, 6)`` adjoint of a rigid transform for tangent order ``[v, w]``.

    It satisfies ``T exp(xi) T^-1 = exp(adjoint(T) xi)``.
    """
    rotation = matrix[:3, :3]
    result = np.zeros((6, 6))
    result[:3, :3] = rotation
    result[3:, 3:] = rotation
    result[:3, 3:] = skew(matrix[:3, 3]) @ rotation
    return result


def rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """Return the axis-angle vector (radians) of a ``(3, 3)`` rotation matrix."""
    quaternion = matrix_to_quaternion(rotation)
    sine = np.linalg.norm(quaternion[:3])
    if sine < 1e-12:
        return 2.0 * quaternion[:3]
    angle = 2.0 * np.arctan2(sine, quaternion[3])
    return quaternion[:3] / sine * angle


def check_transform(values: Sequence[float], name: str) -> np.ndarray:
    """Return ``[x, y, z, qx, qy, qz, qw]`` with a normalised quaternion, or raise ValueError.

    The quaternion norm must be within :data:`QUATERNION_NORM_TOLERANCE` of 1.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.shape != (7,):
        raise ValueError(f"{name} must have 7 values [x, y, z, qx, qy, qz, qw], got {len(array)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    norm = np.linalg.norm(array[3:])
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise ValueError(
            f"{name} quaternion [qx, qy, qz, qw] = {array[3:].tolist()} has norm {norm:.6f}; "
            "give a unit quaternion"
        )
    array[3:] /= norm
    return array


# --------------------------------------------------------------------------------------------
# Optical camera poses to REP-103 odometry


class OdometryFrame:
    """Map engine poses ``T_world_cam`` (optical axes) to ``T_odom_base`` (REP-103 body axes).

    A tracking segment runs from a start or reset of the engine to the next one. Within it,
    ``T_odom_base = A * T_base_cam * S(T_world_cam0^-1 * T_world_cam) * T_base_cam^-1``.
    ``T_world_cam0`` is the engine pose of the segment's first frame and ``S`` multiplies the
    translation by ``scale`` times ``segment_scale``. The anchor ``A`` is the identity for the
    first segment and the last published ``T_odom_base`` for later ones. So the odom frame
    starts at the first frame's body pose and continues without a jump across resets.
    """

    def __init__(self, base_from_camera: np.ndarray, scale: float = 1.0) -> None:
        self.base_from_camera = np.asarray(base_from_camera, dtype=np.float64)
        self.camera_from_base = invert(self.base_from_camera)
        self.scale = float(scale)
        self.segment_scale = 1.0
        """Factor on the current segment's translations that keeps the previous segment's scale
        across a change of depth hypothesis. It is 1 after a start, reset or tracking loss."""
        self._anchor = np.eye(4)
        self._segment_origin_inverse: np.ndarray | None = None
        self.last_odom_from_base: np.ndarray | None = None

    @property
    def segment_started(self) -> bool:
        """Whether the current segment has received its first pose."""
        return self._segment_origin_inverse is not None

    @property
    def translation_scale(self) -> float:
        """Factor from engine translations to odom translations in the current segment."""
        return self.scale * self.segment_scale

    def start_segment(self, scale_ratio: float | None = None) -> None:
        """Anchor the next pose at the last published one (identity before any pose).

        ``scale_ratio`` is the engine's ``TrackResult.scale_ratio`` when the segment continues
        the previous one in another depth hypothesis. The new segment then keeps the previous
        segment's scale. Without it the new segment starts at ``scale`` alone.
        """
        self._anchor = np.eye(4) if self.last_odom_from_base is None else self.last_odom_from_base
        self._segment_origin_inverse = None
        valid = scale_ratio is not None and math.isfinite(scale_ratio) and scale_ratio > 0
        self.segment_scale = self.segment_scale * scale_ratio if valid else 1.0

    def odom_points(self, points_world: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` engine world points into the odom frame (scaled like the poses)."""
        if self._segment_origin_inverse is None:
            return np.zeros((0, 3))
        relative = points_world @ self._segment_origin_inverse[:3, :3].T
        relative = (relative + self._segment_origin_inverse[:3, 3]) * self.translation_scale
        odom_from_camera_axes = self._anchor @ self.base_from_camera
        return relative @ odom_from_camera_axes[:3, :3].T + odom_from_camera_axes[:3, 3]

    def odom_from_base(self, world_from_camera: np.ndarray) -> np.ndarray:
        """Return ``T_odom_base`` ``(4, 4)`` for an engine pose ``T_world_cam`` ``(4, 4)``."""
        if self._segment_origin_inverse is None:
            self._segment_origin_inverse = invert(world_from_camera)
        relative = self._segment_origin_inverse @ world_from_camera
        relative[:3, 3] *= self.translation_scale
        result = self._anchor @ self.base_from_camera @ relative @ self.camera_from_base
        self.last_odom_from_base = result
        return result

    def camera_pose(self, odom_from_base: np.ndarray) -> np.ndarray:
        """Return the camera pose in optical axes, ``T_base_cam^-1 * T_odom_base * T_base_cam``.

        This is ``T_world_cam`` with the world frame at the first frame's camera: the form the
        engine, TUM files and the evaluation use.
        """
        return self.camera_from_base @ odom_from_base @ self.base_from_camera


def twist_in_body(previous: np.ndarray, current: np.ndarray, dt_s: float) -> np.ndarray:
    """Return ``[vx, vy, vz, wx, wy, wz]`` (m/s, rad/s) in the current body frame.

    The motion between two ``T_odom_base`` poses ``(4, 4)`` taken ``dt_s`` seconds apart is
    differenced: the translation and the rotation vector of ``previous^-1 * current``, divided by
    ``dt_s``, then rotated into the current body frame.
    """
    if dt_s <= 0:
        raise ValueError(f"twist needs a positive time step, got {dt_s} s")
    delta = invert(previous) @ current
    back_to_current = delta[:3, :3].T
    linear = back_to_current @ delta[:3, 3] / dt_s
    angular = back_to_current @ rotation_vector(delta[:3, :3]) / dt_s
    return np.concatenate([linear, angular])


def covariance_to_ros(
    covariance_camera: np.ndarray, base_from_camera: np.ndarray, odom_from_base: np.ndarray
) -> np.ndarray:
    """Convert an engine pose covariance to the ``nav_msgs/Odometry`` pose covariance.

    Args:
        covariance_camera: ``(6, 6)`` in tangent order ``[v, w]`` of a left update of
            ``T_cam_world`` (a perturbation expressed in the camera frame).
        base_from_camera: ``(4, 4)`` ``T_base_cam``.
        odom_from_base: ``(4, 4)`` ``T_odom_base`` of the same frame.

    Returns:
        ``(6, 6)`` covariance of ``(x, y, z, rot X, rot Y, rot Z)``: position and rotation
        perturbations about the fixed axes of the odom frame, as REP-103 defines it.

    A left update ``exp(xi) * T_cam_world`` is the right update ``T_odom_base * exp(-Ad(B) xi)``
    of the body pose (``B = T_base_cam``). A body-frame perturbation ``[rho, phi]`` moves the
    position by ``R rho`` and the orientation by ``R phi`` about odom axes (``R`` the body
    rotation), hence ``blockdiag(R, R) Ad(B) Sigma Ad(B)^T blockdiag(R, R)^T``.
    """
    covariance = np.asarray(covariance_camera, dtype=np.float64).reshape(6, 6)
    in_body = adjoint(base_from_camera) @ covariance @ adjoint(base_from_camera).T
    rotate = np.zeros((6, 6))
    rotate[:3, :3] = odom_from_base[:3, :3]
    rotate[3:, 3:] = odom_from_base[:3, :3]
    result = rotate @ in_body @ rotate.T
    return 0.5 * (result + result.T)


# --------------------------------------------------------------------------------------------
# /tf and /tf_static publishers


def tf2_messages_available() -> bool:
    """Return whether ``tf2_msgs.msg.TFMessage`` can be imported."""
    try:
        from tf2_msgs.msg import TFMessage  # noqa: F401
    except ImportError:
        return False
    return True


_warned_missing_tf2 = False


def _warn_missing_tf2(node) -> None:
    global _warned_missing_tf2
    if not _warned_missing_tf2:
        node.get_logger().warning(
            "tf2_msgs is not importable, so /tf and /tf_static are disabled; build it into the "
            "virtual environment with scripts/build_tf2_msgs.sh"
        )
        _warned_missing_tf2 = True


def _create_tf_publisher(node, topic: str, depth: int, durability):
    """Create a reliable ``tf2_msgs/TFMessage`` publisher on ``topic``.

    Returns None, after a warning, when tf2_msgs is not importable.
    """
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    if not tf2_messages_available():
        _warn_missing_tf2(node)
        return None
    from tf2_msgs.msg import TFMessage

    qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=durability)
    return node.create_publisher(TFMessage, topic, qos)


class TransformPublisher:
    """Publisher of dynamic transforms on /tf (reliable, volatile, depth 100)."""

    def __init__(self, node, topic: str = "/tf") -> None:
        from rclpy.qos import DurabilityPolicy

        self._publisher = _create_tf_publisher(node, topic, TF_DEPTH, DurabilityPolicy.VOLATILE)
        self.enabled = self._publisher is not None

    def publish(self, transforms: Iterable) -> None:
        """Publish ``geometry_msgs/TransformStamped`` messages in one TFMessage."""
        if self._publisher is not None:
            self._publisher.publish(self._publisher.msg_type(transforms=list(transforms)))


class StaticTransformPublisher:
    """Publisher of static transforms on /tf_static (reliable, transient local, depth 1).

    A late-joining subscriber receives the last message, so every call republishes all static
    transforms given so far in one message, keyed by child frame.
    """

    def __init__(self, node, topic: str = "/tf_static") -> None:
        from rclpy.qos import DurabilityPolicy

        self._transforms: dict[str, object] = {}
        self._publisher = _create_tf_publisher(
            node, topic, TF_STATIC_DEPTH, DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.enabled = self._publisher is not None

    def publish(self, transforms: Iterable) -> None:
        """Add or replace ``TransformStamped`` messages and publish the whole static set."""
        if self._publisher is None:
            return
        for transform in transforms:
            self._transforms[transform.child_frame_id] = transform
        self._publisher.publish(
            self._publisher.msg_type(transforms=list(self._transforms.values()))
        )
