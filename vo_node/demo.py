"""Track a sequence with the shipped model and print a short summary: what ``make demo`` runs.

``python -m vo_node.demo [SEQUENCE] [--output outputs/demo] [--config small] [--model PATH]
[--device auto] [--max-frames N]``

Without ``SEQUENCE`` the demo renders its synthetic default sequence into ``OUTPUT/sequence``
(once; later runs reuse it) and tracks that. The trajectory, metrics and plot go to ``OUTPUT``.
Tracking goes through a :data:`Tracker` function, :func:`track_offline` by default, so that a replay
through the ROS node can take its place without changing the rest of the command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence as TypingSequence

import torch

from vo_node.config import ConfigError, EngineConfig, to_dict
from vo_node.io.camera import CalibrationError
from vo_node.io.sequence import Sequence, SequenceError, open_sequence
from vo_node.io.trajectory import TrajectoryError
from vo_node.model.network import ModelFileError, default_model_path
from vo_node.run import (
    BYTES_PER_MEBIBYTE,
    EXIT_OK,
    EXIT_USAGE,
    SIGNAL_EXIT_BASE,
    RunOutputs,
    RunResult,
    StopRequest,
    load_engine,
    run_sequence,
    write_outputs,
)

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path("outputs") / "demo"
SEQUENCE_FOLDER = "sequence"
"""Subfolder of the output folder that contains the rendered default sequence."""
TRAIN_COMMAND = "python -m vo_node.train --config config/train_small.yaml"

Tracker = Callable[[Sequence, EngineConfig, torch.nn.Module, str, Callable[[], bool], bool], RunResult]
"""Function that tracks a whole sequence:
``(sequence, config, network, device, should_stop, progress) -> RunResult``."""


class MissingModelError(FileNotFoundError):
    """The model file does not exist; the message explains how to get or train one."""


def track_offline(
    sequence: Sequence,
    config: EngineConfig,
    network: torch.nn.Module,
    device: str,
    should_stop: Callable[[], bool],
    progress: bool,
) -> RunResult:
    """Track ``sequence`` in this process with :func:`vo_node.run.run_sequence`."""
    return run_sequence(
        sequence, config, network, device, progress=progress, should_stop=should_stop
    )


def resolve_model(model: Path | None) -> Path:
    """Return the model file to load: ``model`` or the shipped default.

    Raises:
        MissingModelError: the file does not exist.
    """
    if model is not None:
        if not model.is_file():
            raise MissingModelError(
                f"model file {model} not found; pass an existing file to --model, or train one "
                f"with `{TRAIN_COMMAND}`"
            )
        return model
    try:
        return default_model_path()
    except FileNotFoundError as error:
        raise MissingModelError(
            f"{error}. The demo needs a trained model: train one with `{TRAIN_COMMAND}` (it "
            "writes models/vo_small.pt), or pass a model file with --model PATH"
        ) from None


def open_demo_sequence(
    path: Path | None, output_dir: Path, max_frames: int | None
) -> Sequence:
    """Open ``path``, or render the default demo sequence into ``output_dir`` and open that."""
    if path is None:
        from vo_node.demo_data import render_demo_sequence

        path = render_demo_sequence(output_dir / SEQUENCE_FOLDER)
    return open_sequence(path, max_frames=max_frames)


def length_unit(sequence: Sequence) -> str:
    """Return the unit of the sequence's ground truth: scene units for a rendered sequence."""
    from vo_node.demo_data import PARAMETERS_FILE

    return "scene units" if (sequence.root / PARAMETERS_FILE).is_file() else "m"


def format_demo_summary(result: RunResult, outputs: RunOutputs, unit: str = "m") -> list[str]:
    """Return the summary lines: frames, speed, memory, ATE (in ``unit``) and the files written."""
    lines = [
        f"frames tracked: {result.frames}{' (interrupted)' if result.interrupted else ''}",
        f"frames per second: {result.frames_per_second:.2f} ({result.seconds:.1f} s)",
        f"peak memory ({result.memory_kind}): "
        f"{result.peak_memory_bytes / BYTES_PER_MEBIBYTE:.0f} MiB",
    ]
    metrics = outputs.metrics
    if metrics is not None:
        lines.append(
            f"ATE RMSE: {metrics.ate_rmse:.3f} {unit} ({metrics.ate_percent:.2f} % of the "
            f"{metrics.path_length:.2f} {unit} path)"
        )
    else:
        lines.append("ATE: not computed (no ground truth, or too few poses to align)")
    lines.append(f"trajectory: {outputs.trajectory_path}")
    if outputs.metrics_path is not None:
        lines.append(f"metrics: {outputs.metrics_path}")
    if outputs.plot_path is not None:
        lines.append(f"plot: {outputs.plot_path}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m vo_node.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m vo_node.demo",
        description="Track a sequence (by default a rendered synthetic one) and summarise the run.",
    )
    parser.add_argument(
        "sequence", type=Path, nargs="?", default=None,
        help="sequence folder, video or ROS 2 bag (default: render the synthetic demo sequence)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"output folder (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--config", default="small", help="preset name or YAML path (default: small)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: the shipped models/vo_small.pt)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="compute device (default: auto)")
    parser.add_argument("--max-frames", type=_positive_int, default=None,
                        help="track at most N frames")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="logging level")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: TypingSequence[str] | None = None, tracker: Tracker = track_offline) -> int:
    """Run the demo; return the process exit status (0, 2 for invalid input, 128 + signal)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        model_path = resolve_model(args.model)
        sequence = open_demo_sequence(args.sequence, args.output, args.max_frames)
        config, network, device = load_engine(args.config, [], model_path, args.device)
    except (
        MissingModelError, SequenceError, CalibrationError, ConfigError, TrajectoryError,
        ModelFileError, FileNotFoundError, FileExistsError,
    ) as error:
        logger.error("%s", error)
        return EXIT_USAGE

    stop = StopRequest()
    stop.install()
    try:
        result = tracker(sequence, config, network, device, stop, not args.no_progress)
    finally:
        stop.restore()

    extra = {"sequence": str(sequence.root), "config": to_dict(config), "device": device,
             "model": str(model_path)}
    outputs = write_outputs(result, args.output, sequence.ground_truth, extra)
    for line in format_demo_summary(result, outputs, length_unit(sequence)):
        print(line)
    if stop.signal_number is not None:
        return SIGNAL_EXIT_BASE + stop.signal_number
    return EXIT_USAGE if result.input_error else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
