"""Incremental visual odometry: the frontend, its patch graph and image preparation."""

from vo_node.odometry.frontend import StageTimes, TrackResult, VisualOdometry

__all__ = ["StageTimes", "TrackResult", "VisualOdometry"]
