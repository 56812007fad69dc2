"""Track a sequence with a changed per-frame step and compare the ATE with the engine's.

After initialisation the engine adds each frame at the motion model's pose, then runs one
update and BA iteration. This script measures whether either step limits a sequence's accuracy.
For each seed it tracks the sequence twice, once as configured and once with one variant:

- ``true-prior``: each new frame starts at its ground-truth pose relative to the newest
  keyframe. The true translation is scaled to the estimate's local scale: the estimated camera
  travel over the last ``PRIOR_SCALE_KEYFRAMES`` keyframes divided by the true one. Before
  initialisation, and for frames without a ground-truth pose, the motion model stays.
- ``updates-N``: N update and BA iterations per frame in place of one (N from 2 to 8).

It prints the ATE (% of path) per seed and the medians::

    .venv/bin/python scripts/frame_variants.py ../shared/data/tartanair_hospital \
        --variant true-prior --runs 10

The script replaces methods of ``VisualOdometry`` on the class while a variant runs; it
changes no file.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import sys
from collections.abc import Iterator

import numpy as np
import torch

from vo_node.accuracy import add_comparison_arguments, run_comparison
from vo_node.config import ConfigError
from vo_node.geometry import se3
from vo_node.io.trajectory import Trajectory
from vo_node.odometry import frontend

PRIOR_SCALE_KEYFRAMES = 4
"""Keyframes back over which the estimate's local scale is measured for ``true-prior``."""
MIN_TRUE_TRAVEL = 1e-9
"""True camera travel (scene units) below which the local scale is left at 1."""
MAX_UPDATES = 8
UPDATES_PATTERN = re.compile(r"updates-(\d+)")


def true_motion_prior(
    recent_cw: torch.Tensor,
    recent_stamps_ns: np.ndarray,
    stamp_ns: int,
    ground_truth: Trajectory,
) -> torch.Tensor | None:
    """Return the new frame's ``(7,)`` world-to-camera pose from ground truth, or None.

    Args:
        recent_cw: ``(k, 7)`` estimated world-to-camera poses of the newest keyframes, oldest
            first (k >= 2).
        recent_stamps_ns: ``(k,)`` their timestamps in nanoseconds.
        stamp_ns: the new frame's timestamp in nanoseconds.
        ground_truth: camera-to-world ground-truth poses.

    Returns:
        The true motion from the newest keyframe to the new frame, its translation times the
        estimate's local scale, composed onto the newest estimated pose. None when a timestamp
        has no ground-truth pose.
    """
    index = {int(stamp): row for row, stamp in enumerate(ground_truth.timestamps_ns)}
    stamps = [int(stamp) for stamp in recent_stamps_ns] + [int(stamp_ns)]
    if any(stamp not in index for stamp in stamps):
        return None
    true_cw = se3.invert(torch.from_numpy(ground_truth.poses[[index[s] for s in stamps]]))
    estimated_cw = recent_cw.double()
    estimated_centres = se3.invert(estimated_cw)[:, :3]
    true_centres = se3.invert(true_cw[:-1])[:, :3]
    true_travel = float((true_centres[-1] - true_centres[0]).norm())
    scale = 1.0
    if true_travel > MIN_TRUE_TRAVEL:
        scale = float((estimated_centres[-1] - estimated_centres[0]).norm()) / true_travel
    relative = se3.compose(true_cw[-1:], se3.invert(true_cw[-2:-1])).clone()  # T_new_newest
    relative[:, :3] *= scale
    return se3.compose(relative, estimated_cw[-1:])[0].to(recent_cw)


@contextlib.contextmanager
def variant_installed(variant: str, ground_truth: Trajectory) -> Iterator[None]:
    """Install ``variant`` on ``VisualOdometry`` for the duration of the block."""
    predict, optimize = frontend.VisualOdometry._predict_pose, frontend.VisualOdometry._optimize
    match = UPDATES_PATTERN.fullmatch(variant)

    def predict_from_truth(odometry, timestamp_ns):
        graph = odometry.graph
        if odometry.is_initialized and graph.n >= 2:
            first = max(0, graph.n - 1 - PRIOR_SCALE_KEYFRAMES)
            pose = true_motion_prior(
                graph.active_poses[first:], graph.timestamps_ns[first : graph.n], timestamp_ns,
                ground_truth,
            )
            if pose is not None:
                return pose
        return predict(odometry, timestamp_ns)

    def optimize_more(odometry, iterations, times, guard, covariance=False):
        # Per-frame calls request one iteration, and initialisation and finish() request more.
        if iterations == 1:
            iterations = int(match.group(1))
        return optimize(odometry, iterations, times, guard, covariance)

    if variant == "true-prior":
        frontend.VisualOdometry._predict_pose = predict_from_truth
    elif match is not None:
        frontend.VisualOdometry._optimize = optimize_more
    else:
        raise ConfigError(f"invalid variant {variant!r}; use true-prior or updates-N")
    try:
        yield
    finally:
        frontend.VisualOdometry._predict_pose = predict
        frontend.VisualOdometry._optimize = optimize


def check_variant(variant: str) -> str:
    """Return ``variant`` when it is valid, else raise ``ConfigError`` with the accepted forms."""
    match = UPDATES_PATTERN.fullmatch(variant)
    if variant == "true-prior":
        return variant
    if match is not None and 2 <= int(match.group(1)) <= MAX_UPDATES:
        return variant
    raise ConfigError(
        f"invalid --variant {variant!r}; use true-prior or updates-N with N from 2 to "
        f"{MAX_UPDATES}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_comparison_arguments(parser, "seeds per arm (default 5)")
    parser.add_argument("--variant", required=True,
                        help=f"true-prior, or updates-N with N from 2 to {MAX_UPDATES}")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="engine setting for both arms, repeatable")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        variant = check_variant(args.variant)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def change_of_arm(arm: int):
        return functools.partial(variant_installed, variant) if arm == 1 else None

    return run_comparison(args, args.override, ("engine", variant), change_of_arm)


if __name__ == "__main__":
    sys.exit(main())
