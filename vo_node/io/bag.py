"""ROS 2 bags (sqlite3 or mcap storage) read with the ``rosbags`` package, no ROS install needed.

* Images: one ``sensor_msgs/msg/Image`` or ``sensor_msgs/msg/CompressedImage`` topic, selected
  automatically when the bag has exactly one. Raw images become ``mono8`` or ``rgb8`` in every
  encoding that ``rosbags.image`` converts: mono, 16-bit mono, RGB/BGR with or without alpha,
  Bayer and YUV 4:2:2. OpenCV decodes compressed images (JPEG, PNG).
* Timestamps: ``header.stamp`` in nanoseconds. When every stamp is zero (drivers that leave the
  header empty), the bag's receive times are used instead, with a warning.
* Camera: a YAML given by the caller, else the ``sensor_msgs/msg/CameraInfo`` topic next to the
  image topic (``<namespace>/camera_info``), else the only ``CameraInfo`` topic in the bag.
* Ground truth (optional): a ``geometry_msgs/msg/PoseStamped``, ``PoseWithCovarianceStamped``,
  ``TransformStamped`` or ``nav_msgs/msg/Odometry`` topic named by the caller, interpolated at
  the image timestamps. These topics often carry the pose of a body frame (an IMU, a robot base)
  rather than of the camera; ``T_body_cam`` maps camera coordinates into that body frame and the
  reader returns ``T_world_cam = T_world_body @ T_body_cam``. The identity (the default) means
  the topic already holds the camera pose in optical axes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.image import ImageError, image_to_cvimage
from rosbags.image.image import to_cvtype
from rosbags.typesys import Stores, get_typestore

from vo_node.io.camera import CalibrationError, PinholeCamera, camera_from_camera_info, load_camera
from vo_node.io.readers.poses import interpolate_poses, matrices_to_poses, poses_to_matrices
from vo_node.io.sequence import Sequence, SequenceError, to_rgb
from vo_node.io.trajectory import NANOSECONDS_PER_SECOND, Trajectory

logger = logging.getLogger(__name__)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "geometry_msgs/msg/TransformStamped",
    "nav_msgs/msg/Odometry",
)
BAG_SUFFIXES = (".db3", ".mcap")
MONO_ENCODINGS = ("mono8", "mono16", "8UC1", "16UC1")
DEFAULT_MAX_GROUND_TRUTH_GAP_NS = 100_000_000
"""Largest distance (ns) from an image to its neighbouring ground-truth messages."""
POSE_VALUES = 7
QUATERNION_NORM_TOLERANCE = 1e-3
"""Largest ``| |q| - 1 |`` of a given extrinsic quaternion before it is rejected."""
DEFAULT_TYPESTORE = Stores.ROS2_JAZZY
"""Message definitions used when a bag does not embed its own."""


class BagSequence(Sequence):
    """The images of one topic in a ROS 2 bag folder (the folder with ``metadata.yaml``).

    Attributes:
        pose_topics: topics of the bag with a type of :data:`POSE_TYPES`, sorted, whether or
            not one is the ground truth.
    """

    layout = "ros2_bag"
    DESCRIPTION = "ROS 2 bag: folder with metadata.yaml and a .db3 (sqlite3) or .mcap file"
    OPTIONS = ("camera_path", "image_topic", "groundtruth_topic", "T_body_cam")

    def __init__(
        self,
        path: str | Path,
        image_topic: str | None = None,
        camera_info_topic: str | None = None,
        camera_path: str | Path | None = None,
        groundtruth_topic: str | None = None,
        T_body_cam: np.ndarray | None = None,
        max_ground_truth_gap_ns: int = DEFAULT_MAX_GROUND_TRUTH_GAP_NS,
        stride: int = 1,
        max_frames: int | None = None,
    ) -> None:
        self.path = bag_folder(Path(path))
        self.groundtruth_topic = groundtruth_topic
        self.T_body_cam = _check_transform(T_body_cam)
        self.max_ground_truth_gap_ns = max_ground_truth_gap_ns
        with self._open_reader() as reader:
            topics = {c.topic: c.msgtype for c in reader.connections}
            self.pose_topics = sorted(t for t, kind in topics.items() if kind in POSE_TYPES)
            self.image_topic = select_image_topic(topics, image_topic, self.path)
            if groundtruth_topic is not None:
                _check_topic(topics, groundtruth_topic, POSE_TYPES, self.path)
            if camera_path is not None:
                camera = load_camera(camera_path)
            else:
                camera = self._camera_from_topic(reader, topics, camera_info_topic)
            timestamps = self._scan_timestamps(reader)
        super().__init__(self.path, self.path.name, camera, timestamps, stride, max_frames)

    @classmethod
    def detect(cls, path: Path) -> bool:
        if path.is_dir():
            return (path / "metadata.yaml").is_file()
        return path.suffix in BAG_SUFFIXES or path.name == "metadata.yaml"

    @classmethod
    def open(
        cls, path: Path, stride: int = 1, max_frames: int | None = None,
        camera_path: str | Path | None = None, image_topic: str | None = None,
        groundtruth_topic: str | None = None, T_body_cam: np.ndarray | None = None,
    ) -> "BagSequence":
        return cls(
            path, image_topic=image_topic, camera_path=camera_path,
            groundtruth_topic=groundtruth_topic, T_body_cam=T_body_cam, stride=stride,
            max_frames=max_frames,
        )

    def describe_frame(self, index: int) -> str:
        return f"message {index} on {self.image_topic} in bag {self.path}"

    def _open_reader(self) -> AnyReader:
        try:
            return AnyReader([self.path], default_typestore=get_typestore(DEFAULT_TYPESTORE))
        except (AnyReaderError, FileNotFoundError) as error:
            raise SequenceError(f"ROS 2 bag {self.path} could not be opened: {error}") from None

    def _messages(self, reader: AnyReader, topic: str) -> Iterator[tuple[int, Any]]:
        """Yield ``(receive time ns, message)`` of ``topic`` in bag order."""
        connections = [c for c in reader.connections if c.topic == topic]
        for connection, receive_ns, raw in reader.messages(connections=connections):
            try:
                yield receive_ns, reader.deserialize(raw, connection.msgtype)
            except AnyReaderError as error:
                raise SequenceError(
                    f"a {connection.msgtype} message on {topic} in bag {self.path} could not be "
                    f"decoded: {error}"
                ) from None

    def _scan_timestamps(self, reader: AnyReader) -> np.ndarray:
        header_ns: list[int] = []
        receive_ns: list[int] = []
        for received, message in self._messages(reader, self.image_topic):
            header_ns.append(stamp_ns(message.header.stamp))
            receive_ns.append(received)
        if not header_ns:
            raise SequenceError(f"image topic {self.image_topic} in bag {self.path} has no messages")
        if not any(header_ns):
            logger.warning(
                "%s: every header.stamp on %s is zero; using the bag receive times",
                self.path, self.image_topic,
            )
            return np.array(receive_ns, dtype=np.int64)
        return np.array(header_ns, dtype=np.int64)

    def _camera_from_topic(
        self, reader: AnyReader, topics: dict[str, str], camera_info_topic: str | None
    ) -> PinholeCamera:
        topic = camera_info_topic or select_camera_info_topic(topics, self.image_topic, self.path)
        _check_topic(topics, topic, (CAMERA_INFO_TYPE,), self.path)
        for _, message in self._messages(reader, topic):
            return camera_from_camera_info_message(message, f"{topic} in bag {self.path}")
        raise CalibrationError(
            f"camera info topic {topic} in bag {self.path} has no messages; pass a camera YAML"
        )

    def _read_images(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        selected = set(indices)
        last = max(indices)
        with self._open_reader() as reader:
            for index, (_, message) in enumerate(self._messages(reader, self.image_topic)):
                if index in selected:
                    yield index, decode_image_message(message, self.describe_frame(index))
                if index >= last:
                    return

    def _load_ground_truth(self, timestamps_ns: np.ndarray) -> Trajectory | None:
        if self.groundtruth_topic is None:
            return None
        stamps: list[int] = []
        poses: list[list[float]] = []
        with self._open_reader() as reader:
            for number, (_, message) in enumerate(
                self._messages(reader, self.groundtruth_topic), start=1
            ):
                stamps.append(stamp_ns(message.header.stamp))
                poses.append(pose_of_message(message))
                self._check_ground_truth_pose(poses[-1], number)
        if not stamps:
            return None
        order = np.argsort(stamps, kind="stable")
        body_poses = np.array(poses)[order]
        valid, body_at_images = interpolate_poses(
            np.array(stamps, dtype=np.int64)[order], body_poses, timestamps_ns,
            self.max_ground_truth_gap_ns,
        )
        camera_poses = matrices_to_poses(poses_to_matrices(body_at_images) @ self.T_body_cam)
        return Trajectory(timestamps_ns[valid], camera_poses)

    def _check_ground_truth_pose(self, pose: list[float], number: int) -> None:
        """Raise :class:`SequenceError` for a pose of the ground-truth topic that is not finite
        or has a zero quaternion; ``number`` counts the topic's messages from 1."""
        if all(math.isfinite(value) for value in pose) and math.hypot(*pose[3:]) >= 1e-6:
            return
        raise SequenceError(
            f"message {number} of ground-truth topic {self.groundtruth_topic} in bag {self.path} "
            f"has an invalid pose {pose} (a value that is not a finite number or a zero "
            "quaternion); pass another --groundtruth-topic or leave it out to run without "
            "ground truth"
        )


def bag_folder(path: Path) -> Path:
    """Return the bag folder (with ``metadata.yaml``) for a folder, a storage file or the YAML."""
    folder = path if path.is_dir() else path.parent
    if not (folder / "metadata.yaml").is_file():
        raise SequenceError(
            f"{path} is not a ROS 2 bag folder: {folder / 'metadata.yaml'} is missing; for a bare "
            ".db3 or .mcap file, recreate it with `ros2 bag reindex <folder>`"
        )
    return folder


def select_image_topic(topics: dict[str, str], requested: str | None, bag: Path) -> str:
    """Return ``requested`` after checking its type, or the bag's only image topic."""
    image_types = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
    if requested is not None:
        _check_topic(topics, requested, image_types, bag)
        return requested
    candidates = sorted(topic for topic, kind in topics.items() if kind in image_types)
    if len(candidates) == 1:
        return candidates[0]
    listing = ", ".join(f"{t} ({topics[t]})" for t in candidates) or "none"
    raise SequenceError(
        f"bag {bag} has {len(candidates)} image topics ({listing}); "
        + ("name one with image_topic (--image-topic)" if candidates else "it has no images to read")
    )


def select_camera_info_topic(topics: dict[str, str], image_topic: str, bag: Path) -> str:
    """Return the ``CameraInfo`` topic beside ``image_topic``, or the bag's only one."""
    sibling = image_topic.rsplit("/", 1)[0] + "/camera_info"
    if topics.get(sibling) == CAMERA_INFO_TYPE:
        return sibling
    candidates = sorted(topic for topic, kind in topics.items() if kind == CAMERA_INFO_TYPE)
    if len(candidates) == 1:
        return candidates[0]
    raise CalibrationError(
        f"bag {bag} has {len(candidates)} CameraInfo topics ({', '.join(candidates) or 'none'}) "
        f"and none at {sibling}; pass camera_info_topic or a camera YAML (--camera)"
    )


def _check_topic(topics: dict[str, str], topic: str, types: tuple[str, ...], bag: Path) -> None:
    if topic not in topics:
        raise SequenceError(
            f"topic {topic} not found in bag {bag}; its topics are: "
            + ", ".join(f"{t} ({k})" for t, k in sorted(topics.items()))
        )
    if topics[topic] not in types:
        raise SequenceError(
            f"topic {topic} in bag {bag} has type {topics[topic]}; expected {' or '.join(types)}"
        )


def body_from_camera_pose(pose: Sequence[float], source: str) -> np.ndarray:
    """Convert ``[x, y, z, qx, qy, qz, qw]`` (metres, unit quaternion) to ``T_body_cam`` ``(4, 4)``.

    Args:
        source: where the values came from (a command-line option), for the error message.

    Raises:
        CalibrationError: not 7 finite values, or a quaternion whose norm is not 1 within
            :data:`QUATERNION_NORM_TOLERANCE`.
    """
    values = np.asarray(pose, dtype=np.float64).reshape(-1)
    if values.shape != (POSE_VALUES,) or not np.all(np.isfinite(values)):
        raise CalibrationError(
            f"{source} must be 7 finite values x y z qx qy qz qw, got {values.tolist()}"
        )
    norm = float(np.linalg.norm(values[3:]))
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise CalibrationError(
            f"{source} quaternion [qx, qy, qz, qw] = {values[3:].tolist()} has norm {norm:.6f}; "
            "give a unit quaternion"
        )
    return poses_to_matrices(values)[0]


def _check_transform(transform: np.ndarray | None) -> np.ndarray:
    if transform is None:
        return np.eye(4)
    transform = np.asarray(transform, dtype=np.float64)
    if transform.shape != (4, 4) or not np.allclose(transform[3], [0.0, 0.0, 0.0, 1.0]):
        raise CalibrationError(
            f"T_body_cam must be a 4x4 homogeneous transform, got shape {transform.shape}"
        )
    return transform


def stamp_ns(stamp: Any) -> int:
    """Return a ``builtin_interfaces/msg/Time`` as integer nanoseconds."""
    return int(stamp.sec) * NANOSECONDS_PER_SECOND + int(stamp.nanosec)


def pose_of_message(message: Any) -> list[float]:
    """Return ``[tx, ty, tz, qx, qy, qz, qw]`` of a pose, transform or odometry message."""
    if hasattr(message, "transform"):
        translation, rotation = message.transform.translation, message.transform.rotation
    else:
        pose = message.pose.pose if hasattr(message.pose, "pose") else message.pose
        translation, rotation = pose.position, pose.orientation
    return [
        translation.x, translation.y, translation.z, rotation.x, rotation.y, rotation.z, rotation.w
    ]


def camera_from_camera_info_message(message: Any, source: str) -> PinholeCamera:
    """Build a camera from a ``sensor_msgs/msg/CameraInfo`` message."""
    if message.binning_x > 1 or message.binning_y > 1:
        raise CalibrationError(
            f"{source}: binned camera info (binning {message.binning_x}x{message.binning_y}) is "
            "not supported; pass a camera YAML for the binned images"
        )
    fields = {
        "width": int(message.width),
        "height": int(message.height),
        "k": [float(v) for v in message.k],
        "d": [float(v) for v in message.d],
        "distortion_model": str(message.distortion_model),
    }
    return camera_from_camera_info(fields, source=source)


def decode_image_message(message: Any, source: str) -> np.ndarray:
    """Decode an ``Image`` or ``CompressedImage`` message to ``(H, W)`` or RGB ``(H, W, 3)``."""
    if hasattr(message, "format"):
        return _decode_compressed(message, source)
    encoding = message.encoding
    target = "mono8" if encoding in MONO_ENCODINGS else "rgb8"
    try:
        return image_to_cvimage(_without_row_padding(message, source), target)
    except (ImageError, TypeError, ValueError, cv2.error) as error:
        raise SequenceError(
            f"{source}: image with encoding {encoding!r} could not be converted to {target}: "
            f"{error}"
        ) from None


def _decode_compressed(message: Any, source: str) -> np.ndarray:
    if "compressedDepth" in message.format:
        raise SequenceError(f"{source}: compressed depth images ({message.format}) are not camera images")
    image = cv2.imdecode(np.frombuffer(bytes(message.data), np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SequenceError(f"{source}: compressed image ({message.format!r}) could not be decoded")
    return to_rgb(image)


def _without_row_padding(message: Any, source: str) -> Any:
    """Drop padding bytes at the end of each row, which ``rosbags.image`` does not handle."""
    height, width, step = int(message.height), int(message.width), int(message.step)
    data = np.asarray(message.data, dtype=np.uint8)
    packed = width * _pixel_bytes(message.encoding, source)
    if height == 0 or step < packed or step * height != data.size:
        raise SequenceError(
            f"{source}: image data has {data.size} bytes for {width}x{height} pixels of "
            f"{message.encoding!r} with a row step of {step} bytes; the message is corrupt"
        )
    if step == packed:
        return message
    rows = np.ascontiguousarray(data.reshape(height, step)[:, :packed])
    return dataclasses.replace(message, data=rows.reshape(-1), step=packed)


def _pixel_bytes(encoding: str, source: str) -> int:
    try:
        depth, _, _, channels = to_cvtype(encoding)
    except ImageError as error:
        raise SequenceError(f"{source}: image encoding {encoding!r} is not supported: {error}") from None
    return depth // 8 * channels
