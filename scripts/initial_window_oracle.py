"""Track a sequence with ground-truth poses for the initial window and compare the ATE.

The engine estimates the poses of its initial window from the first network measurements. This
script measures how much of a sequence's error comes from that estimate. For each seed it
tracks the sequence twice:

- ``estimated``: the engine as configured;
- ``true window``: the same, but right after the initial window is estimated its poses are
  replaced by the ground-truth poses, scaled so that the camera centres span as far as in the
  estimate (the monocular scale stays the estimate's). The patch depths stay the estimate's, and
  the initialisation iterations that follow refine them.

Both runs use ``frontend.hypothesis_frames=0``, so the initial window that the script sets is
the one that is tracked (the depth-hypothesis trial would track an untouched alternative too).
After a tracking loss the engine initialises again, and that window gets true poses as well.
The replacement needs the engine's own window estimate (``frontend.multi_start_init``, on by
default); without it the script stops with an error.
It prints the ATE (% of path) per seed and the medians::

    .venv/bin/python scripts/initial_window_oracle.py ../shared/data/tartanair_hospital --runs 5

The script replaces ``VisualOdometry._estimate_initial_window`` on the class while it runs;
it changes no file.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

import numpy as np
import torch

from vo_node.accuracy import add_comparison_arguments, run_comparison
from vo_node.config import ConfigError
from vo_node.geometry import se3
from vo_node.io.sequence import SequenceError
from vo_node.io.trajectory import Trajectory
from vo_node.odometry import frontend

TRIAL_KEY = "frontend.hypothesis_frames"
ORACLE_OVERRIDES = (f"{TRIAL_KEY}=0",)


def true_window_poses(
    estimated_cw: torch.Tensor, timestamps_ns: np.ndarray, ground_truth: Trajectory
) -> torch.Tensor:
    """Return ``(n, 7)`` world-to-camera poses of the window's frames from ground truth.

    The true motion relative to the first frame is scaled so that the largest camera-centre
    distance from the first frame equals the estimate's, then expressed in the estimate's
    world frame (its first pose is kept).
    """
    index = {int(stamp): row for row, stamp in enumerate(ground_truth.timestamps_ns)}
    missing = [int(stamp) for stamp in timestamps_ns if int(stamp) not in index]
    if missing:
        raise SequenceError(f"no ground-truth pose at the window's timestamps {missing[:3]} ns")
    rows = [index[int(stamp)] for stamp in timestamps_ns]
    true_cw = se3.invert(torch.from_numpy(ground_truth.poses[rows]))
    relative = se3.compose(true_cw, se3.invert(true_cw[:1]).expand_as(true_cw))  # T_ci_c0
    estimated = estimated_cw.double()
    estimated_centres = se3.invert(estimated)[:, :3]
    true_centres = se3.invert(relative)[:, :3]
    estimated_span = (estimated_centres - estimated_centres[0]).norm(dim=1).max()
    true_span = (true_centres - true_centres[0]).norm(dim=1).max().clamp_min(1e-12)
    relative = relative.clone()
    relative[:, :3] *= estimated_span / true_span
    return se3.compose(relative, estimated[:1].expand_as(relative)).to(estimated_cw)


@contextlib.contextmanager
def true_window_installed(ground_truth: Trajectory) -> Iterator[None]:
    """Replace each estimated initial window by :func:`true_window_poses` inside the block.

    Raises:
        ConfigError: the engine estimated no initial window, so nothing was replaced.
    """
    estimate = frontend.VisualOdometry._estimate_initial_window
    replaced = []

    def with_true_poses(odometry, times):
        window = estimate(odometry, times)
        replaced.append(odometry.graph.n)
        graph = odometry.graph
        graph.poses[: graph.n] = true_window_poses(
            graph.active_poses, graph.timestamps_ns[: graph.n], ground_truth
        )
        return window

    frontend.VisualOdometry._estimate_initial_window = with_true_poses
    try:
        yield
    finally:
        frontend.VisualOdometry._estimate_initial_window = estimate
    if not replaced:
        raise ConfigError(
            "the engine never estimated an initial window, so no pose was replaced; keep "
            "frontend.multi_start_init on (the default)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_comparison_arguments(parser, "seeds per variant (default 5)")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="engine setting, repeatable (frontend.hypothesis_frames is set to 0)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if any(text.split("=", 1)[0].strip() == TRIAL_KEY for text in args.override):
        print(f"error: {TRIAL_KEY} is fixed to 0 by this script, so the window it sets is the "
              "one tracked; remove that --override", file=sys.stderr)
        return 2
    return run_comparison(
        args, [*args.override, *ORACLE_OVERRIDES], ("estimated", "true window"),
        lambda arm: true_window_installed if arm == 1 else None,
    )


if __name__ == "__main__":
    sys.exit(main())
