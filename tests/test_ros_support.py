"""Helpers shared by the ROS 2 tests: private rclpy contexts, spinning, and bags built with rosbags.

Every test that imports this module starts DDS, so it must run inside ``scripts/netns_run.sh``
(``make test`` does). The shared-memory Fast DDS profile is set before any participant exists,
because Fast DDS reads the profile file once per process.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHM_PROFILE = REPO / "config" / "fastdds_shm.xml"
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(SHM_PROFILE))

import rclpy  # noqa: E402  (the profile variable must be set first)
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

DATA = Path(os.environ.get("VO_NODE_DATA", REPO.parent / "shared" / "data"))
NETWORK_ISOLATED = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
NOT_ISOLATED_REASON = "ROS tests start DDS; run them through scripts/netns_run.sh (make test)"
NOT_A_MODEL = REPO / "package.xml"
"""An existing text file that is not a model: the node rejects it at start-up."""
QUICK_INIT_FRAMES = 3
"""Frames the engine of :func:`quick_init_config` uses to initialise: it initialises on the
third frame, so the node publishes odometry from that frame on."""


def model_parameter(path: Path | str) -> str:
    """Return the node argument that selects the model file ``path``."""
    return f"model.weights:={path}"


def quick_init_config(init_frames: int = QUICK_INIT_FRAMES):
    """Return the ``small`` preset with the motion probe off, ``init_frames`` frames and no
    depth-hypothesis trial.

    A random network predicts almost no flow, so the motion probe would drop every frame as static
    and the engine would never initialise. With the probe off and no trial, the engine tracks from
    frame ``init_frames`` exactly (unless a frame fails).
    """
    from vo_node.config import apply_overrides, load_engine_config

    overrides = {
        "frontend.motion_probe_threshold": 0.0,
        "frontend.init_frames": init_frames,
        "frontend.hypothesis_frames": 0,
    }
    return apply_overrides(load_engine_config("small"), overrides)


def write_engine_config(folder: Path, init_frames: int = QUICK_INIT_FRAMES) -> Path:
    """Write :func:`quick_init_config` as an engine YAML for ``-p model.config:=`` or --config."""
    import yaml

    from vo_node.config import to_dict

    path = Path(folder) / f"quick_init_{init_frames}.yaml"
    path.write_text(yaml.safe_dump(to_dict(quick_init_config(init_frames))))
    return path


@contextmanager
def ros_context(arguments: Sequence[str] = ()) -> Iterator[rclpy.Context]:
    """Yield a private, initialised rclpy context; ``arguments`` follow ``--ros-args``."""
    context = rclpy.Context()
    rclpy.init(args=["--ros-args", *arguments] if arguments else None, context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


def spin_until(
    executor: SingleThreadedExecutor, condition: Callable[[], bool], timeout_s: float
) -> bool:
    """Spin ``executor`` until ``condition()`` holds; return it after at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=0.02)
    return condition()


def write_image_bag(
    path: Path,
    storage: str,
    stamps_ns: Sequence[int],
    images: Sequence[np.ndarray],
    frame_id: str = "cam0",
    image_topic: str = "/cam0/image_raw",
    camera_info_topic: str | None = "/cam0/camera_info",
    intrinsics: Sequence[float] = (458.654, 457.296, 367.215, 248.375),
    distortion: Sequence[float] = (),
    poses: dict[int, Sequence[float]] | None = None,
    pose_topic: str = "/groundtruth/pose",
) -> Path:
    """Write a ROS 2 bag of mono8 or rgb8 images (plus camera_info and poses) with rosbags.

    Args:
        path: bag folder to create (must not exist).
        storage: ``sqlite3`` or ``mcap``.
        stamps_ns: header stamp and bag time of each image, nanoseconds.
        images: ``(H, W)`` uint8 (mono8) or ``(H, W, 3)`` uint8 (rgb8) per stamp.
        poses: optional ``{stamp_ns: [tx, ty, tz, qx, qy, qz, qw]}`` written as PoseStamped.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]

    def header(stamp_ns: int, frame: str):
        seconds, nanoseconds = divmod(stamp_ns, 1_000_000_000)
        stamp = types["builtin_interfaces/msg/Time"](sec=seconds, nanosec=nanoseconds)
        return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)

    with Writer(path, version=9, storage_plugin=plugin) as writer:
        image_type = "sensor_msgs/msg/Image"
        image_connection = writer.add_connection(image_topic, image_type, typestore=store)
        info_type = "sensor_msgs/msg/CameraInfo"
        info_connection = (
            writer.add_connection(camera_info_topic, info_type, typestore=store)
            if camera_info_topic
            else None
        )
        pose_type = "geometry_msgs/msg/PoseStamped"
        pose_connection = (
            writer.add_connection(pose_topic, pose_type, typestore=store) if poses else None
        )
        for stamp_ns, pixels in zip(stamps_ns, images):
            height, width = pixels.shape[:2]
            channels = 1 if pixels.ndim == 2 else pixels.shape[2]
            image = types[image_type](
                header=header(stamp_ns, frame_id),
                height=height,
                width=width,
                encoding="mono8" if channels == 1 else "rgb8",
                is_bigendian=0,
                step=width * channels,
                data=np.ascontiguousarray(pixels).reshape(-1),
            )
            writer.write(image_connection, stamp_ns, store.serialize_cdr(image, image_type))
            if info_connection is not None:
                fx, fy, cx, cy = intrinsics
                info = types[info_type](
                    header=header(stamp_ns, frame_id),
                    height=height,
                    width=width,
                    distortion_model="plumb_bob",
                    d=np.array(distortion, dtype=np.float64),
                    k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], dtype=np.float64),
                    r=np.eye(3).reshape(-1),
                    p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], dtype=np.float64),
                    binning_x=0,
                    binning_y=0,
                    roi=types["sensor_msgs/msg/RegionOfInterest"](
                        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
                    ),
                )
                writer.write(info_connection, stamp_ns, store.serialize_cdr(info, info_type))
        for stamp_ns, pose in sorted((poses or {}).items()):
            position = types["geometry_msgs/msg/Point"](x=pose[0], y=pose[1], z=pose[2])
            orientation = types["geometry_msgs/msg/Quaternion"](
                x=pose[3], y=pose[4], z=pose[5], w=pose[6]
            )
            message = types[pose_type](
                header=header(stamp_ns, "world"),
                pose=types["geometry_msgs/msg/Pose"](position=position, orientation=orientation),
            )
            writer.write(pose_connection, stamp_ns, store.serialize_cdr(message, pose_type))
    return path
