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
import dataclasses
import logging
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from vo_node.config import ConfigError
from vo_node.geometry import se3
from vo_node.io.camera import CalibrationError
from vo_node.io.sequence import SequenceError, open_sequence
from vo_node.io.trajectory import Trajectory, TrajectoryError
from vo_node.model.network import ModelFileError
from vo_node.odometry import frontend
from vo_node.run import evaluate_run, load_engine, run_sequence

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


def track_once(
    path: Path, camera: Path | None, config, network, device: str, true_window: bool
) -> float | None:
    """Track ``path`` once; return the ATE in % of path, or None when it cannot be computed."""
    sequence = open_sequence(path, camera_path=camera)
    ground_truth = sequence.ground_truth
    if ground_truth is None:
        raise SequenceError(f"{path} has no ground truth; the comparison needs one")
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

    if true_window:
        frontend.VisualOdometry._estimate_initial_window = with_true_poses
    try:
        result = run_sequence(sequence, config, network, device, progress=False)
    finally:
        frontend.VisualOdometry._estimate_initial_window = estimate
    if true_window and not replaced:
        raise ConfigError(
            "the engine never estimated an initial window, so no pose was replaced; keep "
            "frontend.multi_start_init on (the default)"
        )
    metrics = evaluate_run(result, ground_truth)
    return None if metrics is None else metrics.ate_percent


def format_percent(value: float | None) -> str:
    """Return ``value`` as ``"6.42 %"``, or ``"n/a"`` for a run without ATE."""
    return "n/a" if value is None else f"{value:.2f} %"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sequence", type=Path, help="sequence folder with ground truth")
    parser.add_argument("--runs", type=int, default=5, help="seeds per variant (default 5)")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--config", default="small", help="engine preset (default small)")
    parser.add_argument("--camera", type=Path, default=None,
                        help="camera_info YAML for an image folder without camera.yaml")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="engine setting, repeatable (frontend.hypothesis_frames is set to 0)",
    )
    return parser


def main() -> int:
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.runs < 1:
        print(f"error: --runs must be at least 1, got {args.runs}", file=sys.stderr)
        return 2
    if any(text.split("=", 1)[0].strip() == TRIAL_KEY for text in args.override):
        print(f"error: {TRIAL_KEY} is fixed to 0 by this script, so the window it sets is the "
              "one tracked; remove that --override", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    try:
        config, network, device = load_engine(
            args.config, [*args.override, *ORACLE_OVERRIDES], args.model, "cpu"
        )
        rows = []
        for run in range(args.runs):
            seeded = dataclasses.replace(config, seed=config.seed + run)
            estimated = track_once(
                args.sequence, args.camera, seeded, network, device, true_window=False
            )
            oracle = track_once(args.sequence, args.camera, seeded, network, device, true_window=True)
            rows.append((seeded.seed, estimated, oracle))
            print(f"seed {seeded.seed}: estimated {format_percent(estimated)}, "
                  f"true window {format_percent(oracle)}", flush=True)
    except (
        CalibrationError, ConfigError, FileNotFoundError, ModelFileError, SequenceError,
        TrajectoryError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for column, name in ((1, "estimated"), (2, "true window")):
        values = [row[column] for row in rows if row[column] is not None]
        median = statistics.median(values) if values else None
        print(f"median ATE, {name}: {format_percent(median)} over {len(values)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
