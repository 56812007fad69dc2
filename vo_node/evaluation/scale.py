"""Scale drift of a monocular trajectory: estimated against true path length, window by window.

A Sim(3) alignment fits one scale to the whole trajectory, so a trajectory whose scale changes
along the way scores a large ATE even when every short stretch is well shaped. This command
aligns the estimate to ground truth once, splits the associated poses into windows of
``--window`` consecutive poses, and prints for each window the aligned estimate's path length
divided by the true one. A ratio of 1 means the window has the trajectory's overall scale;
the largest ratio divided by the smallest is the drift factor. Windows in which the ground truth
moves less than ``--min-length`` are left out, since their ratio measures noise::

    python -m vo_node.evaluation.scale ESTIMATE.tum GROUND_TRUTH [--window 15] [--output DIR]

``GROUND_TRUTH`` is a TUM file or a sequence that the runner reads (EuRoC, KITTI, TartanAir,
TUM RGB-D, ...). The output folder receives ``scale.csv`` and ``scale.png``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vo_node.evaluation.metrics import EvaluationError, align_trajectories
from vo_node.io.atomic import atomic_write
from vo_node.io.trajectory import Trajectory, TrajectoryError, read_tum

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 15
"""Poses per window: half a second of EuRoC at 20 Hz, 1.5 s of KITTI or TartanAir at 10 Hz."""
DEFAULT_MIN_LENGTH_FRACTION = 0.01
"""Windows whose true path is shorter than this fraction of the whole true path are left out."""
EXIT_OK, EXIT_USAGE = 0, 2
TICKS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0]
"""Labelled ratios on the plot's logarithmic axis."""


@dataclass
class ScaleProfile:
    """Per-window scale of an aligned estimate.

    Attributes:
        first, last: ``(W,)`` indices of each window's first and last associated pose.
        start_s, end_s: ``(W,)`` times of those poses, seconds since the first pose.
        true_length, estimated_length: ``(W,)`` path lengths in ground-truth units, the estimate
            after the Sim(3) alignment.
        ratio: ``(W,)`` ``estimated_length / true_length``; NaN where the window was left out.
        alignment_scale: the Sim(3) scale that maps the estimate onto the ground truth.
    """

    first: np.ndarray
    last: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    true_length: np.ndarray
    estimated_length: np.ndarray
    ratio: np.ndarray
    alignment_scale: float

    @property
    def compared_windows(self) -> int:
        """Number of windows long enough to have a ratio."""
        return int(np.isfinite(self.ratio).sum())

    @property
    def drift_factor(self) -> float:
        """Largest over smallest window ratio (NaN with fewer than 2 compared windows)."""
        compared = self.ratio[np.isfinite(self.ratio)]
        return float(compared.max() / compared.min()) if len(compared) >= 2 else float("nan")


def scale_profile(
    estimate: Trajectory,
    ground_truth: Trajectory,
    window: int = DEFAULT_WINDOW,
    min_length: float | None = None,
) -> ScaleProfile:
    """Split the associated poses into windows of ``window`` poses and compare path lengths.

    Consecutive windows share their boundary pose, so their lengths add up to the whole path. A
    last window of less than half the size joins the one before it. ``min_length``
    (ground-truth units) defaults to ``DEFAULT_MIN_LENGTH_FRACTION`` of the true path length.

    Raises:
        ValueError: ``window`` is below 2 or ``min_length`` is negative.
        EvaluationError: the trajectories do not associate or align.
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 poses, got {window}; pass --window 15")
    if min_length is not None and min_length < 0:
        raise ValueError(f"min_length must be 0 or more, got {min_length}; pass --min-length 0")
    pair = align_trajectories(estimate, ground_truth)
    truth = pair.ground_truth.positions_xyz
    aligned = pair.estimate.positions_xyz
    stamps = pair.ground_truth.timestamps
    true_steps = np.linalg.norm(np.diff(truth, axis=0), axis=1)
    estimated_steps = np.linalg.norm(np.diff(aligned, axis=0), axis=1)
    if min_length is None:
        min_length = DEFAULT_MIN_LENGTH_FRACTION * float(true_steps.sum())
    starts = np.arange(0, len(true_steps), window - 1)
    if len(starts) > 1 and len(true_steps) - starts[-1] < (window - 1) / 2:
        starts = starts[:-1]
    ends = np.append(starts[1:], len(true_steps))
    true_length = np.add.reduceat(true_steps, starts)
    estimated_length = np.add.reduceat(estimated_steps, starts)
    ratio = np.full(len(starts), np.nan)
    compared = (true_length >= min_length) & (true_length > 0)
    ratio[compared] = estimated_length[compared] / true_length[compared]
    return ScaleProfile(
        starts, ends, stamps[starts] - stamps[0], stamps[ends] - stamps[0], true_length,
        estimated_length, ratio, pair.scale,
    )


def format_profile(profile: ScaleProfile) -> list[str]:
    """Return a text table of the windows and a summary line."""
    lines = [
        f"{'poses':>11} {'start s':>9} {'end s':>9} {'true length':>12} {'estimated':>10} "
        f"{'ratio':>7}"
    ]
    for first, last, start, end, true, estimated, ratio in zip(
        profile.first, profile.last, profile.start_s, profile.end_s, profile.true_length,
        profile.estimated_length, profile.ratio,
    ):
        ratio_text = f"{ratio:7.3f}" if np.isfinite(ratio) else "   left out"
        poses = f"{first}-{last}"
        lines.append(
            f"{poses:>11} {start:9.2f} {end:9.2f} {true:12.4f} {estimated:10.4f} {ratio_text}"
        )
    lines.append(
        f"drift factor (largest / smallest window ratio): {profile.drift_factor:.2f}; "
        f"Sim(3) alignment scale {profile.alignment_scale:.4f}"
    )
    return lines


def write_profile(profile: ScaleProfile, folder: Path) -> tuple[Path, Path]:
    """Write ``scale.csv`` and ``scale.png`` into ``folder``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "scale.csv"
    with atomic_write(table) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(
            ["first", "last", "start_s", "end_s", "true_length", "estimated_length", "ratio"]
        )
        for first, last, *values in zip(profile.first, profile.last, profile.start_s,
                                        profile.end_s, profile.true_length,
                                        profile.estimated_length, profile.ratio):
            writer.writerow([first, last, *(f"{value:.6f}" for value in values)])
    figure = folder / "scale.png"
    _plot(profile, figure)
    return table, figure


def _plot(profile: ScaleProfile, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    from vo_node.evaluation.plots import write_figure  # selects the Agg backend

    centres = 0.5 * (profile.start_s + profile.end_s)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.axhline(1.0, color="0.6", linestyle="--", linewidth=1)
    ax.plot(centres, profile.ratio, marker="o")
    ax.set_yscale("log")
    # Labelled ticks at 1-2-5 steps, so that ratios such as 0.2 or 1.3 can be read off.
    ax.yaxis.set_major_locator(FixedLocator(TICKS))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("time since the first pose [s]")
    ax.set_ylabel("estimated / true path length")
    ax.set_title(f"scale per window, drift factor {profile.drift_factor:.2f}")
    fig.tight_layout()
    write_figure(fig, path)


def load_ground_truth(source: str) -> Trajectory:
    """Read ground truth from a TUM file, or from a sequence the runner can open.

    Raises:
        FileNotFoundError, ValueError: the path is missing or contains no ground truth.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"ground truth {path} not found; pass a TUM file or a sequence")
    if path.is_file():
        try:
            return read_tum(path)
        except TrajectoryError as error:
            raise ValueError(
                f"ground truth {path} is not a TUM file ({error}); pass a TUM file or the "
                "sequence folder, whose reader finds its own ground truth"
            ) from None
    from vo_node.io.sequence import open_sequence

    sequence = open_sequence(path)
    if sequence.ground_truth is None:
        raise ValueError(f"sequence {path} has no ground truth; pass a TUM file instead")
    return sequence.ground_truth


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vo_node.evaluation.scale",
        description="Estimated against true path length over windows of consecutive poses.",
    )
    parser.add_argument("estimate", help="estimated trajectory, TUM format (run's trajectory.tum)")
    parser.add_argument("ground_truth", help="ground truth: TUM file or sequence path")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                        help=f"poses per window (default {DEFAULT_WINDOW})")
    parser.add_argument("--min-length", type=float, default=None,
                        help="leave out windows whose true path is shorter (ground-truth units; "
                             "default 1 %% of the whole true path)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for scale.csv and scale.png (default: none written)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        estimate = read_tum(args.estimate)
        ground_truth = load_ground_truth(args.ground_truth)
        profile = scale_profile(estimate, ground_truth, args.window, args.min_length)
    except (FileNotFoundError, ValueError, EvaluationError, TrajectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(format_profile(profile)))
    if profile.compared_windows < 2:
        print(
            f"error: only {profile.compared_windows} of {len(profile.ratio)} windows "
            "are long enough to compare, so there is no drift factor; pass a smaller --window "
            "or --min-length",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.output is not None:
        try:
            table, figure = write_profile(profile, args.output)
        except OSError as error:
            print(f"error: cannot write to --output {args.output}: {error}", file=sys.stderr)
            return EXIT_USAGE
        print(f"table: {table}\nplot: {figure}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
