"""Trajectory evaluation with evo (metrics) and figures (``vo_node.evaluation.plots``)."""

from vo_node.evaluation.metrics import (
    EvaluationError,
    TrajectoryMetrics,
    align_trajectories,
    evaluate_trajectory,
)

__all__ = ["EvaluationError", "TrajectoryMetrics", "align_trajectories", "evaluate_trajectory"]
