"""Measure the tracking speed and memory of one or more engine configurations.

``python -m vo_node.bench [SEQUENCE] [--configs small full] [--frames N] [--width 376]
[--threads N] [--model PATH] [--device auto] [--override KEY=VALUE ...] [--rounds N]
[--output FILE.json]``

A configuration may carry its own overrides, ``NAME:KEY=VALUE[,KEY=VALUE...]``, so one
checkout can compare a setting on and off: ``--configs accurate
accurate:frontend.reuse_correlation=false --rounds 3`` measures both three times, alternating,
and prints each one's time relative to the first configuration within a round, with the median
over rounds.

For each configuration a fresh child process loads the frames into memory, tracks them one by one
and records the wall time of every :meth:`VisualOdometry.track` call, its CPU time (all threads of
the process) and the per-stage times of its :class:`TrackResult`. The frames before the engine
first tracks outside the depth-hypothesis trial are warm-up and are left out of the statistics:
the motion probe, the initialisation and the trial, which tracks every frame twice
(``frontend.hypothesis_frames``, plus ``frontend.hypothesis_extra_frames`` while undecided). If it never tracks, the first ``frontend.init_frames`` frames
are the warm-up, and the measured frames then still include initialisation or trial frames:
the bench logs a WARNING, marks the configuration with ``*`` in the table and ``"steady": false``
in the JSON, and reports no round ratio that involves it. Raise ``--frames`` to measure steady
tracking. A tracking loss after the warm-up is reported apart from this: the frames lost or
re-initialising after it are counted in the ``lost`` column and as ``lost_frames`` in the JSON,
with a WARNING, and their times stay in the statistics and the round ratios. The command
prints the median and 90th percentile per stage in milliseconds, frames per second, peak memory and the machine, and writes
the same figures as JSON. Quote medians: a shared machine makes single frames noisy. On a shared
machine the CPU time per frame also varies less than the wall time, because time spent waiting
for a core is not counted; contention still inflates it through shared caches.

Without a trained model the network is randomly initialised with the configuration's sizes.
The network's compute per frame does not depend on the weight values, but the tracking state
does. Random weights predict almost no flow, so the motion probe would drop every frame; the
bench then sets ``frontend.motion_probe_threshold = 0`` so that every frame enters the patch
graph, and records this in the JSON ``weights`` field.

NOTE: with random weights the optimised poses and depths are arbitrary, so reprojected patches
spread wider than with trained weights and more edges take the slower per-pixel correlation path.
Correlation times measured with random weights are therefore an upper bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import platform
import resource
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence as TypingSequence

import numpy as np

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("VO_NODE_DATA", REPO_ROOT.parent / "shared" / "data"))
DEFAULT_SEQUENCE = DATA_ROOT / "euroc_MH_05_difficult"
"""Default input: the EuRoC MH_05 sequence when the data folder is present."""
DEFAULT_DEMO_FOLDER = Path("outputs") / "demo" / "sequence"
"""Fallback input: the rendered demo sequence (rendered on first use)."""
DEFAULT_OUTPUT = Path("outputs") / "bench.json"
DEFAULT_FRAMES = 150
DEFAULT_WIDTH = 376
"""EuRoC half resolution: 752x480 frames are downscaled to 376x240."""
DEFAULT_CONFIGS = ("small",)
RANDOM_MODEL_SEED = 0
STAGES = ("encoders", "correlation", "update", "ba", "bookkeeping")
"""Stage times of :class:`TrackResult`, wall-clock seconds."""
PERCENTILE = 90
MILLISECONDS_PER_SECOND = 1000.0
BYTES_PER_KIBIBYTE = 1024
BYTES_PER_MEBIBYTE = 1024 * 1024
EXIT_OK = 0
EXIT_FAILED = 1
"""Exit status when a measuring child process dies without a result."""
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C: 128 + SIGINT."""
NOT_STEADY_MARK = "*"
"""Marks a configuration in the table whose measured frames include warm-up frames."""


@dataclass(frozen=True)
class BenchSettings:
    """Settings of one configuration's measurement, as plain values that pickle to a child."""

    config: str
    sequence: str
    frames: int
    stride: int
    width: int
    threads: int | None
    model: str | None
    device: str
    overrides: tuple[str, ...] = ()
    """``key=value`` configuration overrides, applied after the preset and the model's sizes."""


# --------------------------------------------------------------------------------------------
# Measurement (runs in a child process per configuration)


def measure(settings: BenchSettings) -> dict[str, Any]:
    """Track the frames of ``settings`` and return the per-frame times and run figures.

    Returns:
        A JSON-ready dict with ``frames`` (per-frame stage seconds, wall seconds, state, keyframe
        flag), ``warmup_frames``, ``finish_seconds``, memory, model and machine fields.
    """
    import torch
    from tqdm import tqdm

    from vo_node.io.sequence import open_sequence
    from vo_node.odometry import VisualOdometry

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    config, network, device, weights = _load_engine(settings)
    sequence = open_sequence(settings.sequence, settings.stride, settings.frames)
    frames = [(frame.image, frame.timestamp_ns) for frame in sequence]
    intrinsics = sequence.camera.intrinsics
    baseline_rss = _current_rss_bytes()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)

    odometry = VisualOdometry(config, network, device)
    records = []
    for image, timestamp_ns in tqdm(frames, desc=settings.config, unit="frame"):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = odometry.track(image, timestamp_ns, intrinsics)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        record = {stage: getattr(result.times, stage) for stage in STAGES}
        record.update(
            wall=wall, cpu=cpu, state=result.state, keyframe=result.is_keyframe,
            edges=result.num_edges, on_trial=result.on_trial,
        )
        records.append(record)
    start = time.perf_counter()
    odometry.finish()
    finish_seconds = time.perf_counter() - start

    peak_bytes, memory_kind = _peak_memory(device)
    return {
        "config": settings.config,
        "engine_config": _config_dict(config),
        "weights": weights,
        "sequence": settings.sequence,
        "input_size": list(frames[0][0].shape[1::-1]),
        "tracked_size": _tracked_size(frames[0][0], intrinsics, config.max_image_width),
        "warmup_frames": warmup_frames(records, config.frontend.init_frames),
        "frames": records,
        "finish_seconds": finish_seconds,
        "peak_memory_bytes": peak_bytes,
        "memory_kind": memory_kind,
        "baseline_rss_bytes": baseline_rss,
        "machine": machine_info(device),
    }


def _load_engine(settings: BenchSettings) -> tuple[Any, Any, str, dict[str, Any]]:
    """Return the configuration, network, device and a description of the weights."""
    import torch

    from vo_node.config import apply_overrides, load_engine_config, parse_override, resolve_device
    from vo_node.model.network import VONetwork, load_model

    config = load_engine_config(settings.config)
    overrides = dict(parse_override(text) for text in settings.overrides)
    device = resolve_device(settings.device)
    config = dataclasses.replace(config, max_image_width=settings.width, device=device)
    model_path = Path(settings.model) if settings.model else _find_default_model()
    if settings.model or (model_path is not None and _model_matches(model_path, config)):
        network, model_config = load_model(model_path, device)
        if model_config.network != config.network:
            logger.warning(
                "%s was built with network sizes %s; timing those instead of %s's",
                model_path, model_config.network, settings.config,
            )
        config = dataclasses.replace(config, network=model_config.network).validate()
        config = apply_overrides(config, overrides) if overrides else config
        return config, network, device, {"kind": "model file", "path": str(model_path)}

    torch.manual_seed(RANDOM_MODEL_SEED)
    network = VONetwork(config.network).to(device).eval()
    config = apply_overrides(config, {"frontend.motion_probe_threshold": 0.0, **overrides})
    note = (
        "randomly initialised network (seed 0). The network costs the same per frame as trained "
        "weights, but the tracking state differs: poses are arbitrary, so more edges take the "
        "slower per-pixel correlation path. The motion probe is disabled so that every frame "
        "enters the patch graph."
    )
    logger.warning("no trained model for %s: timing a %s", settings.config, note)
    return config, network, device, {"kind": "random", "seed": RANDOM_MODEL_SEED, "note": note}


def _find_default_model() -> Path | None:
    """Return the shipped model file, or None when there is none."""
    from vo_node.model.network import default_model_path

    try:
        return default_model_path()
    except FileNotFoundError:
        return None


def _model_matches(path: Path, config: Any) -> bool:
    """Check that ``path`` is a model file built with ``config``'s network sizes."""
    from vo_node.config import ConfigError
    from vo_node.model.network import ModelFileError, load_model

    try:
        _, model_config = load_model(path, "cpu")
    except (ModelFileError, ConfigError) as error:
        logger.warning("ignoring the default model %s: %s", path, error)
        return False
    return model_config.network == config.network


def _config_dict(config: Any) -> dict[str, Any]:
    from vo_node.config import to_dict

    return to_dict(config)


def _tracked_size(image: np.ndarray, intrinsics: np.ndarray, max_width: int) -> list[int]:
    """Return ``[width, height]`` of the frame after the engine's downscaling and crop."""
    from vo_node.odometry.image import prepare_image

    tensor, _ = prepare_image(image, intrinsics, max_width)
    return [int(tensor.shape[2]), int(tensor.shape[1])]


def _current_rss_bytes() -> int | None:
    """Return the resident set size of this process now (Linux ``/proc``), or None."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _peak_memory(device: str) -> tuple[int, str]:
    """Return the peak CUDA memory allocated by torch, or this process's peak RSS on the CPU."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device)), "cuda_allocated"
    # Linux reports ru_maxrss in kibibytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * BYTES_PER_KIBIBYTE, "cpu_rss"


def machine_info(device: str) -> dict[str, Any]:
    """Return the CPU model, core counts, torch threads and version, and the device name."""
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device,
        "load_average": list(os.getloadavg()),
    }
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------------------------
# Statistics and report


def warmup_frames(records: list[dict[str, Any]], fallback: int) -> int:
    """Return the index of the first record that tracks outside the depth-hypothesis trial, or
    ``fallback`` (at most the record count) when there is none."""
    for index, record in enumerate(records):
        if record["state"] == "tracking" and not record.get("on_trial", False):
            return index
    return min(fallback, len(records))


def is_steady(record: dict[str, Any]) -> bool:
    """Check that a frame record tracks outside the depth-hypothesis trial: not an
    initialisation, lost or trial frame."""
    return record["state"] == "tracking" and not record.get("on_trial", False)


def count_tracking_losses(measured: list[dict[str, Any]]) -> tuple[int, int, int]:
    """Split the measured frames that are not steady by when they occur.

    Returns:
        ``(unsettled, lost, losses)``. ``unsettled`` counts the frames before the first steady
        one: warm-up frames left in the measurement because the engine did not settle within
        the warm-up. ``lost`` counts the later frames that are lost, re-initialise or run a new
        trial after a tracking loss. ``losses`` counts the changes from steady to not steady.
    """
    first_steady = next(
        (index for index, record in enumerate(measured) if is_steady(record)), len(measured)
    )
    lost = 0
    losses = 0
    previous_steady = True
    for record in measured[first_steady:]:
        steady = is_steady(record)
        if not steady:
            lost += 1
            if previous_steady:
                losses += 1
        previous_steady = steady
    return first_steady, lost, losses


def summarize(measurement: dict[str, Any]) -> dict[str, Any]:
    """Return median and p90 milliseconds per stage, frames per second and memory in MiB.

    Warm-up frames (``measurement["warmup_frames"]``) are left out; if no frame remains, all
    frames are used and ``warmup_discarded`` is 0. ``not_steady_frames`` counts the measured
    frames before the first steady one, which still initialise or run the depth-hypothesis
    trial, and ``steady`` is True when there are none: only then do the times describe steady
    tracking. ``lost_frames`` counts the measured frames after a tracking loss that are lost or
    re-initialise, and ``tracking_losses`` the losses. Their times are included in the figures.
    """
    records = measurement["frames"]
    warmup = measurement["warmup_frames"] if len(records) > measurement["warmup_frames"] else 0
    measured = records[warmup:]
    columns = {stage: [record[stage] for record in measured] for stage in STAGES}
    columns["stages_total"] = [sum(record[stage] for stage in STAGES) for record in measured]
    columns["wall"] = [record["wall"] for record in measured]
    if all("cpu" in record for record in measured):
        columns["cpu"] = [record["cpu"] for record in measured]
    milliseconds = {
        name: {
            "median": MILLISECONDS_PER_SECOND * float(np.median(values)),
            f"p{PERCENTILE}": MILLISECONDS_PER_SECOND * float(np.percentile(values, PERCENTILE)),
        }
        for name, values in columns.items()
    }
    wall_seconds = float(np.sum(columns["wall"]))
    states = [record["state"] for record in measured]
    edges = [record["edges"] for record in measured]
    not_steady, lost, losses = count_tracking_losses(measured)
    return {
        "config": measurement["config"],
        "measured_frames": len(measured),
        "warmup_discarded": warmup,
        "not_steady_frames": not_steady,
        "steady": not_steady == 0,
        "lost_frames": lost,
        "tracking_losses": losses,
        "milliseconds": milliseconds,
        "fps_median": MILLISECONDS_PER_SECOND / milliseconds["wall"]["median"],
        "fps_overall": len(measured) / wall_seconds if wall_seconds > 0 else 0.0,
        "finish_ms": MILLISECONDS_PER_SECOND * measurement["finish_seconds"],
        "peak_memory_mib": measurement["peak_memory_bytes"] / BYTES_PER_MEBIBYTE,
        "memory_kind": measurement["memory_kind"],
        "keyframe_fraction": float(np.mean([record["keyframe"] for record in measured])),
        "median_edges": float(np.median(edges)),
        "states": {state: states.count(state) for state in sorted(set(states))},
    }


def format_table(summaries: list[dict[str, Any]], with_rounds: bool = False) -> list[str]:
    """Return the text table: one row per measurement, median / p90 milliseconds per stage, and
    the round in the first column when ``with_rounds``, and the lost or re-initialising frames
    after tracking losses in the last column."""
    columns = [*STAGES, "stages_total", "wall", "cpu"]
    header = ["config", *columns, "fps med", "fps all", "peak MiB", "lost"]
    if with_rounds:
        header.insert(0, "round")
    rows = []
    for summary in summaries:
        mark = "" if summary.get("steady", True) else NOT_STEADY_MARK
        cells = [summary["config"] + mark]
        if with_rounds:
            cells.insert(0, str(summary["round"]))
        for name in columns:
            times = summary["milliseconds"].get(name)
            if times is None:
                cells.append("-")
                continue
            cells.append(f"{times['median']:.1f}/{times[f'p{PERCENTILE}']:.1f}")
        cells += [
            f"{summary['fps_median']:.2f}",
            f"{summary['fps_overall']:.2f}",
            f"{summary['peak_memory_mib']:.0f}",
            str(summary.get("lost_frames", "-")),
        ]
        rows.append(cells)
    widths = [max(len(row[index]) for row in [header, *rows]) for index in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    if not all(summary.get("steady", True) for summary in summaries):
        lines.append(
            f"{NOT_STEADY_MARK} measured frames include initialisation or depth-hypothesis "
            "trial frames, so these times are not steady tracking; raise --frames"
        )
    if any(summary.get("lost_frames", 0) for summary in summaries):
        lines.append(
            "lost: measured frames that are lost or re-initialise after a tracking loss. Their "
            "times are included, so compare configurations with different counts with care"
        )
    return [f"per-stage milliseconds per frame as median/p{PERCENTILE}", *lines]


def format_machine(machine: dict[str, Any]) -> str:
    """Return one line describing the machine a measurement ran on."""
    load = ", ".join(f"{value:.2f}" for value in machine["load_average"])
    device = machine.get("device_name", machine["device"])
    return (
        f"machine: {machine['cpu_model']}, {machine['usable_cores']} usable of "
        f"{machine['logical_cores']} cores, torch {machine['torch_version']} with "
        f"{machine['torch_threads']} threads, device {device}, load average {load}"
    )


# --------------------------------------------------------------------------------------------
# Command line


def default_sequence() -> Path:
    """Return the EuRoC sequence when present, else the demo sequence (rendered if needed)."""
    if DEFAULT_SEQUENCE.is_dir():
        return DEFAULT_SEQUENCE.resolve()
    from vo_node.demo_data import render_demo_sequence

    logger.warning(
        "%s is missing, so the bench times the rendered demo sequence instead. Set VO_NODE_DATA "
        "to the folder that contains euroc_MH_05_difficult to time EuRoC",
        DEFAULT_SEQUENCE,
    )
    return render_demo_sequence(DEFAULT_DEMO_FOLDER).resolve()


def image_width(text: str) -> int:
    """Parse ``--width``: a whole number of pixels, at least the engine's smallest image width."""
    from vo_node.config import MIN_IMAGE_WIDTH
    from vo_node.run import positive_int

    value = positive_int(text)
    if value < MIN_IMAGE_WIDTH:
        raise argparse.ArgumentTypeError(
            f"expected a width of at least {MIN_IMAGE_WIDTH} pixels, got {value}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m vo_node.bench``."""
    from vo_node.run import positive_int

    parser = argparse.ArgumentParser(
        prog="python -m vo_node.bench",
        description="Measure per-stage tracking times, frames per second and peak memory.",
    )
    parser.add_argument(
        "sequence", type=Path, nargs="?", default=None,
        help=f"sequence to track (default: {DEFAULT_SEQUENCE} when present, else the demo "
        "sequence)",
    )

    parser.add_argument(
        "--configs", nargs="+", default=list(DEFAULT_CONFIGS), metavar="CONFIG",
        help="preset names or YAML paths to measure, each optionally followed by its own "
        "overrides as NAME:KEY=VALUE[,KEY=VALUE...], e.g. accurate "
        "accurate:frontend.reuse_correlation=false (default: small)",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=1,
        help="measure the configurations this many times, alternating, and report the median "
        "over rounds and each configuration's time relative to the first one in the same round "
        "(default 1)",
    )
    parser.add_argument("--frames", type=positive_int, default=DEFAULT_FRAMES,
                        help=f"frames to track per configuration (default: {DEFAULT_FRAMES})")
    parser.add_argument("--stride", type=positive_int, default=1, metavar="N",
                        help="keep every N-th frame (default 1)")
    parser.add_argument(
        "--width", type=image_width, default=DEFAULT_WIDTH,
        help=f"downscale wider frames to this width in pixels (default: {DEFAULT_WIDTH}, EuRoC "
        "half resolution)",
    )
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice)")

    parser.add_argument(
        "--model", type=Path, default=None,
        help="model file for every configuration (default: vo_small.pt where its sizes match, "
        "else a randomly initialised network)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="compute device (default: auto)")
    parser.add_argument(
        "--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="configuration override for every configuration, e.g. "
        "frontend.patches_per_frame=48 (repeatable; default: none)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"JSON report file (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="logging level")
    return parser


class MeasurementProcessError(RuntimeError):
    """The child process that measures a configuration died before it returned a result."""


def measure_in_child(settings: BenchSettings, log_level: int = logging.INFO) -> dict[str, Any]:
    """Run :func:`measure` in a fresh process, so each configuration's peak memory is its own.

    The child ignores SIGINT from its start, so Ctrl-C raises KeyboardInterrupt here only, and
    the child is then terminated. An exception in the child is raised here again.

    Raises:
        MeasurementProcessError: the child died without a result, for example killed by the
            out-of-memory killer or by a segmentation fault.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    # ``measure`` is looked up now and pickled by name, so a test can replace it.
    process = context.Process(
        target=_run_in_child, args=(measure, settings, log_level, sender),
        name=f"bench {settings.config}",
    )
    # An ignored signal stays ignored across exec, and Python then installs no SIGINT handler,
    # so the child cannot print a KeyboardInterrupt traceback even while it starts up.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    # Without the parent's copy of the sending end, the pipe reports EOF once the child is gone.
    sender.close()
    try:
        outcome = _receive_outcome(receiver, process)
    except BaseException:
        process.terminate()
        process.join()
        raise
    finally:
        receiver.close()
    process.join()
    if outcome is None:
        raise MeasurementProcessError(_death_message(settings.config, process.exitcode))
    if process.exitcode != 0:
        logger.warning("the child process that measured %s exited with status %s after "
                       "returning its result", settings.config, process.exitcode)
    if isinstance(outcome, _ChildFailure):
        raise outcome.error from _ChildTraceback(outcome.traceback)
    return outcome


@dataclass
class _ChildFailure:
    """An exception raised in the child, with its formatted traceback."""

    error: BaseException
    traceback: str


class _ChildTraceback(Exception):
    """The traceback of an exception raised in the child, shown as the cause of the re-raised
    exception."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def _run_in_child(worker: Any, settings: BenchSettings, log_level: int,
                  sender: multiprocessing.connection.Connection) -> None:
    """Send ``worker(settings)``, or the exception it raises, to the parent."""
    _configure_logging(log_level)
    try:
        outcome: Any = worker(settings)
    except Exception as error:  # noqa: BLE001 - every error goes to the parent
        outcome = _ChildFailure(_picklable(error), traceback.format_exc())
    sender.send(outcome)
    sender.close()


def _picklable(error: Exception) -> Exception:
    """Return ``error`` when it survives pickling, else a RuntimeError with its type and text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any pickling failure falls back to the text
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _receive_outcome(receiver: multiprocessing.connection.Connection,
                     process: multiprocessing.process.BaseProcess) -> Any:
    """Wait for the child's result or its exit; return None when it exited without sending."""
    multiprocessing.connection.wait([receiver, process.sentinel])
    if not receiver.poll():
        return None
    try:
        return receiver.recv()
    except EOFError:
        # The child died, or exited, before or while it sent its result.
        return None


def _death_message(config: str, exitcode: int | None) -> str:
    """Return the error for a measuring child that exited without a result."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        termination = f"was killed by {name} (signal {number})"
        if number == signal.SIGKILL:
            cause = (
                "The out-of-memory killer sends SIGKILL, so check the kernel log (dmesg) and "
                "lower --frames or --width, or free memory"
            )
        elif number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL):
            cause = (
                "It crashed in native code, such as torch or a library it loads. Rerun with "
                "PYTHONFAULTHANDLER=1 set to print the Python stack of the crash"
            )
        else:
            cause = "Another process sent this signal"
    else:
        termination = f"exited with status {exitcode}"
        cause = "Check the log lines above for the child's own error output"
    return (
        f"measuring {config} failed: its child process {termination} before it returned a result. "
        f"{cause}"
    )


def _configure_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")



def main(argv: TypingSequence[str] | None = None) -> int:
    """Run the command and return the process exit status.

    The status is 0 on success, 1 when a measuring child process died, 2 for invalid arguments
    and 130 after Ctrl-C. Only a run that returns 0 writes the report.
    """
    args = build_parser().parse_args(argv)
    log_level = getattr(logging, args.log_level)
    _configure_logging(log_level)
    try:
        return _run(args, log_level)
    except KeyboardInterrupt:
        logger.warning("interrupted by Ctrl-C; no report was written to %s", args.output)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, log_level: int) -> int:
    """Measure every configuration of ``args``, print the figures and write the report."""
    from vo_node.config import ConfigError
    from vo_node.io.sequence import SequenceError
    from vo_node.model.network import ModelFileError

    if args.model is not None and not args.model.is_file():
        logger.error("model file %s not found; pass an existing file to --model", args.model)
        return EXIT_USAGE
    try:
        _check_configs(args.configs, args.override)
    except ConfigError as error:
        logger.error("%s", error)
        return EXIT_USAGE
    sequence = args.sequence or default_sequence()
    report: dict[str, Any] = {"command": " ".join(sys.argv), "results": []}
    summaries = []
    for round_number in range(1, args.rounds + 1):
        for spec in args.configs:
            name, own_overrides = parse_config_spec(spec)
            settings = BenchSettings(
                config=name, sequence=str(sequence), frames=args.frames, stride=args.stride,
                width=args.width, threads=args.threads,
                model=str(args.model) if args.model else None, device=args.device,
                overrides=(*args.override, *own_overrides),
            )
            logger.info("measuring %s (round %d of %d) on %d frames of %s", spec, round_number,
                        args.rounds, args.frames, sequence)
            try:
                measurement = measure_in_child(settings, log_level)
            except (ConfigError, SequenceError, ModelFileError, FileNotFoundError) as error:
                logger.error("%s", error)
                return EXIT_USAGE
            except MeasurementProcessError as error:
                logger.error("%s. No report was written to %s", error, args.output)
                return EXIT_FAILED
            summary = summarize(measurement)
            summary.update(config=spec, round=round_number)
            if not summary["steady"]:
                summary["warning"] = not_steady_warning(spec, summary, measurement, args.frames)
                logger.warning("%s", summary["warning"])
            if summary["tracking_losses"]:
                summary["tracking_loss_warning"] = tracking_loss_warning(spec, summary)
                logger.warning("%s", summary["tracking_loss_warning"])
            summaries.append(summary)
            report["results"].append({"summary": summary, "measurement": measurement})
            print(format_machine(measurement["machine"]))
            print(
                f"{spec}: {summary['measured_frames']} frames of {measurement['sequence']} "
                f"measured after {summary['warmup_discarded']} warm-up frames, tracked at "
                f"{measurement['tracked_size'][0]}x{measurement['tracked_size'][1]}, "
                f"weights: {measurement['weights']['kind']}, states {summary['states']}"
            )
    for line in format_table(summaries, with_rounds=args.rounds > 1):
        print(line)
    if args.rounds > 1:
        report["rounds"] = summarize_rounds(summaries, list(args.configs))
        for line in format_rounds(report["rounds"]):
            print(line)
    _write_report(args.output, report)
    print(f"report written to {args.output}")
    return EXIT_OK


def not_steady_warning(spec: str, summary: dict[str, Any], measurement: dict[str, Any],
                       frames: int) -> str:
    """Return the warning for a configuration whose measured frames include warm-up frames."""
    frontend = measurement.get("engine_config", {}).get("frontend", {})
    trial = frontend.get("hypothesis_frames", 0) + frontend.get("hypothesis_extra_frames", 0)
    return (
        f"{spec}: {summary['not_steady_frames']} of {summary['measured_frames']} measured frames "
        "are initialisation or depth-hypothesis trial frames, because tracking did not leave "
        f"the trial within the {frames} frames tracked. Its times are not steady tracking and "
        "not comparable with a configuration measured after its trial. Raise --frames: the "
        f"trial can last up to {trial} frames (frontend.hypothesis_frames + "
        "frontend.hypothesis_extra_frames) after the "
        f"{frontend.get('init_frames', 'frontend.init_frames')} initialisation frames"
    )


def tracking_loss_warning(spec: str, summary: dict[str, Any]) -> str:
    """Return the warning for a configuration that lost tracking after its warm-up."""
    losses = summary["tracking_losses"]
    return (
        f"{spec}: tracking was lost {losses} time{'' if losses == 1 else 's'} after the warm-up, "
        f"and {summary['lost_frames']} of {summary['measured_frames']} measured frames are lost "
        "or re-initialising frames. Their times are included in the figures. The "
        "'tracking lost at frame' warnings above name the frames and reasons"
    )


def parse_config_spec(spec: str) -> tuple[str, tuple[str, ...]]:
    """Split ``NAME[:KEY=VALUE[,KEY=VALUE...]]`` into the preset name or YAML path and its
    overrides.

    The overrides start at the last colon before the first ``=``, so a path with colons stays
    whole. Raises :class:`vo_node.config.ConfigError` for a trailing colon with no override, and
    for text after a colon without ``=`` unless the whole specification is a ``.yaml`` path.
    """
    from vo_node.config import ConfigError

    if spec.endswith(":"):
        raise ConfigError(
            f"invalid configuration {spec!r}: the colon must be followed by overrides; write "
            f"{spec}KEY=VALUE or drop the colon"
        )
    equals = spec.find("=")
    if equals < 0 and ":" in spec and Path(spec).suffix not in (".yaml", ".yml"):
        # Preset names have no colon, so the text after it was meant as overrides.
        name, _, text = spec.rpartition(":")
        raise ConfigError(
            f"invalid configuration {spec!r}: {text!r} after the colon is not KEY=VALUE; write "
            f"{name}:KEY=VALUE[,KEY=VALUE], or give a preset name or a .yaml path"
        )
    colon = spec.rfind(":", 0, equals) if equals >= 0 else -1
    if colon < 0:
        return spec, ()
    return spec[:colon], tuple(text for text in spec[colon + 1 :].split(",") if text)


def summarize_rounds(summaries: list[dict[str, Any]], specs: list[str]) -> dict[str, Any]:
    """Return the all-stages medians per round of each configuration, their median, and each
    configuration's time over the first configuration's time in the same round.

    On a shared machine the speed drifts from round to round, so the ratio is taken within a
    round, and its median over rounds is the figure to quote. A round's ratio is None when
    either configuration's measured frames include initialisation or trial frames (``steady``
    False in its summary), because its time then mixes phases of different cost.
    ``median_ratio`` is None when no round has a ratio.
    """
    totals = {
        spec: [s["milliseconds"]["stages_total"]["median"] for s in summaries if s["config"] == spec]
        for spec in specs
    }
    steady = {
        spec: [s.get("steady", True) for s in summaries if s["config"] == spec] for spec in specs
    }
    reference = specs[0]
    rows = []
    for spec in specs:
        ratios = [
            value / base if own_steady and base_steady else None
            for value, base, own_steady, base_steady in zip(
                totals[spec], totals[reference], steady[spec], steady[reference]
            )
        ]
        valid = [ratio for ratio in ratios if ratio is not None]
        rows.append({
            "config": spec,
            "stages_total_ms": totals[spec],
            "steady": steady[spec],
            "median_ms": float(np.median(totals[spec])),
            "ratio_to_first": ratios,
            "median_ratio": float(np.median(valid)) if valid else None,
        })
    return {"reference": reference, "configs": rows}


def format_rounds(rounds: dict[str, Any]) -> list[str]:
    """Return one line per configuration: its all-stages median per round, the median over
    rounds and its median ratio to the reference configuration within a round."""
    lines = [f"all stages, ms per frame by round; ratio to {rounds['reference']} within a round:"]
    for row in rounds["configs"]:
        per_round = ", ".join(f"{value:.1f}" for value in row["stages_total_ms"])
        valid = [ratio for ratio in row["ratio_to_first"] if ratio is not None]
        left_out = len(row["ratio_to_first"]) - len(valid)
        if not valid:
            ratio = (
                "ratio not reported: it or the reference was measured during initialisation "
                "or the depth-hypothesis trial, so raise --frames"
            )
        else:
            ratio = (
                f"ratio {row['median_ratio']:.3f} (rounds {min(valid):.3f} to {max(valid):.3f})"
            )
            if left_out:
                ratio += (
                    f", {left_out} round{'' if left_out == 1 else 's'} left out as measured "
                    "during initialisation or the trial"
                )
        lines.append(f"  {row['config']}: {per_round} (median {row['median_ms']:.1f}); {ratio}")
    return lines


def _check_configs(names: TypingSequence[str], overrides: TypingSequence[str]) -> None:
    """Load every configuration with the overrides, so a bad one stops the bench before any
    measurement; raise :class:`vo_node.config.ConfigError` naming it."""
    from vo_node.config import ConfigError, apply_overrides, load_engine_config, parse_override

    repeated = sorted({spec for spec in names if list(names).count(spec) > 1})
    if repeated:
        raise ConfigError(
            f"--configs lists {', '.join(repeated)} more than once; give each configuration "
            "once (use --rounds to measure it again)"
        )
    global_overrides = [parse_override(text) for text in overrides]
    for spec in names:
        name, own_overrides = parse_config_spec(spec)
        try:
            parsed = dict([*global_overrides, *(parse_override(text) for text in own_overrides)])
            config = load_engine_config(name)
            if parsed:
                apply_overrides(config, parsed)
        except ConfigError as error:
            if not own_overrides:
                raise
            raise ConfigError(f"--configs {spec}: {error}") from error


def _write_report(path: Path, report: dict[str, Any]) -> None:
    from vo_node.io.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")


if __name__ == "__main__":
    sys.exit(main())
