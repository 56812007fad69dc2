"""Write a sequence as a ROS 2 bag (sqlite3 or MCAP) with rosbags, no ROS install needed.

The bag carries, per frame of the sequence:

- the image as ``sensor_msgs/msg/Image`` (``mono8`` for grey frames, ``rgb8`` for colour);
- a ``sensor_msgs/msg/CameraInfo`` of ``sequence.camera`` with zero distortion, because
  sequences yield undistorted frames;
- when the sequence has ground truth, the camera pose ``T_world_cam`` (optical axes) as
  ``geometry_msgs/msg/PoseStamped`` in frame ``world``.

Header stamps and bag receive times are the sequence timestamps. Messages use the ROS 2 Jazzy
definitions and the rosbag2 metadata version 8, which ROS 2 Iron, Jazzy and rosbags read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vo_node.io.atomic import atomic_write, replace_folder, staging_folder
from vo_node.io.camera import undistorted_camera_info
from vo_node.io.sequence import Sequence
from vo_node.io.trajectory import NANOSECONDS_PER_SECOND

logger = logging.getLogger(__name__)

STORAGES = ("sqlite3", "mcap")
BAG_VERSION = 8
"""rosbag2 metadata version of written bags."""
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_CAMERA_INFO_TOPIC = "/camera/camera_info"
DEFAULT_GROUNDTRUTH_TOPIC = "/groundtruth/pose"
DEFAULT_CAMERA_FRAME = "camera_optical_frame"
WORLD_FRAME = "world"
IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POSE_TYPE = "geometry_msgs/msg/PoseStamped"


class BagWriteError(ValueError):
    """The bag cannot be written; the message names the value and the fix."""


def write_sequence_bag(
    sequence: Sequence,
    path: str | Path,
    storage: str = "sqlite3",
    image_topic: str = DEFAULT_IMAGE_TOPIC,
    camera_info_topic: str = DEFAULT_CAMERA_INFO_TOPIC,
    groundtruth_topic: str = DEFAULT_GROUNDTRUTH_TOPIC,
    frame_id: str = DEFAULT_CAMERA_FRAME,
    overwrite: bool = False,
) -> Path:
    """Write every frame of ``sequence`` with its camera_info and ground truth as a ROS 2 bag.

    The bag is written into a temporary sibling folder and renamed to ``path``, so a reader
    never sees a partial bag.

    Args:
        sequence: the input; its frames are already undistorted and match ``sequence.camera``.
        path: bag folder to create; the storage file inside is named after it.
        storage: ``sqlite3`` (``.db3``) or ``mcap``.
        image_topic, camera_info_topic, groundtruth_topic: topic names. The ground-truth topic
            is left out when the sequence has no ground truth.
        frame_id: ``header.frame_id`` of images and camera_info (the optical frame).
        overwrite: replace an existing bag folder at ``path`` (one with ``metadata.yaml``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        BagWriteError: ``storage`` is unknown or two topics share a name.
        FileExistsError: ``path`` exists and ``overwrite`` is False or it is not a bag folder.
    """
    path = Path(path)
    plugin = _storage_plugin(storage)
    topics = (image_topic, camera_info_topic, groundtruth_topic)
    if len(set(topics)) != len(topics):
        raise BagWriteError(f"topic names must differ, got {topics}; rename one of them")
    _check_replaceable(path, overwrite)

    staging = staging_folder(path)
    try:
        written = staging / path.name
        count = _write(sequence, written, plugin, image_topic, camera_info_topic,
                       groundtruth_topic, frame_id)
        replace_folder(written, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d frames of %s to %s bag %s", count, sequence.name, storage, path)
    return path


def _storage_plugin(storage: str):
    from rosbags.rosbag2 import StoragePlugin

    plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
    if storage not in plugins:
        raise BagWriteError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    return plugins[storage]


def _check_replaceable(path: Path, overwrite: bool) -> None:
    if not path.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists; remove it or choose another bag folder")
    if not (path / "metadata.yaml").is_file():
        raise FileExistsError(
            f"{path} exists and is not a ROS 2 bag folder (no metadata.yaml); it is not replaced, "
            "so choose another bag folder"
        )


def _write(
    sequence: Sequence,
    path: Path,
    plugin: Any,
    image_topic: str,
    camera_info_topic: str,
    groundtruth_topic: str,
    frame_id: str,
) -> int:
    """Write the bag at ``path`` (which must not exist); return the number of frames."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    ground_truth = sequence.ground_truth
    count = 0
    with Writer(path, version=BAG_VERSION, storage_plugin=plugin) as writer:
        images = writer.add_connection(image_topic, IMAGE_TYPE, typestore=store)
        infos = writer.add_connection(camera_info_topic, CAMERA_INFO_TYPE, typestore=store)
        for frame in sequence:
            stamp_ns = int(frame.timestamp_ns)
            info = camera_info_message(store, sequence, stamp_ns, frame_id)
            writer.write(infos, stamp_ns, store.serialize_cdr(info, CAMERA_INFO_TYPE))
            image = image_message(store, frame.image, stamp_ns, frame_id)
            writer.write(images, stamp_ns, store.serialize_cdr(image, IMAGE_TYPE))
            count += 1
        if ground_truth is not None:
            poses = writer.add_connection(groundtruth_topic, POSE_TYPE, typestore=store)
            for stamp_ns, pose in zip(ground_truth.timestamps_ns, ground_truth.poses):
                message = pose_message(store, int(stamp_ns), pose)
                writer.write(poses, int(stamp_ns), store.serialize_cdr(message, POSE_TYPE))
    return count


def header(store: Any, stamp_ns: int, frame_id: str) -> Any:
    """Build a ``std_msgs/msg/Header`` of the rosbags typestore ``store``."""
    seconds, nanoseconds = divmod(int(stamp_ns), NANOSECONDS_PER_SECOND)
    stamp = store.types["builtin_interfaces/msg/Time"](sec=seconds, nanosec=nanoseconds)
    return store.types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def image_message(store: Any, image: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    """Build a ``mono8`` image from ``(H, W)`` or an ``rgb8`` one from ``(H, W, 3)`` uint8."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
        image.ndim == 3 and image.shape[2] != 3
    ):
        raise BagWriteError(
            f"frames must be (H, W) or (H, W, 3) uint8, got shape {image.shape} of {image.dtype}"
        )
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else 3
    return store.types[IMAGE_TYPE](
        header=header(store, stamp_ns, frame_id),
        height=height,
        width=width,
        encoding="mono8" if channels == 1 else "rgb8",
        is_bigendian=0,
        step=width * channels,
        data=np.ascontiguousarray(image).reshape(-1),
    )


def camera_info_message(store: Any, sequence: Sequence, stamp_ns: int, frame_id: str) -> Any:
    """Build the ``CameraInfo`` of ``sequence.camera`` (``plumb_bob`` with zero coefficients)."""
    info = undistorted_camera_info(sequence.camera)
    roi = store.types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return store.types[CAMERA_INFO_TYPE](
        header=header(store, stamp_ns, frame_id),
        height=info["height"],
        width=info["width"],
        distortion_model=info["distortion_model"],
        d=np.array(info["d"]),
        k=np.array(info["k"]),
        r=np.array(info["r"]),
        p=np.array(info["p"]),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def pose_message(store: Any, stamp_ns: int, pose: np.ndarray) -> Any:
    """Build a ``PoseStamped`` in frame ``world`` from ``[tx, ty, tz, qx, qy, qz, qw]``."""
    types = store.types
    tx, ty, tz, qx, qy, qz, qw = (float(value) for value in pose)
    return types[POSE_TYPE](
        header=header(store, stamp_ns, WORLD_FRAME),
        pose=types["geometry_msgs/msg/Pose"](
            position=types["geometry_msgs/msg/Point"](x=tx, y=ty, z=tz),
            orientation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
        ),
    )


# --------------------------------------------------------------------------------------------
# Cached bags of sequences

SOURCE_FILE = "vo_node_source.json"
"""File in a written bag folder that describes the sequence it was written from."""
CACHE_FORMAT = 1
"""Bump when the written bag changes for the same sequence, so cached bags are written again."""


def sequence_fingerprint(sequence: Sequence, storage: str) -> dict[str, Any]:
    """Return a JSON-ready description of ``sequence`` that changes when its bag would change.

    It contains the source path and its modification time, a hash of the name, size and
    modification time of every file under it (:func:`source_files_fingerprint`), the frame
    selection, a hash of the timestamps and the camera. The file hash changes when a frame is
    overwritten in place, which leaves the folder's own modification time unchanged.
    """
    camera = sequence.camera
    root = sequence.root.resolve()
    files, files_sha1 = source_files_fingerprint(root)
    return {
        "cache_format": CACHE_FORMAT,
        "source": str(root),
        "source_mtime_ns": root.stat().st_mtime_ns,
        "source_files": files,
        "source_files_sha1": files_sha1,
        "layout": sequence.layout,
        "stride": int(sequence.stride),
        "frames": len(sequence),
        "timestamps_sha1": hashlib.sha1(sequence.timestamps_ns.tobytes()).hexdigest(),
        "camera": [camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy],
        "storage": storage,
    }


def source_files_fingerprint(root: Path) -> tuple[int, str]:
    """Return the number of files under ``root`` (or 1 for a file) and a SHA-1 of their
    relative names, sizes and modification times in nanoseconds, in sorted name order.

    Symbolic links to files count with their target's size and time. Folders that are
    symbolic links are not entered.
    """
    if root.is_file():
        entries = [(root.name, root.stat())]
    else:
        entries = []
        for folder, subfolders, names in os.walk(root):
            subfolders.sort()
            for name in names:
                path = Path(folder) / name
                try:
                    entries.append((path.relative_to(root).as_posix(), path.stat()))
                except FileNotFoundError:
                    continue  # a broken symbolic link, or a file removed during the walk
    digest = hashlib.sha1()
    for name, status in sorted(entries, key=lambda entry: entry[0]):
        digest.update(f"{name}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return len(entries), digest.hexdigest()


def cached_sequence_bag(sequence: Sequence, path: str | Path, storage: str = "sqlite3",
                        **topics: str) -> Path:
    """Return the bag of ``sequence`` at ``path``, writing it unless it is already there.

    A bag written by this function contains :data:`SOURCE_FILE` with the
    :func:`sequence_fingerprint`, written last, so a bag with a matching file is complete and
    current. Any other bag folder at ``path`` is replaced.

    Args:
        topics: ``image_topic``, ``camera_info_topic`` or ``groundtruth_topic`` for
            :func:`write_sequence_bag`.
    """
    path = Path(path)
    fingerprint = sequence_fingerprint(sequence, storage)
    fingerprint["topics"] = dict(sorted(topics.items()))
    try:
        stored = json.loads((path / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        stored = None
    if stored == fingerprint and (path / "metadata.yaml").is_file():
        logger.info("bag %s of %s is up to date", path, sequence.root)
        return path
    write_sequence_bag(sequence, path, storage, overwrite=True, **topics)
    with atomic_write(path / SOURCE_FILE) as handle:
        json.dump(fingerprint, handle, indent=2, sort_keys=True)
    return path
