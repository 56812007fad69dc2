"""Differentiable bundle adjustment over poses and patch inverse depths."""

from vo_node.ba.solver import BAResult, bundle_adjust

__all__ = ["BAResult", "bundle_adjust"]
