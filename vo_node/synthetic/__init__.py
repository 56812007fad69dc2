"""Procedural synthetic sequences with exact depth, poses and intrinsics.

:func:`generate_clip` renders random clips (textured rooms or outdoor-like scenes, several motion
families, camera effects) for training and for tests that need ground truth.
"""

from vo_node.synthetic.clip import (
    SyntheticClip,
    generate_clip,
    induced_flow,
    mean_flow,
    mean_flow_matrix,
    sample_intrinsics,
)
from vo_node.synthetic.motion import ALL_MOTIONS, MOTION_FAMILIES
from vo_node.synthetic.scene import SCENE_KINDS

__all__ = [
    "ALL_MOTIONS",
    "MOTION_FAMILIES",
    "SCENE_KINDS",
    "SyntheticClip",
    "generate_clip",
    "induced_flow",
    "mean_flow",
    "mean_flow_matrix",
    "sample_intrinsics",
]
