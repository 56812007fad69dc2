"""Run the odometry on a recorded sequence and evaluate it against ground truth.

``python -m vo_node.run SEQUENCE [--config accurate] [--model PATH] [--device auto] [--stride N]
[--max-frames N] [--output DIR] [--override key=value ...] [--trace]``

Writes ``DIR/trajectory.tum`` (one pose per input frame, at the input timestamps) and, when the
sequence has ground truth, ``DIR/metrics.json`` and ``DIR/trajectory.png``. With ``--trace`` it
also writes ``DIR/frames.csv``, one row per input frame (see :data:`TRACE_COLUMNS`). Those of the
four files that a run does not write are removed from ``DIR``, so a reused folder does not show the
metrics of an earlier run next to a new trajectory.

A run that stops early writes the frames tracked so far under partial names instead
(``trajectory.partial.tum``, ``metrics.partial.json``, ``trajectory.partial.png``,
``frames.partial.csv``) and leaves the four files of an earlier complete run unchanged. It stops
early on SIGINT or SIGTERM (exit status 130 or 143) or on an input frame that cannot be read
(exit status 2). A run that finishes removes the partial files of an earlier run.

:func:`run_sequence` is the reusable part (the accuracy command, the offline demo and the
trainer's validation call it);
:func:`main` only parses arguments, configures logging and handles signals.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Sequence as TypingSequence

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vo_node.config import (
    ConfigError,
    EngineConfig,
    apply_overrides,
    load_engine_config,
    parse_override,
    resolve_device,
    to_dict,
)
from vo_node.evaluation.metrics import (
    METRES,
    SCENE_UNITS,
    EvaluationError,
    TrajectoryMetrics,
    describe_distance_rpe,
    evaluate_trajectory,
)
from vo_node.io.atomic import atomic_write
from vo_node.io.bag import body_from_camera_pose
from vo_node.io.camera import CalibrationError
from vo_node.io.sequence import Sequence, SequenceError, open_sequence
from vo_node.io.trajectory import Trajectory, TrajectoryError, write_tum
from vo_node.model.network import ModelFileError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
"""Exit status when writing the outputs failed after tracking."""
EXIT_USAGE = 2
"""Exit status for invalid input (arguments, paths, calibration, configuration, model file)."""
SIGNAL_EXIT_BASE = 128
"""A run stopped by signal ``n`` exits with ``128 + n`` (130 for SIGINT, 143 for SIGTERM)."""
BYTES_PER_KIBIBYTE = 1024
MILLISECONDS_PER_SECOND = 1000.0
BYTES_PER_MEBIBYTE = 1024 * 1024
TRAJECTORY_FILE = "trajectory.tum"
METRICS_FILE = "metrics.json"
PLOT_FILE = "trajectory.png"
TRACE_FILE = "frames.csv"
COMPLETE_OUTPUTS = (TRAJECTORY_FILE, METRICS_FILE, PLOT_FILE, TRACE_FILE)
"""Files of a run that tracked every frame of its input."""
PARTIAL_INFIX = ".partial"


def partial_name(name: str) -> str:
    """Return the stopped-run name of ``name``, such as ``trajectory.partial.tum``."""
    path = Path(name)
    return f"{path.stem}{PARTIAL_INFIX}{path.suffix}"


PARTIAL_OUTPUTS = tuple(partial_name(name) for name in COMPLETE_OUTPUTS)
"""Files of a run that stopped early, in the order of :data:`COMPLETE_OUTPUTS`. Their own names
keep a stopped run from replacing the results of an earlier complete run in the same folder."""
OWNED_OUTPUTS = COMPLETE_OUTPUTS + PARTIAL_OUTPUTS
"""Files of an output folder that a run owns. A run removes those it does not write, but a
stopped run removes only partial files."""
DEFAULT_PRESET = "accurate"
"""Preset of the offline runner. An offline run has no camera to keep up with, so it takes the
preset with the lower median ATE on all three real sequences of docs/benchmarks.md. The node keeps
the real-time `small`."""
DEFAULT_OUTPUT_ROOT = Path("outputs")
DEFAULT_OUTPUT_FOLDER_NAME = "vo_output"
"""Folder name that the error for an ``--output`` that is a file suggests next to that file."""
TRACE_COLUMNS = (
    "frame", "timestamp_ns", "state", "on_trial", "keyframe", "edges", "probe_flow", "ba_cost",
    "ba_residuals", "variance_ratio", "low_confidence", "encoders_ms", "correlation_ms",
    "update_ms", "ba_ms", "bookkeeping_ms",
)
"""Columns of ``frames.csv``. Per input frame: its index and timestamp, the engine state after
it, whether the depth-hypothesis trial was running, whether the frame entered the patch graph,
and the edge count. Then the motion probe's median flow
in 1/4-resolution pixels (empty when not probed), the weighted cost and valid residual count of
the frame's last bundle adjustment (empty without one), the position variance over its recent
median and the low-confidence flag (see ``TrackResult``), and the time of each stage."""
STOP_ACTION = (
    "finishing the frames tracked so far and writing them under partial names "
    f"({PARTIAL_OUTPUTS[0]})"
)
"""Log text for the runner's response to the first SIGINT or SIGTERM (see :class:`StopRequest`)."""


class OutputError(ValueError):
    """The output folder cannot be created or written; the message names it and the fix."""


def sequence_length_unit(sequence: Sequence) -> str:
    """Return the unit of the sequence's ground truth: scene units for a rendered sequence."""
    from vo_node.demo_data import PARAMETERS_FILE

    return SCENE_UNITS if (sequence.root / PARAMETERS_FILE).is_file() else METRES


@dataclass
class RunResult:
    """Outcome of :func:`run_sequence`.

    Attributes:
        trajectory: ``T_world_cam`` of every tracked frame at its input timestamp (scene units).
        frames: frames tracked.
        seconds: wall time of tracking and the final optimisation, in seconds.
        peak_memory_bytes: peak CUDA memory allocated by torch on CUDA, else the process's peak
            resident set size.
        memory_kind: ``cuda_allocated`` or ``cpu_rss``, naming what ``peak_memory_bytes`` is.
        interrupted: the run stopped early because ``should_stop`` returned True.
        input_error: message of the :class:`SequenceError` that ended the run early (an
            unreadable frame), or None.
        trace: one dict per tracked frame with the keys of :data:`TRACE_COLUMNS`.
        initialized: whether the engine initialised on some frame. False means every frame
            stayed in the initialising state, so every pose is the identity. None when unknown
            (no frame tracked, or a result built without :func:`run_sequence`).
    """

    trajectory: Trajectory
    frames: int
    seconds: float
    peak_memory_bytes: int
    memory_kind: str
    interrupted: bool = False
    input_error: str | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)
    initialized: bool | None = None

    @property
    def frames_per_second(self) -> float:
        """Tracked frames per wall-clock second (0 when nothing ran)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def low_confidence_frames(self) -> int:
        """Tracked frames that the engine reported as low confidence (``TrackResult``)."""
        return sum(int(row.get("low_confidence", 0)) for row in self.trace)


@dataclass
class RunOutputs:
    """Files written by :func:`write_outputs` and the metrics they contain.

    Attributes:
        length_unit: unit of the ground truth and of every length in ``metrics``.
        removed: files of an earlier run that :func:`write_outputs` removed from the folder.
        partial: the run stopped early, so the files have the names of :data:`PARTIAL_OUTPUTS`.
    """

    trajectory_path: Path
    metrics_path: Path | None = None
    plot_path: Path | None = None
    trace_path: Path | None = None
    metrics: TrajectoryMetrics | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    length_unit: str = METRES
    removed: list[Path] = field(default_factory=list)
    partial: bool = False

    def written(self) -> list[tuple[str, Path]]:
        """Return ``(label, path)`` of each file written: trajectory, metrics, plot."""
        labelled = [
            ("trajectory", self.trajectory_path),
            ("metrics", self.metrics_path),
            ("plot", self.plot_path),
            ("per-frame trace", self.trace_path),
        ]
        return [(label, path) for label, path in labelled if path is not None]


def run_sequence(
    sequence: Sequence,
    config: EngineConfig,
    network: torch.nn.Module,
    device: str,
    *,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Track every frame of ``sequence`` and return the finished trajectory with run figures.

    Args:
        sequence: the input; frames are tracked with ``sequence.camera.intrinsics``.
        config: engine configuration; its network sizes must match ``network``.
        network: the loaded patch network, already on ``device``.
        device: ``cpu`` or ``cuda`` (resolved, not ``auto``).
        progress: show a tqdm progress bar on stderr.
        should_stop: checked before each frame; returning True stops tracking, and the frames
            tracked so far are still finished and returned (``interrupted`` is then True).

    A :class:`SequenceError` while reading a frame also ends tracking early; the frames before it
    are finished and returned, with the message in ``input_error``.
    """
    from vo_node.odometry import VisualOdometry
    from vo_node.odometry.frontend import STATE_INITIALIZING

    odometry = VisualOdometry(config, network, device)
    intrinsics = sequence.camera.intrinsics
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    frames = 0
    interrupted = False
    input_error = None
    trace: list[dict[str, Any]] = []
    start = time.perf_counter()
    # Log lines go through tqdm while the bar is shown, so the two do not run into each other.
    with torch.no_grad(), logging_redirect_tqdm():
        bar = tqdm(total=len(sequence), desc=sequence.name, unit="frame", disable=not progress)
        try:
            for frame in sequence:
                if should_stop is not None and should_stop():
                    interrupted = True
                    break
                step = odometry.track(frame.image, frame.timestamp_ns, intrinsics)
                trace.append(trace_row(frames, step))
                frames += 1
                bar.update(1)
        except SequenceError as error:
            logger.error("stopping after %d frames: %s", frames, error)
            input_error = str(error)
        finally:
            bar.close()
        trajectory = odometry.finish() if frames else empty_trajectory()
    seconds = time.perf_counter() - start
    peak, kind = peak_memory(device)
    logger.info(
        "tracked %d frames of %s in %.1f s (%.2f frames/s)", frames, sequence.name, seconds,
        frames / seconds if seconds > 0 else 0.0,
    )
    result = RunResult(trajectory, frames, seconds, peak, kind, interrupted, input_error, trace)
    if frames:
        result.initialized = any(row["state"] != STATE_INITIALIZING for row in trace)
    if result.initialized is False:
        logger.warning(
            "%s", never_initialized_message(result, sequence.name, config.frontend.init_frames)
        )
    return result


def never_initialized_message(result: RunResult, name: str, init_frames: int) -> str:
    """Return the warning for a run whose engine never initialised."""
    cause = (
        "the camera likely did not move, or the images have too little texture (blank, dark or "
        "uniform frames)"
    )
    if result.frames < init_frames:
        cause = (
            f"the input has fewer frames than frontend.init_frames ({init_frames}) needs, or "
            f"{cause}"
        )
    return (
        f"the engine never initialised in {result.frames} frames of {name}, so every pose of the "
        f"trajectory is the identity: {cause}"
    )


def trace_row(index: int, step: Any) -> dict[str, Any]:
    """Return the :data:`TRACE_COLUMNS` of input frame ``index`` from its ``TrackResult``."""
    times = step.times
    return {
        "frame": index,
        "timestamp_ns": int(step.timestamp_ns),
        "state": step.state,
        "on_trial": int(step.on_trial),
        "keyframe": int(step.is_keyframe),
        "edges": int(step.num_edges),
        "probe_flow": step.probe_flow,
        "ba_cost": step.ba_cost,
        "ba_residuals": step.ba_residuals,
        "variance_ratio": step.variance_ratio,
        "low_confidence": int(step.low_confidence),
        "encoders_ms": MILLISECONDS_PER_SECOND * times.encoders,
        "correlation_ms": MILLISECONDS_PER_SECOND * times.correlation,
        "update_ms": MILLISECONDS_PER_SECOND * times.update,
        "ba_ms": MILLISECONDS_PER_SECOND * times.ba,
        "bookkeeping_ms": MILLISECONDS_PER_SECOND * times.bookkeeping,
    }


def write_trace(path: Path, rows: TypingSequence[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV with the :data:`TRACE_COLUMNS` header, atomically. A None value is
    written as an empty field."""
    with atomic_write(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=TRACE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})


def empty_trajectory() -> Trajectory:
    """Return a trajectory with no poses."""
    return Trajectory(np.zeros(0, dtype=np.int64), np.zeros((0, 7)))


def peak_memory(device: str) -> tuple[int, str]:
    """Return the peak memory in bytes and what it measures (see :class:`RunResult`)."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device)), "cuda_allocated"
    # Linux reports ru_maxrss in kibibytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * BYTES_PER_KIBIBYTE, "cpu_rss"


def evaluate_run(result: RunResult, ground_truth: Trajectory | None) -> TrajectoryMetrics | None:
    """Return the accuracy of ``result`` against ``ground_truth``; None when it cannot be computed.

    A failed evaluation (too few associated poses, a degenerate alignment) is logged, not raised,
    so the trajectory of a long run is never lost to it. A run whose engine never initialised has
    only identity poses, so it is not evaluated.
    """
    if ground_truth is None:
        return None
    if result.initialized is False:
        logger.info("evaluation skipped: the engine never initialised, so every pose is the first")
        return None
    try:
        return evaluate_trajectory(result.trajectory, ground_truth)
    except EvaluationError as error:
        logger.error("evaluation skipped: %s", error)
        return None


def write_outputs(
    result: RunResult,
    output_dir: Path,
    ground_truth: Trajectory | None,
    extra: dict[str, Any] | None = None,
    length_unit: str = METRES,
    trace: bool = False,
) -> RunOutputs:
    """Write the trajectory and, with ground truth, the metrics JSON and the figure (atomically).

    A result that stopped early (``result.interrupted`` or ``result.input_error``) is written
    under the names of :data:`PARTIAL_OUTPUTS`, and one warning names the files and the reason.
    Such a call removes only partial files that it does not write, so the files of an earlier
    complete run stay as they were. A complete result removes every file of
    :data:`OWNED_OUTPUTS` that it does not write, the partial files of an earlier stopped run
    included. Each removal is logged.

    Args:
        extra: additional JSON-ready fields for ``metrics.json`` (sequence, configuration).
        length_unit: unit of the ground truth (``m``, or ``scene units`` for rendered
            sequences), stored in ``metrics.json`` and used in the figure's labels.
        trace: also write ``frames.csv`` from ``result.trace``.

    Raises:
        ValueError: the trajectory has no poses (check ``result.frames`` first).
        OSError: a file could not be written or an old one removed.
    """
    if len(result.trajectory) == 0:
        raise ValueError(f"the run has no poses to write to {output_dir}; no frames were tracked")
    partial = result.interrupted or result.input_error is not None
    trajectory_name, metrics_name, plot_name, trace_name = (
        PARTIAL_OUTPUTS if partial else COMPLETE_OUTPUTS
    )
    outputs = RunOutputs(
        trajectory_path=output_dir / trajectory_name, extra=dict(extra or {}),
        length_unit=length_unit, partial=partial,
    )
    planned = [trajectory_name]
    if ground_truth is not None:
        planned += [metrics_name, plot_name]
    if trace:
        planned.append(trace_name)
    outputs.removed = remove_stale_outputs(
        output_dir, planned, PARTIAL_OUTPUTS if partial else OWNED_OUTPUTS
    )
    write_tum(outputs.trajectory_path, result.trajectory)
    if trace:
        outputs.trace_path = output_dir / trace_name
        write_trace(outputs.trace_path, result.trace)
    if ground_truth is not None:
        write_evaluation(
            result, outputs, ground_truth, output_dir / metrics_name, output_dir / plot_name
        )
    if partial:
        log_partial_outputs(result, outputs, output_dir)
    return outputs


def write_evaluation(
    result: RunResult,
    outputs: RunOutputs,
    ground_truth: Trajectory,
    metrics_path: Path,
    plot_path: Path,
) -> None:
    """Evaluate ``result``, write the metrics JSON and the figure, and store them in ``outputs``."""
    length_unit = outputs.length_unit
    outputs.metrics = evaluate_run(result, ground_truth)
    report = {
        "frames": result.frames,
        "seconds": result.seconds,
        "frames_per_second": result.frames_per_second,
        "low_confidence_frames": result.low_confidence_frames,
        "peak_memory_bytes": result.peak_memory_bytes,
        "memory_kind": result.memory_kind,
        "interrupted": result.interrupted,
        "input_error": result.input_error,
        "initialized": result.initialized,
        "length_unit": length_unit,
        "metrics": outputs.metrics.to_dict() if outputs.metrics is not None else None,
        **outputs.extra,
    }
    outputs.metrics_path = metrics_path
    with atomic_write(metrics_path) as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    from vo_node.evaluation.plots import plot_trajectory

    outputs.plot_path = plot_trajectory(
        result.trajectory, ground_truth, outputs.metrics, plot_path, length_unit=length_unit,
        partial=outputs.partial,
    )


def log_partial_outputs(result: RunResult, outputs: RunOutputs, output_dir: Path) -> None:
    """Log one warning that names the partial files just written and why the run stopped."""
    if result.input_error is not None:
        reason = f"input frame {result.frames} could not be read"
    else:
        reason = "tracking was interrupted"
    names = ", ".join(path.name for _, path in outputs.written())
    kept = [name for name in COMPLETE_OUTPUTS if (output_dir / name).is_file()]
    note = ""
    if kept:
        note = f", and left the files of an earlier complete run there ({', '.join(kept)}) unchanged"
    logger.warning(
        "wrote %s to %s under partial names because %s after %d frames%s",
        names, output_dir, reason, result.frames, note,
    )


def remove_stale_outputs(
    output_dir: Path, keep: TypingSequence[str], candidates: TypingSequence[str] = OWNED_OUTPUTS
) -> list[Path]:
    """Remove the files of ``candidates`` not named in ``keep`` and return their paths.

    A reused output folder would otherwise show, say, the metrics of an earlier run with ground
    truth next to the trajectory of a run without it, or the partial files of an earlier stopped
    run next to complete ones. Other files in the folder are left alone.

    Raises:
        OSError: a file could not be removed.
    """
    # A call that keeps no partial file is writing the outputs of a finished run.
    finished = not any(name in PARTIAL_OUTPUTS for name in keep)
    removed = []
    for name in candidates:
        path = output_dir / name
        if name in keep or not (path.is_file() or path.is_symlink()):
            continue
        path.unlink()
        if finished and name in PARTIAL_OUTPUTS:
            logger.info(
                "removed %s of an earlier run that stopped early: this run finished, so its "
                "complete outputs replace it", path,
            )
        else:
            logger.info("removed %s of an earlier run: this run does not write %s", path, name)
        removed.append(path)
    return removed


def prepare_output_dir(path: Path) -> list[Path]:
    """Create the output folder ``path`` and check that a file can be written in it.

    Called before tracking, so a bad ``--output`` fails at once rather than after a long run.

    Returns:
        The folders this call created, outermost first, for :func:`remove_created_folders`.

    Raises:
        OutputError: ``path`` or one of its parents is a file, or the folder cannot be created
            (no permission, a read-only file system) or is not writable.
    """
    check_not_a_file(path)
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(
            f"output folder {path} cannot be written ({reason}); pass a writable folder with "
            "--output"
        ) from None
    return list(reversed(missing))


def check_not_a_file(path: Path) -> None:
    """Raise :class:`OutputError` when ``path`` or one of its parents is an existing file."""
    if path.exists() and not path.is_dir():
        raise OutputError(
            f"output path {path} is a file, but --output takes a folder (the run writes "
            f"{', '.join(COMPLETE_OUTPUTS)} into it); pass the path of a new or existing folder, "
            f"such as {path.parent / DEFAULT_OUTPUT_FOLDER_NAME}"
        )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(
                f"output folder {path} cannot be created because {parent} is a file; pass a "
                "folder path with --output whose parents are folders"
            )


def remove_created_folders(folders: TypingSequence[Path]) -> None:
    """Remove the folders of :func:`prepare_output_dir` that are still empty, innermost first."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def report_nothing_tracked(output_dir: Path, created: TypingSequence[Path]) -> None:
    """Log that a run tracked no frame and remove the empty output folders it created."""
    remove_created_folders(created)
    logger.error("no frames were tracked, so nothing was written to %s", output_dir)


def format_summary(result: RunResult, outputs: RunOutputs) -> list[str]:
    """Return the human-readable result lines that :func:`main` prints."""
    lines = []
    if result.initialized is False:
        lines.append(
            f"NOT INITIALISED: the engine never initialised in {result.frames} frames, so the "
            "trajectory is the identity (no camera motion or too little texture)"
        )
    if result.input_error:
        lines.append(
            f"STOPPED EARLY: input frame {result.frames} could not be read, so every output "
            f"below covers only the first {result.frames} frames ({result.input_error})"
        )
    lines += [
        f"frames tracked: {result.frames}{' (interrupted)' if result.interrupted else ''}",
        f"speed: {result.frames_per_second:.2f} frames/s over {result.seconds:.1f} s",
        f"low-confidence frames: {result.low_confidence_frames} (pose variance far above its "
        "recent median: covered, dark or blurred camera, or a plain view)",
        f"peak memory ({result.memory_kind}): "
        f"{result.peak_memory_bytes / BYTES_PER_MEBIBYTE:.0f} MiB",
    ]
    return lines + format_accuracy(outputs) + format_written_files(outputs)


def format_accuracy(outputs: RunOutputs) -> list[str]:
    """Return the ATE with its standstill reference, and the RPE lines (``outputs.length_unit``).

    The standstill reference is the ATE of an estimate that never moves; an ATE near it shows
    no tracking.
    """
    metrics = outputs.metrics
    if metrics is None:
        reason = "no ground truth"
        if outputs.metrics_path is not None:
            reason = "the evaluation failed, see the error above"
        return [f"ATE: not computed ({reason})"]
    unit = outputs.length_unit
    return [
        f"ATE RMSE: {metrics.ate_rmse:.4f} {unit} ({format_percent(metrics.ate_percent)} of the "
        f"{metrics.path_length:.2f} {unit} path, {metrics.associated_poses} poses, "
        f"Sim(3) scale {metrics.scale:.4f})",
        f"standstill reference: ATE RMSE {metrics.standstill_ate_rmse:.4f} {unit} "
        f"({format_percent(metrics.standstill_ate_percent)}) for an estimate that never moves",
        f"RPE per frame: {metrics.rpe_translation_rmse:.4f} {unit}, "
        f"{metrics.rpe_rotation_rmse_deg:.3f} deg",
        f"RPE per {metrics.rpe_distance_m:g} {unit}: {describe_distance_rpe(metrics, unit)}",
    ]


def format_percent(value: float | None) -> str:
    """Return ``"1.23 %"``, or ``"n/a %"`` for a share of a path of length 0."""
    return "n/a %" if value is None or math.isnan(value) else f"{value:.2f} %"


def format_written_files(outputs: RunOutputs) -> list[str]:
    """Return one ``label: path`` line per file written."""
    return [f"{label}: {path}" for label, path in outputs.written()]


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m vo_node.run``."""
    parser = argparse.ArgumentParser(
        prog="python -m vo_node.run",
        description="Run the visual odometry on a recorded sequence and evaluate it.",
    )
    parser.add_argument(
        "sequence", type=Path,
        help="sequence folder (EuRoC, KITTI, TartanAir, TUM RGB-D, image folder), video file or "
        "ROS 2 bag folder; a dataset folder that contains one sequence, such as a KITTI odometry "
        "root, opens that sequence",
    )

    parser.add_argument(
        "--config", default=DEFAULT_PRESET,
        help=f"preset name or YAML path (default: {DEFAULT_PRESET}, 64 patches per frame; small "
        "tracks 32 and is faster)",
    )
    parser.add_argument(
        "--model", type=Path, default=None,
        help="model file (default: models/vo_small.pt of the checkout, or of the installed "
        "package's share folder)",
    )
    parser.add_argument(
        "--device", default=None, choices=("auto", "cpu", "cuda"),
        help="compute device (default: the configuration's, normally auto)",
    )

    parser.add_argument("--stride", type=positive_int, default=1, metavar="N",
                        help="keep every N-th frame (default 1)")
    parser.add_argument("--max-frames", type=positive_int, default=None, metavar="N",
                        help="track at most N frames, counted after --stride (default: all)")
    parser.add_argument("--output", type=Path, default=None,
                        help="output folder (default: outputs/<sequence name>)")
    parser.add_argument(
        "--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="configuration override, e.g. frontend.patches_per_frame=64 (repeatable)",
    )

    parser.add_argument("--camera", type=Path, default=None,
                        help="camera YAML (ROS camera_info) for image folders, videos or bags")
    parser.add_argument(
        "--fps", type=positive_frame_rate, default=None, metavar="HZ",
        help="frame rate (Hz, above 0) for image folders or videos without timestamps (default "
        "20 for image folders); an input with its own timestamps (times.txt, timestamp file "
        "names, the video's frame times, or an EuRoC, KITTI, TartanAir, TUM RGB-D or ROS 2 bag "
        "sequence) keeps them and --fps is ignored with a warning",
    )
    parser.add_argument("--image-topic", default=None, help="image topic of a ROS 2 bag")
    parser.add_argument(
        "--groundtruth-topic", default=None, metavar="TOPIC",
        help="pose topic of a ROS 2 bag to evaluate against (PoseStamped, "
        "PoseWithCovarianceStamped, TransformStamped or Odometry; default: no ground truth)",
    )
    parser.add_argument(
        "--groundtruth-extrinsic", type=float, nargs=7, default=None,
        metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
        help="T_body_cam (metres, unit quaternion) when --groundtruth-topic carries the pose of a "
        "body or IMU frame; see docs/ros2.md for EuRoC's value",
    )

    parser.add_argument("--trace", action="store_true",
                        help="also write frames.csv: per frame the engine state, edges, motion "
                             "probe flow, bundle-adjustment cost and stage times")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="logging level")
    return parser


def positive_int(text: str) -> int:
    """Parse an argparse value that must be a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_frame_rate(text: str) -> float:
    """Parse an argparse frame rate in Hz that must be a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a frame rate in Hz, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"fps must be positive, got {text}")
    return value


class StopRequest:
    """Signal handler state: the first SIGINT/SIGTERM requests a stop after the current frame.

    A second signal logs a warning and exits with ``128 + signal``: at once, or at the end of an
    :meth:`exit_deferred` block (a file write) that it interrupted.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, action: str = STOP_ACTION, hard_exit: bool = False) -> None:
        """``action`` completes the log line "received SIGINT: ACTION (a second signal ...)".

        With ``hard_exit`` a second signal ends the process with ``os._exit`` after flushing
        the logs, so no finaliser runs. A process whose native threads (DDS, the executor) are
        still running otherwise aborts with status 134 on the way out.
        """
        self.signal_number: int | None = None
        self.action = action
        self.hard_exit = hard_exit
        self.second_signal_note: Callable[[], str] | None = None
        """Returns the end of the second signal's log line: what the outputs contain then, such
        as "12 poses written to out.tum"."""
        self._previous: dict[int, Any] = {}
        self._deferring = False
        self._deferred_status: int | None = None

    def install(self) -> None:
        """Register this object for SIGINT and SIGTERM, remembering the previous handlers."""
        for number in self.HANDLED:
            self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        """Put back the handlers that :meth:`install` replaced."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, signal_number: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signal_number).name
        if self.signal_number is None:
            self.signal_number = signal_number
            logger.warning(
                "received %s: %s (a second signal exits without finishing)", name, self.action
            )
            return
        status = SIGNAL_EXIT_BASE + signal_number
        if self._deferring:
            # Python runs signal handlers in the main thread, which is inside a write here.
            logger.warning(
                "received %s again: exiting with status %d once the file being written is "
                "complete", name, status,
            )
            self._deferred_status = status
            return
        self._exit(f"received {name} again: exiting at once", status)

    def __call__(self) -> bool:
        return self.signal_number is not None

    @contextlib.contextmanager
    def exit_deferred(self) -> Iterator[None]:
        """Hold a second signal's exit back until the block (a file write) has finished."""
        self._deferring = True
        failure: BaseException | None = None
        try:
            yield
        except BaseException as error:
            failure = error
            raise
        finally:
            self._deferring = False
            if self._deferred_status is not None:
                reason = "exiting now that the write is done"
                if failure is not None:
                    reason = f"exiting after the write failed ({failure})"
                self._exit(reason, self._deferred_status)

    def _exit(self, reason: str, status: int) -> None:
        """Log ``reason`` with the outputs' state, then end with ``status``: ``os._exit`` with
        ``hard_exit``, else ``SystemExit``."""
        note = "the remaining outputs are not written"
        if self.second_signal_note is not None:
            note = self.second_signal_note()
        logger.warning("%s with status %d: %s", reason, status, note)
        if not self.hard_exit:
            raise SystemExit(status)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def load_configuration(
    config_name: str, overrides: TypingSequence[str], device: str | None
) -> tuple[EngineConfig, str]:
    """Load the configuration with its overrides and resolve the device (``cpu`` or ``cuda``).

    It loads no model, so commands call it to check these arguments before slow work.

    Raises:
        ConfigError: unknown preset, invalid YAML, key or value, or ``cuda`` without a GPU.
    """
    config = load_engine_config(config_name)
    if overrides:
        config = apply_overrides(config, dict(parse_override(text) for text in overrides))
    return config, resolve_device(device or config.device)


def load_engine(
    config_name: str, overrides: TypingSequence[str], model_path: Path | None, device: str | None
) -> tuple[EngineConfig, torch.nn.Module, str]:
    """Load configuration, overrides and model; the model file's network sizes win.

    Raises:
        ConfigError, FileNotFoundError, ModelFileError: invalid configuration or model file.
    """
    from vo_node.model.network import default_model_path, load_model

    config, resolved = load_configuration(config_name, overrides, device)
    network, model_config = load_model(model_path or default_model_path(), resolved)
    if model_config.network != config.network:
        logger.warning(
            "the model was built with network sizes %s; using them instead of the configuration's",
            model_config.network,
        )
    config = dataclasses.replace(config, network=model_config.network, device=resolved).validate()
    return config, network, resolved


def main(argv: TypingSequence[str] | None = None) -> int:
    """Run the command; return the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = StopRequest()
    stop.install()
    try:
        return _run(args, stop)
    finally:
        stop.restore()


def _run(args: argparse.Namespace, stop: StopRequest) -> int:
    """Open, track, write and report; the body of :func:`main`."""
    try:
        # Configuration, device and model come first: they are quick to check, and a long
        # sequence (a video, a large bag) can take a while to open.
        config, network, device = load_engine(args.config, args.override, args.model, args.device)
        T_body_cam = None
        if args.groundtruth_extrinsic is not None:
            T_body_cam = body_from_camera_pose(
                args.groundtruth_extrinsic, "--groundtruth-extrinsic"
            )
        sequence = open_sequence(
            args.sequence, args.stride, args.max_frames, camera_path=args.camera, fps=args.fps,
            image_topic=args.image_topic, groundtruth_topic=args.groundtruth_topic,
            T_body_cam=T_body_cam,
        )
        # The ground truth is read before tracking, so a malformed file fails at once and
        # does not end a long run with a traceback after the work is done.
        ground_truth = sequence.ground_truth
        _log_unused_pose_topics(sequence)
        output_dir = args.output or DEFAULT_OUTPUT_ROOT / sequence.name
        created = prepare_output_dir(output_dir)
    except (
        SequenceError, CalibrationError, ConfigError, TrajectoryError, ModelFileError,
        FileNotFoundError, OutputError,
    ) as error:
        logger.error("%s", error)
        return EXIT_USAGE

    result = run_sequence(
        sequence, config, network, device, progress=not args.no_progress, should_stop=stop
    )
    if stop() and not result.interrupted and result.input_error is None:
        logger.warning(
            "the stop request came after the last frame was tracked, so the run is complete and "
            "its outputs get the complete names (%s), not partial ones", TRAJECTORY_FILE,
        )
    if result.frames == 0:
        report_nothing_tracked(output_dir, created)
        return exit_status(result, stop)
    extra = {
        "sequence": str(args.sequence),
        "layout": sequence.layout,
        "config": to_dict(config),
        "device": device,
        "stride": args.stride,
        "max_frames": args.max_frames,
        "groundtruth_topic": args.groundtruth_topic,
        "groundtruth_extrinsic": args.groundtruth_extrinsic,
    }
    try:
        outputs = write_outputs(
            result, output_dir, ground_truth, extra, sequence_length_unit(sequence),
            trace=args.trace,
        )
    except OSError as error:
        logger.error("writing the outputs to %s failed: %s", output_dir, error)
        return EXIT_FAILED
    for line in format_summary(result, outputs):
        print(line)
    return exit_status(result, stop)


def _log_unused_pose_topics(sequence: Sequence) -> None:
    """Name the pose topics of a bag opened without ground truth, and the option that uses them."""
    topics = getattr(sequence, "pose_topics", [])
    if topics and sequence.ground_truth is None:
        logger.info(
            "%s has pose topic %s; pass it with --groundtruth-topic (and --groundtruth-extrinsic "
            "when it is the pose of a body or IMU frame) to compute the ATE",
            sequence.name, ", ".join(topics),
        )


def exit_status(result: RunResult, stop: StopRequest) -> int:
    """Return ``128 + signal`` after a stop request, 2 after an input error, else 0."""
    if stop.signal_number is not None:
        return SIGNAL_EXIT_BASE + stop.signal_number
    return EXIT_USAGE if result.input_error else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
