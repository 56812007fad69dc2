"""Trajectory figures: a top view of the aligned estimate on the ground truth, and ATE over time."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from matplotlib.figure import Figure  # noqa: E402

from vo_node.evaluation.metrics import (  # noqa: E402
    DEFAULT_MAX_TIME_DIFFERENCE_S,
    METRES,
    EvaluationError,
    TrajectoryMetrics,
    align_trajectories,
)
from vo_node.io.atomic import atomic_write  # noqa: E402
from vo_node.io.trajectory import NANOSECONDS_PER_SECOND, Trajectory  # noqa: E402

logger = logging.getLogger(__name__)

AXIS_NAMES = ("x", "y", "z")
FIGURE_SIZE_INCHES = (12.0, 5.0)
DPI = 120


def top_view_axes(positions: np.ndarray) -> tuple[int, int]:
    """Return the two axes of largest extent of ``(N, 3)`` positions, in increasing order."""
    extent = np.ptp(positions, axis=0) if len(positions) else np.zeros(3)
    first, second = sorted(np.argsort(extent)[-2:].tolist())
    return first, second


def plot_trajectory(
    estimate: Trajectory,
    ground_truth: Trajectory | None,
    metrics: TrajectoryMetrics | None,
    path: str | Path,
    max_time_difference_s: float = DEFAULT_MAX_TIME_DIFFERENCE_S,
    length_unit: str = METRES,
    partial: bool = False,
) -> Path:
    """Write a PNG: the top view (plane of largest ground-truth extent) and ATE over time.

    With ground truth, the estimate is Sim(3)-aligned onto it first; without it (or when the two
    cannot be associated) the raw estimate is drawn alone and the error panel states that.
    ``length_unit`` labels the lengths: ``m``, or ``scene units`` for rendered sequences.
    ``partial`` marks the estimate of a run that stopped early: the figure's title says so and
    the ground truth is drawn only over the estimate's time span.
    """
    figure = trajectory_figure(
        estimate, ground_truth, metrics, max_time_difference_s, length_unit, partial
    )
    return write_figure(figure, path)


def write_figure(figure: Figure, path: str | Path) -> Path:
    """Render ``figure`` as a PNG, write it to ``path`` atomically, close it and return the path."""
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def trajectory_figure(
    estimate: Trajectory,
    ground_truth: Trajectory | None,
    metrics: TrajectoryMetrics | None,
    max_time_difference_s: float = DEFAULT_MAX_TIME_DIFFERENCE_S,
    length_unit: str = METRES,
    partial: bool = False,
) -> Figure:
    """Draw the figure of :func:`plot_trajectory`; the caller closes it (``plt.close``)."""
    if partial and ground_truth is not None:
        ground_truth = crop_to_time_span(ground_truth, estimate, max_time_difference_s)
    aligned_positions = estimate.positions
    errors: tuple[np.ndarray, np.ndarray] | None = None
    if ground_truth is not None:
        try:
            pair = align_trajectories(estimate, ground_truth, max_time_difference_s)
            aligned_positions = pair.apply(estimate.positions)
            error = np.linalg.norm(pair.estimate.positions_xyz - pair.ground_truth.positions_xyz, axis=1)
            errors = (pair.ground_truth.timestamps - pair.ground_truth.timestamps[0], error)
        except EvaluationError as failure:
            logger.warning("plotting the estimate without alignment: %s", failure)

    figure, (top, over_time) = plt.subplots(1, 2, figsize=FIGURE_SIZE_INCHES)
    reference = ground_truth.positions if ground_truth is not None else aligned_positions
    first, second = top_view_axes(reference)
    if ground_truth is not None:
        top.plot(ground_truth.positions[:, first], ground_truth.positions[:, second], "k--",
                 label="ground truth")
    label = "estimate (Sim(3) aligned)" if errors is not None else "estimate"
    top.plot(aligned_positions[:, first], aligned_positions[:, second], "tab:blue", label=label)
    top.set_xlabel(f"{AXIS_NAMES[first]} [{length_unit}]")
    top.set_ylabel(f"{AXIS_NAMES[second]} [{length_unit}]")
    top.set_aspect("equal", adjustable="datalim")
    top.legend(loc="best")
    top.set_title("top view (partial run)" if partial else "top view")

    if errors is not None:
        over_time.plot(errors[0], errors[1], "tab:red")
        over_time.set_xlabel("time [s]")
        over_time.set_ylabel(f"ATE [{length_unit}]")
    else:
        over_time.text(0.5, 0.5, "no ground truth to compare", ha="center", va="center")
        over_time.set_axis_off()
    over_time.set_title(_summary(metrics, length_unit))
    if partial:
        figure.suptitle(
            f"partial run: the first {len(estimate)} frames, before the run stopped early"
        )
    figure.tight_layout()
    return figure


def crop_to_time_span(
    ground_truth: Trajectory, estimate: Trajectory, tolerance_s: float
) -> Trajectory | None:
    """Return the poses of ``ground_truth`` within ``tolerance_s`` of the span of ``estimate``,
    or None when none are."""
    if len(estimate) == 0:
        return None
    tolerance_ns = int(round(tolerance_s * NANOSECONDS_PER_SECOND))
    start = estimate.timestamps_ns[0] - tolerance_ns
    end = estimate.timestamps_ns[-1] + tolerance_ns
    inside = (ground_truth.timestamps_ns >= start) & (ground_truth.timestamps_ns <= end)
    if not inside.any():
        return None
    return Trajectory(ground_truth.timestamps_ns[inside], ground_truth.poses[inside])


def _summary(metrics: TrajectoryMetrics | None, length_unit: str) -> str:
    if metrics is None:
        return "ATE over time"
    return (
        f"ATE RMSE {metrics.ate_rmse:.3f} {length_unit} ({metrics.ate_percent:.2f} % of "
        f"{metrics.path_length:.1f} {length_unit}), scale {metrics.scale:.3f}"
    )
