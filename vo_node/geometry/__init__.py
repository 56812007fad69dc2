"""SE(3) poses (:mod:`~vo_node.geometry.se3`) and pinhole patch projection with Jacobians
(:mod:`~vo_node.geometry.projection`), in plain differentiable torch."""

from vo_node.geometry import projection, se3

__all__ = ["projection", "se3"]
