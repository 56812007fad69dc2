"""Play a ROS 2 bag over DDS, like ``ros2 bag play``, and evaluate the node on a bag.

Playback (``python -m vo_node.ros.replay BAG``): the bag is read with rosbags (ROS 2 sqlite3 or
MCAP, or ROS 1). Every message is published as its raw CDR bytes, so header stamps stay as
recorded. Publishing is paced by the bag's receive times divided by ``--rate``. ``--clock`` also
publishes /clock with the bag time, for nodes run with ``use_sim_time:=true``.

Evaluation (``--evaluate``): the node runs in this process with reliable image QoS; the bag's
camera_info and image topics are played in lockstep (each image waits until the node finished the
previous one), the node's odometry is recorded from its ``odom`` topic, converted back to camera
poses ``T_world_cam`` and compared with the ground truth (a pose topic in the bag or a TUM file).
``--groundtruth-extrinsic`` turns a ground truth of a body frame (EuRoC's IMU) into camera poses.
Run both modes inside a private network namespace (``bash scripts/netns_run.sh ...``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import shlex
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from vo_node.ros.inprocess import node_in_process, wait_for

if TYPE_CHECKING:
    from rosbags.highlevel import AnyReader

logger = logging.getLogger(__name__)

CLOCK_PERIOD_S = 0.025
"""While waiting between messages, /clock is published at this wall-clock period (40 Hz)."""
PLAYBACK_QOS_DEPTH = 100
DELIVERY_TIMEOUT_S = 5.0
"""Maximum wait (seconds) after the last message for reliable subscribers to acknowledge it."""
TRAILING_MESSAGES_WAIT_S = 0.3
"""After the last odometry message arrives, path and /tf messages get this long to arrive."""
NANOSECONDS_PER_SECOND = 1_000_000_000
MIN_POSES_FOR_ATE = 3
"""Fewest recorded poses that the ATE is computed for, in the whole trajectory or a segment: the
``MIN_ASSOCIATED_POSES`` of ``vo_node.evaluation.metrics``, repeated so that playback does not
import evo."""
STATIC_TF_TOPIC = "/tf_static"
POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "geometry_msgs/msg/TransformStamped",
    "nav_msgs/msg/Odometry",
)
"""Message types accepted as a ground-truth topic."""
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
EUROC_CAM0_T_BODY_CAM = (
    -0.021640145, -0.064676987, 0.009810731, -0.007707180, 0.010499323, 0.701752800, 0.712301461
)
"""``T_body_cam`` of EuRoC MAV cam0 ``[x, y, z, qx, qy, qz, qw]``: ``T_BS`` of its sensor.yaml,
which maps cam0 coordinates into the IMU body frame that the EuRoC ground truth tracks."""


BAG_PATH_FIX = "pass a ROS 2 bag folder (with metadata.yaml) or a ROS 1 .bag file"
METRES = "m"
SCENE_UNITS = "scene units"
"""Length unit of the ground truth of a rendered sequence, whose scene has no metric scale. Both
units are the strings of ``vo_node.evaluation.metrics``, repeated so that playback does not
import evo."""


class ReplayError(RuntimeError):
    """The bag cannot be played or evaluated; the message names the bag, topic and fix."""


@dataclass
class BagMessage:
    """One serialized message of a bag."""

    topic: str
    msgtype: str
    """ROS 2 type name, e.g. ``sensor_msgs/msg/Image``."""
    timestamp_ns: int
    """Receive time recorded in the bag, nanoseconds."""
    data: bytes
    """CDR serialization of the message."""


# --------------------------------------------------------------------------------------------
# Reading


@contextmanager
def open_bag(path: Path) -> Iterator[AnyReader]:
    """Open the bag at ``path`` (a ROS 2 bag folder or a ROS 1 ``.bag`` file) for reading.

    Raises:
        ReplayError: the path does not exist or is not a readable bag.
    """
    from rosbags.highlevel import AnyReader, AnyReaderError

    if not path.exists():
        raise ReplayError(f"bag {path} not found; {BAG_PATH_FIX}")
    try:
        reader = AnyReader([path])
        reader.open()
    except (AnyReaderError, OSError) as error:
        raise ReplayError(f"{path} could not be read as a bag ({error}); {BAG_PATH_FIX}") from None
    try:
        yield reader
    finally:
        reader.close()


def bag_topics(path: str | Path) -> dict[str, str]:
    """Return ``{topic: type}`` of the bag at ``path``.

    Raises:
        ReplayError: the path does not exist or is not a readable bag.
    """
    with open_bag(Path(path)) as reader:
        return {connection.topic: connection.msgtype for connection in reader.connections}


def read_bag(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[BagMessage]:
    """Yield the messages of a bag in time order as CDR bytes.

    ROS 1 bags are converted to CDR on the fly. ``topics`` restricts the topics (default all).

    Raises:
        ReplayError: when the bag is missing or unreadable, or a requested topic is not in it.
    """
    path = Path(path)
    with open_bag(path) as reader:
        connections = reader.connections
        if topics:
            available = {connection.topic for connection in connections}
            missing = sorted(set(topics) - available)
            if missing:
                raise ReplayError(
                    f"topics {missing} are not in bag {path}; it contains {sorted(available)}"
                )
            connections = [c for c in connections if c.topic in topics]
        typestore = reader.typestore
        for connection, timestamp, raw in reader.messages(connections=connections):
            data = raw if reader.is2 else typestore.ros1_to_cdr(raw, connection.msgtype)
            yield BagMessage(connection.topic, connection.msgtype, int(timestamp), bytes(data))


def images_after_other_topics(
    messages: Iterable[BagMessage], image_topics: set[str]
) -> Iterator[BagMessage]:
    """Reorder messages with equal timestamps so that image topics come last.

    Bags often store an image before its camera_info at the same time; publishing camera_info
    first lets a node have the intrinsics when the image arrives.
    """
    group: list[BagMessage] = []
    for message in messages:
        if group and message.timestamp_ns != group[0].timestamp_ns:
            yield from sorted(group, key=lambda m: m.topic in image_topics)
            group = []
        group.append(message)
    yield from sorted(group, key=lambda m: m.topic in image_topics)


def message_class(type_name: str) -> type:
    """Return the rclpy message class of ``pkg/msg/Name``.

    Raises:
        ReplayError: when the interface package is not installed.
    """
    package, _, name = type_name.replace("/msg/", "/").partition("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        raise ReplayError(
            f"message type {type_name} is not installed; install ros-jazzy-"
            f"{package.replace('_', '-')} or skip the topic with --topics"
        ) from None


# --------------------------------------------------------------------------------------------
# Playback


def camera_info_topic_beside(image_topic: str) -> str:
    """Return the CameraInfo topic that belongs to ``image_topic``: ``<namespace>/camera_info``.

    A ``/compressed`` suffix is removed first, as image_transport adds it to the base topic, so
    ``/cam0/image_raw`` and ``/cam0/image_raw/compressed`` both give ``/cam0/camera_info``.
    """
    base = image_topic.removesuffix("/compressed")
    return base.rsplit("/", 1)[0] + "/camera_info"


@dataclass
class PlaybackResult:
    """Messages published per topic and the wall time taken."""

    counts: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0


class BagPlayer:
    """Publisher of bag messages on their topics, paced by bag time.

    Args:
        node: rclpy node that owns the publishers.
        bag: bag path.
        topics: topics to play; None plays all.
        rate: playback speed factor (2.0 plays twice as fast).
        publish_clock: publish /clock (``rosgraph_msgs/Clock``) with the bag time.
        reliable: reliable publishers (default) or best effort. /tf_static is always reliable
            and transient local.
    """

    def __init__(
        self,
        node,
        bag: str | Path,
        topics: Sequence[str] | None = None,
        rate: float = 1.0,
        publish_clock: bool = False,
        reliable: bool = True,
    ) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        if not rate > 0:
            raise ReplayError(f"rate must be positive, got {rate}")
        self.node = node
        self.bag = Path(bag)
        self.rate = rate
        available = bag_topics(self.bag)
        self.topics = list(topics) if topics else sorted(available)
        missing = sorted(set(self.topics) - set(available))
        if missing:
            raise ReplayError(
                f"topics {missing} are not in bag {self.bag}; it contains {sorted(available)}"
            )
        self.types = {topic: available[topic] for topic in self.topics}
        """``{topic: type}`` of the played topics."""
        reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        self.publishers = {}
        for topic in self.topics:
            qos = QoSProfile(depth=PLAYBACK_QOS_DEPTH, reliability=reliability)
            if topic == STATIC_TF_TOPIC:
                qos = QoSProfile(
                    depth=1,
                    reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.TRANSIENT_LOCAL,
                )
            self.publishers[topic] = node.create_publisher(
                message_class(available[topic]), topic, qos
            )
        self._clock_type = Clock
        self.clock_publisher = node.create_publisher(Clock, "/clock", 10) if publish_clock else None

    def wait_for_delivery(self, timeout_s: float) -> bool:
        """Wait until reliable subscribers acknowledged every published message; return False
        on timeout.

        Destroying a publisher can drop messages its subscribers have not received yet, so a
        player that exits right after the last message can lose it on a loaded machine.
        """
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout_s
        delivered = True
        for publisher in self.publishers.values():
            remaining = max(0.0, deadline - time.monotonic())
            delivered &= publisher.wait_for_all_acked(Duration(nanoseconds=int(remaining * 1e9)))
        return delivered

    def wait_for_subscribers(self, topics: Sequence[str] | None, timeout_s: float) -> bool:
        """Wait until each of ``topics`` has a matched subscriber, or with ``topics`` None until
        :meth:`topics_without_subscriber` is empty; return False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if topics is None and not self.topics_without_subscriber():
                return True
            if topics is not None and all(self._subscribed(topic) for topic in topics):
                return True
            time.sleep(0.02)
        return False

    def topics_without_subscriber(self) -> list[str]:
        """Return the played topics that a consumer such as vo_node still has to subscribe to.

        With image topics (``sensor_msgs/Image`` or ``CompressedImage``) among the played ones,
        these are all image topics until one has a subscriber. After that, they are the played
        CameraInfo topics beside the subscribed image topics (see
        :func:`camera_info_topic_beside`) that have none yet. Other topics, such as ground truth,
        need no subscriber. Without played image topics, every played topic needs one.
        """
        images = [topic for topic in self.topics if self.types[topic] in IMAGE_TYPES]
        if not images:
            return [topic for topic in self.topics if not self._subscribed(topic)]
        subscribed = [topic for topic in images if self._subscribed(topic)]
        if not subscribed:
            return images
        camera_infos = {camera_info_topic_beside(topic) for topic in subscribed}
        return sorted(
            topic for topic in camera_infos
            if self.types.get(topic) == CAMERA_INFO_TYPE and not self._subscribed(topic)
        )

    def _subscribed(self, topic: str) -> bool:
        return self.publishers[topic].get_subscription_count() > 0

    def play(
        self,
        loop: bool = False,
        start_delay_s: float = 0.0,
        before_publish: Callable[[BagMessage], None] | None = None,
        after_publish: Callable[[BagMessage], None] | None = None,
        paced: bool = True,
        image_topics: Sequence[str] = (),
        stop: threading.Event | None = None,
    ) -> PlaybackResult:
        """Publish the bag once (or until ``stop`` with ``loop``).

        Args:
            loop: start again at the end.
            start_delay_s: wall-clock wait before the first message.
            before_publish, after_publish: hooks called around each publish (lockstep control).
            paced: wait for each message's bag time / rate; False publishes as fast as the
                hooks allow.
            image_topics: topics published last among messages with equal timestamps.
            stop: event that ends playback early.
        """
        stop = stop or threading.Event()
        result = PlaybackResult(counts={topic: 0 for topic in self.topics})
        started = time.monotonic()
        if start_delay_s > 0:
            stop.wait(start_delay_s)
        while not stop.is_set():
            self._play_once(result, before_publish, after_publish, paced, set(image_topics), stop)
            if not loop:
                break
        result.wall_time_s = time.monotonic() - started
        return result

    def _play_once(self, result, before_publish, after_publish, paced, image_topics, stop) -> None:
        messages = images_after_other_topics(read_bag(self.bag, self.topics), image_topics)
        wall_start: float | None = None
        bag_start = 0
        for message in messages:
            if stop.is_set():
                return
            if wall_start is None:
                wall_start, bag_start = time.monotonic(), message.timestamp_ns
            if paced:
                self._wait_until(message.timestamp_ns, bag_start, wall_start, stop)
            self._publish_clock(message.timestamp_ns)
            if before_publish is not None:
                before_publish(message)
            self.publishers[message.topic].publish(message.data)
            result.counts[message.topic] += 1
            if after_publish is not None:
                after_publish(message)

    def _wait_until(self, bag_time_ns: int, bag_start_ns: int, wall_start: float, stop) -> None:
        target = wall_start + (bag_time_ns - bag_start_ns) / NANOSECONDS_PER_SECOND / self.rate
        while not stop.is_set():
            remaining = target - time.monotonic()
            if remaining <= 0:
                return
            if self.clock_publisher is not None:
                elapsed_ns = (time.monotonic() - wall_start) * self.rate * NANOSECONDS_PER_SECOND
                self._publish_clock(bag_start_ns + int(elapsed_ns))
            time.sleep(min(remaining, CLOCK_PERIOD_S))

    def _publish_clock(self, bag_time_ns: int) -> None:
        if self.clock_publisher is None:
            return
        from vo_node.ros.messages import ns_to_stamp

        self.clock_publisher.publish(self._clock_type(clock=ns_to_stamp(bag_time_ns)))


# --------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class SegmentEvaluation:
    """One odometry segment of the recorded trajectory, evaluated with its own Sim(3) alignment.

    The node starts a segment at the first pose after a reset, a tracking loss or a change of the
    leading depth hypothesis, and continues ``odom`` from the last published pose. After a reset
    or a loss the segment has a new monocular scale, so a single Sim(3) alignment of the whole
    trajectory counts the scale change between segments as error. After a change of hypothesis
    the node carries the previous scale over, as far as the two hypotheses' paths agree.
    """

    start: int
    """Index of the segment's first pose in ``EvaluationReport.trajectory``."""
    poses: int
    """Number of recorded poses in the segment."""
    first_stamp_ns: int
    ate: dict | None = None
    """Metrics of this segment alone, from ``vo_node.evaluation.metrics``, or None."""
    ate_error: str | None = None
    """Reason no ATE was computed for this segment, or None."""


@dataclass
class EvaluationReport:
    """Result of :func:`evaluate_bag`."""

    frames_in_bag: int
    frames_received: int
    frames_processed: int
    """Frames tracked with odometry published."""
    frames_dropped: int
    frames_skipped: int
    frames_lost: int
    odometry_messages: int
    latency_median_ms: float | None
    """Median time from image arrival to published odometry, ms; None when no odometry was
    published."""
    latency_p95_ms: float | None
    wall_time_s: float
    odometry_stamps_ns: list[int]
    image_stamps_ns: list[int]
    frame_ids: tuple[str, str] | None
    """``(header.frame_id, child_frame_id)`` of the odometry messages."""
    trajectory: object
    """``vo_node.io.trajectory.Trajectory`` of the recorded camera poses."""
    ate: dict | None = None
    """Metrics from ``vo_node.evaluation.metrics.evaluate_trajectory``, or None."""
    ate_error: str | None = None
    """Reason no ATE was computed, or None."""
    path_lengths: list[int] = field(default_factory=list)
    """Number of poses in each received ``path`` message."""
    tf_stamps_ns: list[int] = field(default_factory=list)
    """Stamps of the odom -> base transforms received on /tf (empty without tf2_msgs)."""
    groundtruth_extrinsic: list[float] | None = None
    """``T_body_cam`` ``[x, y, z, qx, qy, qz, qw]`` applied to the ground truth, or None."""
    frames_initialising: int = 0
    """Frames the engine used to initialise (after the start, a reset or a loss); the node
    publishes no odometry for them."""
    length_unit: str = METRES
    """Unit of the ground truth and so of the ATE: :data:`METRES` or :data:`SCENE_UNITS`."""
    segments: list[SegmentEvaluation] = field(default_factory=list)
    """Odometry segments of ``trajectory`` in order; per-segment metrics are computed only when
    there is more than one segment."""

    @property
    def longest_segment(self) -> SegmentEvaluation | None:
        """The segment with the most poses (the first of equal ones), or None without poses."""
        if not self.segments:
            return None
        return max(self.segments, key=lambda segment: segment.poses)

    def summary(self) -> str:
        """Return the counts, latency and accuracy as aligned lines with units."""
        lines = [
            _format_row("frames in bag", self.frames_in_bag),
            _format_row("frames received", self.frames_received),
            _format_row("frames processed", f"{self.frames_processed} (odometry published)"),
            _format_row("frames initialising",
                 f"{self.frames_initialising} (used to initialise, no odometry)"),
            _format_row("frames dropped", self.frames_dropped),
            _format_row("frames skipped", self.frames_skipped),
            _format_row("frames lost", self.frames_lost),
            _format_row("odometry messages", self.odometry_messages),
            _format_row("odometry segments", self._segment_counts()),
            _format_row("latency median / p95", self.latency_text()),
            _format_row("wall time", f"{self.wall_time_s:.1f} s"),
        ]
        if self.groundtruth_extrinsic is not None:
            values = " ".join(f"{value:.9g}" for value in self.groundtruth_extrinsic)
            lines.append(_format_row("ground truth T_body_cam", values))
        if self.ate is not None:
            lines.extend(format_metrics(self.ate, self.length_unit))
        else:
            lines.append(f"ATE: not computed ({self.ate_error})")
        lines.extend(self.segment_lines())
        return "\n".join(lines)

    def latency_text(self) -> str:
        """Return ``"median / p95 ms"``, or a note that no odometry was received."""
        if self.latency_median_ms is None or self.latency_p95_ms is None:
            return "n/a (no odometry received)"
        return f"{self.latency_median_ms:.1f} / {self.latency_p95_ms:.1f} ms"

    def segment_lines(self) -> list[str]:
        """Return a warning and one ATE line per segment when there are several segments and
        their ATE was evaluated (ground truth given), else no lines."""
        evaluated = any(segment.ate is not None or segment.ate_error for segment in self.segments)
        if len(self.segments) < 2 or not evaluated:
            return []
        lines = [
            f"WARNING: the odometry has {len(self.segments)} segments, whose scales may "
            "differ; the ATE above fits one Sim(3) to all of them. Each segment on its own:"
        ]
        lines.extend(self._segment_row(index) for index in range(len(self.segments)))
        return lines

    def _segment_counts(self) -> str:
        if len(self.segments) <= 1:
            return str(len(self.segments))
        poses = ", ".join(str(segment.poses) for segment in self.segments)
        return f"{len(self.segments)} ({poses} poses)"

    def _segment_row(self, index: int) -> str:
        segment = self.segments[index]
        label = f"segment {index + 1} ({segment.poses} pose{'' if segment.poses == 1 else 's'})"
        if segment.ate is None:
            return _format_row(label, f"ATE not computed ({segment.ate_error})")
        metrics, unit = segment.ate, self.length_unit
        percent = metrics.get("ate_percent")
        scale = metrics.get("scale")
        value = (
            f"ATE RMSE {metrics['ate_rmse']:.3f} {unit} ("
            + ("n/a" if percent is None else f"{percent:.2f} %")
            + f" of the {metrics['path_length']:.3f} {unit} path), alignment scale "
            + ("n/a" if scale is None else f"{scale:.4g}")
        )
        if segment is self.longest_segment:
            value += ", the longest segment"
        return _format_row(label, value)


SUMMARY_LABEL_WIDTH = 25
"""Width of the label column of the evaluation summary, colon included."""


def _format_row(label: str, value: object) -> str:
    return f"{label + ':':<{SUMMARY_LABEL_WIDTH}} {value}"


def format_metrics(metrics: dict, unit: str) -> list[str]:
    """Return rounded accuracy lines with units from a ``TrajectoryMetrics.to_dict()``.

    Lengths are in ``unit`` (the ground truth's), angles in degrees. A value that is None
    (NaN in the metrics, such as an RPE over a distance longer than the path) prints as n/a.
    """

    def length(key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.3f} {unit}"

    def angle(key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.2f} deg"

    def percent(key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.2f} %"

    scale = metrics.get("scale")
    distance = metrics.get("rpe_distance_m")
    distance_text = "n/a" if distance is None else f"{distance:g} {unit}"
    return [
        _format_row("ATE RMSE", f"{length('ate_rmse')} ({percent('ate_percent')} of the "
                         f"{length('path_length')} path, Sim(3)-aligned)"),
        _format_row("ATE mean / median / max",
             f"{length('ate_mean')} / {length('ate_median')} / {length('ate_max')}"),
        _format_row("RPE between frames",
             f"{length('rpe_translation_rmse')}, {angle('rpe_rotation_rmse_deg')} (RMSE)"),
        _format_row(f"RPE over {distance_text}", f"{length('rpe_distance_translation_rmse')}, "
                                          f"{angle('rpe_distance_rotation_rmse_deg')} (RMSE)"),
        _format_row("standstill ATE RMSE", f"{length('standstill_ate_rmse')} "
                                    f"({percent('standstill_ate_percent')}), for an estimate "
                                    "that never moves"),
        _format_row("alignment scale", "n/a" if scale is None else f"{scale:.4g}"),
        _format_row("associated poses", metrics.get("associated_poses")),
    ]


def bag_length_unit(bag: str | Path) -> str:
    """Return :data:`SCENE_UNITS` for a bag written from a rendered sequence, else metres.

    Only bags written by :func:`vo_node.ros.bagwrite.cached_sequence_bag` (the demo's) record
    their source sequence; any other bag is taken to carry metric ground truth.
    """
    import json

    from vo_node.demo_data import PARAMETERS_FILE
    from vo_node.ros.bagwrite import SOURCE_FILE

    try:
        source = Path(json.loads((Path(bag) / SOURCE_FILE).read_text())["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return METRES
    return SCENE_UNITS if (source / PARAMETERS_FILE).is_file() else METRES


def evaluate_bag(
    bag: str | Path,
    image_topic: str,
    camera_info_topic: str | None,
    groundtruth: str | None,
    node_arguments: Sequence[str] = (),
    frame_timeout_s: float = 120.0,
    ready_timeout_s: float = 300.0,
    after_image: Callable[[int, object], None] | None = None,
    groundtruth_extrinsic: Sequence[float] | None = None,
    length_unit: str | None = None,
) -> EvaluationReport:
    """Run the node in this process on a bag, in lockstep, and evaluate its odometry.

    Args:
        bag: bag path.
        image_topic: sensor_msgs/Image topic in the bag.
        camera_info_topic: CameraInfo topic in the bag, or None (then give ``-p intrinsics:=``
            in ``node_arguments``).
        groundtruth: a pose topic in the bag (one of :data:`POSE_TYPES`), a TUM file, or None.
            A topic is interpolated at the image stamps.
        node_arguments: extra ROS arguments for the node, e.g. ``["-p", "model.device:=cpu"]``.
        frame_timeout_s: maximum wait for the node to finish one frame, seconds.
        ready_timeout_s: maximum wait for the model to load, seconds.
        after_image: called as ``after_image(index, node)`` once the node finished image
            ``index`` (0-based), e.g. to change a parameter mid-run.
        groundtruth_extrinsic: ``T_body_cam`` as ``[x, y, z, qx, qy, qz, qw]`` (metres, unit
            quaternion) when the ground truth is the pose of a body frame (an IMU, a robot base)
            rather than of the optical camera frame. The ground truth then becomes
            ``T_world_cam = T_world_body * T_body_cam``. None means it already is the camera.
        length_unit: unit of the ground truth for the report (:data:`METRES` or
            :data:`SCENE_UNITS`); None takes it from :func:`bag_length_unit`.

    Raises:
        ReplayError: when the model does not load, a frame times out, a topic is missing, or
            ``groundtruth_extrinsic`` is invalid.
    """
    from nav_msgs.msg import Odometry, Path as PathMessage

    from vo_node.ros.messages import pose_msg_to_matrix, stamp_to_ns
    from vo_node.ros.tf import matrix_to_pose

    body_from_camera = extrinsic_matrix(groundtruth_extrinsic)
    bag_topics(bag)  # a bad bag path fails here, before DDS starts and the model loads
    _check_groundtruth(bag, groundtruth)
    topics = [image_topic] + ([camera_info_topic] if camera_info_topic else [])
    arguments = ["--ros-args", "-r", f"image:={image_topic}", "-p", "image_qos:=reliable"]
    if camera_info_topic:
        arguments += ["-r", f"camera_info:={camera_info_topic}"]
    arguments += list(node_arguments)
    with node_in_process(arguments, "vo_evaluation", ReplayError, ready_timeout_s) as (
        node, recorder
    ):
        odometry: list[Odometry] = []
        paths: list[int] = []
        recorder.create_subscription(Odometry, node.resolve_topic_name("odom"),
                                     odometry.append, PLAYBACK_QOS_DEPTH)
        recorder.create_subscription(PathMessage, node.resolve_topic_name("path"),
                                     lambda msg: paths.append(len(msg.poses)), PLAYBACK_QOS_DEPTH)
        tf_stamps: list[int] = []
        _record_tf(recorder, node.params.odom_frame, node.params.base_frame, tf_stamps)
        player = BagPlayer(recorder, bag, topics=topics)
        if not player.wait_for_subscribers(topics, timeout_s=10.0):
            raise ReplayError(f"the node did not subscribe to {topics} within 10 s")
        _wait_for_publisher_match(recorder, node.resolve_topic_name("odom"), timeout_s=10.0)

        image_stamps: list[int] = []
        hooks = _LockstepHooks(node, image_topic, camera_info_topic, frame_timeout_s, image_stamps,
                               after_image)
        result = player.play(paced=False, before_publish=hooks.before, after_publish=hooks.after,
                             image_topics=[image_topic])
        wait_for(lambda: len(odometry) >= node.outcomes["published"], timeout_s=10.0)
        time.sleep(TRAILING_MESSAGES_WAIT_S)

        stamps = [stamp_to_ns(message.header.stamp) for message in odometry]
        trajectory, segments = _camera_trajectory(node, odometry, pose_msg_to_matrix,
                                                  node.segment_starts_ns)
        median_ms, p95_ms = latency_percentiles(node.latency)
        report = EvaluationReport(
            frames_in_bag=result.counts[image_topic],
            frames_received=node.input_rate.count,
            frames_processed=node.outcomes["published"],
            frames_initialising=node.outcomes["initialising"],
            frames_dropped=node.frames_dropped,
            frames_skipped=node.outcomes["skipped"] + node.frames_rejected,
            frames_lost=node.outcomes["lost"] + node.outcomes["failed"],
            odometry_messages=len(odometry),
            latency_median_ms=median_ms,
            latency_p95_ms=p95_ms,
            wall_time_s=result.wall_time_s,
            odometry_stamps_ns=stamps,
            image_stamps_ns=image_stamps,
            frame_ids=_frame_ids(odometry),
            trajectory=trajectory,
            path_lengths=paths,
            tf_stamps_ns=list(tf_stamps),
            groundtruth_extrinsic=(
                None if body_from_camera is None
                else [float(value) for value in matrix_to_pose(body_from_camera)]
            ),
            length_unit=length_unit or bag_length_unit(bag),
            segments=segments,
        )
        _warn_about_segments(segments)
        _add_ate(report, bag, groundtruth, body_from_camera, image_topic, camera_info_topic)
        return report


def latency_percentiles(window) -> tuple[float | None, float | None]:
    """Return the ``(median, p95)`` milliseconds of a ``LatencyWindow``, or ``(None, None)``
    when it has no value because no odometry was published (None stays valid JSON, NaN not)."""
    median_ms, p95_ms = window.percentiles_ms()
    if math.isnan(median_ms) or math.isnan(p95_ms):
        return None, None
    return median_ms, p95_ms


def _warn_about_segments(segments: list[SegmentEvaluation]) -> None:
    if len(segments) < 2:
        return
    poses = ", ".join(str(segment.poses) for segment in segments)
    logger.warning(
        "the odometry has %d segments (%s poses): a reset, a tracking loss or a change of the "
        "leading depth hypothesis started each new one, and a reset or loss also a new scale. "
        "The whole-trajectory ATE fits one Sim(3) to all of them, so when there is ground truth "
        "the summary also gives the ATE of each segment on its own",
        len(segments), poses,
    )


class _LockstepHooks:
    """Publish hooks that hold each image until the node finished the previous one."""

    def __init__(
        self, node, image_topic, camera_info_topic, timeout_s, image_stamps, after_image
    ) -> None:
        self.node = node
        self.after_image = after_image
        self.image_topic = image_topic
        self.camera_info_topic = camera_info_topic
        self.timeout_s = timeout_s
        self.image_stamps = image_stamps
        self.images = 0

    def before(self, message: BagMessage) -> None:
        if message.topic != self.image_topic:
            return
        if self.camera_info_topic:
            # The first camera_info must reach the node before the first image.
            wait_for(lambda: self.node._camera is not None, timeout_s=5.0)

    def after(self, message: BagMessage) -> None:
        if message.topic != self.image_topic:
            return
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image

        from vo_node.ros.messages import stamp_to_ns

        header = deserialize_message(message.data, Image).header
        self.image_stamps.append(stamp_to_ns(header.stamp))
        self.images += 1
        if not self.node.wait_for_completed(self.images, self.timeout_s):
            raise ReplayError(
                f"the node did not finish image {self.images} within {self.timeout_s} s; raise "
                "--frame-timeout or check the node's log"
            )
        if self.after_image is not None:
            self.after_image(self.images - 1, self.node)


def _record_tf(recorder, parent: str, child: str, stamps: list[int]) -> None:
    """Append the stamps of ``parent -> child`` transforms on /tf to ``stamps``."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from vo_node.ros.messages import stamp_to_ns
    from vo_node.ros.tf import TF_DEPTH, tf2_messages_available

    if not tf2_messages_available():
        return
    from tf2_msgs.msg import TFMessage

    def on_tf(message) -> None:
        for transform in message.transforms:
            if (transform.header.frame_id, transform.child_frame_id) == (parent, child):
                stamps.append(stamp_to_ns(transform.header.stamp))

    qos = QoSProfile(depth=TF_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
    recorder.create_subscription(TFMessage, "/tf", on_tf, qos)


def _frame_ids(odometry: list) -> tuple[str, str] | None:
    if not odometry:
        return None
    return odometry[0].header.frame_id, odometry[0].child_frame_id


def _camera_trajectory(node, odometry, pose_msg_to_matrix, segment_starts_ns: Sequence[int]):
    """Return the camera poses of the ``odometry`` messages as a ``Trajectory``, with its
    :class:`SegmentEvaluation` list (no metrics yet).

    ``segment_starts_ns`` contains the stamp of each segment's first pose in publishing order. A
    message whose stamp does not follow the previous recorded one is left out, as in the node's
    trajectory file.
    """
    from vo_node.io.trajectory import Trajectory
    from vo_node.ros.messages import stamp_to_ns
    from vo_node.ros.tf import OdometryFrame, matrix_to_pose

    frame = OdometryFrame(node.base_from_camera)
    stamps, poses, labels = [], [], []
    segment = 0
    for message in odometry:
        stamp = stamp_to_ns(message.header.stamp)
        if segment + 1 < len(segment_starts_ns) and stamp == segment_starts_ns[segment + 1]:
            segment += 1
        if stamps and stamp <= stamps[-1]:
            continue
        stamps.append(stamp)
        poses.append(matrix_to_pose(frame.camera_pose(pose_msg_to_matrix(message.pose.pose))))
        labels.append(segment)
    trajectory = Trajectory(np.array(stamps, dtype=np.int64), np.array(poses).reshape(-1, 7))
    return trajectory, split_segments(stamps, labels)


def split_segments(stamps_ns: Sequence[int], labels: Sequence[int]) -> list[SegmentEvaluation]:
    """Group consecutive poses with equal segment ``labels`` into :class:`SegmentEvaluation`."""
    segments: list[SegmentEvaluation] = []
    for index, (stamp, label) in enumerate(zip(stamps_ns, labels)):
        if index == 0 or label != labels[index - 1]:
            segments.append(SegmentEvaluation(start=index, poses=0, first_stamp_ns=int(stamp)))
        segments[-1].poses += 1
    return segments


def extrinsic_matrix(extrinsic: Sequence[float] | None) -> np.ndarray | None:
    """Return ``T_body_cam`` ``(4, 4)`` from ``[x, y, z, qx, qy, qz, qw]``, or None for None.

    Raises:
        ReplayError: when there are not 7 finite values or the quaternion is not unit length.
    """
    if extrinsic is None:
        return None
    from vo_node.ros.tf import check_transform, pose_to_matrix

    try:
        return pose_to_matrix(check_transform(extrinsic, "the ground-truth extrinsic T_body_cam"))
    except ValueError as error:
        raise ReplayError(f"{error} (--groundtruth-extrinsic x y z qx qy qz qw)") from None


def _check_groundtruth(bag: str | Path, groundtruth: str | None) -> None:
    """Raise ReplayError unless ``groundtruth`` is None, a file, or a pose topic of the bag."""
    if groundtruth is None or not groundtruth.startswith("/") or Path(groundtruth).is_file():
        return
    topics = bag_topics(bag)
    msgtype = topics.get(groundtruth)
    if msgtype is None:
        poses = sorted(name for name, kind in topics.items() if kind in POSE_TYPES)
        raise ReplayError(
            f"ground-truth topic {groundtruth} is not in bag {bag}; its pose topics are: "
            f"{', '.join(poses) or 'none'}. Pass one with --groundtruth, or a TUM file"
        )
    if msgtype not in POSE_TYPES:
        raise ReplayError(
            f"ground-truth topic {groundtruth} has type {msgtype} in bag {bag}; use one of "
            f"{', '.join(POSE_TYPES)}, or a TUM file"
        )


def read_groundtruth(
    bag: str | Path,
    groundtruth: str,
    body_from_camera: np.ndarray | None = None,
    image_topic: str | None = None,
    camera_info_topic: str | None = None,
):
    """Return the ground truth ``T_world_cam`` as a ``Trajectory`` from a TUM file or a bag topic.

    A pose topic is read with :class:`vo_node.io.bag.BagSequence` (the bag opened as a
    sequence of ``image_topic``), so it is interpolated at the image stamps.

    Args:
        bag: bag path.
        groundtruth: a TUM file, or a pose topic of the bag (one of :data:`POSE_TYPES`).
        body_from_camera: ``(4, 4)`` ``T_body_cam`` when the ground truth is a body pose, else
            None.
        image_topic, camera_info_topic: topics that open the bag as a sequence; None selects
            the bag's only image topic and the CameraInfo topic beside it.

    Raises:
        ReplayError: the topic is not a pose topic, or the bag cannot be opened as a sequence.
    """
    from vo_node.io.trajectory import read_tum

    if not groundtruth.startswith("/") or Path(groundtruth).is_file():
        trajectory = read_tum(groundtruth)
        if body_from_camera is None:
            return trajectory
        return _camera_trajectory_from_body(trajectory, body_from_camera)
    _check_groundtruth(bag, groundtruth)
    from vo_node.io.bag import BagSequence
    from vo_node.io.camera import CalibrationError
    from vo_node.io.sequence import SequenceError

    try:
        sequence = BagSequence(
            bag, image_topic=image_topic, camera_info_topic=camera_info_topic,
            groundtruth_topic=groundtruth, T_body_cam=body_from_camera,
        )
    except (SequenceError, CalibrationError) as error:
        # NOTE: a bag without any CameraInfo topic cannot be opened as a sequence, so its
        # ground truth has to be given as a TUM file.
        raise ReplayError(
            f"ground truth {groundtruth} could not be read: {error}. A bag without camera_info "
            "needs its ground truth as a TUM file"
        ) from None
    trajectory = sequence.ground_truth
    if trajectory is None:
        raise ReplayError(
            f"ground-truth topic {groundtruth} in bag {bag} has no pose within "
            f"{sequence.max_ground_truth_gap_ns / 1e6:.0f} ms of any image on "
            f"{sequence.image_topic}"
        )
    return trajectory


def _camera_trajectory_from_body(trajectory, body_from_camera: np.ndarray):
    """Return ``T_world_cam = T_world_body * T_body_cam`` for a body-pose ``Trajectory``."""
    from vo_node.io.readers.poses import matrices_to_poses, poses_to_matrices
    from vo_node.io.trajectory import Trajectory

    matrices = poses_to_matrices(trajectory.poses) @ body_from_camera
    return Trajectory(trajectory.timestamps_ns, matrices_to_poses(matrices))


def _add_ate(
    report: EvaluationReport,
    bag,
    groundtruth: str | None,
    body_from_camera: np.ndarray | None = None,
    image_topic: str | None = None,
    camera_info_topic: str | None = None,
) -> None:
    if groundtruth is None:
        report.ate_error = "no ground truth given"
        return
    if len(report.trajectory) < MIN_POSES_FOR_ATE:
        report.ate_error = f"only {len(report.trajectory)} poses were recorded"
        if report.frames_initialising:
            report.ate_error += (
                f"; the engine spent {report.frames_initialising} of the "
                f"{report.frames_received} frames received on initialising, so replay a longer "
                "bag"
            )
        return
    from vo_node.evaluation.metrics import EvaluationError, evaluate_trajectory

    try:
        reference = read_groundtruth(bag, groundtruth, body_from_camera, image_topic,
                                     camera_info_topic)
    except (EvaluationError, ReplayError) as error:
        report.ate_error = str(error)
        return
    try:
        report.ate = evaluate_trajectory(report.trajectory, reference).to_dict()
    except EvaluationError as error:
        report.ate_error = str(error)
    if len(report.segments) > 1:
        _add_segment_ates(report, reference)


def _add_segment_ates(report: EvaluationReport, reference) -> None:
    """Evaluate each segment of ``report.trajectory`` on its own against ``reference``."""
    from vo_node.evaluation.metrics import EvaluationError, evaluate_trajectory
    from vo_node.io.trajectory import Trajectory

    for segment in report.segments:
        if segment.poses < MIN_POSES_FOR_ATE:
            segment.ate_error = f"{segment.poses} poses, fewer than {MIN_POSES_FOR_ATE}"
            continue
        end = segment.start + segment.poses
        part = Trajectory(report.trajectory.timestamps_ns[segment.start:end],
                          report.trajectory.poses[segment.start:end])
        try:
            segment.ate = evaluate_trajectory(part, reference).to_dict()
        except EvaluationError as error:
            segment.ate_error = str(error)


def _wait_for_publisher_match(node, topic: str, timeout_s: float) -> None:
    wait_for(lambda: node.count_publishers(topic) > 0, timeout_s)


# --------------------------------------------------------------------------------------------
# Command line


def positive_seconds(text: str) -> float:
    """Parse an argparse duration in seconds that must be a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds, got {text}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vo_replay",
        description="Play a ROS 2 (or ROS 1) bag over DDS like 'ros2 bag play', or evaluate "
        "vo_node on it. Run inside scripts/netns_run.sh.",
    )
    parser.add_argument("bag", type=Path, help="bag folder (sqlite3 or mcap) or ROS 1 .bag file")
    parser.add_argument("--rate", type=float, default=1.0, metavar="FACTOR",
                        help="playback speed factor (default 1.0, the recorded speed)")
    parser.add_argument("--loop", action="store_true", help="play again from the start at the end")
    parser.add_argument("--topics", nargs="+", help="topics to play (default: all)")
    parser.add_argument("--clock", action="store_true", help="publish /clock with the bag time")
    parser.add_argument("--start-delay", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long before the first message, seconds (default 0)")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS",
                        help="before playing, wait up to this many seconds for the topics a VO "
                        "node subscribes to: until a played image topic (sensor_msgs/Image or "
                        "CompressedImage) has a subscriber, and so does the played "
                        "<namespace>/camera_info beside each subscribed image topic. Other "
                        "topics, such as ground truth, need none. Without played image topics, "
                        "every played topic needs a subscriber. Playback starts anyway after "
                        "the wait, with a warning. Default 0: no wait, so reliable subscribers "
                        "that join late miss messages")
    parser.add_argument("--best-effort", action="store_true",
                        help="publish best effort instead of reliable")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--evaluate", action="store_true",
                            help="run vo_node in this process on the bag in lockstep and report")
    evaluation.add_argument("--image-topic", default="/cam0/image_raw",
                            help="image topic in the bag (sensor_msgs/Image) "
                            "(default /cam0/image_raw)")
    evaluation.add_argument("--camera-info-topic", default="/cam0/camera_info",
                            help="CameraInfo topic in the bag (default /cam0/camera_info); "
                            "'none' to use -p intrinsics:=...")
    evaluation.add_argument("--groundtruth", help="ground-truth pose topic in the bag or TUM file")
    evaluation.add_argument(
        "--groundtruth-extrinsic", type=float, nargs=7, default=None,
        metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
        help="T_body_cam (metres, unit quaternion) when the ground truth is the pose of a body "
        "or IMU frame: the camera pose compared is T_world_body * T_body_cam. EuRoC cam0: "
        + " ".join(str(value) for value in EUROC_CAM0_T_BODY_CAM),
    )
    evaluation.add_argument("--length-unit", choices=(METRES, SCENE_UNITS), default=None,
                            help="unit of the ground truth in the report (default: scene units "
                            "for a bag the demo wrote from a rendered sequence, else m)")
    evaluation.add_argument("--node-args", default="",
                            help="extra ROS arguments for the node, e.g. \"-p model.device:=cpu\"")
    evaluation.add_argument("--frame-timeout", type=positive_seconds, default=120.0,
                            metavar="SECONDS",
                            help="maximum wait for the node to finish one frame, seconds "
                            "(default 120)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Play or evaluate a bag; return the process exit status."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.evaluate:
            camera_info = None if args.camera_info_topic == "none" else args.camera_info_topic
            report = evaluate_bag(args.bag, args.image_topic, camera_info, args.groundtruth,
                                  shlex.split(args.node_args), frame_timeout_s=args.frame_timeout,
                                  groundtruth_extrinsic=args.groundtruth_extrinsic,
                                  length_unit=args.length_unit)
            print(report.summary())
            return 0
        return _play(args)
    except ReplayError as error:
        logger.error("%s", error)
        return 1


def _play(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node

    bag_topics(args.bag)  # a bad bag path fails here, before DDS starts
    rclpy.init(args=["--ros-args"])
    node = Node("vo_replay")
    try:
        player = BagPlayer(node, args.bag, args.topics, args.rate, args.clock,
                           reliable=not args.best_effort)
        if args.wait_for_subscribers > 0:
            _wait_for_subscribers(player, args.wait_for_subscribers)
        logger.info("playing %s: %s", args.bag, ", ".join(player.topics))
        result = player.play(loop=args.loop, start_delay_s=args.start_delay)
        logger.info("published %s in %.1f s", result.counts, result.wall_time_s)
        if not args.best_effort and not player.wait_for_delivery(DELIVERY_TIMEOUT_S):
            logger.warning("some subscribers had not acknowledged every message after %.1f s",
                           DELIVERY_TIMEOUT_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _wait_for_subscribers(player: BagPlayer, timeout_s: float) -> None:
    started = time.monotonic()
    if player.wait_for_subscribers(None, timeout_s):
        logger.info("subscribers matched after %.1f s", time.monotonic() - started)
        return
    logger.warning(
        "no subscriber on %s after %.1f s; playing anyway",
        ", ".join(player.topics_without_subscriber()), timeout_s,
    )


if __name__ == "__main__":
    sys.exit(main())
