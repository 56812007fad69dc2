"""Conversions between ROS 2 messages and numpy: images, camera info, poses, odometry, clouds.

Image decoding is written by hand (no cv_bridge, which PyPI only carries as a broken ROS 1 port):
rows are read with their ``step`` padding, 16-bit data honours ``is_bigendian``, Bayer and YUV 4:2:2
are converted with OpenCV. :func:`image_to_tracking_array` reduces every supported encoding to
what the engine takes: ``uint8`` grey ``(H, W)`` or RGB ``(H, W, 3)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped, Quaternion, TransformStamped, Vector3
from nav_msgs.msg import Odometry, Path
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from vo_node.io.camera import MODEL_ALIASES, CalibrationError, PinholeCamera
from vo_node.ros.tf import matrix_to_quaternion

logger = logging.getLogger(__name__)

NANOSECONDS_PER_SECOND = 1_000_000_000
UINT16_TO_UINT8_SHIFT = 8
"""16-bit images are reduced to 8 bits by keeping the high byte."""


class ImageConversionError(ValueError):
    """An image message cannot be decoded; the message names the field, the value and the fix."""


class CameraInfoError(ValueError):
    """A CameraInfo message is unusable; the message names the field and the value."""


@dataclass(frozen=True)
class EncodingLayout:
    """Memory layout of one ``sensor_msgs/Image`` encoding."""

    channels: int
    dtype: type
    colour: str
    """How to reach grey or RGB: ``grey``, ``rgb``, ``bgr``, ``rgba``, ``bgra``, ``bayer`` or
    ``yuv``."""
    conversion: int | None = None
    """OpenCV ``cvtColor`` code to RGB for Bayer and YUV encodings."""


# OpenCV names a Bayer pattern by the second row's second and third pixels, so the ROS pattern
# RGGB is OpenCV's BG, BGGR is RG, GBRG is GR and GRBG is GB.
_BAYER_CODES = {
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}

ENCODINGS: dict[str, EncodingLayout] = {
    "mono8": EncodingLayout(1, np.uint8, "grey"),
    "8UC1": EncodingLayout(1, np.uint8, "grey"),
    "mono16": EncodingLayout(1, np.uint16, "grey"),
    "16UC1": EncodingLayout(1, np.uint16, "grey"),
    "rgb8": EncodingLayout(3, np.uint8, "rgb"),
    "bgr8": EncodingLayout(3, np.uint8, "bgr"),
    # Generic 3-channel data follows OpenCV's channel order, BGR.
    "8UC3": EncodingLayout(3, np.uint8, "bgr"),
    "rgba8": EncodingLayout(4, np.uint8, "rgba"),
    "bgra8": EncodingLayout(4, np.uint8, "bgra"),
    "8UC4": EncodingLayout(4, np.uint8, "bgra"),
    "rgb16": EncodingLayout(3, np.uint16, "rgb"),
    "bgr16": EncodingLayout(3, np.uint16, "bgr"),
    "16UC3": EncodingLayout(3, np.uint16, "bgr"),
    "rgba16": EncodingLayout(4, np.uint16, "rgba"),
    "bgra16": EncodingLayout(4, np.uint16, "bgra"),
    # ROS "yuv422" is UYVY byte order; "yuv422_yuy2" and "yuyv" are YUY2.
    "yuv422": EncodingLayout(2, np.uint8, "yuv", cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": EncodingLayout(2, np.uint8, "yuv", cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": EncodingLayout(2, np.uint8, "yuv", cv2.COLOR_YUV2RGB_YUY2),
    "yuyv": EncodingLayout(2, np.uint8, "yuv", cv2.COLOR_YUV2RGB_YUY2),
}
for _pattern, _code in _BAYER_CODES.items():
    ENCODINGS[f"bayer_{_pattern}8"] = EncodingLayout(1, np.uint8, "bayer", _code)
    ENCODINGS[f"bayer_{_pattern}16"] = EncodingLayout(1, np.uint16, "bayer", _code)


# --------------------------------------------------------------------------------------------
# Stamps


def stamp_to_ns(stamp: Time) -> int:
    """Return a ``builtin_interfaces/Time`` as integer nanoseconds."""
    return int(stamp.sec) * NANOSECONDS_PER_SECOND + int(stamp.nanosec)


def ns_to_stamp(nanoseconds: int) -> Time:
    """Return integer nanoseconds as a ``builtin_interfaces/Time``."""
    seconds, remainder = divmod(int(nanoseconds), NANOSECONDS_PER_SECOND)
    return Time(sec=seconds, nanosec=remainder)


# --------------------------------------------------------------------------------------------
# Images


def image_to_array(msg: Image) -> np.ndarray:
    """Decode the pixels of a ``sensor_msgs/Image`` without changing their values.

    Returns:
        ``(H, W)`` for single-channel encodings, ``(H, W, C)`` otherwise, in the encoding's
        dtype (``uint8`` or ``uint16``, native byte order). Row padding (``step`` larger than
        ``width * bytes per pixel``) is dropped; the result may be a view of ``msg.data``.

    Raises:
        ImageConversionError: on an unsupported encoding, a zero size, a ``step`` too small for
            the width, or ``len(data) != height * step``.
    """
    layout = _layout(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image size must be positive, got {width}x{height}")
    item_size = np.dtype(layout.dtype).itemsize
    row_bytes = width * layout.channels * item_size
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width * bytes per pixel = {width} * "
            f"{layout.channels * item_size} = {row_bytes} for encoding {msg.encoding!r}"
        )
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != height * step:
        raise ImageConversionError(
            f"data has {data.size} bytes but height * step = {height} * {step} = "
            f"{height * step}; the message is truncated or its step is wrong"
        )
    rows = data.reshape(height, step)[:, :row_bytes]
    if item_size > 1:
        byte_order = ">" if msg.is_bigendian else "<"
        rows = np.ascontiguousarray(rows).view(np.dtype(layout.dtype).newbyteorder(byte_order))
        rows = rows.astype(layout.dtype, copy=False)
    if layout.channels == 1:
        return rows.reshape(height, width)
    return rows.reshape(height, width, layout.channels)


def image_to_tracking_array(msg: Image) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` to the engine's input: ``uint8`` grey or RGB.

    Returns:
        ``(H, W)`` uint8 for grey encodings, ``(H, W, 3)`` uint8 RGB otherwise. 16-bit data keeps
        its high byte; alpha is dropped; Bayer and YUV 4:2:2 are converted to RGB.

    Raises:
        ImageConversionError: as :func:`image_to_array`.
    """
    layout = _layout(msg.encoding)
    pixels = image_to_array(msg)
    if layout.colour == "yuv":
        return cv2.cvtColor(np.ascontiguousarray(pixels), layout.conversion)
    if pixels.dtype == np.uint16:
        pixels = (pixels >> UINT16_TO_UINT8_SHIFT).astype(np.uint8)
    if layout.colour == "bayer":
        return cv2.cvtColor(np.ascontiguousarray(pixels), layout.conversion)
    return _to_grey_or_rgb(pixels, layout.colour)


def compressed_to_tracking_array(msg: CompressedImage) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG) to ``uint8`` grey or RGB.

    Raises:
        ImageConversionError: when the format is a depth stream or OpenCV cannot decode the data.
    """
    if "compresseddepth" in msg.format.replace(" ", "").lower():
        raise ImageConversionError(
            f"format {msg.format!r} is a compressed depth image; subscribe to a colour or grey "
            "image stream"
        )
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageConversionError(f"compressed image (format {msg.format!r}) has no data")
    pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageConversionError(
            f"OpenCV could not decode {data.size} bytes of format {msg.format!r}; "
            "the data is corrupt or not JPEG/PNG"
        )
    if pixels.dtype == np.uint16:
        pixels = (pixels >> UINT16_TO_UINT8_SHIFT).astype(np.uint8)
    if pixels.ndim == 2:
        return pixels
    # OpenCV decodes colour to BGR(A).
    return _to_grey_or_rgb(pixels, "bgr" if pixels.shape[2] == 3 else "bgra")


def array_to_image(
    pixels: np.ndarray, encoding: str, stamp: Time | None = None, frame_id: str = ""
) -> Image:
    """Build a ``sensor_msgs/Image`` from ``(H, W)`` or ``(H, W, C)`` pixels.

    Raises:
        ImageConversionError: when the encoding is unknown or its channels and dtype do not
            match ``pixels``.
    """
    layout = _layout(encoding)
    array = np.ascontiguousarray(pixels)
    channels = 1 if array.ndim == 2 else array.shape[2]
    if array.ndim not in (2, 3) or channels != layout.channels or array.dtype != layout.dtype:
        raise ImageConversionError(
            f"encoding {encoding!r} needs {layout.channels} channel(s) of "
            f"{np.dtype(layout.dtype).name}, got shape {pixels.shape} of {array.dtype.name}"
        )
    height, width = array.shape[:2]
    header = Header(stamp=stamp if stamp is not None else Time(), frame_id=frame_id)
    return Image(
        header=header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=False,
        step=width * channels * array.dtype.itemsize,
        data=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
    )


def _layout(encoding: str) -> EncodingLayout:
    layout = ENCODINGS.get(encoding)
    if layout is None:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(sorted(ENCODINGS))}"
        )
    return layout


def _to_grey_or_rgb(pixels: np.ndarray, colour: str) -> np.ndarray:
    if colour == "grey":
        return pixels
    if colour == "rgb":
        return pixels
    if colour == "rgba":
        return pixels[..., :3]
    # bgr and bgra: reverse the first three channels.
    return pixels[..., 2::-1]


# --------------------------------------------------------------------------------------------
# Camera info


def camera_from_info(msg: CameraInfo) -> PinholeCamera:
    """Convert a ``sensor_msgs/CameraInfo`` to the camera of the images it describes.

    ``K`` and ``D`` describe the full-resolution sensor; binning and a region of interest are
    applied so the returned camera matches the published images. All-zero distortion becomes the
    model ``none``.

    Raises:
        CameraInfoError: on zero or non-finite focal lengths, a zero image size, or an unknown
            distortion model or coefficient count.
    """
    k = np.asarray(msg.k, dtype=np.float64)
    fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    if not np.all(np.isfinite([fx, fy, cx, cy])) or fx <= 0 or fy <= 0:
        raise CameraInfoError(
            f"K has focal lengths fx={fx}, fy={fy} (principal point {cx}, {cy}); an uncalibrated "
            "camera publishes zeros, so calibrate it or set the intrinsics parameter"
        )
    width, height = int(msg.width), int(msg.height)
    binning_x = max(1, int(msg.binning_x))
    binning_y = max(1, int(msg.binning_y))
    roi = msg.roi
    if roi.width > 0 and roi.height > 0:
        width, height = int(roi.width), int(roi.height)
        cx -= roi.x_offset
        cy -= roi.y_offset
    width //= binning_x
    height //= binning_y
    coefficients = tuple(float(value) for value in msg.d)
    model_name = msg.distortion_model.strip().lower()
    if not any(coefficients):
        model, coefficients = "none", ()
    elif model_name in MODEL_ALIASES:
        model = MODEL_ALIASES[model_name]
    else:
        raise CameraInfoError(
            f"distortion model {msg.distortion_model!r} with coefficients {list(coefficients)} is "
            "not supported; use plumb_bob, rational_polynomial or equidistant"
        )
    try:
        return PinholeCamera(
            width=width,
            height=height,
            fx=fx / binning_x,
            fy=fy / binning_y,
            cx=cx / binning_x,
            cy=cy / binning_y,
            distortion_model=model,
            coefficients=coefficients,
        )
    except CalibrationError as error:
        raise CameraInfoError(str(error)) from None


# --------------------------------------------------------------------------------------------
# Poses, odometry, paths, transforms


def matrix_to_pose_msg(matrix: np.ndarray) -> Pose:
    """Return a ``geometry_msgs/Pose`` of a ``(4, 4)`` rigid transform."""
    qx, qy, qz, qw = matrix_to_quaternion(matrix[:3, :3])
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in matrix[:3, 3])
    pose.orientation = Quaternion(x=float(qx), y=float(qy), z=float(qz), w=float(qw))
    return pose


def pose_msg_to_matrix(pose: Pose) -> np.ndarray:
    """Return the ``(4, 4)`` matrix of a ``geometry_msgs/Pose``."""
    from vo_node.ros.tf import pose_to_matrix

    p, q = pose.position, pose.orientation
    return pose_to_matrix([p.x, p.y, p.z, q.x, q.y, q.z, q.w])


def make_transform(matrix: np.ndarray, stamp: Time, parent: str, child: str) -> TransformStamped:
    """Return a ``TransformStamped`` of ``T_parent_child`` ``(4, 4)``."""
    message = TransformStamped()
    message.header = Header(stamp=stamp, frame_id=parent)
    message.child_frame_id = child
    qx, qy, qz, qw = matrix_to_quaternion(matrix[:3, :3])
    tx, ty, tz = (float(v) for v in matrix[:3, 3])
    message.transform.translation = Vector3(x=tx, y=ty, z=tz)
    message.transform.rotation = Quaternion(x=float(qx), y=float(qy), z=float(qz), w=float(qw))
    return message


def make_pose_stamped(matrix: np.ndarray, stamp: Time, frame_id: str) -> PoseStamped:
    """Return a ``PoseStamped`` of a ``(4, 4)`` pose in ``frame_id``."""
    header = Header(stamp=stamp, frame_id=frame_id)
    return PoseStamped(header=header, pose=matrix_to_pose_msg(matrix))


def make_odometry(
    odom_from_base: np.ndarray,
    twist: Sequence[float],
    pose_covariance: np.ndarray,
    twist_covariance: np.ndarray,
    stamp: Time,
    odom_frame: str,
    base_frame: str,
) -> Odometry:
    """Return a ``nav_msgs/Odometry``: pose in ``odom_frame``, twist in ``base_frame``.

    Args:
        odom_from_base: ``(4, 4)`` ``T_odom_base``.
        twist: ``[vx, vy, vz, wx, wy, wz]`` in the body frame (m/s, rad/s).
        pose_covariance, twist_covariance: ``(6, 6)``, row-major in ROS order
            ``(x, y, z, rot X, rot Y, rot Z)``.
    """
    message = Odometry()
    message.header = Header(stamp=stamp, frame_id=odom_frame)
    message.child_frame_id = base_frame
    message.pose.pose = matrix_to_pose_msg(odom_from_base)
    message.pose.covariance = [float(v) for v in np.asarray(pose_covariance).reshape(36)]
    linear, angular = message.twist.twist.linear, message.twist.twist.angular
    linear.x, linear.y, linear.z, angular.x, angular.y, angular.z = (float(v) for v in twist)
    message.twist.covariance = [float(v) for v in np.asarray(twist_covariance).reshape(36)]
    return message


def make_path(poses: Sequence[PoseStamped], stamp: Time, frame_id: str) -> Path:
    """Return a ``nav_msgs/Path`` of the given poses."""
    return Path(header=Header(stamp=stamp, frame_id=frame_id), poses=list(poses))


def make_point_cloud(points: np.ndarray, stamp: Time, frame_id: str) -> PointCloud2:
    """Return an unorganised ``PointCloud2`` of ``(N, 3)`` points (float32 x, y, z)."""
    xyz = np.ascontiguousarray(np.asarray(points, dtype=np.float32).reshape(-1, 3))
    fields = [
        PointField(name=name, offset=4 * index, datatype=PointField.FLOAT32, count=1)
        for index, name in enumerate("xyz")
    ]
    return PointCloud2(
        header=Header(stamp=stamp, frame_id=frame_id),
        height=1,
        width=len(xyz),
        fields=fields,
        is_bigendian=False,
        point_step=12,
        row_step=12 * len(xyz),
        data=xyz.astype("<f4", copy=False).tobytes(),
        is_dense=bool(np.all(np.isfinite(xyz))),
    )
