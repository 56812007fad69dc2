"""Measure tracking accuracy on several sequences: the median of repeated runs per sequence.

``python -m vo_node.accuracy [SEQUENCE ...] [--runs 3] [--config small] [--model PATH]
[--stride N] [--max-frames N] [--output FILE.json]``

Each run uses another patch-selection seed (``seed``, ``seed + 1``, ...), because the random patch
centres are the main source of run-to-run spread. The table gives, per sequence, the median ATE
(Sim(3)-aligned RMSE, ground-truth units) and the median ATE as a percentage of the ground-truth
path length, with the spread of the runs, next to the ATE of a tracker that never moves (the
ground-truth positions' RMS distance from their centroid): an estimate near that value tracks
nothing. With no sequence given it measures the three real
sequences under ``$VO_NODE_DATA`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence as TypingSequence

from vo_node.config import ConfigError, EngineConfig
from vo_node.io.atomic import atomic_write
from vo_node.io.camera import CalibrationError
from vo_node.io.sequence import SequenceError, open_sequence
from vo_node.io.trajectory import Trajectory, TrajectoryError
from vo_node.model.network import ModelFileError
from vo_node.run import (
    EXIT_OK,
    EXIT_USAGE,
    evaluate_run,
    load_engine,
    positive_int,
    run_sequence,
)

logger = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_SEQUENCES = (
    "euroc_MH_05_difficult",
    "kitti_odometry_07/sequences/07",
    "tartanair_hospital",
)
DEFAULT_RUNS = 3


def data_root() -> Path:
    """Return the folder of the real sequences: ``$VO_NODE_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("VO_NODE_DATA", DEFAULT_DATA_ROOT))


COMPARISON_ERRORS = (
    CalibrationError, ConfigError, FileNotFoundError, ModelFileError, SequenceError, TrajectoryError,
)
"""Errors of the arguments or the input that a seed comparison reports in one line."""


def format_percent(value: float | None) -> str:
    """Return ``value`` as ``"6.42 %"``, or ``"n/a"`` for a run without ATE."""
    return "n/a" if value is None else f"{value:.2f} %"


def ate_percent_once(
    path: Path,
    camera: Path | None,
    config: EngineConfig,
    network: Any,
    device: str,
    change: Callable[[Trajectory], ContextManager[Any]] | None = None,
) -> float | None:
    """Track ``path`` once and return the ATE in % of path, or None when it cannot be computed.

    ``change``, when given, receives the ground truth and returns the context in which the
    sequence is tracked (a changed engine step, for example).

    Raises:
        SequenceError: the sequence has no ground truth.
    """
    sequence = open_sequence(path, camera_path=camera)
    ground_truth = sequence.ground_truth
    if ground_truth is None:
        raise SequenceError(f"{path} has no ground truth; the comparison needs one")
    with change(ground_truth) if change is not None else contextlib.nullcontext():
        result = run_sequence(sequence, config, network, device, progress=False)
    metrics = evaluate_run(result, ground_truth)
    return None if metrics is None else metrics.ate_percent


def compare_seeds(
    config: EngineConfig,
    runs: int,
    names: tuple[str, str],
    track: Callable[[EngineConfig, int], float | None],
) -> list[tuple[float | None, float | None]]:
    """Track two arms on ``runs`` consecutive seeds, print each seed's ATE, then the medians.

    ``track(seeded_config, arm)`` returns the ATE in % of path of arm 0 or 1, or None. Returns
    one ``(arm 0, arm 1)`` pair per seed.
    """
    rows = []
    for run in range(runs):
        seeded = dataclasses.replace(config, seed=config.seed + run)
        first, second = track(seeded, 0), track(seeded, 1)
        rows.append((first, second))
        print(f"seed {seeded.seed}: {names[0]} {format_percent(first)}, "
              f"{names[1]} {format_percent(second)}", flush=True)
    for column, name in enumerate(names):
        values = [row[column] for row in rows if row[column] is not None]
        median = statistics.median(values) if values else None
        print(f"median ATE, {name}: {format_percent(median)} over {len(values)} runs")
    return rows


def add_comparison_arguments(parser: argparse.ArgumentParser, runs_help: str) -> None:
    """Add the arguments of every seed-comparison script: the sequence, ``--runs``,
    ``--model``, ``--config`` and ``--camera``."""
    parser.add_argument("sequence", type=Path, help="sequence folder with ground truth")
    parser.add_argument("--runs", type=int, default=5, help=runs_help)
    parser.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--config", default="small", help="engine preset (default small)")
    parser.add_argument("--camera", type=Path, default=None,
                        help="camera_info YAML for an image folder without camera.yaml")


def run_comparison(
    args: argparse.Namespace,
    overrides: TypingSequence[str],
    names: tuple[str, str],
    change_of_arm: Callable[[int], Callable[[Trajectory], ContextManager[Any]] | None],
) -> int:
    """Track both arms of a seed comparison on one thread and print the table.

    ``args`` carries the arguments of :func:`add_comparison_arguments`, ``overrides`` the engine
    settings of both arms and ``change_of_arm(arm)`` the change of :func:`ate_percent_once` for
    arm 0 or 1 (None for the unchanged engine). Returns the exit status: 0, or 2 after printing
    one line for invalid arguments or input.
    """
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.runs < 1:
        print(f"error: --runs must be at least 1, got {args.runs}", file=sys.stderr)
        return EXIT_USAGE
    torch.set_num_threads(1)
    try:
        config, network, device = load_engine(args.config, list(overrides), args.model, "cpu")

        def track(seeded: EngineConfig, arm: int) -> float | None:
            return ate_percent_once(
                args.sequence, args.camera, seeded, network, device, change_of_arm(arm)
            )

        compare_seeds(config, args.runs, names, track)
    except COMPARISON_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def measure_sequence(
    path: Path, runs: int, config: Any, network: Any, device: str, stride: int, max_frames: int | None
) -> dict[str, Any]:
    """Track ``path`` ``runs`` times with consecutive seeds; return per-run and median figures."""
    ate: list[float] = []
    percent: list[float] = []
    standstill: list[float] = []
    fps: list[float] = []
    for run in range(runs):
        seeded = dataclasses.replace(config, seed=config.seed + run)
        sequence = open_sequence(path, stride=stride, max_frames=max_frames)
        # Read before tracking, so a malformed ground-truth file fails before the run.
        ground_truth = sequence.ground_truth
        result = run_sequence(sequence, seeded, network, device, progress=False)
        metrics = evaluate_run(result, ground_truth)
        fps.append(result.frames_per_second)
        if metrics is None:
            logger.warning("%s run %d: no ATE (see the error above)", path, run)
            continue
        ate.append(metrics.ate_rmse)
        percent.append(metrics.ate_percent)
        standstill.append(metrics.standstill_ate_percent)
        logger.info(
            "%s run %d: ATE %.3f (%.2f %% of path), %.1f frames/s",
            path, run, metrics.ate_rmse, metrics.ate_percent, fps[-1],
        )
    return {
        "sequence": str(path),
        "runs": runs,
        "evaluated_runs": len(ate),
        "ate": ate,
        "ate_percent": percent,
        "median_ate": statistics.median(ate) if ate else None,
        "median_ate_percent": statistics.median(percent) if percent else None,
        "standstill_ate_percent": statistics.median(standstill) if standstill else None,
        "median_fps": statistics.median(fps),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Return a markdown table of the per-sequence medians and ranges."""
    lines = [
        "| sequence | runs with ATE | median ATE | ATE range | median ATE % of path "
        "| standing still, % of path | median frames/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["ate"]:
            median = f"{row['median_ate']:.3f}"
            spread = f"{min(row['ate']):.3f}-{max(row['ate']):.3f}"
            percent = f"{row['median_ate_percent']:.2f}"
        else:
            median = spread = percent = "not computed"
        standstill = row.get("standstill_ate_percent")
        standstill_text = "not computed" if standstill is None else f"{standstill:.2f}"
        lines.append(
            f"| {Path(row['sequence']).name} | {row['evaluated_runs']}/{row['runs']} | {median} | "
            f"{spread} | {percent} | {standstill_text} | {row['median_fps']:.1f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vo_node.accuracy",
        description="Median ATE over repeated runs on sequences with ground truth.",
    )
    parser.add_argument("sequences", nargs="*", type=Path, help="sequence paths (default: the "
                        "three real sequences under $VO_NODE_DATA or ../shared/data)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help="runs per sequence, each with the next patch-selection seed")
    parser.add_argument("--config", default="small", help="engine preset name or YAML path")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                        help="compute device (default: the preset's, normally auto)")
    parser.add_argument("--stride", type=positive_int, default=1, metavar="N",
                        help="keep every N-th frame (default 1)")
    parser.add_argument("--max-frames", type=positive_int, default=None, metavar="N",
                        help="frames per run, counted after --stride (default: all)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration override, repeatable")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the results")
    return parser


def main(argv: TypingSequence[str] | None = None) -> int:
    """Run the command; return the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.runs < 1:
        print(f"error: --runs must be at least 1, got {args.runs}", file=sys.stderr)
        return EXIT_USAGE
    paths = args.sequences or [data_root() / name for name in DEFAULT_SEQUENCES]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        print(f"error: sequence not found: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config, network, device = load_engine(args.config, args.override, args.model, args.device)
        rows = [
            measure_sequence(path, args.runs, config, network, device, args.stride, args.max_frames)
            for path in paths
        ]
    except COMPARISON_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(format_table(rows))
    if args.output is not None:
        with atomic_write(args.output) as handle:
            json.dump({"config": config.name, "model": str(args.model or "default"), "rows": rows},
                      handle, indent=2)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
