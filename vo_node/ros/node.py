"""The ``vo_node`` ROS 2 node: camera images in, REP-103 odometry, path and TF out.

Run it with ``vo_node --ros-args ...`` or ``python -m vo_node.ros.node --ros-args ...``; see
docs/ros2.md for topics, parameters, frames and the handling of bad input.

Start-up: the parameters are checked and the model file is read on the CPU before any topic is
created, so an invalid value or an unreadable model file stops the node with exit status 2.

Threads: the executor runs the subscriptions, the reset service and the diagnostics timer. The
image callback only decodes the message and hands it to a one-frame slot. A worker thread moves
the model to its device and builds the engine, then takes the newest frame from the slot, tracks
it and publishes the results, so inference never blocks the executor. Frames replaced in the slot
before the worker took them are counted as dropped. Nothing is published until the engine has
initialised (see :class:`vo_node.ros.pipeline.TrackingPipeline`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Any, Sequence

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry, Path
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data, qos_profile_system_default
from rclpy.qos import ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger

from vo_node.io.trajectory import Trajectory, write_tum
from vo_node.ros.messages import (
    CameraInfoError,
    ImageConversionError,
    array_to_image,
    camera_from_info,
    compressed_to_tracking_array,
    image_to_tracking_array,
    make_odometry,
    make_path,
    make_point_cloud,
    make_pose_stamped,
    make_transform,
    ns_to_stamp,
    stamp_to_ns,
)
from vo_node.ros.parameters import (
    ParameterError,
    declare_parameters,
    engine_threads,
    load_model_file,
    lost_override_problems,
    rclpy_parameter_error,
    resolve_model_weights,
    unknown_parameter_overrides,
    validate_update,
)
from vo_node.ros.pipeline import (
    RATE_WINDOW_S,
    STATE_CHOOSING,
    STATE_INITIALISING,
    DropReporter,
    FrameEncoder,
    FrameSlot,
    InputFrame,
    LatencyWindow,
    OdometryEstimate,
    Outcome,
    ProblemReporter,
    RateMeter,
    TrackingPipeline,
    describe_camera,
    input_timeout_s,
)
from vo_node.ros.tf import (
    OdometryFrame,
    StaticTransformPublisher,
    TransformPublisher,
    check_transform,
    matrix_to_pose,
    pose_to_matrix,
)
from vo_node.run import StopRequest

NODE_NAME = "vo_node"
DEFAULT_CAMERA_FRAME = "camera_optical_frame"
"""Camera frame id used when neither camera_frame nor the image header names one."""
DEFAULT_POSE_VARIANCES = (1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-3)
"""Pose variances (m^2, rad^2) used when the engine gives no covariance and no override is set.
They are placeholders of the right order for short-range VO, not calibrated values."""
DEFAULT_TWIST_VARIANCES = (1e-2, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2)
"""Twist variances ((m/s)^2, (rad/s)^2) used when no override is set; placeholders as above."""
DIAGNOSTICS_PERIOD_S = 1.0
"""Period of the diagnostics timer in steady (wall) time, also with use_sim_time:=true."""
WORKER_POLL_S = 0.1
FRESH_FRAME_AGE_PERIODS = 0.5
"""With ``prefer_fresh_frames``, a waiting frame older than this many input periods is stale: the
next frame is due sooner than this one has waited."""
ODOM_QOS_DEPTH = 10
DEBUG_QOS_DEPTH = 1
WORKER_JOIN_TIMEOUT_S = 10.0
SPIN_PERIOD_S = 0.2
"""Maximum wait of one executor spin in seconds, so a stop request is seen within this time."""
SHUTDOWN_ACTION = "stopping the node and writing trajectory_file if one is set"
EXIT_INVALID_PARAMETERS = 2
EXIT_FAILURE = 1
"""Exit status when the engine failed to start or the trajectory file could not be written."""
PARAMS_FILE_FLAG = "--params-file"
RCLError = rclpy_implementation.RCLError
"""Error of the rcl C layer; rclpy.init raises it for a malformed parameter file."""


class VONode(Node):
    """Monocular visual odometry node; see the module docstring and docs/ros2.md."""

    def __init__(self, ros_arguments: Sequence[str] | None = None, **node_kwargs: Any) -> None:
        """Create the node; ``node_kwargs`` go to ``rclpy.node.Node`` (context, cli_args, ...).

        ``ros_arguments`` are the arguments that initialised the node's context (None: this
        process's ``sys.argv``). Their ``-p`` values are checked against the overrides that
        rclpy read, see :func:`lost_override_problems`.

        Raises:
            ParameterError: when a parameter value is invalid or the model file is unreadable.
        """
        try:
            super().__init__(NODE_NAME, **node_kwargs)
        except ParameterException as error:
            # rclpy declares use_sim_time and start_type_description_service itself and raises
            # for a value of the wrong type.
            raise rclpy_parameter_error(error) from error
        arguments = list(sys.argv[1:] if ros_arguments is None else ros_arguments)
        arguments += list(node_kwargs.get("cli_args") or [])
        # A value given in parameter_overrides replaces the -p value of that name.
        replaced = [parameter.name for parameter in node_kwargs.get("parameter_overrides") or []]
        lost = lost_override_problems(self, arguments, skipped_names=replaced)
        if lost:
            raise ParameterError("invalid parameter values:\n  " + "\n  ".join(lost))
        self.params = declare_parameters(self)
        for name in unknown_parameter_overrides(self):
            self.get_logger().warning(
                f"parameter {name!r} is not a vo_node parameter and is ignored; check its "
                "spelling against docs/ros2.md"
            )
        # Read before any topic exists, so a bad model file fails like an invalid parameter.
        self._network, self._model_config = load_model_file(self.params.model_weights)
        self.add_on_set_parameters_callback(validate_update)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self.base_from_camera = pose_to_matrix(
            check_transform(self.params.camera_to_base, "camera_to_base")
        )
        self.problems = ProblemReporter(self.get_logger().warning, info=self.get_logger().info)
        self.model_state = "loading"
        self.fatal_error: str | None = None
        self.trajectory_error: str | None = None
        """Error message of a failed ``trajectory_file`` write at shutdown, or None."""
        self._poses_written = 0
        self._settled_count: int | None = None
        """Recorded poses at the last write that succeeded or found none, so that a repeat is
        skipped. A failed write leaves it unchanged, so the shutdown tries again."""
        self.stop_request: StopRequest | None = None
        """The process's signal state, so that a second signal waits for a trajectory write."""
        self.tracking_state = "waiting for images"
        # Whether the newest published pose is low confidence, and how many were so far.
        self.low_confidence = False
        self.low_confidence_frames = 0
        self.input_rate = RateMeter()
        self.processing_rate = RateMeter()
        """Frames taken for tracking, whatever their outcome, each ticked at its arrival time."""
        self.latency = LatencyWindow()
        self.outcomes = {name: 0 for name in (Outcome.PUBLISHED, Outcome.INITIALISING,
                                              Outcome.SKIPPED, Outcome.LOST, Outcome.FAILED)}
        self.frames_dropped = 0
        self.frames_rejected = 0
        self.segment_starts_ns: list[int] = []
        """Stamp of the first pose of each odometry segment, in publishing order."""
        self._drops = DropReporter(self.get_logger().warning)
        self._completed = 0
        self._completed_condition = threading.Condition()
        self._camera = None
        self._camera_info_error: str | None = None
        """Reason the latest camera_info was rejected, or None once a valid one arrived."""
        self._camera_frame: str | None = None
        self._path: deque = deque(maxlen=max(1, self.params.path_max_length))
        self._trajectory: list[tuple[int, np.ndarray]] = []
        self._reset_requested = threading.Event()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._slot = FrameSlot()
        self._encoder: threading.Thread | None = None
        self._shut_down = False
        self._threads = 1
        """Torch CPU threads of the engine, set when the model loads."""

        self._create_publishers()
        self._create_subscriptions()
        self.create_service(Trigger, "~/reset", self._on_reset)
        # A steady timer keeps diagnostics coming with use_sim_time before the first /clock and
        # after playback ends. The messages still carry the ROS clock in their stamps.
        self.create_timer(
            DIAGNOSTICS_PERIOD_S,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )
        if self.params.camera_frame:
            self._publish_camera_transform(self.params.camera_frame)

        self._worker = threading.Thread(target=self._run_worker, name="vo_node_worker", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------------------------------
    # Set-up

    def _create_publishers(self) -> None:
        self.odom_publisher = self.create_publisher(Odometry, "odom", ODOM_QOS_DEPTH)
        self.path_publisher = self.create_publisher(Path, "path", ODOM_QOS_DEPTH)
        self.points_publisher = self.create_publisher(PointCloud2, "debug/points", DEBUG_QOS_DEPTH)
        self.debug_image_publisher = self.create_publisher(Image, "debug/image", DEBUG_QOS_DEPTH)
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.tf_publisher = TransformPublisher(self)
        self.tf_static_publisher = StaticTransformPublisher(self)

    def _image_qos(self) -> QoSProfile:
        if self.params.image_qos == "sensor_data":
            profile = QoSProfile(**_qos_fields(qos_profile_sensor_data))
        elif self.params.image_qos == "reliable":
            profile = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        else:
            profile = QoSProfile(**_qos_fields(qos_profile_system_default))
        profile.depth = self.params.queue_depth
        return profile

    def _create_subscriptions(self) -> None:
        qos = self._image_qos()
        if self.params.image_transport == "compressed":
            topic = "image/compressed"
            self.create_subscription(CompressedImage, topic, self._on_compressed_image, qos)
        else:
            topic = "image"
            self.create_subscription(Image, topic, self._on_image, qos)
        self.image_topic = self.resolve_topic_name(topic)
        self.camera_info_topic = self.resolve_topic_name("camera_info")
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos)

    # ----------------------------------------------------------------------------------------
    # Callbacks (executor thread)

    def _on_image(self, msg: Image) -> None:
        self._receive(msg.header, lambda: image_to_tracking_array(msg), msg.encoding)

    def _on_compressed_image(self, msg: CompressedImage) -> None:
        self._receive(msg.header, lambda: compressed_to_tracking_array(msg), msg.format)

    def _receive(self, header, decode, encoding: str) -> None:
        received_s = time.monotonic()
        self.input_rate.tick(received_s)
        try:
            pixels = decode()
        except ImageConversionError as error:
            self.frames_rejected += 1
            self.problems.report(
                "bad_image", f"image on {self.image_topic} (encoding {encoding!r}) skipped: {error}"
            )
            self._mark_completed()
            return
        frame_id = self.params.camera_frame or header.frame_id or DEFAULT_CAMERA_FRAME
        if frame_id != self._camera_frame:
            self._publish_camera_transform(frame_id)
        camera_info_error = self._camera_info_error if self._camera is None else None
        frame = InputFrame(pixels, stamp_to_ns(header.stamp), frame_id, self._camera, received_s,
                           camera_info_error=camera_info_error)
        if self._slot.put(frame) is not None:
            self.frames_dropped += 1
            self._mark_completed()
            self._log_drops()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            camera = camera_from_info(msg)
        except CameraInfoError as error:
            self._camera_info_error = str(error)
            self.problems.report(
                "bad_camera_info",
                f"camera_info on {self.camera_info_topic} ignored: {error}",
            )
            return
        self._camera_info_error = None
        if camera != self._camera:
            self.get_logger().info(
                f"camera from {self.camera_info_topic}: {describe_camera(camera)}"
            )
            self._camera = camera

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        if self.model_state != "ready":
            response.success = False
            response.message = f"model is {self.model_state}; nothing to reset"
            return response
        self._reset_requested.set()
        response.success = True
        response.message = (
            "tracker reset requested; the engine re-initialises on the next frames, and odom "
            "continues from the last published pose once it tracks again"
        )
        self.get_logger().info("reset requested through ~/reset")
        return response

    def _apply_parameters(self, parameters) -> None:
        for parameter in parameters:
            if parameter.name in ("publish_tf", "path_max_length", "pose_covariance_diagonal",
                                  "twist_covariance_diagonal"):
                self.params.update(parameter.name, parameter.value)
                self.get_logger().info(f"parameter {parameter.name} set to {parameter.value}")
            if parameter.name == "path_max_length":
                self._path = deque(self._path, maxlen=max(1, self.params.path_max_length))

    def _log_drops(self) -> None:
        now = time.monotonic()
        input_hz, processed_hz = self.rates_hz(now)
        self._drops.report(
            self.frames_dropped,
            input_hz,
            processed_hz,
            self.processing_rate.count,
            now=now,
            received=self.input_rate.count,
            window_s=self.rate_window_s(now),
        )

    def rates_hz(self, now: float | None = None) -> tuple[float, float]:
        """Return the input rate and the rate of frames taken for tracking, in Hz.

        Both cover the same window, :meth:`rate_window_s` long and ending at ``now``
        (``time.monotonic()`` seconds by default). A frame taken for tracking counts at its
        arrival time, so the second rate never exceeds the first. The difference is the rate of
        frames dropped, rejected or still waiting.
        """
        now = time.monotonic() if now is None else now
        start_s = self.input_rate.first_s
        return self.input_rate.rate_hz(now, start_s), self.processing_rate.rate_hz(now, start_s)

    def rate_window_s(self, now: float) -> float:
        """Return the length of the window of :meth:`rates_hz`: ``RATE_WINDOW_S`` seconds, or
        the time since the first received frame when that is shorter."""
        first_s = self.input_rate.first_s
        return 0.0 if first_s is None else min(RATE_WINDOW_S, max(0.0, now - first_s))

    # ----------------------------------------------------------------------------------------
    # Worker thread

    def _run_worker(self) -> None:
        try:
            engine = self._load_engine()
        except Exception as error:  # report any load failure and let main() exit non-zero
            self.fatal_error = f"loading the model failed: {type(error).__name__}: {error}"
            self.model_state = "failed"
            self.get_logger().error(self.fatal_error)
            self._ready.set()
            return
        odometry_frame = OdometryFrame(self.base_from_camera, self.params.scale)
        pipeline = TrackingPipeline(
            engine,
            odometry_frame,
            self.params.intrinsics,
            self.problems,
            self.image_topic,
            self.camera_info_topic,
        )
        if self.params.encode_ahead:
            encoder = FrameEncoder(engine, self.params.intrinsics)
            self._encoder = threading.Thread(
                target=self._run_encoder, args=(encoder,), name="vo_node_encoder", daemon=True
            )
            self._encoder.start()
            self.get_logger().info("encode_ahead: the encoders run on a second thread")
        self.model_state = "ready"
        self._ready.set()
        self.get_logger().info(f"tracking images from {self.image_topic}")
        while not self._stop.is_set():
            frame = self._slot.take(WORKER_POLL_S, *self._freshness())
            if frame is None:
                continue
            if self._reset_requested.is_set():
                self._reset_requested.clear()
                pipeline.reset()
            self._process(pipeline, frame)

    def _freshness(self) -> tuple[float | None, float]:
        """``(stale_after_s, replace_within_s)`` for :meth:`FrameSlot.take`: half and one recent
        input frame period with ``prefer_fresh_frames``, else no staleness."""
        period_s = self.input_rate.recent_period_s()
        if not self.params.prefer_fresh_frames or period_s <= 0.0:
            return None, 0.0
        return FRESH_FRAME_AGE_PERIODS * period_s, period_s

    def _run_encoder(self, encoder: FrameEncoder) -> None:
        """Encode the waiting frame while the worker tracks the previous one."""
        import torch

        # OpenMP keeps the thread count per thread, so this thread sets its own.
        torch.set_num_threads(self._threads)
        while not self._stop.is_set():
            frame = self._slot.claim(WORKER_POLL_S)
            if frame is not None:
                encoder.encode(frame)

    def _process(self, pipeline: TrackingPipeline, frame: InputFrame) -> None:
        with_points = self.points_publisher.get_subscription_count() > 0
        outcome, estimate = pipeline.process(frame, with_points)
        self.outcomes[outcome] += 1
        self.tracking_state = pipeline.state
        self.low_confidence = pipeline.low_confidence
        self.processing_rate.tick(frame.received_s)
        if estimate is not None:
            self.low_confidence_frames += int(estimate.low_confidence)
            if estimate.segment == len(self.segment_starts_ns):
                self.segment_starts_ns.append(estimate.stamp_ns)
            # Recorded before publishing, so a shutdown during the publish still keeps the pose.
            self._record(estimate)
            try:
                self._publish_estimate(estimate, frame)
            except Exception as error:  # publishing fails once the context shuts down
                if self.context.ok():
                    self.get_logger().error(f"publishing odometry failed: {error}")
            self.latency.add(time.monotonic() - frame.received_s)
        # The keyframe removal after the pose waits until the pose is out.
        pipeline.upkeep()
        self._mark_completed()

    def _load_engine(self):
        import torch

        from vo_node.config import load_engine_config, resolve_device
        from vo_node.odometry.frontend import VisualOdometry

        device = resolve_device(self.params.model_device)
        weights = resolve_model_weights(self.params.model_weights)
        threads = engine_threads(self.params.model_threads)
        cores = len(os.sched_getaffinity(0))
        if threads > cores:
            self.get_logger().warning(
                f"model.threads is {threads} but this process may use {cores} cores; threads "
                "beyond the cores slow tracking down. Set -p model.threads:=0 for the default"
            )
        torch.set_num_threads(threads)
        self._threads = threads
        self.get_logger().info(f"loading model {weights} on {device}, {threads} CPU threads")
        network, config = self._network.to(device), self._model_config
        if self.params.model_config:
            chosen = load_engine_config(self.params.model_config)
            config = dataclasses.replace(chosen, network=config.network)
        return VisualOdometry(config, network, device)

    def _mark_completed(self) -> None:
        with self._completed_condition:
            self._completed += 1
            self._completed_condition.notify_all()

    # ----------------------------------------------------------------------------------------
    # Publishing (worker thread)

    def _publish_estimate(self, estimate: OdometryEstimate, frame: InputFrame) -> None:
        stamp = ns_to_stamp(estimate.stamp_ns)
        params = self.params
        odometry = make_odometry(
            estimate.odom_from_base,
            estimate.twist,
            self._pose_covariance(estimate),
            np.diag(params.twist_covariance_diagonal or DEFAULT_TWIST_VARIANCES),
            stamp,
            params.odom_frame,
            params.base_frame,
        )
        self.odom_publisher.publish(odometry)
        if params.publish_tf and self.tf_publisher.enabled:
            self.tf_publisher.publish(
                [make_transform(estimate.odom_from_base, stamp, params.odom_frame,
                                params.base_frame)]
            )
        if params.path_max_length > 0:
            self._path.append(make_pose_stamped(estimate.odom_from_base, stamp, params.odom_frame))
            # Serialising 1,000 poses takes about 4 ms, so the path goes out only when someone
            # listens; a late subscriber still gets the whole bounded path.
            if self.path_publisher.get_subscription_count() > 0:
                self.path_publisher.publish(make_path(list(self._path), stamp, params.odom_frame))
        self._publish_debug(estimate, frame, stamp)

    def _pose_covariance(self, estimate: OdometryEstimate) -> np.ndarray:
        if self.params.pose_covariance_diagonal:
            return np.diag(self.params.pose_covariance_diagonal)
        if estimate.pose_covariance is not None:
            return estimate.pose_covariance
        return np.diag(DEFAULT_POSE_VARIANCES)

    def _record(self, estimate: OdometryEstimate) -> None:
        # A TUM file needs increasing stamps: after a stamp jump back (bag loop) the frames are
        # published but not recorded until the stamps pass the last recorded one.
        if not self._trajectory or estimate.stamp_ns > self._trajectory[-1][0]:
            self._trajectory.append((estimate.stamp_ns, matrix_to_pose(estimate.world_from_camera)))

    def _publish_debug(self, estimate: OdometryEstimate, frame: InputFrame, stamp) -> None:
        if estimate.points is not None and self.points_publisher.get_subscription_count() > 0:
            self.points_publisher.publish(
                make_point_cloud(estimate.points, stamp, self.params.odom_frame)
            )
        if self.debug_image_publisher.get_subscription_count() > 0:
            image = frame.image if frame.image.ndim == 3 else cv2.cvtColor(
                frame.image, cv2.COLOR_GRAY2RGB
            )
            image = np.ascontiguousarray(image)
            text = f"{estimate.state}{' keyframe' if estimate.is_keyframe else ''}"
            cv2.putText(image, text, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2)
            self.debug_image_publisher.publish(array_to_image(image, "rgb8", stamp, frame.frame_id))

    def _publish_camera_transform(self, camera_frame: str) -> None:
        self._camera_frame = camera_frame
        if not self.params.publish_camera_tf or not self.tf_static_publisher.enabled:
            return
        if camera_frame in (self.params.base_frame, self.params.odom_frame):
            # camera_frame itself is checked at start-up, but this frame id came from an image.
            self.get_logger().error(
                f"the images' header.frame_id {camera_frame!r} equals base_frame or odom_frame, "
                "and tf2 rejects a transform from a frame to itself, so base_frame -> camera "
                "frame is not published. Set -p camera_frame:=<optical frame id>"
            )
            return
        stamp = self.get_clock().now().to_msg()
        self.tf_static_publisher.publish(
            [make_transform(self.base_from_camera, stamp, self.params.base_frame, camera_frame)]
        )

    # ----------------------------------------------------------------------------------------
    # Diagnostics

    def _publish_diagnostics(self) -> None:
        median_ms, p95_ms = self.latency.percentiles_ms()
        input_hz, processed_hz = self.rates_hz()
        values = {
            "model": self.model_state,
            "tracking state": self.tracking_state,
            "frames received": self.input_rate.count,
            "frames processed": self.outcomes[Outcome.PUBLISHED],
            "frames used for initialisation": self.outcomes[Outcome.INITIALISING],
            "frames dropped (newer frame arrived first)": self.frames_dropped,
            "frames rejected (undecodable image)": self.frames_rejected,
            "frames skipped (bad stamp or intrinsics)": self.outcomes[Outcome.SKIPPED],
            "frames lost": self.outcomes[Outcome.LOST],
            "frames failed": self.outcomes[Outcome.FAILED],
            "odometry segments": len(self.segment_starts_ns),
            "frames with low confidence": self.low_confidence_frames,
            "input rate [Hz]": f"{input_hz:.2f}",
            "processing rate [Hz]": f"{processed_hz:.2f}",
            "latency median [ms]": f"{median_ms:.1f}",
            "latency p95 [ms]": f"{p95_ms:.1f}",
        }
        silence_s = self.input_rate.silence_s()
        if silence_s is not None:
            values["seconds since the last image"] = f"{silence_s:.1f}"
        for kind, count in sorted(self.problems.counts.items()):
            values[f"problem {kind}"] = count
        level, message = self._diagnostic_level()
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: visual odometry",
            message=message,
            hardware_id=self.get_fully_qualified_name(),
            values=[KeyValue(key=key, value=str(value)) for key, value in values.items()],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def _diagnostic_level(self, now: float | None = None) -> tuple[bytes, str]:
        """Return the level and message of the diagnostics at ``now`` (``time.monotonic()``
        seconds by default)."""
        if self.model_state == "failed":
            return DiagnosticStatus.ERROR, self.fatal_error or "model failed to load"
        if self.model_state == "loading":
            return DiagnosticStatus.WARN, "loading the model"
        silence_s = self.input_rate.silence_s(now)
        timeout_s = input_timeout_s(self.input_rate.recent_period_s())
        if silence_s is not None and silence_s > timeout_s:
            return DiagnosticStatus.WARN, (
                f"no image on {self.image_topic} for {silence_s:.1f} s (outage limit "
                f"{timeout_s:.1f} s); check the camera driver and the image topic"
            )
        if self.tracking_state == "tracking" and self.low_confidence:
            return DiagnosticStatus.WARN, (
                "tracking with low confidence: the position variance is far above its recent "
                "median (covered, dark or blurred camera, or a plain view?)"
            )
        if self.tracking_state == "tracking":
            return DiagnosticStatus.OK, "tracking"
        if self.tracking_state == STATE_CHOOSING:
            return DiagnosticStatus.WARN, (
                "tracking while the engine chooses between two depth hypotheses; odometry may "
                "start a new segment at the last published pose"
            )
        if self.tracking_state == STATE_INITIALISING:
            return DiagnosticStatus.WARN, (
                f"initialising ({self.outcomes[Outcome.INITIALISING]} frames so far); no odometry "
                "is published until tracking starts"
            )
        return DiagnosticStatus.WARN, self.tracking_state

    # ----------------------------------------------------------------------------------------
    # Public helpers

    @property
    def frames_completed(self) -> int:
        """Input frames whose fate is decided: rejected, dropped, or taken by the worker."""
        return self._completed

    def wait_until_ready(self, timeout_s: float) -> bool:
        """Wait for the model to load (or fail); return whether it is ready."""
        self._ready.wait(timeout_s)
        return self.model_state == "ready"

    def wait_for_completed(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` input frames are completed; return False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._completed_condition:
            while self._completed < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._completed_condition.wait(remaining)
        return True

    def trajectory(self) -> Trajectory:
        """Return the published poses as ``T_world_cam`` in optical axes (see OdometryFrame)."""
        if not self._trajectory:
            return Trajectory(np.zeros(0, dtype=np.int64), np.zeros((0, 7)))
        stamps, poses = zip(*self._trajectory)
        return Trajectory(np.array(stamps, dtype=np.int64), np.array(poses))

    def shutdown(self) -> None:
        """Stop the worker, write the trajectory file if one is configured, and log the final
        frame counts. Calls after the first do nothing.

        A failed write is logged as an error and kept in :attr:`trajectory_error`. A later write
        that succeeds clears it.
        """
        if self._shut_down:
            return
        self._shut_down = True
        self._stop.set()
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(WORKER_JOIN_TIMEOUT_S)
        # Joined too: a thread still inside torch while the interpreter exits aborts the process.
        if self._encoder is not None and self._encoder.is_alive():
            self._encoder.join(WORKER_JOIN_TIMEOUT_S)
        written = self._write_trajectory_file()
        self.get_logger().info(self.final_counts(written))

    def write_published_so_far(self) -> None:
        """Write the poses published so far to ``trajectory_file``, ahead of :meth:`shutdown`.

        The main loop calls it as soon as a stop is requested, so that a second signal, which
        ends the process at once, still leaves those poses on disk. :meth:`shutdown` writes the
        file again with the frame that the worker finishes meanwhile."""
        self._write_trajectory_file()

    def second_signal_note(self) -> str:
        """Return what ``trajectory_file`` contains if the process ends now (for the log)."""
        path = self.params.trajectory_file
        if not path:
            return "trajectory_file not set"
        if self._poses_written == 0:
            return f"no pose written to {path} yet"
        plural = "" if self._poses_written == 1 else "s"
        return f"{self._poses_written} pose{plural} written to {path}"

    def final_counts(self, poses_written: int) -> str:
        """Return the frame counts since start-up and ``poses_written`` as one log line."""
        received = self.input_rate.count
        accounted = sum(self.outcomes.values()) + self.frames_dropped + self.frames_rejected
        counts = [
            f"{received} frames received",
            f"{self.outcomes[Outcome.PUBLISHED]} processed (odometry published)",
            f"{self.outcomes[Outcome.INITIALISING]} used for initialisation",
            f"{self.frames_dropped} dropped",
            f"{self.frames_rejected} rejected",
            f"{self.outcomes[Outcome.SKIPPED]} skipped",
            f"{self.outcomes[Outcome.LOST]} lost",
            f"{self.outcomes[Outcome.FAILED]} failed",
        ]
        if received > accounted:
            counts.append(f"{received - accounted} not tracked before the stop")
        path = self.params.trajectory_file
        output = f"{poses_written} poses written to {path}" if path else "trajectory_file not set"
        segments = len(self.segment_starts_ns)
        plural = "" if segments == 1 else "s"
        return f"final counts: {', '.join(counts)}; {segments} odometry segment{plural}; {output}"

    def _write_trajectory_file(self) -> int:
        """Write the published poses to ``trajectory_file`` if it is set; return the number
        written (0 when unset, empty or failed)."""
        path = self.params.trajectory_file
        if not path:
            return 0
        trajectory = self.trajectory()
        if self._settled_count == len(trajectory):
            # Nothing was recorded since the last write that succeeded (or found no pose).
            return self._poses_written
        if len(trajectory) == 0:
            self.get_logger().warning(f"no pose was published, so {path} was not written")
            self._settled_count = 0
            return 0
        try:
            # A second signal during the write ends the process only once the file is complete.
            deferred = contextlib.nullcontext()
            if self.stop_request is not None:
                deferred = self.stop_request.exit_deferred()
            with deferred:
                write_tum(path, trajectory)
                # Set inside the block: a deferred exit at its end logs this count.
                self._poses_written = len(trajectory)
        except OSError as error:
            # The path was checked at start-up, but its folders may have changed since.
            self.trajectory_error = (
                f"writing trajectory_file {path} failed: {error}; the {len(trajectory)} "
                "published poses were not saved"
            )
            self.get_logger().error(self.trajectory_error)
            return 0
        self.trajectory_error = None
        self._settled_count = len(trajectory)
        self.get_logger().info(f"wrote {len(trajectory)} poses to {path}")
        return len(trajectory)


def _qos_fields(profile: QoSProfile) -> dict[str, Any]:
    return {
        "history": profile.history,
        "depth": profile.depth,
        "reliability": profile.reliability,
        "durability": profile.durability,
    }


def missing_params_files(args: list[str]) -> list[str]:
    """Return the ``--params-file`` arguments in ``args`` that are not existing files."""
    return [
        path for flag, path in zip(args, args[1:])
        if flag == PARAMS_FILE_FLAG and not os.path.isfile(path)
    ]


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT or SIGTERM; return the process exit status.

    The status is 0 after SIGINT or SIGTERM, 1 when the engine failed to start or the trajectory
    file could not be written, and 2 for invalid parameters or an unreadable model file. A second
    SIGINT or SIGTERM exits with 128 + signal, at once or when the trajectory write in progress
    is complete. The log line gives the number of poses the file then holds.
    """
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    logger = rclpy.logging.get_logger(NODE_NAME)
    missing = missing_params_files(sys.argv[1:] if args is None else args)
    if missing:
        logger.fatal(f"parameter file {missing[0]} not found; pass an existing YAML file to "
                     f"{PARAMS_FILE_FLAG}")
        return EXIT_INVALID_PARAMETERS
    try:
        # rclpy's own handlers would shut the context down on SIGINT/SIGTERM before the node
        # could write its trajectory and log its last lines, so StopRequest handles them.
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except RCLError as error:
        # rcl reports a malformed parameter file or ROS argument here.
        logger.fatal(f"invalid ROS arguments: {error}")
        return EXIT_INVALID_PARAMETERS
    stop = StopRequest(SHUTDOWN_ACTION, hard_exit=True)
    # The handlers stay until the process ends, so a second signal during the interpreter's exit
    # still ends it with 128 + signal and a log line, not with a KeyboardInterrupt traceback.
    stop.install()
    return _spin(logger, stop, sys.argv[1:] if args is None else args)


def _spin(logger, stop: StopRequest, arguments: list[str]) -> int:
    """Create the node and spin it until a stop request or a fatal error; shut down cleanly."""
    try:
        node = VONode(ros_arguments=arguments)
    except ParameterError as error:
        logger.fatal(str(error))
        rclpy.try_shutdown()
        return EXIT_INVALID_PARAMETERS
    stop.second_signal_note = node.second_signal_note
    node.stop_request = stop
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and node.fatal_error is None and not stop():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        if stop():
            node.write_published_so_far()
    except ExternalShutdownException:
        pass
    finally:
        # The context is still valid here, so the shutdown's log lines reach /rosout.
        node.shutdown()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return EXIT_FAILURE if node.fatal_error or node.trajectory_error else 0


if __name__ == "__main__":
    sys.exit(main())
