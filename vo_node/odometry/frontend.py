"""Incremental DPVO-style visual odometry: one call per frame, a trajectory at the end.

Per frame, the frontend prepares the image, cuts seeded patches, predicts the pose with the motion
model, initialises the patch depths and adds the frame as a keyframe with its edges. It then runs
the update operator and the bundle adjustment (BA) over the optimisation window, removes a
redundant keyframe and retires old edges. Before initialisation a motion probe drops frames that
barely move. The first optimisation starts from poses and depths that
:mod:`vo_node.odometry.initialization` estimates from the correspondences, because identity poses
and equal depths often lead the BA into a local minimum.

Depth-hypothesis trial. On real sequences the initial window fits its depth-mirrored alternative
almost as well as the scene it came from. In 10 runs on EuRoC and KITTI the two BA costs
differed by 0.2 to 18 %, and in 4 of them the lower one led to a failed run (over 10 % of the
path, where the other stayed under 3 %). The BA's weighted mean squared residual separates them
once more frames add parallax. So both hypotheses are tracked, each in its own
patch graph, for ``frontend.hypothesis_frames`` frames (sooner when one costs
``EARLY_DECISION_RATIO`` times the other, up to ``frontend.hypothesis_extra_frames`` later while
their costs differ by less than ``frontend.hypothesis_margin``), and the cheaper one is kept. Meanwhile each frame
reports the pose of the hypothesis that leads so far, with ``TrackResult.on_trial`` set. When the
lead changes, the frame's ``restarted`` flag makes a live consumer start a new segment, as after
a tracking loss. The finished trajectory comes from the kept hypothesis alone.

Tracking loss. After each optimisation the frontend checks the BA result: non-finite poses or
depths, a BA that reports failure, or a jump of the newest pose that is both far larger than the
recent steps and larger than the median scene depth (or a rotation above 90 degrees) mark the
frame as lost. The optimisation is then undone, the frame gets the last good pose, every keyframe
is frozen into the trajectory, and tracking restarts from scratch on the next frames (motion
probe, ``init_frames``, ``init_iterations``). The first pose of the new segment is the last good
pose, so the trajectory stays continuous in position and orientation. Its scale is new, because
monocular scale is set afresh by each initialisation. The state reads "lost" until the new
segment is initialised.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from vo_node.config import MIN_CONFIDENCE_HISTORY, EngineConfig, resolve_device
from vo_node.ba.solver import bundle_adjust
from vo_node.geometry import se3
from vo_node.geometry.projection import reproject
from vo_node.io.trajectory import Trajectory
from vo_node.model.patchifier import image_gradient_score
from vo_node.odometry.graph import DEPTH_INIT_FRAMES, PatchGraph
from vo_node.odometry.image import prepare_image
from vo_node.odometry.initialization import InitialWindow, initialize_window

logger = logging.getLogger(__name__)

NANOSECONDS_PER_SECOND = 1e9
FEATURE_STRIDE = 4
"""The patch graph works at 1/4 of the prepared image resolution."""
INITIAL_INVERSE_DEPTH = 1.0
"""Inverse depth of every patch before initialisation with ``initial_depth: constant``; the
monocular scale is free, so only the equality of the depths matters."""
FLOW_BETA = 0.5
"""Keyframe flow mixes full flow and translation-only flow with this weight (DPVO)."""
GRADIENT_CANDIDATE_FACTOR = 3
"""``gradient_bias`` selection keeps the best of this many random candidates per patch."""
MAX_TIMESTAMP_RATIO = 10.0
"""The damped-linear motion model extrapolates at most this multiple of the last step."""
# NOTE: the three loss thresholds below are estimates; no test drives a real tracking loss yet.
JUMP_STEP_FACTOR = 20.0
"""A newest-pose step this many times the median recent step may be a tracking failure."""
JUMP_DEPTH_FACTOR = 1.0
"""... if it is also longer than this multiple of the median scene depth."""
MAX_ROTATION_STEP = math.pi / 2
"""Rotation between consecutive keyframes (radians) above which tracking counts as lost."""
MIN_STEPS_FOR_JUMP_TEST = 3
MIN_SCALE_KEYFRAMES = 3
"""Shared keyframes needed to compare the scales of two depth hypotheses."""
MIN_PATH_LENGTH = 1e-9
"""Camera path length (scene units) below which a hypothesis's scale is not compared."""
EARLY_DECISION_RATIO = 3.0
"""During the depth-hypothesis trial, a hypothesis whose weighted mean squared residual exceeds
this multiple of the other's is dropped before ``hypothesis_frames`` have passed ..."""
EARLY_DECISION_FRAMES = 3
"""... once at least this many trial frames have been tracked."""

STATE_INITIALIZING = "initializing"
STATE_TRACKING = "tracking"
STATE_LOST = "lost"


class Oracle(Protocol):
    """Anything that returns true patch-centre positions, like :class:`CorrespondenceOracle`."""

    def correspondences(
        self,
        source_frames: torch.Tensor,
        target_frames: torch.Tensor,
        centres: torch.Tensor,
        intrinsics: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class StageTimes:
    """Wall-clock seconds spent per stage while tracking one frame."""

    encoders: float = 0.0
    correlation: float = 0.0
    update: float = 0.0
    ba: float = 0.0
    bookkeeping: float = 0.0

    @property
    def total(self) -> float:
        return self.encoders + self.correlation + self.update + self.ba + self.bookkeeping


@dataclass
class EncodedFrame:
    """A frame prepared and encoded by :meth:`VisualOdometry.encode`, for :meth:`VisualOdometry.track`.

    Attributes:
        shape: ``(H, W)`` of the network input, pixels.
        intrinsics: ``(4,)`` ``[fx, fy, cx, cy]`` of the 1/4-resolution feature maps.
        features: patches ``(M, 3, P, P)``, gmap, context and pyramid levels of the frame.
        seconds: wall-clock time the preparation and the encoders took.
        generation: the engine's reset count when the frame was encoded.
    """

    shape: tuple[int, int]
    intrinsics: torch.Tensor
    features: tuple
    seconds: float
    generation: int


@dataclass
class TrackResult:
    """Outcome of :meth:`VisualOdometry.track` for one frame."""

    timestamp_ns: int
    pose: np.ndarray
    """``(7,)`` float64 ``T_world_cam`` of this frame right after its optimisation."""
    is_keyframe: bool
    """Whether the frame entered the patch graph (it may still be removed later)."""
    state: str
    """``initializing``, ``tracking`` or ``lost``."""
    num_edges: int
    pose_covariance: np.ndarray | None = None
    """``(6, 6)`` covariance of this frame's pose from the BA (tangent ``[v, w]``), if any."""
    times: StageTimes = field(default_factory=StageTimes)
    probe_flow: float | None = None
    """Median flow (1/4-resolution pixels) that the motion probe measured on this frame, or None
    when the frame was not probed."""
    ba_cost: float | None = None
    """Weighted cost ``sum weight * residual^2`` after this frame's last BA, or None without a BA.
    During the depth-hypothesis trial it belongs to the hypothesis that currently leads."""
    ba_residuals: int | None = None
    """Valid residuals of the same BA."""
    on_trial: bool = False
    """True for the frames of the depth-hypothesis trial, from the initialisation frame to the
    frame that decides it. Each was tracked in both hypotheses and reports the leading one's pose.
    The finished trajectory may come from the other one."""
    restarted: bool = False
    """True when the pose comes from another hypothesis than the previous frame's, so it does
    not continue the previous pose: a consumer starts a new segment, as after a tracking loss."""
    scale_ratio: float | None = None
    """On a ``restarted`` frame of the depth-hypothesis trial, the previous leader's camera path
    length over the new leader's across their common keyframes. A consumer multiplies the new
    segment's translations by it to keep the previous scale. None on every other frame."""
    variance_ratio: float | None = None
    """Position variance of this frame (trace of ``pose_covariance[:3, :3]``) over its median
    across the recent confident frames of the same segment. None without a covariance or before
    enough confident frames."""
    low_confidence: bool = False
    """True when ``variance_ratio`` exceeds ``frontend.low_confidence_ratio``: the images carry
    little information (covered or dark camera, blur, a plain view), so the pose is unreliable."""


class _LostTracking(Exception):
    """Raised inside an update when the optimisation result is implausible."""


@dataclass
class _Hypothesis:
    """One depth hypothesis of a fresh initialisation, tracked in its own patch graph."""

    name: str
    graph: PatchGraph
    cost: float = 0.0
    """Sum of the weighted BA cost after each trial frame's optimisation."""
    weight_sum: float = 0.0
    """Sum of the weights of the valid residuals of the same optimisations."""
    last: tuple[float, int] | None = None
    """(weighted cost, valid residuals) of the newest trial frame's optimisation."""
    covariance: torch.Tensor | None = None
    """(6, 6) covariance of the newest pose after that optimisation, or None."""

    @property
    def mean_cost(self) -> float:
        """Weighted mean squared residual over the trial so far: the summed weighted BA cost over
        the summed weights (inf before any frame or without weight).

        Dividing by the residual count instead would favour the hypothesis whose measurements
        the network trusts less: lower weights lower its cost per residual although its
        residuals are no smaller. Over 60 runs of the real sequences the switch to the weight
        sum lowered the error in 8 runs and raised it in 1 (docs/benchmarks.md)."""
        return self.cost / self.weight_sum if self.weight_sum > 0 else math.inf


class VisualOdometry:
    """DPVO-style incremental frontend over a :class:`PatchGraph`.

    Args:
        config: engine configuration (network sizes, frontend policy, BA, runtime).
        network: the patch network, or None when ``oracle`` supplies the correspondences.
        device: ``auto``, ``cpu`` or ``cuda``.
        oracle: optional correspondence oracle that replaces the network's ``(delta, weight)``.
    """

    def __init__(
        self,
        config: EngineConfig,
        network: torch.nn.Module | None,
        device: str = "auto",
        oracle: Oracle | None = None,
    ) -> None:
        config.validate()
        if network is None and oracle is None:
            raise ValueError("VisualOdometry needs a network, or an oracle for network-free tests")
        self.config = config
        self.device = torch.device(resolve_device(device))
        if network is not None:
            if hasattr(network, "for_inference"):
                network = network.for_inference(self.device)
            else:
                network = network.to(self.device).eval()
        self.network = network
        self.oracle = oracle
        self.use_autocast = config.mixed_precision and self.device.type == "cuda"
        self.graph = PatchGraph(config.frontend, config.network, self.device)
        self.generation = -1
        """Reset count: :meth:`reset` increments it, so frames encoded before are not used."""
        self.reset()

    # -----------------------------------------------------------------------------------------
    # Public API

    def reset(self) -> None:
        """Forget all frames and start a new trajectory with the configured seed."""
        self.graph.clear()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.generation += 1
        self.frame_count = 0
        self.is_initialized = False
        self._state = STATE_INITIALIZING
        self._image_shape: tuple[int, int] | None = None
        self._intrinsics: torch.Tensor | None = None
        self._last_timestamp_ns: int | None = None
        self._last_good_pose_cw: torch.Tensor | None = None
        # Median flow (1/4-resolution pixels) that the last motion probe measured, or None.
        self.last_probe_flow: float | None = None
        # Depth hypotheses still on trial after an initialisation (empty outside a trial).
        self._hypotheses: list[_Hypothesis] = []
        self._trial_frames = 0
        # (weighted cost, valid residuals) of the last BA run by the update iterations.
        self._last_ba_cost: tuple[float, int] = (0.0, 0)
        self._last_ba_weight_sum = 0.0
        # The figures of the frame being tracked, for its TrackResult.
        self._frame_scale_ratio: float | None = None
        self._frame_probe_flow: float | None = None
        self._frame_ba_cost: tuple[float, int] | None = None
        self._frame_restarted = False
        self._frame_on_trial = False
        # The hypothesis whose pose the last TrackResult reported, during a trial.
        self._reported: _Hypothesis | None = None
        # Whether track(..., defer_upkeep=True) left the keyframe removal for upkeep().
        self._upkeep_pending = False
        # Position variances of the recent confident frames of the current segment.
        self._confident_variances: collections.deque[float] = collections.deque(
            maxlen=self.config.frontend.confidence_window
        )

    @property
    def state(self) -> str:
        return self._state

    @property
    def num_keyframes(self) -> int:
        """Active keyframes in the patch graph."""
        return self.graph.n

    @property
    def intrinsics(self) -> torch.Tensor | None:
        """``(4,)`` intrinsics of the 1/4-resolution patch graph, None before the first frame."""
        return self._intrinsics

    @property
    def keyframe_poses(self) -> np.ndarray:
        """``(n, 7)`` float64 ``T_world_cam`` of the active keyframes, oldest first."""
        poses = se3.invert(self.graph.active_poses.double())
        return poses.cpu().numpy()

    @property
    def points(self) -> np.ndarray:
        """``(K, 3)`` float32 world points: the centres of the active keyframes' patches.

        Patches whose inverse depth is at or below the BA's floor are left out.
        """
        graph = self.graph
        if graph.n == 0 or self._intrinsics is None:
            return np.zeros((0, 3), dtype=np.float32)
        centre = graph.patch_size // 2
        patches = graph.patches[: graph.n, :, :, centre, centre].double()  # (n, M, 3)
        fx, fy, cx, cy = self._intrinsics.double()
        inverse_depth = patches[..., 2]
        keep = inverse_depth > self.config.ba.min_inverse_depth
        depth = 1.0 / inverse_depth.clamp(min=self.config.ba.min_inverse_depth)
        camera_points = torch.stack(
            [(patches[..., 0] - cx) / fx * depth, (patches[..., 1] - cy) / fy * depth, depth],
            dim=-1,
        )
        poses_wc = se3.invert(graph.active_poses.double())[:, None, :]
        world = se3.transform_points(poses_wc, camera_points)
        return world[keep].float().cpu().numpy()

    def encode(
        self, image: np.ndarray, intrinsics: Sequence[float] | np.ndarray
    ) -> EncodedFrame:
        """Prepare a frame and run the encoders, ahead of :meth:`track`.

        A live consumer may call this from a second thread while :meth:`track` works on the
        previous frame: it reads the network and draws patch centres from the engine's
        generator, and changes nothing else. Frames must be encoded in the order they are
        tracked, or the patch draws differ from a run without it.

        Args:
            image: ``(H, W)`` or ``(H, W, 3)`` uint8 frame.
            intrinsics: ``[fx, fy, cx, cy]`` in pixels of ``image``.
        """
        start = time.perf_counter()
        generation = self.generation
        with torch.inference_mode():
            tensor, camera = prepare_image(image, intrinsics, self.config.max_image_width)
            tensor = tensor.to(self.device)
            quarter = torch.as_tensor(
                camera / FEATURE_STRIDE, dtype=torch.float32, device=self.device
            )
            features = self._patchify(tensor)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        shape = (int(tensor.shape[1]), int(tensor.shape[2]))
        return EncodedFrame(shape, quarter, features, time.perf_counter() - start, generation)

    def track(
        self,
        image: np.ndarray | None,
        timestamp_ns: int,
        intrinsics: Sequence[float] | np.ndarray,
        encoded: EncodedFrame | None = None,
        defer_upkeep: bool = False,
    ) -> TrackResult:
        """Track one frame.

        Args:
            image: ``(H, W)`` or ``(H, W, 3)`` uint8 frame; every frame must have the same size.
                May be None when ``encoded`` is given.
            timestamp_ns: capture time in nanoseconds, strictly increasing.
            intrinsics: ``[fx, fy, cx, cy]`` in pixels of ``image``; constant within a run.
            encoded: the frame from :meth:`encode`, if it was encoded ahead. It is used when it
                was encoded since the last :meth:`reset`. Otherwise ``image`` is encoded here.
                Its encoding time counts as the frame's ``encoders`` time but not towards
                ``bookkeeping``.
            defer_upkeep: leave the keyframe removal and the edge retirement that follow the
                frame's optimisation to :meth:`upkeep`, so a live caller can publish the pose
                first. The next call of :meth:`track` or :meth:`finish` runs them if the caller
                did not, so the poses are the same as without deferral. Their time is then not
                part of the returned ``times``. During the depth-hypothesis trial each
                hypothesis runs them at once, so the deferral starts after the trial.

        Returns:
            The frame's pose and state; see :class:`TrackResult`.
        """
        self.upkeep()
        start = time.perf_counter()
        timestamp_ns = self._check_timestamp(timestamp_ns)
        times = StageTimes()
        if encoded is not None and encoded.generation != self.generation:
            if image is None:
                raise ValueError(
                    "the encoded frame was encoded before the last reset(); pass its image too, "
                    "so that track() encodes it again"
                )
            encoded = None
        encoded_here = 0.0
        if encoded is None:
            if image is None:
                raise ValueError("track() needs the image unless an encoded frame is given")
            encoded = self.encode(image, intrinsics)
            encoded_here = encoded.seconds
        times.encoders = encoded.seconds
        with torch.inference_mode():
            self._check_frame(encoded, intrinsics)
            frame_id = self.frame_count
            self.frame_count += 1
            self._frame_probe_flow = None
            self._frame_ba_cost = None
            self._frame_restarted = False
            self._frame_scale_ratio = None
            self._frame_on_trial = False
            self._last_timestamp_ns = timestamp_ns
            result = self._track_prepared(
                encoded.features, timestamp_ns, frame_id, times, defer_upkeep
            )
        times.bookkeeping = max(
            0.0,
            time.perf_counter() - start
            - (encoded_here + times.correlation + times.update + times.ba),
        )
        return result

    def upkeep(self) -> None:
        """Run the keyframe removal and edge retirement that ``track(..., defer_upkeep=True)``
        left pending; do nothing when none is pending."""
        if not self._upkeep_pending:
            return
        self._upkeep_pending = False
        with torch.inference_mode():
            self._remove_redundant_keyframe()
            self.graph.retire_edges(self.config.frontend.removal_window)

    def finish(self) -> Trajectory:
        """Run the final iterations and return the poses of every input frame.

        Keyframes removed during tracking get their poses from the stored relative pose to their
        anchor keyframe, and frames dropped as static are interpolated by timestamp between their
        neighbours (see :meth:`PatchGraph.trajectory`). Timestamps are the input timestamps.
        """
        if self.frame_count == 0:
            raise RuntimeError("finish() called before any frame was tracked; call track() first")
        self.upkeep()
        times = StageTimes()
        with torch.inference_mode():
            if self._hypotheses:
                self._keep_best_hypothesis()
            if self.graph.num_edges and self.graph.n >= 2:
                if self.is_initialized:
                    self._optimize(self.config.frontend.final_iterations, times, guard=True)
                else:
                    logger.info(
                        "finishing before initialisation: optimising %d keyframes", self.graph.n
                    )
                    self._initialize(times)
            _, stamps, poses_cw = self.graph.trajectory()
        if len(stamps) != self.frame_count:
            raise RuntimeError(
                f"trajectory has {len(stamps)} poses for {self.frame_count} input frames"
            )
        # The graph keeps float32 poses; renormalise the quaternions after the float64 inversion.
        poses_wc = se3.normalize(se3.invert(torch.from_numpy(poses_cw))).numpy()
        return Trajectory(stamps, poses_wc)

    # -----------------------------------------------------------------------------------------
    # Per-frame steps

    def _check_timestamp(self, timestamp_ns: int) -> int:
        stamp = int(timestamp_ns)
        if self._last_timestamp_ns is not None and stamp <= self._last_timestamp_ns:
            raise ValueError(
                f"timestamp {stamp} ns does not follow the previous frame's "
                f"{self._last_timestamp_ns} ns; timestamps must increase strictly (call reset() "
                "to start a new sequence)"
            )
        return stamp

    def _check_frame(
        self, encoded: EncodedFrame, intrinsics: Sequence[float] | np.ndarray
    ) -> None:
        """Keep the first frame's size and intrinsics; raise ``ValueError`` when they change."""
        quarter, shape = encoded.intrinsics, encoded.shape
        if self._image_shape is None or self._intrinsics is None:
            self._image_shape = shape
            self._intrinsics = quarter
        elif shape != self._image_shape:
            raise ValueError(
                f"frame of prepared size {shape} differs from the first frame's "
                f"{self._image_shape}; call reset() before changing the image size"
            )
        elif not torch.allclose(quarter, self._intrinsics, rtol=1e-5, atol=1e-4):
            raise ValueError(
                f"intrinsics {list(np.asarray(intrinsics, dtype=float))} differ from the first "
                "frame's; call reset() before changing the camera"
            )

    def _track_prepared(
        self,
        features: tuple,
        timestamp_ns: int,
        frame_id: int,
        times: StageTimes,
        defer_upkeep: bool = False,
    ) -> TrackResult:
        if self._hypotheses:
            return self._track_hypotheses(features, timestamp_ns, frame_id, times)

        graph = self.graph
        self._add_frame(features, timestamp_ns, frame_id)
        if graph.n > 1 and not self.is_initialized and self._is_static(times):
            graph.pop_newest()
            graph.record_dropped(frame_id, timestamp_ns, graph.last_frame_id())
            return self._result(timestamp_ns, is_keyframe=False, times=times)
        self._connect_newest()

        covariance = None
        try:
            if not self.is_initialized and graph.n >= self.config.frontend.init_frames:
                self._initialize(times)
                self.is_initialized = True
                self._state = STATE_TRACKING
                logger.info("initialised on %d keyframes at frame %d", graph.n, frame_id)
            elif self.is_initialized:
                covariance = self._optimize(1, times, guard=True, covariance=True)
                if defer_upkeep:
                    self._upkeep_pending = True
                else:
                    self._remove_redundant_keyframe()
        except _LostTracking as reason:
            self._handle_loss(frame_id, timestamp_ns, str(reason))
            return self._result(timestamp_ns, is_keyframe=False, times=times)

        if not self._upkeep_pending:
            graph.retire_edges(self.config.frontend.removal_window)
        if self.is_initialized:
            # Removal never touches the newest keyframe, so deferring it leaves this pose alone.
            self._last_good_pose_cw = graph.active_poses[-1].clone()
        return self._result(timestamp_ns, is_keyframe=True, times=times, covariance=covariance)

    def _add_frame(
        self, features: tuple, timestamp_ns: int, frame_id: int
    ) -> None:
        """Add the frame's patches ``features[0]`` (changed in place) and maps as the newest
        keyframe, at the motion model's pose and with the initial depths."""
        patches, gmap, context, pyramid = features
        pose = self._predict_pose(timestamp_ns)
        patches[:, 2] = self._initial_depths(patches.shape[0]).to(patches)[:, None, None]
        self.graph.add_keyframe(pose, patches, timestamp_ns, frame_id, gmap, context, pyramid)

    def _connect_newest(self) -> None:
        """Add the edges of the newest keyframe (to and from the frames within the lifetime)."""
        graph = self.graph
        ii, jj, kk = graph.new_frame_edges(self.config.frontend.patch_lifetime)
        hidden_dim = self.config.network.context_dim if self.network is not None else None
        graph.add_edges(ii, jj, kk, hidden_dim)

    # -----------------------------------------------------------------------------------------
    # Depth-hypothesis trial after initialisation

    def _start_trial(self, alternative: PatchGraph, iterations: int, times: StageTimes) -> None:
        """Run the initialisation iterations on ``alternative`` too and put both graphs on trial.

        ``self.graph`` is the lower-cost hypothesis, already optimised. An alternative that
        fails its own initialisation is dropped."""
        primary = self.graph
        # The frame reports the primary graph's BA figures, not the alternative's.
        primary_figures = (self._last_ba_cost, self._last_ba_weight_sum, self._frame_ba_cost)
        self.graph = alternative
        try:
            self._optimize(iterations, times, guard=True)
        except _LostTracking as reason:
            logger.info("dropped the alternative depth hypothesis at initialisation: %s", reason)
            return
        finally:
            self.graph = primary
            self._last_ba_cost, self._last_ba_weight_sum, self._frame_ba_cost = primary_figures
        self._hypotheses = [
            _Hypothesis("initial", primary), _Hypothesis("alternative", alternative)
        ]
        self._trial_frames = 0
        self._reported = self._hypotheses[0]

    def _track_hypotheses(
        self, features: tuple, timestamp_ns: int, frame_id: int, times: StageTimes
    ) -> TrackResult:
        """Track the frame in every hypothesis on trial; keep one once the trial is decided."""
        survivors = []
        for hypothesis in self._hypotheses:
            self.graph = hypothesis.graph
            self._add_frame((features[0].clone(), *features[1:]), timestamp_ns, frame_id)
            self._connect_newest()
            try:
                hypothesis.covariance = self._optimize(1, times, guard=True, covariance=True)
                self._remove_redundant_keyframe()
            except _LostTracking as reason:
                logger.info(
                    "dropped the %s depth hypothesis at frame %d: %s", hypothesis.name, frame_id,
                    reason,
                )
                continue
            self.graph.retire_edges(self.config.frontend.removal_window)
            hypothesis.last = self._last_ba_cost
            hypothesis.cost += hypothesis.last[0]
            hypothesis.weight_sum += self._last_ba_weight_sum
            survivors.append(hypothesis)
        self._trial_frames += 1
        self._frame_on_trial = True

        if not survivors:
            # The failed frame is still the newest keyframe of the first graph, as after a
            # failed update outside the trial.
            self.graph = self._hypotheses[0].graph
            self._hypotheses = []
            self._reported = None
            self._handle_loss(frame_id, timestamp_ns, "every depth hypothesis lost tracking")
            return self._result(timestamp_ns, is_keyframe=False, times=times)
        self._hypotheses = survivors
        leader = min(survivors, key=lambda h: h.mean_cost)
        self.graph = leader.graph
        self._frame_ba_cost = leader.last
        if leader is not self._reported:
            logger.info(
                "the %s depth hypothesis leads at frame %d; its poses start a new segment",
                leader.name, frame_id,
            )
            self._frame_restarted = True
            if self._reported is not None:
                self._frame_scale_ratio = graph_scale_ratio(self._reported.graph, leader.graph)
            self._reported = leader
        if self._trial_decided():
            self._keep_best_hypothesis()
        self._last_good_pose_cw = self.graph.active_poses[-1].clone()
        return self._result(
            timestamp_ns, is_keyframe=True, times=times, covariance=leader.covariance
        )

    def _trial_decided(self) -> bool:
        """True when one hypothesis is left, one costs ``EARLY_DECISION_RATIO`` times the other,
        the trial has run ``hypothesis_frames`` frames and the costs differ by
        ``hypothesis_margin``, or it has run ``hypothesis_extra_frames`` more."""
        if len(self._hypotheses) == 1:
            return True
        frontend = self.config.frontend
        if self._trial_frames >= frontend.hypothesis_frames + frontend.hypothesis_extra_frames:
            return True
        low, high = sorted(h.mean_cost for h in self._hypotheses)
        if self._trial_frames >= frontend.hypothesis_frames:
            return high >= frontend.hypothesis_margin * low
        if self._trial_frames < EARLY_DECISION_FRAMES:
            return False
        return high > EARLY_DECISION_RATIO * low

    def _keep_best_hypothesis(self) -> None:
        """Keep the hypothesis with the lowest weighted mean squared residual and end the
        trial."""
        best = min(self._hypotheses, key=lambda h: h.mean_cost)
        logger.info(
            "kept the %s depth hypothesis after %d trial frames "
            "(weighted mean squared residual: %s)",
            best.name, self._trial_frames,
            ", ".join(f"{h.name} {h.mean_cost:.4g}" for h in self._hypotheses),
        )
        self.graph = best.graph
        self._hypotheses = []
        self._reported = None

    # -----------------------------------------------------------------------------------------
    # Results

    def _result(
        self,
        timestamp_ns: int,
        is_keyframe: bool,
        times: StageTimes,
        covariance: torch.Tensor | None = None,
    ) -> TrackResult:
        pose_cw = self._current_pose_cw()
        pose = se3.normalize(se3.invert(pose_cw.double())).cpu().numpy()
        pose_covariance = None if covariance is None else covariance.double().cpu().numpy()
        if self._frame_restarted or self._state != STATE_TRACKING:
            # A new segment has its own monocular scale, so earlier variances do not compare.
            self._confident_variances.clear()
        variance_ratio = self._variance_ratio(pose_covariance)
        low_confidence = self._is_low_confidence(variance_ratio)
        variance = None if pose_covariance is None else float(np.trace(pose_covariance[:3, :3]))
        if variance is not None and math.isfinite(variance) and variance > 0 and not low_confidence:
            self._confident_variances.append(variance)
        return TrackResult(
            timestamp_ns=timestamp_ns,
            pose=pose,
            is_keyframe=is_keyframe,
            state=self._state,
            num_edges=self.graph.num_edges,
            pose_covariance=pose_covariance,
            times=times,
            probe_flow=self._frame_probe_flow,
            ba_cost=None if self._frame_ba_cost is None else self._frame_ba_cost[0],
            ba_residuals=None if self._frame_ba_cost is None else self._frame_ba_cost[1],
            on_trial=self._frame_on_trial or bool(self._hypotheses),
            restarted=self._frame_restarted,
            scale_ratio=self._frame_scale_ratio,
            variance_ratio=variance_ratio,
            low_confidence=low_confidence,
        )

    def _variance_ratio(self, covariance: np.ndarray | None) -> float | None:
        """Return the position variance of ``covariance`` (6, 6) over the median of the recent
        confident frames, or None without a covariance or enough confident frames."""
        if covariance is None or len(self._confident_variances) < MIN_CONFIDENCE_HISTORY:
            return None
        reference = float(np.median(self._confident_variances))
        variance = float(np.trace(covariance[:3, :3]))
        if not math.isfinite(variance):
            # An unbounded variance is the least confident case, so the frame is flagged.
            return math.inf
        return variance / reference if reference > 0.0 else None

    def _is_low_confidence(self, variance_ratio: float | None) -> bool:
        # NOTE: flagged frames never enter the reference, so a lasting rise of the variance by
        # more than the ratio (a scene much farther away, say) stays flagged until a new segment.
        threshold = self.config.frontend.low_confidence_ratio
        return threshold > 0 and variance_ratio is not None and variance_ratio > threshold

    def _current_pose_cw(self) -> torch.Tensor:
        """``T_cam_world`` of the newest keyframe, or the last good / archived pose."""
        if self.graph.n > 0:
            return self.graph.active_poses[-1]
        if self._last_good_pose_cw is not None:
            return self._last_good_pose_cw
        return se3.identity(device=self.device)

    # -----------------------------------------------------------------------------------------
    # Patches, motion model, depth initialisation

    def _patchify(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[torch.Tensor] | None]:
        """Cut ``M`` patches ``(M, 3, P, P)``; with a network also return gmap ``(M, F, P, P)``,
        context ``(M, D)`` and the matching-map pyramid levels of this frame."""
        frontend = self.config.frontend
        if self.network is None:
            return self._select_patches(image), None, None, None
        with self._autocast():
            batch = self.network.patchify(
                image[None],
                frontend.patches_per_frame,
                generator=self.generator,
                selection=frontend.centroid_selection,
            )
            levels = self.network.pyramid(batch.fmap).levels
        pyramid = [level[0] for level in levels]
        return batch.patches.float(), batch.gmap, batch.context, pyramid

    def _select_patches(self, image: torch.Tensor) -> torch.Tensor:
        """Pick patch centres without a network, by the same random or gradient rule."""
        count = self.config.frontend.patches_per_frame
        size = self.config.network.patch_size
        height, width = image.shape[1] // FEATURE_STRIDE, image.shape[2] // FEATURE_STRIDE
        border = size // 2
        candidates = count
        if self.config.frontend.centroid_selection == "gradient_bias":
            candidates = GRADIENT_CANDIDATE_FACTOR * count
        x = torch.randint(border, width - border, (candidates,), generator=self.generator)
        y = torch.randint(border, height - border, (candidates,), generator=self.generator)
        if candidates > count:
            scores = image_gradient_score(image[None].cpu())[0, y, x]
            best = scores.topk(count).indices
            x, y = x[best], y[best]

        offsets = torch.arange(-border, border + 1)
        u = (x[:, None, None] + offsets[None, None, :]).expand(-1, size, -1)
        v = (y[:, None, None] + offsets[None, :, None]).expand(-1, -1, size)
        patches = torch.stack([u, v, torch.ones_like(u)], dim=1).float()
        return patches.to(self.device)

    def _predict_pose(self, timestamp_ns: int) -> torch.Tensor:
        graph = self.graph
        if graph.n == 0:
            return self._current_pose_cw().clone()
        if graph.n == 1:
            return graph.active_poses[-1].clone()
        return predict_pose(
            graph.active_poses[-2:],
            [int(graph.timestamps_ns[graph.n - 2]), int(graph.timestamps_ns[graph.n - 1]), timestamp_ns],
            self.config.frontend.motion_model,
            self.config.frontend.motion_damping,
        )

    def _initial_depths(self, count: int) -> torch.Tensor:
        """Inverse depths ``(M,)``: before initialisation ``INITIAL_INVERSE_DEPTH`` or uniform in
        (0, 1) (``frontend.initial_depth``), afterwards the median inverse depth of the newest
        keyframes' patches."""
        graph = self.graph
        if not self.is_initialized or graph.n == 0:
            if self.config.frontend.initial_depth == "random":
                return torch.rand(count, generator=self.generator)
            return torch.full((count,), INITIAL_INVERSE_DEPTH)
        recent = graph.patches[max(0, graph.n - DEPTH_INIT_FRAMES) : graph.n, :, 2]
        return torch.full((count,), float(recent.median()))

    def _is_static(self, times: StageTimes) -> bool:
        """Motion probe: the median correction of the previous keyframe's patches projected into
        the new frame, with a zero hidden state, is below ``motion_probe_threshold``."""
        graph = self.graph
        M = graph.patches_per_frame
        newest = graph.n - 1
        kk = torch.arange((newest - 1) * M, newest * M, device=self.device)
        ii = kk // M
        jj = torch.full_like(kk, newest)
        coords = reproject(graph.active_poses, graph.active_patches, self._intrinsics, ii, jj, kk).coords
        hidden = None
        if self.network is not None:
            hidden = torch.zeros(len(kk), self.config.network.context_dim, device=self.device)
        delta, weight, _ = self._predict_corrections(coords, ii, jj, kk, hidden, times)
        # The oracle gives weight 0 (and no motion) to patches it cannot see in the new frame.
        seen = weight.min(dim=-1).values > 0
        magnitudes = delta.float().norm(dim=-1)
        flow = float((magnitudes[seen] if bool(seen.any()) else magnitudes).median())
        self.last_probe_flow = flow
        self._frame_probe_flow = flow
        return flow < self._scaled_threshold(self.config.frontend.motion_probe_threshold)

    # -----------------------------------------------------------------------------------------
    # Optimisation

    def _optimize(
        self, iterations: int, times: StageTimes, guard: bool, covariance: bool = False
    ) -> torch.Tensor | None:
        """Run ``iterations`` update + BA iterations; return the newest pose's covariance."""
        result_covariance = None
        for iteration in range(iterations):
            last = iteration == iterations - 1
            result_covariance = self._update_iteration(times, guard, covariance and last)
        return result_covariance

    def _first_free_pose(self) -> int:
        if not self.is_initialized:
            return 1
        return max(1, self.graph.n - self.config.frontend.optimization_window)

    def _initialize(self, times: StageTimes) -> None:
        """Run the initialisation iterations, the first one from estimated starting points
        when ``frontend.multi_start_init`` is set."""
        # NOTE: the first update correlates every frame of the window at the identity pose, so a
        # patch whose flow exceeds the correlation reach (radius 3 at 1/16 of the image, 12 px at
        # 1/4) is not matched (scripts/init_correspondence_check.py). Ground-truth window poses
        # in place of the estimate did not lower the ATE on TartanAir hospital, 5.34 against
        # 5.07 % over 5 seeds (scripts/initial_window_oracle.py), so a wider search here is not
        # what that sequence needs.
        iterations = self.config.frontend.init_iterations
        alternative = None
        if self.config.frontend.multi_start_init and self.graph.num_edges:
            window = self._estimate_initial_window(times)
            iterations -= 1
            if self.config.frontend.hypothesis_frames > 0:
                alternative = self._graph_with(
                    window.alternative_poses_cw, window.alternative_patches
                )
        self._optimize(iterations, times, guard=True)
        if alternative is not None:
            self._start_trial(alternative, iterations, times)

    def _graph_with(self, poses_cw: torch.Tensor, patches: torch.Tensor) -> PatchGraph:
        """Return a copy of the patch graph with the active poses (n, 7) and patches
        (n * M, 3, P, P) replaced."""
        graph = copy.deepcopy(self.graph)
        graph.poses[: graph.n] = poses_cw
        graph.patches[: graph.n] = patches.view_as(graph.patches[: graph.n])
        return graph

    def _estimate_initial_window(self, times: StageTimes) -> InitialWindow:
        """Replace the window's poses and depths by :func:`initialize_window`'s estimate and
        return it (with its alternative)."""
        graph = self.graph
        target, weight = self._measure(times)
        snapshot = (graph.active_poses.clone(), graph.patches[: graph.n].clone())
        stamps = torch.as_tensor(graph.timestamps_ns[: graph.n] - graph.timestamps_ns[0])
        with self._timer(times, "ba"):
            window = initialize_window(
                graph.active_poses, graph.active_patches, self._intrinsics, target, weight,
                graph.ii, graph.jj, graph.kk, times=stamps.double() / NANOSECONDS_PER_SECOND,
                config=self.config.ba, image_size=self._graph_image_size(),
                first_free_pose=self._first_free_pose(),
            )
        logger.info(
            "initial window from the %s start%s, BA cost %.4g",
            window.start, " (depth-mirrored)" if window.reversed else "", window.cost,
        )
        graph.poses[: graph.n] = window.poses_cw
        graph.patches[: graph.n] = window.patches.view_as(graph.patches[: graph.n])
        reason = self._implausible(None)
        if reason is not None:
            graph.poses[: graph.n] = snapshot[0]
            graph.patches[: graph.n] = snapshot[1]
            raise _LostTracking(reason)
        return window

    def _measure(self, times: StageTimes) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the update (or the oracle) on every edge; return the BA's ``target`` and
        ``weight``, both ``(E, 2)`` float32, and keep the new hidden state."""
        graph = self.graph
        ii, jj, kk = graph.ii, graph.jj, graph.kk
        coords = reproject(graph.active_poses, graph.active_patches, self._intrinsics, ii, jj, kk).coords
        delta, weight, hidden = self._predict_corrections(
            coords, ii, jj, kk, graph.hidden, times, graph_edges=True
        )
        if hidden is not None:
            graph.hidden = hidden
        centre = graph.patch_size // 2
        target = coords[:, :, centre, centre] + delta.float()
        return target, weight.float()

    def _update_iteration(
        self, times: StageTimes, guard: bool, covariance: bool
    ) -> torch.Tensor | None:
        """Reproject, correlate, update, then bundle-adjust the optimisation window."""
        graph = self.graph
        target, weight = self._measure(times)
        snapshot = (graph.active_poses.clone(), graph.patches[: graph.n].clone())
        with self._timer(times, "ba"):
            result = bundle_adjust(
                graph.active_poses,
                graph.active_patches,
                self._intrinsics,
                target,
                weight,
                graph.ii,
                graph.jj,
                graph.kk,
                first_free_pose=self._first_free_pose(),
                config=self.config.ba,
                image_size=self._graph_image_size(),
                compute_covariance=covariance,
            )
        graph.poses[: graph.n] = result.poses_cw
        graph.patches[: graph.n] = result.patches.view_as(graph.patches[: graph.n])
        self._last_ba_cost = (float(result.final_cost), int(result.num_valid))
        self._last_ba_weight_sum = float(result.final_weight_sum)
        self._frame_ba_cost = self._last_ba_cost
        if guard:
            reason = self._implausible(result)
            if reason is not None:
                graph.poses[: graph.n] = snapshot[0]
                graph.patches[: graph.n] = snapshot[1]
                raise _LostTracking(reason)
        return _newest_covariance(getattr(result, "pose_covariance", None)) if covariance else None

    def _scaled_threshold(self, pixels: float) -> float:
        """Scale a flow threshold by the graph width over ``threshold_reference_width``."""
        reference = self.config.frontend.threshold_reference_width
        if reference <= 0:
            return pixels
        return pixels * self._graph_image_size()[1] / reference

    def _graph_image_size(self) -> tuple[int, int]:
        assert self._image_shape is not None
        return (self._image_shape[0] // FEATURE_STRIDE, self._image_shape[1] // FEATURE_STRIDE)

    def _predict_corrections(
        self,
        coords: torch.Tensor,
        ii: torch.Tensor,
        jj: torch.Tensor,
        kk: torch.Tensor,
        hidden: torch.Tensor | None,
        times: StageTimes,
        graph_edges: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return ``delta (E, 2)``, ``weight (E, 2)`` and the new hidden state (None: oracle).

        Set ``graph_edges`` when the edges are the graph's own, in its order. The correlation
        may then reuse and update the graph's stored products (``frontend.reuse_correlation``).
        """
        graph = self.graph
        centre = graph.patch_size // 2
        if self.oracle is not None:
            with self._timer(times, "update"):
                frame_ids = torch.as_tensor(graph.frame_ids[: graph.n])
                true, weight = self.oracle.correspondences(
                    frame_ids[ii.cpu()],
                    frame_ids[jj.cpu()],
                    graph.active_patches[kk, :2, centre, centre],
                    self._intrinsics,
                )
                current = coords[:, :, centre, centre]
                return true.to(current) - current, weight.to(current), hidden

        from vo_node.model.correlation import CorrelationPyramid, GridProducts

        if self.network is None or graph.gmap is None or graph.context is None:
            raise RuntimeError("network corrections requested without a network or its features")

        with self._autocast():
            with self._timer(times, "correlation"):
                pyramid = CorrelationPyramid(
                    graph.fmaps or [], self._pyramid_borders(), self.config.network.correlation_radius
                )
                store = None
                if graph_edges and self.config.frontend.reuse_correlation:
                    # The graph keeps an existing store aligned with its edges.
                    if graph.grid_products is None:
                        graph.grid_products = GridProducts.empty(len(kk), pyramid, graph.patch_size)
                    store = graph.grid_products
                corr = self.network.correlate(
                    graph.gmap[: graph.n].flatten(0, 1), pyramid, coords, kk, graph.fmap_slots(jj),
                    store=store,
                )
            with self._timer(times, "update"):
                hidden, delta, weight = self.network.update(
                    hidden, graph.context[: graph.n].flatten(0, 1), corr, ii, jj, kk
                )
        return delta, weight, hidden

    def _pyramid_borders(self) -> list[int]:
        from vo_node.model.correlation import PYRAMID_POOL, shared_window_size

        radius = self.config.network.correlation_radius
        return [
            shared_window_size(radius, PYRAMID_POOL**level)
            for level in range(self.config.network.correlation_levels)
        ]

    def _implausible(self, result: object) -> str | None:
        """Describe why a BA result cannot be trusted, or return None."""
        graph = self.graph
        if getattr(result, "cholesky_failed", False):
            return "bundle adjustment reported a failed Cholesky factorisation"
        if not torch.isfinite(graph.active_poses).all():
            return "non-finite pose"
        if not torch.isfinite(graph.patches[: graph.n]).all():
            return "non-finite patch depth"
        if graph.n < 2:
            return None
        poses_wc = se3.invert(graph.active_poses.double())
        steps = (poses_wc[1:, :3] - poses_wc[:-1, :3]).norm(dim=-1)
        relative = se3.compose(graph.active_poses[-1].double(), poses_wc[-2])
        angle = 2 * torch.atan2(relative[3:6].norm(), relative[6].abs())
        if float(angle) > MAX_ROTATION_STEP:
            return f"rotation step of {math.degrees(float(angle)):.0f} degrees"
        if len(steps) <= MIN_STEPS_FOR_JUMP_TEST:
            return None
        recent = float(steps[:-1].median())
        depth = 1.0 / max(float(graph.patches[: graph.n, :, 2].median()), 1e-12)
        step = float(steps[-1])
        if step > JUMP_STEP_FACTOR * recent and step > JUMP_DEPTH_FACTOR * depth:
            return f"position jump of {step:.3g} (recent steps {recent:.3g}, scene depth {depth:.3g})"
        return None

    def _handle_loss(self, frame_id: int, timestamp_ns: int, reason: str) -> None:
        """Freeze the good part of the trajectory and restart tracking from the last good pose."""
        graph = self.graph
        logger.warning("tracking lost at frame %d (%s); re-initialising", frame_id, reason)
        graph.remove_edges(graph.ii >= 0)
        if graph.n > 1:
            # The lost frame takes the pose of its predecessor, the last good pose.
            graph.pop_newest()
            anchor = int(graph.frame_ids[graph.n - 1])
            graph.record_dropped(frame_id, timestamp_ns, anchor, se3.identity().double().numpy())
        self._last_good_pose_cw = graph.active_poses[-1].clone()
        graph.fold_all()
        self.is_initialized = False
        self._state = STATE_LOST

    def _remove_redundant_keyframe(self) -> None:
        """Remove keyframe ``k = n - keyframe_index`` when its neighbours barely differ."""
        graph = self.graph
        candidate = graph.n - self.config.frontend.keyframe_index
        if candidate < 1 or candidate + 1 >= graph.n:
            return
        before, after = candidate - 1, candidate + 1
        forward, backward = mean_patch_flows(
            [
                (graph.poses[before], graph.poses[after], graph.patches[before]),
                (graph.poses[after], graph.poses[before], graph.patches[after]),
            ],
            self._intrinsics,
            FLOW_BETA,
        )
        if 0.5 * (forward + backward) < self._scaled_threshold(
            self.config.frontend.keyframe_threshold
        ):
            graph.remove_keyframe(candidate)

    # -----------------------------------------------------------------------------------------
    # Helpers

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.use_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.float16)

    @contextlib.contextmanager
    def _timer(self, times: StageTimes, stage: str) -> Iterator[None]:
        """Add the wall-clock time of the block to ``times.<stage>`` (synchronising CUDA)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if hasattr(times, stage):
                setattr(times, stage, getattr(times, stage) + time.perf_counter() - start)


def predict_pose(
    previous_cw: torch.Tensor, timestamps_ns: Sequence[int], model: str, damping: float
) -> torch.Tensor:
    """Predict the next ``T_cam_world`` ``(7,)`` from the two newest keyframe poses.

    Args:
        previous_cw: ``(2, 7)`` poses of keyframes ``n-2`` and ``n-1``.
        timestamps_ns: the times of those keyframes and of the new frame, nanoseconds.
        model: ``constant`` copies pose ``n-1``. ``damped_linear`` applies the last relative
            motion again, scaled by ``damping`` and by the ratio of the time gaps, which is
            capped at ``MAX_TIMESTAMP_RATIO``.
        damping: factor on the extrapolated motion (0 copies the last pose).
    """
    older, newer = previous_cw[0], previous_cw[1]
    if model == "constant":
        return newer.clone()
    if model != "damped_linear":
        raise ValueError(f"motion model must be 'damped_linear' or 'constant', got {model!r}")
    first, second, third = (int(t) for t in timestamps_ns)
    previous_gap = second - first
    ratio = (third - second) / previous_gap if previous_gap > 0 else 1.0
    ratio = min(max(ratio, 0.0), MAX_TIMESTAMP_RATIO)
    motion = se3.log(se3.compose(newer, se3.invert(older)))
    return se3.compose(se3.exp(damping * ratio * motion), newer)


def graph_scale_ratio(reference: PatchGraph, other: PatchGraph) -> float | None:
    """Return the camera path length of ``reference`` over that of ``other``, both measured
    through the active keyframes they share, or None with fewer than ``MIN_SCALE_KEYFRAMES``
    shared keyframes or no motion in ``other``."""
    ids_reference = reference.frame_ids[: reference.n]
    ids_other = other.frame_ids[: other.n]
    shared = np.intersect1d(ids_reference, ids_other)
    if len(shared) < MIN_SCALE_KEYFRAMES:
        return None

    def path_length(graph: PatchGraph, ids: np.ndarray) -> float:
        rows = torch.as_tensor(np.searchsorted(ids, shared))
        centres = se3.invert(graph.active_poses[rows].double())[:, :3]
        return float((centres[1:] - centres[:-1]).norm(dim=-1).sum())

    length_other = path_length(other, ids_other)
    if not math.isfinite(length_other) or length_other <= MIN_PATH_LENGTH:
        return None
    ratio = path_length(reference, ids_reference) / length_other
    return ratio if math.isfinite(ratio) and ratio > 0 else None


def mean_patch_flow(
    source_cw: torch.Tensor,
    target_cw: torch.Tensor,
    patches: torch.Tensor,
    intrinsics: torch.Tensor,
    beta: float = FLOW_BETA,
) -> float:
    """Mean flow of patches ``(M, 3, P, P)`` from a source to a target camera, in pixels.

    The flow mixes ``beta`` times the full reprojection flow with ``1 - beta`` times the flow of
    the translation alone (rotation removed), so pure rotation counts less.
    """
    return mean_patch_flows([(source_cw, target_cw, patches)], intrinsics, beta)[0]


def mean_patch_flows(
    directions: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    intrinsics: torch.Tensor,
    beta: float = FLOW_BETA,
) -> list[float]:
    """Return :func:`mean_patch_flow` of each ``(source_cw, target_cw, patches)`` direction.

    One reprojection serves all directions and one host transfer returns the values. The
    keyframe test runs on every frame, and the cost of each call is mostly fixed overhead.
    """
    sources = torch.stack([source for source, _, _ in directions])
    targets = torch.stack([target for _, target, _ in directions])
    relative = se3.compose(targets, se3.invert(sources))  # (D, 7)
    identity = se3.identity(dtype=relative.dtype, device=relative.device)
    translation_only = relative.clone()
    translation_only[:, 3:] = identity[3:]
    # Pose 0 is every source; direction d reprojects into poses 2d + 1 (full) and 2d + 2.
    pairs = torch.stack([relative, translation_only], dim=1).flatten(0, 1)
    poses = torch.cat([identity[None], pairs])
    counts = [patches.shape[0] for _, _, patches in directions]
    all_patches = torch.cat([patches for _, _, patches in directions])
    device = all_patches.device
    kk_parts, jj_parts, offset = [], [], 0
    for direction, count in enumerate(counts):
        kk_parts.append(torch.arange(offset, offset + count, device=device).repeat(2))
        jj_parts.append(torch.full((count,), 2 * direction + 1, device=device))
        jj_parts.append(torch.full((count,), 2 * direction + 2, device=device))
        offset += count
    kk, jj = torch.cat(kk_parts), torch.cat(jj_parts)
    coords = reproject(poses, all_patches, intrinsics, torch.zeros_like(kk), jj, kk).coords
    flow = (coords - all_patches[kk, :2]).norm(dim=1)  # (2 * sum(counts), P, P)
    full, translation, start = [], [], 0
    for count in counts:
        full.append(flow[start : start + count].mean())
        translation.append(flow[start + count : start + 2 * count].mean())
        start += 2 * count
    return (beta * torch.stack(full) + (1 - beta) * torch.stack(translation)).tolist()


def _newest_covariance(covariance: torch.Tensor | None) -> torch.Tensor | None:
    """Pick the newest pose's ``(6, 6)`` block from a BA covariance of ``(6, 6)`` or ``(N, 6, 6)``."""
    if covariance is None:
        return None
    if covariance.dim() == 3:
        return covariance[-1]
    return covariance
