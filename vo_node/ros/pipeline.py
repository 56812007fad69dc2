"""The node's frame pipeline without rclpy: the depth-1 frame slot, input checks, the engine call,
the odometry frame, and the counters behind the diagnostics.

The image callback converts a message to an :class:`InputFrame` and puts it in a
:class:`FrameSlot`; a frame still waiting when a newer one arrives is replaced and counted as
dropped. The worker thread takes frames from the slot and runs :meth:`TrackingPipeline.process`,
which decides each frame's fate (see :class:`Outcome`) and returns the odometry to publish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from vo_node.io.camera import CalibrationError, PinholeCamera, Undistorter
from vo_node.ros.tf import OdometryFrame, covariance_to_ros, pose_to_matrix, twist_in_body

logger = logging.getLogger(__name__)

PROBLEM_LOG_INTERVAL_S = 10.0
"""A repeated input problem of one kind is logged at most once per this many seconds."""
CAMERA_INFO_GRACE_S = 1.0
"""Within this many seconds of the first image, an image without any camera_info yet is skipped
with an info line rather than a warning. In a bag replay or a driver start-up the first image
often arrives just before its camera_info."""
ENGINE_STATE_INITIALIZING = "initializing"
ENGINE_STATE_LOST = "lost"
STATE_INITIALISING = "initialising"
"""Tracking state the node reports until the engine has initialised."""
STATE_CHOOSING = "tracking, choosing the depth hypothesis"
"""Tracking state the node reports during the engine's depth-hypothesis trial: odometry is
published, and may start a new segment when the trial switches hypotheses."""
DROP_LOG_INTERVAL_S = 10.0
"""Dropped frames are logged at most once per this many seconds."""
MIN_PROCESSED_FOR_DROP_WARNING = 2
"""Processed frames before drops are warned about: the processed rate needs two frames."""
RATE_WINDOW_S = 5.0
"""Input and processing rates are averaged over this many seconds."""
RECENT_INTERVALS = 10
"""Gaps between the newest frames that :meth:`RateMeter.recent_period_s` takes the median of."""
LATENCY_WINDOW = 200
"""Latency percentiles are taken over this many newest frames."""
INPUT_TIMEOUT_MIN_S = 1.0
INPUT_TIMEOUT_PERIODS = 5
"""A pause in the images longer than ``max(INPUT_TIMEOUT_MIN_S, INPUT_TIMEOUT_PERIODS * period)``
counts as an outage, with ``period`` the median of the newest gaps (see :func:`input_timeout_s`).
The minimum keeps a fast camera's normal jitter below the timeout."""
NANOSECONDS_PER_SECOND = 1_000_000_000


class Outcome:
    """Fate of a frame taken from the slot."""

    PUBLISHED = "published"
    """Tracked; odometry was produced."""
    INITIALISING = "initialising"
    """Used by the engine to initialise after a start, a reset or a tracking loss. Nothing was
    published, because the engine's poses before initialisation are placeholders."""
    SKIPPED = "skipped"
    """Rejected before tracking (bad stamp, no intrinsics); the tracker state is kept."""
    LOST = "lost"
    """The engine reported lost tracking on this frame; nothing was published. The frames of
    the re-initialisation that follows count as :attr:`INITIALISING`."""
    FAILED = "failed"
    """The engine raised or returned a non-finite pose; the tracker was reset."""


@dataclass
class InputFrame:
    """One camera frame ready for tracking.

    Attributes:
        image: ``(H, W)`` uint8 grey or ``(H, W, 3)`` uint8 RGB, as received (distorted).
        stamp_ns: acquisition stamp of the image header, nanoseconds.
        frame_id: optical frame of the image.
        camera: camera from the latest valid camera_info, or None.
        received_s: ``time.monotonic()`` when the message arrived, seconds.
    """

    image: np.ndarray
    stamp_ns: int
    frame_id: str
    camera: PinholeCamera | None
    received_s: float
    camera_info_error: str | None = None
    """Reason the latest camera_info was rejected, set while ``camera`` is None because no valid
    one has arrived. None when no camera_info has arrived at all."""
    encoding: Future | None = None
    """Set by :meth:`FrameSlot.claim` when a second thread encodes the frame ahead. Its result
    is a :class:`PrefetchedFrame`, or None when the frame could not be encoded there."""


@dataclass
class PrefetchedFrame:
    """A frame encoded ahead by the engine, with the undistorted intrinsics it was encoded for."""

    encoded: Any
    intrinsics: list[float]


@dataclass
class OdometryEstimate:
    """Odometry of one tracked frame.

    Attributes:
        stamp_ns: image stamp, nanoseconds.
        odom_from_base: ``(4, 4)`` ``T_odom_base`` in REP-103 body axes.
        world_from_camera: ``(4, 4)`` camera pose in optical axes in the anchored world frame
            (the frame the trajectory file and the evaluation use).
        twist: ``(6,)`` ``[vx, vy, vz, wx, wy, wz]`` in the body frame, m/s and rad/s.
        pose_covariance: ``(6, 6)`` ROS-order covariance from the engine, or None.
        state: tracking state as the node reports it: ``tracking``, or :data:`STATE_CHOOSING`
            during the engine's depth-hypothesis trial.
        is_keyframe: whether the engine kept the frame as a keyframe.
        timings: per-stage timings reported by the engine.
        points: ``(N, 3)`` patch points in the odom frame for the debug cloud, or None.
    """

    stamp_ns: int
    odom_from_base: np.ndarray
    world_from_camera: np.ndarray
    twist: np.ndarray
    pose_covariance: np.ndarray | None
    state: str
    is_keyframe: bool
    timings: dict[str, float] = field(default_factory=dict)
    points: np.ndarray | None = None
    low_confidence: bool = False
    """Whether the engine reported the frame as low confidence: its position variance rose
    far above the recent frames' (``frontend.low_confidence_ratio``)."""
    variance_ratio: float | None = None
    """The engine's position variance over its recent median, or None before enough frames."""
    segment: int = 0
    """0-based index of the odometry segment that this pose belongs to. A segment starts at the
    first pose after the start, a reset, a tracking loss or a change of the leading depth
    hypothesis. Its poses share one scale. The next segment gets a new scale after a reset or a
    loss, and keeps this one after a change of hypothesis (``TrackResult.scale_ratio``)."""


# --------------------------------------------------------------------------------------------
# Frame slot and counters


def input_timeout_s(period_s: float) -> float:
    """Return the pause, in seconds, after which images of period ``period_s`` count as stopped."""
    return max(INPUT_TIMEOUT_MIN_S, INPUT_TIMEOUT_PERIODS * period_s)


def describe_camera(camera: PinholeCamera) -> str:
    """Return ``camera`` as one short log phrase: size, intrinsics and distortion."""
    text = (
        f"{camera.width}x{camera.height}, fx={camera.fx:.2f} fy={camera.fy:.2f} "
        f"cx={camera.cx:.2f} cy={camera.cy:.2f}, distortion {camera.distortion_model}"
    )
    if any(camera.coefficients):
        text += " [" + ", ".join(f"{value:.4g}" for value in camera.coefficients) + "]"
    return text


def fallback_camera(intrinsics: list[float], width: int, height: int) -> PinholeCamera:
    """Build the camera of the ``intrinsics`` parameter for images of ``width`` x ``height``.

    Raises:
        CalibrationError: the intrinsics do not describe a valid pinhole camera.
    """
    fx, fy, cx, cy = intrinsics
    return PinholeCamera(width=width, height=height, fx=fx, fy=fy, cx=cx, cy=cy)


def choose_camera(frame: InputFrame, fallback: list[float] | None) -> PinholeCamera | None:
    """Return the camera :class:`TrackingPipeline` tracks ``frame`` with, reporting nothing.

    That is camera_info of the image's size, else the fallback intrinsics, else None.
    """
    height, width = frame.image.shape[:2]
    if frame.camera is not None and frame.camera.size == (width, height):
        return frame.camera
    if not fallback:
        return None
    try:
        return fallback_camera(fallback, width, height)
    except CalibrationError:
        return None


def undistorter_for(current: Undistorter | None, camera: PinholeCamera) -> Undistorter:
    """Return ``current`` when it undistorts ``camera``, else new undistortion maps for it."""
    if current is None or current.source != camera:
        return Undistorter(camera)
    return current


class FrameEncoder:
    """Encoder of claimed frames ahead of the worker, run on the node's encoder thread.

    It undistorts with the same camera choice as :class:`TrackingPipeline` and keeps its own
    undistortion maps, so it shares no state with the pipeline except the engine's encoders.
    """

    def __init__(self, engine: Any, fallback_intrinsics: list[float] | None) -> None:
        self.engine = engine
        self.fallback_intrinsics = fallback_intrinsics
        self._undistorter: Undistorter | None = None

    def encode(self, frame: InputFrame) -> None:
        """Resolve ``frame.encoding`` with a :class:`PrefetchedFrame`, or None on any failure."""
        result = None
        try:
            camera = choose_camera(frame, self.fallback_intrinsics)
            if camera is not None:
                self._undistorter = undistorter_for(self._undistorter, camera)
                image = self._undistorter(np.ascontiguousarray(frame.image))
                intrinsics = self._undistorter.camera.intrinsics.tolist()
                result = PrefetchedFrame(self.engine.encode(image, intrinsics), intrinsics)
        except Exception:  # The worker then encodes the frame itself and reports any failure.
            logger.debug("encoding ahead failed for the frame stamped %d ns", frame.stamp_ns,
                         exc_info=True)
        frame.encoding.set_result(result)


class FrameSlot:
    """A one-frame mailbox between the image callback and the worker thread.

    An encoder thread may :meth:`claim` the stored frame to encode it while the worker still
    tracks the previous one. The frame stays stored until the worker takes it.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._frame: InputFrame | None = None
        self._closed = False

    def put(self, frame: InputFrame) -> InputFrame | None:
        """Store ``frame`` and return the unprocessed frame it replaced, if any."""
        with self._condition:
            replaced, self._frame = self._frame, frame
            self._condition.notify_all()
        return replaced

    def claim(self, timeout_s: float) -> InputFrame | None:
        """Wait up to ``timeout_s`` for a stored frame without an ``encoding`` future, give it
        one and return it; None on timeout. The frame stays stored."""
        with self._condition:
            if not self._claimable() and not self._closed:
                self._condition.wait(timeout_s)
            if not self._claimable():
                return None
            frame = self._frame
            frame.encoding = Future()
            return frame

    def _claimable(self) -> bool:
        return self._frame is not None and self._frame.encoding is None

    def take(
        self, timeout_s: float, stale_after_s: float | None = None, replace_within_s: float = 0.0
    ) -> InputFrame | None:
        """Remove and return the stored frame, waiting up to ``timeout_s``; None on timeout.

        With ``stale_after_s``, a stored frame received more than that many seconds ago
        (``time.monotonic``) is stale. The call then waits up to ``replace_within_s`` seconds
        more for a newer frame, which :meth:`put` stores while handing the stale one back as
        dropped. It returns whichever frame is stored at the end.
        """
        with self._condition:
            if self._frame is None and not self._closed:
                self._condition.wait(timeout_s)
            stale = self._frame
            if (
                stale is not None
                and stale_after_s is not None
                and time.monotonic() - stale.received_s > stale_after_s
            ):
                deadline = time.monotonic() + replace_within_s
                while self._frame is stale and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0.0:
                        break
                    self._condition.wait(remaining)
            frame, self._frame = self._frame, None
        return frame

    def close(self) -> None:
        """Wake a waiting :meth:`take` so the worker can stop."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class ProblemReporter:
    """Per-kind counter of input problems that logs each kind at most once per interval.

    The first occurrence of a kind is logged at once; later ones are logged with the number
    suppressed since the previous line, at most once per ``interval_s``.
    """

    def __init__(
        self,
        warn: Callable[[str], Any],
        interval_s: float = PROBLEM_LOG_INTERVAL_S,
        info: Callable[[str], Any] | None = None,
    ):
        self._warn = warn
        self._info = info or logger.info
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._expected_logged: set[str] = set()

    def report(
        self, kind: str, message: str, expected: bool = False, info: bool = False
    ) -> None:
        """Count one problem of ``kind`` and log ``message`` unless throttled.

        ``expected`` marks a normal start-up event: it is counted, and only its first occurrence
        per kind is logged, at info level. It leaves the throttle alone, so the first unexpected
        occurrence is still warned about at once. ``info`` logs at info level instead of as a
        warning, with the same throttle.
        """
        now = time.monotonic()
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if expected:
                first_expected = kind not in self._expected_logged
                self._expected_logged.add(kind)
            else:
                last = self._last_logged.get(kind)
                if last is not None and now - last < self._interval_s:
                    self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                    return
                suppressed = self._suppressed.pop(kind, 0)
                self._last_logged[kind] = now
        if expected:
            if first_expected:
                self._info(f"[{kind}] {message}")
            return
        suffix = f" ({suppressed} more since the last report)" if suppressed else ""
        log = self._info if info else self._warn
        log(f"[{kind}] {message}{suffix}")


class DropReporter:
    """Warns about frames replaced in the slot, at most once per interval.

    No warning is given before :data:`MIN_PROCESSED_FOR_DROP_WARNING` frames are processed.
    Frames that arrive while the engine is built or runs its first, slow frame are the normal
    start-up, not a slow model, and the processed rate cannot be measured yet. The caller still
    counts them.
    """

    def __init__(self, warn: Callable[[str], Any], interval_s: float = DROP_LOG_INTERVAL_S):
        self._warn = warn
        self._interval_s = interval_s
        self._last_logged: float | None = None

    def report(
        self,
        dropped: int,
        input_hz: float,
        processed_hz: float,
        processed: int,
        now: float | None = None,
        received: int | None = None,
        window_s: float = RATE_WINDOW_S,
    ) -> bool:
        """Log the drop count unless throttled or nothing was processed yet; return if logged.

        ``dropped``, ``processed`` and ``received`` are totals since start-up, and ``now`` is
        ``time.monotonic()`` seconds by default. ``input_hz`` and ``processed_hz`` are the rates
        of frames received and of frames taken for tracking, measured over the same window of
        at most ``window_s`` seconds (see :meth:`RateMeter.rate_hz`).
        """
        now = time.monotonic() if now is None else now
        if processed < MIN_PROCESSED_FOR_DROP_WARNING:
            return False
        if self._last_logged is not None and now - self._last_logged < self._interval_s:
            return False
        self._last_logged = now
        total = f" of {received}" if received is not None else ""
        self._warn(
            f"dropped {dropped}{total} frames received so far: tracking fell behind the input, "
            "so a newer frame replaced each of them before tracking started. Over the last "
            f"{window_s:.1f} s, {input_hz:.1f} Hz were received and {processed_hz:.1f} Hz taken "
            "for tracking; only the newest frame is tracked"
        )
        return True


class RateMeter:
    """Event rate over a sliding window of :data:`RATE_WINDOW_S` seconds (thread-safe)."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._times: deque[float] = deque()
        self._newest: deque[float] = deque(maxlen=RECENT_INTERVALS + 1)
        """The newest events, kept however old they are, for :meth:`recent_period_s`."""
        self._lock = threading.Lock()
        self.count = 0
        self.first_s: float | None = None
        """Time of the first event (``time.monotonic()`` seconds), or None before it."""
        self.last_s: float | None = None
        """Time of the newest event (``time.monotonic()`` seconds), or None before the first."""

    def tick(self, now: float | None = None) -> None:
        """Record one event at ``now`` (``time.monotonic()`` seconds by default).

        Events must be recorded in time order.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            self.count += 1
            if self.first_s is None:
                self.first_s = now
            self.last_s = now
            self._times.append(now)
            self._newest.append(now)
            self._trim(now)

    def rate_hz(self, now: float | None = None, start_s: float | None = None) -> float:
        """Return the events per second in the window that ends at ``now``.

        The window spans the last ``window_s`` seconds, but starts no earlier than ``start_s``
        (default: this meter's first event), so it contains no time before the stream began.
        Only events after its start count, because the window measures the gaps that follow
        them. Two meters read with the same ``now`` and ``start_s`` cover the same window, so
        when one meter's events are a subset of the other's, its rate is never the higher.
        Returns 0 before the window has any length.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            start_s = self.first_s if start_s is None else start_s
            if start_s is None:
                return 0.0
            window_start = max(now - self._window_s, start_s)
            length = now - window_start
            if length <= 0.0:
                return 0.0
            events = sum(1 for time_s in self._times if window_start < time_s <= now)
            return events / length

    def recent_period_s(self) -> float:
        """Return the median of the newest :data:`RECENT_INTERVALS` gaps between events, seconds;
        0 before two events. It follows a change of rate within a few events, where
        :meth:`rate_hz` averages over the whole window. The events count however long ago they
        came, so after the events stop it still returns the period they had."""
        with self._lock:
            times = np.array(self._newest)
        if times.size < 2:
            return 0.0
        return float(np.median(np.diff(times)))

    def silence_s(self, now: float | None = None) -> float | None:
        """Return the seconds from the newest event to ``now`` (``time.monotonic()`` by
        default), or None before the first event."""
        now = time.monotonic() if now is None else now
        last_s = self.last_s
        return None if last_s is None else max(0.0, now - last_s)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()


class LatencyWindow:
    """Median and 95th percentile of the newest :data:`LATENCY_WINDOW` latencies (seconds)."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    def percentiles_ms(self) -> tuple[float, float]:
        """Return ``(median, p95)`` in milliseconds; NaN before the first value."""
        with self._lock:
            values = np.array(self._values)
        if values.size == 0:
            return float("nan"), float("nan")
        return float(np.median(values) * 1e3), float(np.percentile(values, 95) * 1e3)


# --------------------------------------------------------------------------------------------
# Tracking


class TrackingPipeline:
    """Checks frames, runs the engine and converts its poses to REP-103 odometry.

    Bad input is handled per kind (each reported through ``problems``):

    * ``duplicate_stamp``: a stamp equal to the previous frame's; the frame is skipped.
    * ``unset_stamp``: a stamp of 0 that repeats, because the camera driver leaves
      ``header.stamp`` unset; the frame is skipped. A first frame at 0 is tracked, because
      recorded sequences may start at 0.
    * ``stamp_backwards``: a stamp older than the previous frame's (a bag restarted or looped);
      the tracker is reset and the frame starts a new segment.
    * ``stamp_gap``: a stamp more than :func:`input_timeout_s` of the recent stamp period after
      the previous one (the camera or the bag paused); logged at info level, the frame is
      tracked.
    * ``image_size_change``: a frame of another size than the segment's; the tracker is reset.
    * ``camera_info_size``: camera_info for another image size; the ``intrinsics`` fallback is
      used, or the frame is skipped without one.
    * ``no_intrinsics``: no valid camera_info yet and no fallback; the frame is skipped. Within
      :data:`CAMERA_INFO_GRACE_S` of the first image, and before any camera_info arrived, this
      is logged at info level only.
    * ``camera_change``: new intrinsics or distortion from camera_info; the tracker is reset.
    * ``tracking_lost``: the engine reports ``lost`` (it re-initialises by itself); nothing is
      published until it tracks again.
    * ``non_finite_pose`` and ``engine_error``: the tracker is reset and the frame dropped.

    Nothing is published until the engine has initialised, after the start, every reset and
    every tracking loss: before that its poses are placeholders (the identity), and the first
    initialised pose would jump away from them. Every reset and loss starts a new segment of
    :class:`OdometryFrame` at the first initialised pose, so odometry continues from the last
    published pose. So does a frame that the engine marks ``restarted``: during its
    depth-hypothesis trial, the lead passed to the other hypothesis.
    """

    def __init__(
        self,
        engine: Any,
        odometry_frame: OdometryFrame,
        fallback_intrinsics: list[float] | None,
        problems: ProblemReporter,
        image_topic: str = "image",
        camera_info_topic: str = "camera_info",
    ) -> None:
        self.engine = engine
        self.frame = odometry_frame
        self.fallback_intrinsics = fallback_intrinsics
        self.problems = problems
        self.image_topic = image_topic
        self.camera_info_topic = camera_info_topic
        self.state = STATE_INITIALISING
        self._last_stamp_ns: int | None = None
        self._stamp_gaps_ns: deque[int] = deque(maxlen=RECENT_INTERVALS)
        """The newest gaps between accepted increasing stamps, for the ``stamp_gap`` check."""
        self._first_image_s: float | None = None
        self._segment_size: tuple[int, int] | None = None
        self._previous: tuple[int, np.ndarray] | None = None
        self._undistorter: Undistorter | None = None
        self._lost = False
        self.segments = 0
        """Odometry segments that have a published pose so far."""
        self.low_confidence = False
        """Whether the newest published pose was reported as low confidence."""
        self.frame.start_segment()

    def reset(self) -> None:
        """Reset the engine and start a new odometry segment at the last published pose."""
        self.engine.reset()
        self.frame.start_segment()
        self.state = STATE_INITIALISING
        self._segment_size = None
        self._previous = None
        self._lost = False
        self.low_confidence = False

    def process(
        self, frame: InputFrame, with_points: bool = False
    ) -> tuple[str, OdometryEstimate | None]:
        """Track one frame; return its :class:`Outcome` and the odometry when published.

        ``with_points`` adds the engine's patch points (odom frame) to the estimate.
        """
        if self._first_image_s is None:
            self._first_image_s = frame.received_s
        if not self._check_stamp(frame):
            return Outcome.SKIPPED, None
        camera = self._select_camera(frame)
        if camera is None:
            return Outcome.SKIPPED, None
        height, width = frame.image.shape[:2]
        if self._segment_size is not None and self._segment_size != (width, height):
            old_width, old_height = self._segment_size
            self.problems.report(
                "image_size_change",
                f"images on {self.image_topic} changed size from {old_width}x{old_height} to "
                f"{width}x{height}; the tracker was reset",
            )
            self.reset()
        if self._undistorter is not None and self._undistorter.source != camera:
            if self._segment_size is not None:
                self.problems.report(
                    "camera_change",
                    f"the camera of {self.image_topic} changed from "
                    f"{describe_camera(self._undistorter.source)} to {describe_camera(camera)}; "
                    "the tracker was reset",
                )
                self.reset()
        self._last_stamp_ns = frame.stamp_ns

        self._undistorter = undistorter_for(self._undistorter, camera)
        intrinsics = self._undistorter.camera.intrinsics.tolist()
        encoded = self._encoded_ahead(frame, intrinsics)
        try:
            if encoded is None:
                image = self._undistorter(np.ascontiguousarray(frame.image))
                result = self.engine.track(image, frame.stamp_ns, intrinsics, defer_upkeep=True)
            else:
                result = self.engine.track(
                    None, frame.stamp_ns, intrinsics, encoded=encoded, defer_upkeep=True
                )
        except Exception as error:  # the node must survive any engine failure on one frame
            logger.debug("engine failure", exc_info=True)
            self.problems.report(
                "engine_error",
                f"tracking the frame stamped {frame.stamp_ns} ns failed with "
                f"{type(error).__name__}: {error}; the tracker was reset",
            )
            self.reset()
            return Outcome.FAILED, None
        return self._convert(frame, result, (width, height), with_points)

    # ----------------------------------------------------------------------------------------

    def upkeep(self) -> None:
        """Run the engine's work that may follow the publication of a pose (keyframe removal,
        see ``VisualOdometry.upkeep``). An engine failure is reported and resets the tracker."""
        try:
            self.engine.upkeep()
        except Exception as error:  # the node must survive any engine failure
            logger.debug("engine upkeep failure", exc_info=True)
            self.problems.report(
                "engine_error",
                f"the engine's keyframe upkeep failed with {type(error).__name__}: {error}; "
                "the tracker was reset",
            )
            self.reset()

    def _check_stamp(self, frame: InputFrame) -> bool:
        last = self._last_stamp_ns
        if last is None:
            return True
        if frame.stamp_ns > last:
            self._check_stamp_gap(frame.stamp_ns - last, frame.stamp_ns)
            return True
        if frame.stamp_ns == last == 0:
            self.problems.report(
                "unset_stamp",
                f"images on {self.image_topic} have header.stamp 0: the camera driver leaves the "
                "stamp unset, so every frame after the first repeats it and is skipped. Set "
                "header.stamp to the capture time in the camera driver",
            )
            return False
        if frame.stamp_ns == last:
            self.problems.report(
                "duplicate_stamp",
                f"image on {self.image_topic} repeats stamp {frame.stamp_ns} ns; frame skipped",
            )
            return False
        self.problems.report(
            "stamp_backwards",
            f"image stamp on {self.image_topic} went back from {last} ns to {frame.stamp_ns} ns "
            "(bag restarted or looped?); the tracker was reset",
        )
        self._stamp_gaps_ns.clear()
        self.reset()
        return True

    def _check_stamp_gap(self, gap_ns: int, stamp_ns: int) -> None:
        """Report a gap far above the recent stamp period, then add it to the recent gaps."""
        if self._stamp_gaps_ns:
            period_s = float(np.median(self._stamp_gaps_ns)) / NANOSECONDS_PER_SECOND
            timeout_s = input_timeout_s(period_s)
            gap_s = gap_ns / NANOSECONDS_PER_SECOND
            if gap_s > timeout_s:
                self.problems.report(
                    "stamp_gap",
                    f"image stamps on {self.image_topic} jumped {gap_s:.2f} s ahead to "
                    f"{stamp_ns} ns, more than the outage limit of {timeout_s:.2f} s (max of "
                    f"{INPUT_TIMEOUT_MIN_S:g} s and {INPUT_TIMEOUT_PERIODS} frame periods of "
                    f"{period_s:.3f} s): the camera or the bag paused, or the node dropped the "
                    "frames between while tracking fell behind. Tracking continues across the "
                    "gap",
                    info=True,
                )
        self._stamp_gaps_ns.append(gap_ns)

    def _select_camera(self, frame: InputFrame) -> PinholeCamera | None:
        height, width = frame.image.shape[:2]
        camera = frame.camera
        if camera is not None and camera.size == (width, height):
            return camera
        # The problems below are reported here; choose_camera() repeats the choice silently.
        if camera is not None:
            action = "frame skipped"
            if self.fallback_intrinsics:
                action = "using the intrinsics parameter"
            self.problems.report(
                "camera_info_size",
                f"camera_info on {self.camera_info_topic} describes {camera.width}x"
                f"{camera.height} images but images on {self.image_topic} are {width}x{height}; "
                + action,
            )
        if self.fallback_intrinsics:
            try:
                return fallback_camera(self.fallback_intrinsics, width, height)
            except CalibrationError as error:
                self.problems.report("no_intrinsics", f"intrinsics parameter unusable: {error}")
                return None
        if camera is None and frame.camera_info_error is not None:
            self.problems.report(
                "no_intrinsics",
                f"camera_info arrives on {self.camera_info_topic} but is invalid "
                f"({frame.camera_info_error}), and the intrinsics parameter is unset; frame "
                "skipped. Fix the camera calibration, or set -p intrinsics:=[fx, fy, cx, cy]",
            )
        elif camera is None:
            starting = frame.received_s - self._first_image_s < CAMERA_INFO_GRACE_S
            self.problems.report(
                "no_intrinsics",
                f"no valid camera_info received on {self.camera_info_topic} and the intrinsics "
                "parameter is unset; frame skipped. If the camera publishes camera_info on "
                "another topic, remap it with -r camera_info:=<topic>, or set "
                "-p intrinsics:=[fx, fy, cx, cy]",
                expected=starting,
            )
        return None

    def _encoded_ahead(self, frame: InputFrame, intrinsics: list[float]) -> Any:
        """Return the frame's encoding from the encoder thread if the engine can use it, else
        None (then the frame is undistorted and encoded here)."""
        if frame.encoding is None:
            return None
        prefetched = frame.encoding.result()
        if prefetched is None or prefetched.intrinsics != intrinsics:
            return None
        # A reset since the encoding, for example one this frame caused, makes it stale.
        if prefetched.encoded.generation != self.engine.generation:
            return None
        return prefetched.encoded

    def _convert(
        self, frame: InputFrame, result: Any, size: tuple[int, int], with_points: bool
    ) -> tuple[str, OdometryEstimate | None]:
        state = str(getattr(result, "state", "tracking"))
        if state == ENGINE_STATE_LOST and not self._lost:
            # The engine re-initialises by itself after a loss, and reports "lost" until it has.
            # Nothing is published until it tracks again, and the next published pose is
            # anchored at the last published one.
            self.problems.report(
                "tracking_lost",
                f"tracking lost at stamp {frame.stamp_ns} ns; the engine re-initialises and "
                "odometry resumes from the last published pose",
            )
            self.state = ENGINE_STATE_LOST
            self._lost = True
            return Outcome.LOST, None
        if state in (ENGINE_STATE_INITIALIZING, ENGINE_STATE_LOST):
            self.state = STATE_INITIALISING
            self.low_confidence = False
            self._segment_size = size
            return Outcome.INITIALISING, None
        pose = np.asarray(getattr(result, "pose", None), dtype=np.float64)
        if pose.shape != (7,) or not np.all(np.isfinite(pose)):
            self.problems.report(
                "non_finite_pose",
                f"the engine returned the invalid pose {pose.tolist()} at stamp "
                f"{frame.stamp_ns} ns; the tracker was reset",
            )
            self.reset()
            return Outcome.FAILED, None

        if self._lost or bool(getattr(result, "restarted", False)):
            # After a loss, or when the engine's depth-hypothesis trial switched to the other
            # hypothesis, the pose does not continue the previous one: anchor it at the last
            # published pose. A switch also carries the previous hypothesis's scale over.
            scale_ratio = None if self._lost else getattr(result, "scale_ratio", None)
            if not self._lost and scale_ratio is None:
                # The two hypotheses share too few keyframes to compare their scales.
                logger.info(
                    "the leading depth hypothesis changed at stamp %d ns without a scale ratio; "
                    "the new segment keeps the current scale factor %.4g",
                    frame.stamp_ns, self.frame.segment_scale,
                )
                scale_ratio = 1.0
            self._lost = False
            self.frame.start_segment(scale_ratio)
            self._previous = None
        self.state = STATE_CHOOSING if getattr(result, "on_trial", False) else state
        self._segment_size = size
        if not self.frame.segment_started:
            self.segments += 1
        odom_from_base = self.frame.odom_from_base(pose_to_matrix(pose))
        twist = np.zeros(6)
        if self._previous is not None:
            previous_stamp, previous_pose = self._previous
            dt_s = (frame.stamp_ns - previous_stamp) / NANOSECONDS_PER_SECOND
            twist = twist_in_body(previous_pose, odom_from_base, dt_s)
        self._previous = (frame.stamp_ns, odom_from_base)
        low_confidence = bool(getattr(result, "low_confidence", False))
        variance_ratio = getattr(result, "variance_ratio", None)
        self._report_confidence(frame, low_confidence, variance_ratio)
        return Outcome.PUBLISHED, OdometryEstimate(
            stamp_ns=frame.stamp_ns,
            odom_from_base=odom_from_base,
            world_from_camera=self.frame.camera_pose(odom_from_base),
            twist=twist,
            pose_covariance=self._covariance(result, odom_from_base),
            state=self.state,
            is_keyframe=bool(getattr(result, "is_keyframe", False)),
            timings=_stage_times_ms(getattr(result, "times", None)),
            points=self._points() if with_points else None,
            low_confidence=low_confidence,
            variance_ratio=None if variance_ratio is None else float(variance_ratio),
            segment=self.segments - 1,
        )

    def _report_confidence(
        self, frame: InputFrame, low_confidence: bool, variance_ratio: float | None
    ) -> None:
        """Report the first frame of each low-confidence run and log the return to confidence."""
        if low_confidence and not self.low_confidence:
            ratio = "unknown" if variance_ratio is None else f"{variance_ratio:.0f}"
            self.problems.report(
                "low_confidence",
                f"low tracking confidence from stamp {frame.stamp_ns} ns: the position variance "
                f"is {ratio} times its recent median. Check for a covered, dark or blurred "
                "camera or a plain view; the published covariance carries the uncertainty",
            )
        elif self.low_confidence and not low_confidence:
            # Debug level: the warnings above are throttled, and this line would not be.
            logger.debug("tracking confidence recovered at stamp %d ns", frame.stamp_ns)
        self.low_confidence = low_confidence

    def _points(self) -> np.ndarray | None:
        points = getattr(self.engine, "points", None)
        if points is None:
            return None
        return self.frame.odom_points(np.asarray(points, dtype=np.float64).reshape(-1, 3))

    def _covariance(self, result: Any, odom_from_base: np.ndarray) -> np.ndarray | None:
        covariance = getattr(result, "pose_covariance", None)
        if covariance is None:
            return None
        covariance = np.asarray(covariance, dtype=np.float64)
        if covariance.shape != (6, 6) or not np.all(np.isfinite(covariance)):
            return None
        scale = np.diag([self.frame.translation_scale] * 3 + [1.0] * 3)
        return covariance_to_ros(scale @ covariance @ scale, self.frame.base_from_camera,
                                 odom_from_base)


def _stage_times_ms(times: Any) -> dict[str, float]:
    """Return the engine's per-stage seconds (a dataclass or mapping) as milliseconds."""
    if times is None:
        return {}
    values = times if isinstance(times, dict) else getattr(times, "__dict__", {})
    return {name: 1e3 * float(value) for name, value in values.items()}
