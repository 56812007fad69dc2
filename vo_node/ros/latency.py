"""Latency of the ROS 2 node under a live-camera input: fixed-rate images from another process.

``python -m vo_node.ros.latency [SEQUENCE or BAG] [--rate 30] [--frames N] [--warmup N]
[--config small] [--override KEY=VALUE ...] [--model PATH] [--device auto]
[--qos sensor_data|reliable] [--output outputs/latency.json]``

A publisher process sends the frames of the sequence at a fixed rate, like a camera driver and
unlike the lockstep replay of ``vo_replay --evaluate``. Each image (and its camera_info) is
stamped with the wall-clock time at which it is published. The node runs in this process with
the requested image QoS and the default depth-1 queue, and a recorder node in this process takes
its odometry. Both processes read the same host clock, so the latency of a frame is its odometry's
receipt time minus its stamp. ``--warmup N`` first sends N frames one at a time, each after the
node finished the previous one, so the engine's initialisation is not timed. N should cover the
depth-hypothesis trial after it too (``frontend.hypothesis_frames`` frames, 30 by default, or up
to ``frontend.hypothesis_extra_frames`` more while the hypotheses' costs stay close, each tracked
twice). On EuRoC MH_05 with ``small`` and patch seeds 0 to 4 the first frame tracked after the
trial was input frame 18 to 75, so use 80 there. The tool reports, for the timed frames only:

- latency median, p95 and max (image publish to odometry receipt), and its median in the first
  and second half of the run (a growing queue would make the second larger);
- frames published, received by the node, processed by the engine and dropped, with the drop
  ratio. A frame is dropped when a newer one replaced it in the node's one-frame slot, when its
  image could not be decoded, or when it never reached the node's callback (transport loss, or
  the depth-1 subscription queue overwritten);
- the processed rate (odometry messages per second) against the input rate;
- the engine's time per frame from ``TrackResult.times``, against the frame period;
- the node's backlog over time: frames received but not yet dropped or tracked. The node's
  design bounds it by 3: one frame in the image callback, one in the slot, one being tracked.

The Fast DDS shared-memory profile ``config/fastdds_shm.xml`` is applied to both processes unless
``FASTRTPS_DEFAULT_PROFILES_FILE`` is already set. Run it inside a private network namespace on
shared machines: ``bash scripts/netns_run.sh .venv/bin/python -m vo_node.ros.latency ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vo_node.ros.inprocess import node_in_process, wait_for

logger = logging.getLogger(__name__)

DEFAULT_RATE_HZ = 30.0
DEFAULT_OUTPUT = Path("outputs") / "latency.json"
DEFAULT_SEQUENCE_FOLDER = Path("outputs") / "demo" / "sequence"
"""Folder of the synthetic demo sequence, rendered when no sequence is given."""
SHM_PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_shm.xml"
PROFILE_VARIABLE = "FASTRTPS_DEFAULT_PROFILES_FILE"
IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
CAMERA_FRAME = "camera_optical_frame"
QOS_CHOICES = ("sensor_data", "reliable")
RELIABLE_PUBLISHER_DEPTH = 10
"""History depth of the reliable image publisher, messages."""
ODOMETRY_QOS_DEPTH = 100
CAMERA_INFO_WARMUP_MESSAGES = 5
CAMERA_INFO_WARMUP_PERIOD_S = 0.05
"""Before the first image, camera_info is sent this many times at this period, so the node has
the intrinsics when the first image arrives."""
SUBSCRIBER_WAIT_S = 30.0
MODEL_READY_TIMEOUT_S = 300.0
FLUSH_WAIT_S = 0.5
"""The publisher stays alive this long after its last image, so reliable samples are delivered."""
COMPLETION_TIMEOUT_S = 300.0
"""Maximum wait for the node to finish the frames it received after the publisher stopped."""
ODOMETRY_WAIT_S = 5.0
QUEUE_SAMPLE_PERIOD_S = 0.05
NANOSECONDS_PER_SECOND = 1_000_000_000
MILLISECONDS_PER_SECOND = 1e3
PERCENTILE = 95
WARMUP_SENT = "warm-up frame sent"
"""Line the publisher writes after each warm-up frame."""
WARMUP_RECEIVE_TIMEOUT_S = 5.0
"""A warm-up frame not received within this time counts as lost and the next one is sent."""
MAX_BACKLOG = 3
"""Bound of the backlog: one frame in the image callback, one in the slot, one being tracked."""


class LatencyError(RuntimeError):
    """The measurement could not run; the message names the cause and the fix."""


# --------------------------------------------------------------------------------------------
# Publisher process


def publish_frames(
    sequence_path: Path, rate_hz: float, frames: int | None, qos: str, warmup: int = 0
) -> dict[str, Any]:
    """Publish the sequence's frames at ``rate_hz`` with wall-clock stamps; return the record.

    Runs in the publisher process. All frames are read and converted before the first publish,
    so disk reads do not disturb the rate. Each frame's camera_info and image share the stamp
    ``time.time_ns()`` taken just before publishing. The first ``warmup`` frames are sent one at
    a time before the timed ones: after each, the process writes :data:`WARMUP_SENT` to stdout
    and waits for a line on stdin, which the measuring process sends once the node is done.

    Returns:
        ``{"published": int, "publish_ns": [...], "late_ms": [...]}`` where ``late_ms`` is how
        far each publish was behind its schedule, milliseconds.
    """
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from vo_node.io.camera import CalibrationError
    from vo_node.io.sequence import SequenceError

    try:
        images, info = _prepare_messages(sequence_path, None if frames is None else warmup + frames)
    except (SequenceError, CalibrationError) as error:
        raise LatencyError(str(error)) from None
    if len(images) <= warmup:
        raise LatencyError(
            f"{sequence_path} has {len(images)} frames, not more than the {warmup} warm-up "
            "frames; lower --warmup or use a longer sequence"
        )
    rclpy.init(args=["--ros-args"])
    node = rclpy.create_node("vo_latency_camera")
    try:
        if qos == "reliable":
            profile = QoSProfile(depth=RELIABLE_PUBLISHER_DEPTH,
                                 reliability=ReliabilityPolicy.RELIABLE)
        else:
            profile = qos_profile_sensor_data
        image_publisher = node.create_publisher(Image, IMAGE_TOPIC, profile)
        info_publisher = node.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, profile)
        _wait_for_subscribers([image_publisher, info_publisher])
        for _ in range(CAMERA_INFO_WARMUP_MESSAGES):
            info.header.stamp = _stamp(time.time_ns())
            info_publisher.publish(info)
            time.sleep(CAMERA_INFO_WARMUP_PERIOD_S)
        for image in images[:warmup]:
            _publish(image_publisher, info_publisher, image, info)
            print(WARMUP_SENT, flush=True)
            if not sys.stdin.readline():
                raise LatencyError("the measuring process closed the warm-up handshake")
        publish_ns, late_ms = _publish_at_rate(image_publisher, info_publisher,
                                               images[warmup:], info, rate_hz)
        time.sleep(FLUSH_WAIT_S)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return {"published": len(publish_ns), "publish_ns": publish_ns, "late_ms": late_ms}


def _prepare_messages(sequence_path: Path, frames: int | None) -> tuple[list, Any]:
    """Read the frames into Image messages and build the camera_info of the sequence."""
    from sensor_msgs.msg import CameraInfo

    from vo_node.io.camera import undistorted_camera_info
    from vo_node.io.sequence import open_sequence
    from vo_node.ros.messages import array_to_image

    sequence = open_sequence(sequence_path, max_frames=frames)
    images = []
    for frame in sequence:
        encoding = "mono8" if frame.image.ndim == 2 else "rgb8"
        images.append(array_to_image(frame.image, encoding, frame_id=CAMERA_FRAME))
    camera = sequence.camera
    info = CameraInfo(**undistorted_camera_info(camera))
    info.header.frame_id = CAMERA_FRAME
    logger.info("publishing %d frames of %s (%dx%d)", len(images), sequence.name, camera.width,
                camera.height)
    return images, info


def _wait_for_subscribers(publishers: Sequence[Any]) -> None:
    deadline = time.monotonic() + SUBSCRIBER_WAIT_S
    while not all(p.get_subscription_count() > 0 for p in publishers):
        if time.monotonic() > deadline:
            raise LatencyError(
                f"no subscriber on {IMAGE_TOPIC} and {CAMERA_INFO_TOPIC} after "
                f"{SUBSCRIBER_WAIT_S:.0f} s; check that both processes share ROS_DOMAIN_ID and "
                "the network namespace"
            )
        time.sleep(0.01)


def _publish_at_rate(image_publisher, info_publisher, images, info, rate_hz: float):
    period_s = 1.0 / rate_hz
    publish_ns: list[int] = []
    late_ms: list[float] = []
    start = time.monotonic()
    for index, image in enumerate(images):
        target = start + index * period_s
        remaining = target - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        late_ms.append(max(0.0, time.monotonic() - target) * MILLISECONDS_PER_SECOND)
        publish_ns.append(_publish(image_publisher, info_publisher, image, info))
    return publish_ns, late_ms


def _publish(image_publisher, info_publisher, image, info) -> int:
    """Stamp ``info`` and ``image`` with the current time, publish both, return the stamp (ns)."""
    stamp_ns = time.time_ns()
    stamp = _stamp(stamp_ns)
    info.header.stamp = stamp
    image.header.stamp = stamp
    info_publisher.publish(info)
    image_publisher.publish(image)
    return stamp_ns


def _stamp(nanoseconds: int):
    from vo_node.ros.messages import ns_to_stamp

    return ns_to_stamp(nanoseconds)


# --------------------------------------------------------------------------------------------
# Node side


@dataclass
class EngineTime:
    """Engine time of one tracked frame."""

    stamp_ns: int
    wall_ms: float
    """Wall time of ``VisualOdometry.track``, milliseconds."""
    stages_ms: dict[str, float]
    """``TrackResult.times`` per stage, milliseconds."""


class _TimedEngine:
    """Proxy of the engine that records the time of each ``track`` call."""

    def __init__(self, engine: Any, sink: list[EngineTime]) -> None:
        self._engine = engine
        self._sink = sink

    def track(self, image, timestamp_ns, intrinsics, **options):
        started = time.perf_counter()
        result = self._engine.track(image, timestamp_ns, intrinsics, **options)
        wall_ms = (time.perf_counter() - started) * MILLISECONDS_PER_SECOND
        times = getattr(result, "times", None)
        stages = {name: float(value) * MILLISECONDS_PER_SECOND
                  for name, value in (vars(times) if times is not None else {}).items()}
        self._sink.append(EngineTime(int(timestamp_ns), wall_ms, stages))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def _timed_node_class():
    from vo_node.ros.node import VONode

    class TimedVONode(VONode):
        """VONode whose engine records its per-frame time in ``engine_times``."""

        def __init__(self, **node_kwargs: Any) -> None:
            # Set before VONode.__init__, which starts the worker that loads the engine.
            self.engine_times: list[EngineTime] = []
            super().__init__(**node_kwargs)

        def _load_engine(self):
            # NOTE: overrides a private VONode method; keep in step with VONode._load_engine.
            return _TimedEngine(super()._load_engine(), self.engine_times)

    return TimedVONode


@dataclass
class QueueSample:
    """The node's counters at one time, counted from the first timed frame."""

    time_s: float
    """Seconds since the timed frames started."""
    received: int
    completed: int
    processed: int
    dropped: int
    backlog: int
    """``received - completed``: frames received but not yet dropped or tracked."""


@dataclass
class LatencyReport:
    """Result of :func:`measure_latency`. Times in milliseconds, rates in Hz."""

    sequence: str
    qos: str
    rate_hz: float
    frames_published: int
    frames_received: int
    frames_processed: int
    """Frames the engine tracked (odometry published, lost, skipped or failed)."""
    frames_dropped: int
    """``frames_dropped_in_slot + frames_rejected + frames_not_received``."""
    frames_dropped_in_slot: int
    frames_rejected: int
    frames_not_received: int
    odometry_published: int
    odometry_received: int
    drop_ratio: float
    input_rate_hz: float
    processed_rate_hz: float
    """Odometry messages received per second, between the first and the last."""
    latency_median_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    latency_first_half_median_ms: float
    latency_second_half_median_ms: float
    node_latency_median_ms: float
    """Node-internal latency (image arrival to odometry publish) from its diagnostics window of
    the newest 200 frames, which can include warm-up frames."""
    node_latency_p95_ms: float
    engine_time_median_ms: float
    engine_time_p95_ms: float
    outside_engine_median_ms: float
    """Per frame, latency minus the engine's ``track`` time (median): waiting in the slot,
    decoding, undistortion, odometry conversion and DDS transport both ways."""
    engine_stage_median_ms: dict[str, float]
    frame_period_ms: float
    publish_late_p95_ms: float
    """How far the publisher fell behind its schedule (p95), milliseconds."""
    backlog_max: int
    backlog_final: int
    warmup_frames: int = 0
    """Frames sent in lockstep before the timed ones, left out of every figure."""
    latencies_ms: list[float] = field(default_factory=list)
    engine_frames: list[dict[str, Any]] = field(default_factory=list)
    """Per tracked frame: ``stamp_ns``, ``wall_ms`` of ``track`` and ``stages_ms``."""
    queue: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[str]:
        """Return the human-readable summary lines."""
        return [
            f"input: {self.sequence}, {self.frames_published} frames at {self.rate_hz:.1f} Hz "
            f"(achieved {self.input_rate_hz:.1f} Hz) after {self.warmup_frames} warm-up frames, "
            f"image QoS {self.qos}",
            f"frames published / received / processed / dropped: {self.frames_published} / "
            f"{self.frames_received} / {self.frames_processed} / {self.frames_dropped} "
            f"(drop ratio {100 * self.drop_ratio:.1f} %; in slot {self.frames_dropped_in_slot}, "
            f"rejected {self.frames_rejected}, not received {self.frames_not_received})",
            f"latency image stamp -> odometry receipt: median {self.latency_median_ms:.1f} ms, "
            f"p95 {self.latency_p95_ms:.1f} ms, max {self.latency_max_ms:.1f} ms "
            f"({len(self.latencies_ms)} odometry messages)",
            f"latency median first / second half: {self.latency_first_half_median_ms:.1f} / "
            f"{self.latency_second_half_median_ms:.1f} ms",
            f"processed rate: {self.processed_rate_hz:.2f} odometry/s for "
            f"{self.input_rate_hz:.1f} Hz input",
            f"engine time per frame: median {self.engine_time_median_ms:.1f} ms, p95 "
            f"{self.engine_time_p95_ms:.1f} ms (frame period {self.frame_period_ms:.1f} ms); "
            f"latency outside the engine: median {self.outside_engine_median_ms:.1f} ms",
            f"backlog (received, not yet tracked): max {self.backlog_max}, final "
            f"{self.backlog_final}",
            f"machine: {self.machine.get('cpu')}, {self.machine.get('cores')} cores, load "
            f"average {self.machine.get('load_average_start')} at start, "
            f"{self.machine.get('load_average_end')} at end",
        ]


def measure_latency(
    sequence_path: Path,
    rate_hz: float = DEFAULT_RATE_HZ,
    frames: int | None = None,
    node_arguments: Sequence[str] = (),
    qos: str = "sensor_data",
    warmup: int = 0,
) -> LatencyReport:
    """Run the node in this process, feed it from a publisher process, and measure.

    Args:
        sequence_path: a sequence folder, video or ROS 2 bag (read with ``open_sequence``).
        rate_hz: publish rate, Hz.
        frames: publish at most this many timed frames (None: the rest of the sequence).
        node_arguments: ROS arguments for the node, e.g. ``["-p", "model.device:=cpu"]``.
        qos: image QoS of publisher and node, ``sensor_data`` or ``reliable``.
        warmup: frames sent one at a time, each after the node finished the previous one,
            before the timed frames. They let the engine initialise (its first optimisation
            takes far longer than a frame) and are left out of every figure.

    Raises:
        LatencyError: the model did not load, or the publisher failed.
    """
    if not rate_hz > 0:
        raise LatencyError(f"rate must be positive, got {rate_hz} Hz")
    if qos not in QOS_CHOICES:
        raise LatencyError(f"qos must be one of {', '.join(QOS_CHOICES)}, got {qos!r}")
    if PROFILE_VARIABLE not in os.environ and SHM_PROFILE.is_file():
        os.environ[PROFILE_VARIABLE] = str(SHM_PROFILE)

    from nav_msgs.msg import Odometry

    arguments = ["--ros-args", "-r", f"image:={IMAGE_TOPIC}", "-r",
                 f"camera_info:={CAMERA_INFO_TOPIC}", "-p", f"image_qos:={qos}",
                 "-p", "publish_tf:=false", *node_arguments]
    with node_in_process(arguments, "vo_latency_recorder", LatencyError, MODEL_READY_TIMEOUT_S,
                         _timed_node_class()) as (node, recorder):
        receipts: list[tuple[int, int]] = []

        def on_odometry(message: Odometry) -> None:
            stamp = message.header.stamp
            receipts.append((stamp.sec * NANOSECONDS_PER_SECOND + stamp.nanosec, time.time_ns()))

        recorder.create_subscription(Odometry, node.resolve_topic_name("odom"), on_odometry,
                                     ODOMETRY_QOS_DEPTH)
        wait_for(lambda: recorder.count_publishers(node.resolve_topic_name("odom")) > 0, 10.0)

        publisher = _start_publisher(sequence_path, rate_hz, frames, qos, warmup)
        try:
            baseline = _warm_up(publisher, node, warmup)
            load_at_start = [round(value, 2) for value in os.getloadavg()]
            sampler = _QueueSampler(node, baseline)
            sampler.start()
            published = _finish_publisher(publisher)
        finally:
            if publisher.poll() is None:
                publisher.kill()
                publisher.wait()
        node.wait_for_completed(node.input_rate.count, COMPLETION_TIMEOUT_S)
        wait_for(lambda: len(receipts) >= node.outcomes["published"], ODOMETRY_WAIT_S)
        sampler.stop()
        report = _build_report(sequence_path, qos, rate_hz, published, node, receipts,
                               sampler.samples, baseline)
        report.machine["load_average_start"] = load_at_start
        report.warmup_frames = warmup
        return report


def _start_publisher(sequence_path: Path, rate_hz: float, frames: int | None, qos: str,
                     warmup: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "vo_node.ros.latency", "--publisher", str(sequence_path),
               "--rate", str(rate_hz), "--qos", qos, "--warmup", str(warmup)]
    if frames is not None:
        command += ["--frames", str(frames)]
    # stderr is inherited, so the publisher's log lines appear with this process's.
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _warm_up(publisher: subprocess.Popen, node, warmup: int) -> "NodeCounters":
    """Release the publisher's warm-up frames one at a time, each after the node is done.

    Returns the node's counters read while it is idle, just before the publisher is released
    into the timed frames, so no timed frame can be counted in the baseline.
    """
    baseline = NodeCounters.read(node)
    for index in range(warmup):
        received = node.input_rate.count
        line = publisher.stdout.readline()
        if line.strip() != WARMUP_SENT:
            raise LatencyError(
                f"the publisher process stopped before warm-up frame {index + 1} of {warmup} "
                f"(status {publisher.poll()}); see its log above"
            )
        # A best-effort frame may be lost, so the wait for its arrival is bounded.
        wait_for(lambda: node.input_rate.count > received, WARMUP_RECEIVE_TIMEOUT_S)
        if not node.wait_for_completed(node.input_rate.count, COMPLETION_TIMEOUT_S):
            raise LatencyError(
                f"the node did not finish warm-up frame {index + 1} within "
                f"{COMPLETION_TIMEOUT_S:.0f} s"
            )
        baseline = NodeCounters.read(node)
        publisher.stdin.write("\n")
        publisher.stdin.flush()
    logger.info("warm-up done: %d frames; the timed frames start now", warmup)
    return baseline


def _finish_publisher(publisher: subprocess.Popen) -> dict:
    """Wait for the publisher process to exit and return its record."""
    output, _ = publisher.communicate()
    if publisher.returncode != 0:
        raise LatencyError(
            f"the publisher process failed with status {publisher.returncode}; see its log above"
        )
    try:
        return json.loads(output.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise LatencyError(f"the publisher process printed no record: {output[-500:]!r}") from None


@dataclass
class NodeCounters:
    """The node's frame counters at one time."""

    received: int
    completed: int
    """Frames whose fate is decided (dropped, rejected, or taken by the worker)."""
    processed: int
    dropped: int
    rejected: int
    published: int
    """Frames tracked with odometry published."""

    @classmethod
    def read(cls, node) -> "NodeCounters":
        """Read the counters of a running ``VONode``."""
        return cls(
            received=node.input_rate.count,
            completed=node.frames_completed,
            processed=sum(node.outcomes.values()),
            dropped=node.frames_dropped,
            rejected=node.frames_rejected,
            published=node.outcomes["published"],
        )

    def minus(self, other: "NodeCounters") -> "NodeCounters":
        """Return the counts since ``other`` was read."""
        return NodeCounters(**{name: value - getattr(other, name)
                               for name, value in asdict(self).items()})


class _QueueSampler:
    """Thread that samples the node's counters every :data:`QUEUE_SAMPLE_PERIOD_S`."""

    def __init__(self, node, baseline: NodeCounters) -> None:
        self.node = node
        self.baseline = baseline
        self.samples: list[QueueSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vo_latency_sampler", daemon=True)
        self._start = time.monotonic()

    def start(self) -> None:
        self._start = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(QUEUE_SAMPLE_PERIOD_S):
            self._sample()

    def _sample(self) -> None:
        counts = NodeCounters.read(self.node).minus(self.baseline)
        self.samples.append(QueueSample(
            time_s=time.monotonic() - self._start,
            received=counts.received,
            completed=counts.completed,
            processed=counts.processed,
            dropped=counts.dropped,
            backlog=counts.received - counts.completed,
        ))


def _build_report(sequence_path, qos, rate_hz, published, node, receipts, samples, baseline):
    publish_ns = published["publish_ns"]
    sent = set(publish_ns)
    timed_receipts = [(stamp, receipt) for stamp, receipt in receipts if stamp in sent]
    latencies = [(receipt - stamp) / 1e6 for stamp, receipt in timed_receipts]
    counts = NodeCounters.read(node).minus(baseline)
    not_received = published["published"] - counts.received
    dropped = counts.dropped + counts.rejected + not_received
    engine = [entry for entry in node.engine_times if entry.stamp_ns in sent]
    engine_ms = [entry.wall_ms for entry in engine]
    stage_names = sorted({name for entry in engine for name in entry.stages_ms})
    stages = {name: _median([entry.stages_ms.get(name, math.nan) for entry in engine])
              for name in stage_names}
    engine_by_stamp = {entry.stamp_ns: entry.wall_ms for entry in engine}
    outside_engine = [(receipt - stamp) / 1e6 - engine_by_stamp[stamp]
                      for stamp, receipt in timed_receipts if stamp in engine_by_stamp]
    node_median, node_p95 = node.latency.percentiles_ms()
    half = len(latencies) // 2
    receipt_ns = [receipt for _, receipt in timed_receipts]

    return LatencyReport(
        sequence=str(sequence_path),
        qos=qos,
        rate_hz=rate_hz,
        frames_published=published["published"],
        frames_received=counts.received,
        frames_processed=counts.processed,
        frames_dropped=dropped,
        frames_dropped_in_slot=counts.dropped,
        frames_rejected=counts.rejected,
        frames_not_received=not_received,
        odometry_published=counts.published,
        odometry_received=len(timed_receipts),
        drop_ratio=dropped / published["published"] if published["published"] else math.nan,
        input_rate_hz=_rate(publish_ns),
        processed_rate_hz=_rate(receipt_ns),
        latency_median_ms=_median(latencies),
        latency_p95_ms=_percentile(latencies),
        latency_max_ms=max(latencies) if latencies else math.nan,
        latency_first_half_median_ms=_median(latencies[:half]),
        latency_second_half_median_ms=_median(latencies[half:]),
        node_latency_median_ms=node_median,
        node_latency_p95_ms=node_p95,
        engine_time_median_ms=_median(engine_ms),
        engine_time_p95_ms=_percentile(engine_ms),
        outside_engine_median_ms=_median(outside_engine),
        engine_stage_median_ms=stages,
        frame_period_ms=MILLISECONDS_PER_SECOND / rate_hz,
        publish_late_p95_ms=_percentile(published["late_ms"]),
        backlog_max=max((s.backlog for s in samples), default=0),
        backlog_final=samples[-1].backlog if samples else 0,
        latencies_ms=latencies,
        engine_frames=[asdict(entry) for entry in engine],
        queue=[asdict(sample) for sample in samples],
        machine=machine_description(),
    )


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def _percentile(values: Sequence[float]) -> float:
    return float(np.percentile(values, PERCENTILE)) if len(values) else math.nan


def _rate(times_ns: Sequence[int]) -> float:
    """Events per second between the first and the last of ``times_ns``."""
    if len(times_ns) < 2 or times_ns[-1] <= times_ns[0]:
        return math.nan
    return (len(times_ns) - 1) * NANOSECONDS_PER_SECOND / (times_ns[-1] - times_ns[0])


def machine_description() -> dict[str, Any]:
    """Return the CPU model, core count, load average (1, 5, 15 min) and torch threads."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average_end": [round(value, 2) for value in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m vo_node.ros.latency``."""
    parser = argparse.ArgumentParser(
        prog="python -m vo_node.ros.latency",
        description="Measure vo_node's latency with images published at a fixed rate from "
        "another process. Run inside scripts/netns_run.sh.",
    )
    parser.add_argument("sequence", type=Path, nargs="?", default=None,
                        help="sequence folder, video or ROS 2 bag (default: the rendered "
                        f"synthetic demo sequence in {DEFAULT_SEQUENCE_FOLDER})")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE_HZ,
                        help=f"publish rate, Hz (default {DEFAULT_RATE_HZ:g})")
    parser.add_argument("--frames", type=int, default=None,
                        help="publish at most N timed frames (default: the rest of the sequence)")
    parser.add_argument("--warmup", type=int, default=0, metavar="N",
                        help="first send N frames one at a time, each after the node finished "
                        "the previous one, so the engine initialises before the timed frames "
                        "(default 0)")
    parser.add_argument("--config", default="small",
                        help="engine preset or YAML for the node's model.config (default: small)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="change one configuration value, e.g. "
                        "frontend.motion_probe_threshold=0 (repeatable)")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter, e.g. encode_ahead:=false (repeatable)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: the shipped models/vo_small.pt)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="compute device of the node (default: auto)")
    parser.add_argument("--qos", default="sensor_data", choices=QOS_CHOICES,
                        help="image QoS of publisher and node (default: sensor_data)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"JSON report (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement (or, with the hidden ``--publisher``, the publisher process)."""
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    args = build_parser().parse_args(argv)
    if args.frames is not None and args.frames < 1:
        logger.error("--frames must be at least 1, got %d", args.frames)
        return 2
    if args.warmup < 0:
        logger.error("--warmup must be 0 or more, got %d", args.warmup)
        return 2
    if args.publisher:
        try:
            record = publish_frames(args.sequence, args.rate, args.frames, args.qos, args.warmup)
        except LatencyError as error:
            logger.error("%s", error)
            return 1
        print(json.dumps(record))
        return 0

    from vo_node.config import ConfigError
    from vo_node.io.atomic import atomic_write

    from vo_node.io.camera import CalibrationError
    from vo_node.io.sequence import SequenceError, open_sequence

    sequence = args.sequence
    if sequence is None:
        from vo_node.demo_data import render_demo_sequence

        sequence = render_demo_sequence(DEFAULT_SEQUENCE_FOLDER)
    try:
        open_sequence(sequence, max_frames=1)  # a bad path fails here, before DDS starts
    except (SequenceError, CalibrationError) as error:
        logger.error("%s", error)
        return 2
    with tempfile.TemporaryDirectory(prefix="vo_latency_") as folder:
        try:
            config = engine_config_file(args.config, args.override, Path(folder))
        except (ConfigError, FileNotFoundError) as error:
            logger.error("%s", error)
            return 2
        node_arguments = ["-p", f"model.config:={config}", "-p", f"model.device:={args.device}"]
        if args.model is not None:
            node_arguments += ["-p", f"model.weights:={args.model}"]
        for parameter in args.node_param:
            node_arguments += ["-p", parameter]
        try:
            report = measure_latency(sequence, args.rate, args.frames, node_arguments, args.qos,
                                     args.warmup)
        except LatencyError as error:
            logger.error("%s", error)
            return 1
    report.machine["config"] = args.config
    report.machine["overrides"] = list(args.override)
    report.machine["node_parameters"] = list(args.node_param)
    with atomic_write(args.output) as handle:
        json.dump(_json_ready(asdict(report)), handle, indent=2)
        handle.write("\n")
    for line in report.summary():
        print(line)
    print(f"report: {args.output}")
    return 0


def engine_config_file(config: str, overrides: Sequence[str], folder: Path) -> str:
    """Return ``config`` itself, or with ``overrides`` a YAML written to ``folder`` for the node.

    Raises:
        ConfigError: an invalid override or configuration.
    """
    if not overrides:
        return config
    import yaml

    from vo_node.config import apply_overrides, load_engine_config, parse_override, to_dict

    changed = apply_overrides(load_engine_config(config),
                              dict(parse_override(text) for text in overrides))
    path = folder / "engine.yaml"
    path.write_text(yaml.safe_dump(to_dict(changed.validate())))
    return str(path)


def _json_ready(value: Any) -> Any:
    """Replace NaN and infinities by None, recursively, so the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
