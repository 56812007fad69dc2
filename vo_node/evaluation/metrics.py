"""Trajectory accuracy with evo: ATE after Sim(3) alignment, and RPE over frames and distance.

Monocular odometry has no metric scale, so the estimate is aligned to the ground truth with
Umeyama's method including scale, and every error below is in ground-truth units: metres for
recorded data, scene units for rendered sequences.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from evo.core import metrics as evo_metrics
from evo.core import sync
from evo.core.trajectory import PoseTrajectory3D
from evo.core.units import Unit
from evo.core.geometry import GeometryException
from evo.core.filters import FilterException

from vo_node.io.trajectory import Trajectory

logger = logging.getLogger(__name__)

MIN_ASSOCIATED_POSES = 3
"""Minimum number of pose pairs for a Sim(3) alignment (three non-collinear points)."""
DEFAULT_MAX_TIME_DIFFERENCE_S = 0.02
DEFAULT_RPE_DISTANCE_M = 1.0
PERCENT = 100.0
METRES = "m"
SCENE_UNITS = "scene units"
"""Length unit of rendered sequences, whose scale is arbitrary."""


class EvaluationError(ValueError):
    """The trajectories cannot be compared; the message names the time ranges and the fix."""


@dataclass
class TrajectoryMetrics:
    """Accuracy of an estimated trajectory against ground truth, after Sim(3) alignment.

    Lengths are in ground-truth units (metres, or scene units for rendered sequences), angles
    in degrees.
    """

    ate_rmse: float
    ate_mean: float
    ate_median: float
    ate_max: float
    rpe_translation_rmse: float
    """Translation RPE between consecutive associated poses."""
    rpe_rotation_rmse_deg: float
    rpe_distance_translation_rmse: float
    """Translation RPE between poses ``rpe_distance_m`` apart along the ground truth (NaN when
    the ground-truth path is shorter)."""
    rpe_distance_rotation_rmse_deg: float
    rpe_distance_m: float
    path_length: float
    """Length of the associated ground-truth path."""
    ate_percent: float
    """``ate_rmse`` as a percentage of ``path_length``."""
    scale: float
    """Sim(3) scale that maps the estimate onto the ground truth."""
    associated_poses: int
    standstill_ate_rmse: float = math.nan
    """ATE of a tracker that never moves, on the same associated poses: the RMS distance of the
    ground-truth positions from their centroid (the limit of the Sim(3) alignment as its scale goes
    to 0). An estimate must be well below it to show any tracking."""
    standstill_ate_percent: float = math.nan
    """``standstill_ate_rmse`` as a percentage of ``path_length``."""

    def to_dict(self) -> dict[str, float | int]:
        """Return the fields as a JSON-ready dict (NaN becomes None)."""
        return {
            key: (None if isinstance(value, float) and math.isnan(value) else value)
            for key, value in asdict(self).items()
        }


@dataclass
class AlignedPair:
    """Associated ground truth and estimate, with the estimate Sim(3)-aligned onto it.

    Attributes:
        ground_truth, estimate: evo trajectories with equal length and matching timestamps.
        rotation: ``(3, 3)``, translation ``(3,)`` and scale of the alignment
            ``p_gt = scale * rotation @ p_est + translation``.
    """

    ground_truth: PoseTrajectory3D
    estimate: PoseTrajectory3D
    rotation: np.ndarray
    translation: np.ndarray
    scale: float

    def apply(self, positions: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` estimate positions into the ground-truth frame."""
        return self.scale * positions @ self.rotation.T + self.translation


def to_evo(trajectory: Trajectory, name: str = "") -> PoseTrajectory3D:
    """Convert a :class:`Trajectory` to an evo trajectory (quaternion order ``w x y z``)."""
    quaternions_wxyz = trajectory.poses[:, [6, 3, 4, 5]]
    evo_trajectory = PoseTrajectory3D(
        positions_xyz=trajectory.poses[:, :3].copy(),
        orientations_quat_wxyz=quaternions_wxyz,
        timestamps=trajectory.timestamps_s,
    )
    evo_trajectory.meta["name"] = name
    return evo_trajectory


def align_trajectories(
    estimate: Trajectory,
    ground_truth: Trajectory,
    max_time_difference_s: float = DEFAULT_MAX_TIME_DIFFERENCE_S,
) -> AlignedPair:
    """Associate poses by timestamp and align the estimate to the ground truth with Sim(3).

    Raises:
        EvaluationError: fewer than 3 poses associate, or the alignment is degenerate (all
            associated positions on one point or line).
    """
    count = 0
    # evo rejects a trajectory without poses, so an empty one is reported as 0 associated poses.
    if len(estimate) and len(ground_truth):
        reference = to_evo(ground_truth, "ground truth")
        estimated = to_evo(estimate, "estimate")
        try:
            reference, estimated = sync.associate_trajectories(
                reference, estimated, max_diff=max_time_difference_s
            )
            count = reference.num_poses
        except sync.SyncException:
            count = 0
    if len(estimate) < MIN_ASSOCIATED_POSES:
        raise EvaluationError(
            f"the estimate has only {len(estimate)} poses and the ATE needs at least "
            f"{MIN_ASSOCIATED_POSES}; track more frames (for example a larger --max-frames)"
        )
    if count < MIN_ASSOCIATED_POSES:
        raise EvaluationError(
            f"only {count} poses associate within {max_time_difference_s} s (at least "
            f"{MIN_ASSOCIATED_POSES} are needed): estimate {_describe_range(estimate)}, ground "
            f"truth {_describe_range(ground_truth)}; check that both use the same clock and "
            "units (nanoseconds inside, seconds in TUM files)"
        )
    aligned = copy.deepcopy(estimated)
    try:
        rotation, translation, scale = aligned.align(reference, correct_scale=True)
    except GeometryException as error:
        raise EvaluationError(
            f"Sim(3) alignment of {count} associated poses failed ({error}); the estimate or "
            "the ground truth does not move enough (positions on one point or line)"
        ) from None
    return AlignedPair(reference, aligned, rotation, translation, float(scale))


def _describe_range(trajectory: Trajectory) -> str:
    if len(trajectory) == 0:
        return "empty"
    start, end = trajectory.timestamps_s[0], trajectory.timestamps_s[-1]
    return f"{len(trajectory)} poses from {start:.6f} s to {end:.6f} s"


def evaluate_trajectory(
    estimate: Trajectory,
    ground_truth: Trajectory,
    max_time_difference_s: float = DEFAULT_MAX_TIME_DIFFERENCE_S,
    rpe_distance_m: float = DEFAULT_RPE_DISTANCE_M,
) -> TrajectoryMetrics:
    """Compute ATE and RPE of ``estimate`` against ``ground_truth`` with evo.

    Args:
        estimate: estimated ``T_world_cam`` (any scale, any world frame).
        ground_truth: reference ``T_world_cam`` in metres (or scene units).
        max_time_difference_s: largest timestamp difference for associating two poses.
        rpe_distance_m: ground-truth path distance between the poses of the distance RPE, in
            ground-truth units. The distance RPE is NaN when the associated ground-truth path is
            shorter.
    """
    pair = align_trajectories(estimate, ground_truth, max_time_difference_s)
    data = (pair.ground_truth, pair.estimate)

    ate = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ate.process_data(data)
    ate_stats = ate.get_all_statistics()

    frame_translation = _rpe(data, evo_metrics.PoseRelation.translation_part, 1, Unit.frames)
    frame_rotation = _rpe(data, evo_metrics.PoseRelation.rotation_angle_deg, 1, Unit.frames)
    path_length = float(pair.ground_truth.path_length)
    distance_translation = distance_rotation = math.nan
    if path_length >= rpe_distance_m:
        distance_translation = _rpe(
            data, evo_metrics.PoseRelation.translation_part, rpe_distance_m, Unit.meters
        )
        distance_rotation = _rpe(
            data, evo_metrics.PoseRelation.rotation_angle_deg, rpe_distance_m, Unit.meters
        )
    else:
        # evo finds no pose pair this far apart and raises; the summaries state the reason.
        logger.debug(
            "RPE per %g is undefined: the ground-truth path is %.3f long", rpe_distance_m,
            path_length,
        )
    ate_percent = PERCENT * ate_stats["rmse"] / path_length if path_length > 0 else math.nan
    standstill = standstill_rmse(pair.ground_truth.positions_xyz)
    standstill_percent = PERCENT * standstill / path_length if path_length > 0 else math.nan
    return TrajectoryMetrics(
        ate_rmse=float(ate_stats["rmse"]),
        ate_mean=float(ate_stats["mean"]),
        ate_median=float(ate_stats["median"]),
        ate_max=float(ate_stats["max"]),
        rpe_translation_rmse=frame_translation,
        rpe_rotation_rmse_deg=frame_rotation,
        rpe_distance_translation_rmse=distance_translation,
        rpe_distance_rotation_rmse_deg=distance_rotation,
        rpe_distance_m=float(rpe_distance_m),
        path_length=path_length,
        ate_percent=float(ate_percent),
        scale=pair.scale,
        associated_poses=int(pair.ground_truth.num_poses),
        standstill_ate_rmse=standstill,
        standstill_ate_percent=float(standstill_percent),
    )


def describe_distance_rpe(metrics: TrajectoryMetrics, unit: str = METRES) -> str:
    """Return the distance RPE as ``"0.1234 m, 0.567 deg"``, or why it is undefined."""
    translation = metrics.rpe_distance_translation_rmse
    rotation = metrics.rpe_distance_rotation_rmse_deg
    if not (math.isnan(translation) or math.isnan(rotation)):
        return f"{translation:.4f} {unit}, {rotation:.3f} deg"
    if metrics.path_length < metrics.rpe_distance_m:
        return f"n/a (ground-truth path shorter than {metrics.rpe_distance_m:g} {unit})"
    return f"n/a (no pose pairs {metrics.rpe_distance_m:g} {unit} apart)"


def standstill_rmse(positions: np.ndarray) -> float:
    """Return the ATE of a constant estimate: the RMS distance of ``positions`` from their mean.

    Args:
        positions: ``(N, 3)`` ground-truth positions (metres) of the associated poses.
    """
    deviations = positions - positions.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(deviations**2, axis=1))))


def _rpe(
    data: tuple[PoseTrajectory3D, PoseTrajectory3D],
    relation: evo_metrics.PoseRelation,
    delta: float,
    unit: Unit,
) -> float:
    """Return the RMSE of evo's RPE, with pairs chosen on the ground truth; NaN without pairs."""
    metric = evo_metrics.RPE(relation, delta=delta, delta_unit=unit, pairs_from_reference=True)
    try:
        metric.process_data(data)
    except (FilterException, evo_metrics.MetricsException) as error:
        logger.warning("RPE for delta %s %s is undefined: %s", delta, unit.value, error)
        return math.nan
    if len(metric.error) == 0:
        return math.nan
    return float(metric.get_statistic(evo_metrics.StatisticsType.rmse))
