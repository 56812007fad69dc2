"""Track a sequence with the shipped model and print a short summary: what ``make demo`` runs.

``python -m vo_node.demo [PATH] [--offline] [--output outputs/demo] [--config small]
[--model PATH] [--device auto] [--max-frames N]``

By default the demo goes through the ROS 2 node, the product's main path. Without ``PATH`` it
renders its synthetic default sequence into ``OUTPUT/sequence`` and writes it as a ROS 2 bag to
``OUTPUT/bags``. Later runs reuse both while they are up to date. A ``PATH`` that is a bag is
replayed as it is, and any other sequence (EuRoC, KITTI, an image folder, ...) is written to a bag
under ``OUTPUT/bags`` first. :func:`vo_node.ros.replay.evaluate_bag` then runs the node in this
process and plays the bag into it in lockstep with reliable QoS. The demo prints frames received,
processed and dropped, the node's latency and the ATE. This starts DDS, so run it inside
``scripts/netns_run.sh`` on shared machines (``make demo`` does).

``--offline`` tracks the sequence in this process without ROS (:func:`vo_node.run.run_sequence`)
and writes the trajectory, metrics and plot to ``OUTPUT``. Offline tracking goes through a
:data:`Tracker` function, :func:`track_offline` by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Sequence as TypingSequence

import torch

from vo_node.config import ConfigError, EngineConfig, to_dict
from vo_node.io.atomic import atomic_write
from vo_node.io.camera import CalibrationError
from vo_node.io.sequence import Sequence, SequenceError, open_sequence
from vo_node.io.trajectory import TrajectoryError, write_tum
from vo_node.model.network import ModelFileError, default_model_path, load_model
from vo_node.ros.replay import positive_seconds
from vo_node.run import (
    BYTES_PER_MEBIBYTE,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    METRICS_FILE,
    SIGNAL_EXIT_BASE,
    TRAJECTORY_FILE,
    OutputError,
    RunOutputs,
    RunResult,
    StopRequest,
    exit_status,
    format_accuracy,
    format_percent,
    format_written_files,
    load_configuration,
    load_engine,
    positive_int,
    prepare_output_dir,
    remove_created_folders,
    remove_stale_outputs,
    report_nothing_tracked,
    run_sequence,
    sequence_length_unit,
    write_outputs,
)

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path("outputs") / "demo"
SEQUENCE_FOLDER = "sequence"
"""Subfolder of the output folder that contains the rendered default sequence."""
BAG_FOLDER = "bags"
"""Subfolder of the output folder that contains the bags written from sequences."""
DEFAULT_BAG_NAME = "synthetic_demo"
EXIT_NODE_FAILED = 1
"""Exit status when the node failed to start or to finish a frame."""
BAG_SUFFIXES = (".db3", ".mcap", ".bag")
"""Files that are bags (ROS 2 storage files, ROS 1 bags) rather than sequences."""
PROGRESS_INTERVAL_S = 10.0
"""The replay through the node logs its progress at most this often, seconds."""
SHM_PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_shm.xml"
"""Fast DDS shared-memory profile of a checkout (absent in an installed package)."""
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
        # Keep "default model ... not found (looked in ...)" and replace the generic fix.
        searched = str(error).split("; ")[0]
        raise MissingModelError(
            f"{searched}. The demo needs a trained model: train one with `{TRAIN_COMMAND}` (it "
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
    return sequence_length_unit(sequence)


def format_demo_summary(result: RunResult, outputs: RunOutputs) -> list[str]:
    """Return the summary lines: frames, speed, memory, accuracy and the files written.

    Lengths are in ``outputs.length_unit``.
    """
    lines = [
        f"frames tracked: {result.frames}{' (interrupted)' if result.interrupted else ''}",
        f"frames per second: {result.frames_per_second:.2f} ({result.seconds:.1f} s)",
        f"low-confidence frames: {result.low_confidence_frames}",
        f"peak memory ({result.memory_kind}): "
        f"{result.peak_memory_bytes / BYTES_PER_MEBIBYTE:.0f} MiB",
    ]
    return lines + format_accuracy(outputs) + format_written_files(outputs)


# --------------------------------------------------------------------------------------------
# Through the ROS 2 node


@dataclass
class DemoBag:
    """A bag to replay through the node, with its topics and the ground truth's unit."""

    path: Path
    image_topic: str
    camera_info_topic: str | None
    groundtruth_topic: str | None
    unit: str = "m"
    frames: int | None = None
    """Number of images in the bag, when known."""


def is_bag(path: Path) -> bool:
    """Check whether ``path`` is a bag: a folder with ``metadata.yaml`` or a bag storage file."""
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix in BAG_SUFFIXES


def prepare_bag(path: Path | None, output_dir: Path, max_frames: int | None) -> DemoBag:
    """Return the bag to replay: ``path`` itself when it is a bag, else a written bag.

    A folder that contains exactly one bag (one or two levels down) replays that bag. Without
    ``path`` the default sequence is rendered (or reused) and written as a bag; another
    sequence is opened with ``max_frames`` and written as a bag. Written bags live in
    ``output_dir/bags`` and are reused while the sequence is unchanged.
    """
    from vo_node.io.readers import resolve_sequence_path
    from vo_node.ros.bagwrite import (
        DEFAULT_CAMERA_INFO_TOPIC,
        DEFAULT_GROUNDTRUTH_TOPIC,
        DEFAULT_IMAGE_TOPIC,
        cached_sequence_bag,
    )

    if path is not None and not is_bag(path):
        # A folder that contains one bag (such as a folder of recordings) replays that bag, and
        # one that contains several raises an error that lists them.
        path = resolve_sequence_path(path)
    if path is not None and is_bag(path):
        if max_frames is not None:
            logger.warning("--max-frames applies to sequences; bag %s is replayed whole", path)
        return describe_bag(path)
    sequence = open_demo_sequence(path, output_dir, max_frames)
    name = DEFAULT_BAG_NAME if path is None else sequence.name
    if path is not None and not name.startswith(sequence.layout):
        name = f"{sequence.layout}_{name}"
    if max_frames is not None:
        name += f"_first{max_frames}"
    bag = cached_sequence_bag(sequence, output_dir / BAG_FOLDER / name)
    groundtruth = DEFAULT_GROUNDTRUTH_TOPIC if sequence.ground_truth is not None else None
    return DemoBag(bag, DEFAULT_IMAGE_TOPIC, DEFAULT_CAMERA_INFO_TOPIC, groundtruth,
                   length_unit(sequence), len(sequence))


def describe_bag(path: Path) -> DemoBag:
    """Find the image, camera_info and ground-truth topics of a bag recorded elsewhere.

    The image topic is the bag's only image topic, the camera_info topic the one beside it (or
    the only one), and the ground truth the only pose topic, if there is exactly one.

    Raises:
        SequenceError, CalibrationError: no single image topic or camera_info topic.
    """
    from rosbags.highlevel import AnyReader, AnyReaderError

    from vo_node.io.bag import select_camera_info_topic, select_image_topic
    from vo_node.ros.replay import POSE_TYPES

    try:
        with AnyReader([path]) as reader:
            connections = list(reader.connections)
    except (AnyReaderError, OSError) as error:
        raise SequenceError(f"bag {path} could not be read: {error}") from None
    topics = {connection.topic: connection.msgtype for connection in connections}
    image_topic = select_image_topic(topics, None, path)
    frames = sum(c.msgcount for c in connections if c.topic == image_topic)
    camera_info_topic = select_camera_info_topic(topics, image_topic, path)
    poses = sorted(topic for topic, kind in topics.items() if kind in POSE_TYPES)
    groundtruth = poses[0] if len(poses) == 1 else None
    if len(poses) > 1:
        logger.warning("bag %s has several pose topics (%s); no ATE is computed",
                       path, ", ".join(poses))
    return DemoBag(path, image_topic, camera_info_topic, groundtruth, frames=frames)


def node_arguments(model_path: Path, config: str, device: str) -> list[str]:
    """Return the node's ROS arguments for the model file, configuration and device."""
    return [
        "-p", f"model.weights:={model_path}",
        "-p", f"model.config:={config}",
        "-p", f"model.device:={device}",
    ]


def format_node_summary(report: Any, bag: DemoBag, outputs: dict[str, Path]) -> list[str]:
    """Return the summary lines of a replay through the node (``report``: EvaluationReport)."""
    lines = [
        f"bag: {bag.path} (replayed through vo_node in lockstep, reliable QoS)",
        f"frames in bag: {report.frames_in_bag}",
        f"frames received: {report.frames_received}",
        f"frames processed: {report.frames_processed}",
        f"frames used to initialise (no odometry): {report.frames_initialising}",
        f"frames dropped: {report.frames_dropped}",
        f"frames skipped: {report.frames_skipped}",
        f"frames lost: {report.frames_lost}",
        f"latency median/p95: {report.latency_text()}"
        + ("" if report.latency_median_ms is None else " (image arrival to published odometry)"),
    ]
    if report.ate is not None:
        lines += format_node_accuracy(report.ate, bag.unit)
    else:
        lines.append(f"ATE: not computed ({report.ate_error})")
    lines += report.segment_lines()
    lines.extend(f"{name}: {path}" for name, path in outputs.items())
    return lines


def format_node_accuracy(ate: dict[str, Any], unit: str) -> list[str]:
    """Return the ATE line and its standstill reference from a metrics dict (``to_dict``)."""
    lines = [
        f"ATE RMSE: {ate['ate_rmse']:.3f} {unit} ({format_percent(ate['ate_percent'])} of the "
        f"{ate['path_length']:.2f} {unit} path)"
    ]
    standstill = ate.get("standstill_ate_rmse")
    if standstill is not None:
        lines.append(
            f"standstill reference: ATE RMSE {standstill:.3f} {unit} "
            f"({format_percent(ate.get('standstill_ate_percent'))}) for an estimate that never "
            "moves"
        )
    return lines


def write_node_outputs(report: Any, bag: DemoBag, output_dir: Path,
                       extra: dict[str, Any]) -> dict[str, Path]:
    """Write the recorded trajectory (TUM) and the report (JSON); return ``{name: path}``.

    The files of an earlier run that this one does not write (a trajectory when no pose was
    recorded, the plot of an offline run) are removed from ``output_dir``.
    """
    written = [METRICS_FILE] + ([TRAJECTORY_FILE] if len(report.trajectory) else [])
    remove_stale_outputs(output_dir, written)
    outputs = {}
    if len(report.trajectory):
        outputs["trajectory"] = write_tum(output_dir / TRAJECTORY_FILE, report.trajectory)
    counts = {
        name: getattr(report, name)
        for name in ("frames_in_bag", "frames_received", "frames_processed",
                     "frames_initialising", "frames_dropped",
                     "frames_skipped", "frames_lost", "odometry_messages", "latency_median_ms",
                     "latency_p95_ms", "wall_time_s", "groundtruth_extrinsic")
    }
    document = {
        "bag": str(bag.path),
        "image_topic": bag.image_topic,
        "camera_info_topic": bag.camera_info_topic,
        "groundtruth_topic": bag.groundtruth_topic,
        "length_unit": bag.unit,
        **counts,
        "metrics": report.ate,
        "metrics_error": report.ate_error,
        "segments": [segment_document(segment) for segment in report.segments],
        **extra,
    }
    outputs["report"] = output_dir / METRICS_FILE
    with atomic_write(outputs["report"]) as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    return outputs


def segment_document(segment: Any) -> dict[str, Any]:
    """Return the JSON fields of one odometry segment (``SegmentEvaluation``).

    ``metrics`` and ``metrics_error`` stay None unless the run had several segments and
    ground truth.
    """
    return {
        "start": segment.start,
        "poses": segment.poses,
        "first_stamp_ns": segment.first_stamp_ns,
        "metrics": segment.ate,
        "metrics_error": segment.ate_error,
    }


def run_through_node(args: argparse.Namespace) -> int:
    """Replay the demo bag through the node and print the summary; return the exit status."""
    from vo_node.ros.replay import ReplayError, evaluate_bag

    try:
        # Checked before the bag is written and DDS starts; the node would find them only then.
        load_configuration(args.config, [], args.device)
        model_path = resolve_model(args.model)
        load_model(model_path)  # an unreadable file fails here, not in the node after the bag
        created = prepare_output_dir(args.output)
        bag = prepare_bag(args.sequence, args.output, args.max_frames)
    except (MissingModelError, ModelFileError, SequenceError, CalibrationError, TrajectoryError,
            ConfigError, FileNotFoundError, FileExistsError, OutputError) as error:
        logger.error("%s", error)
        return EXIT_USAGE
    if bag.groundtruth_topic and "imu" in bag.groundtruth_topic and not args.groundtruth_extrinsic:
        logger.warning(
            "ground truth %s looks like an IMU pose; pass its T_body_cam with "
            "--groundtruth-extrinsic, or the camera-to-IMU lever arm counts as error",
            bag.groundtruth_topic,
        )
    if SHM_PROFILE.is_file():
        os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(SHM_PROFILE))
    logger.info("replaying %s through vo_node (image topic %s)", bag.path, bag.image_topic)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        report = evaluate_bag(
            bag.path, bag.image_topic, bag.camera_info_topic, bag.groundtruth_topic,
            node_arguments(model_path, args.config, args.device),
            frame_timeout_s=args.frame_timeout, after_image=ProgressLog(bag.frames),
            groundtruth_extrinsic=args.groundtruth_extrinsic,
        )
    except ReplayError as error:
        remove_created_folders(created)
        logger.error("%s", error)
        return EXIT_NODE_FAILED
    except KeyboardInterrupt as error:
        remove_created_folders(created)
        logger.warning("interrupted; nothing was written")
        return interrupt_exit_status(error)
    finally:
        signal.signal(signal.SIGTERM, previous)

    extra = {"config": args.config, "device": args.device, "model": str(model_path)}
    try:
        outputs = write_node_outputs(report, bag, args.output, extra)
    except OSError as error:
        logger.error("writing the outputs to %s failed: %s", args.output, error)
        return EXIT_FAILED
    for line in format_node_summary(report, bag, outputs):
        print(line)
    return EXIT_OK


class ProgressLog:
    """``after_image`` hook of ``evaluate_bag`` that logs the frames done every few seconds."""

    def __init__(self, total: int | None, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.total = total
        self.interval_s = interval_s
        self._last = time.monotonic()

    def __call__(self, index: int, _node: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        of_total = f" of {self.total}" if self.total else ""
        logger.info("the node has finished %d%s frames", index + 1, of_total)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs."""


def _raise_terminated(_signal_number: int, _frame: FrameType | None) -> None:
    raise Terminated


def interrupt_exit_status(error: KeyboardInterrupt) -> int:
    """Return ``128 + signal``: 143 for SIGTERM (:class:`Terminated`), else 130 for SIGINT."""
    number = signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT
    return SIGNAL_EXIT_BASE + number


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m vo_node.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m vo_node.demo",
        description="Replay a sequence (by default a rendered synthetic one) through the ROS 2 "
        "node, or track it offline with --offline, and summarise the run.",
    )
    parser.add_argument(
        "sequence", type=Path, nargs="?", default=None,
        help="ROS 2 bag, sequence folder or video (default: render the synthetic demo sequence)",
    )
    parser.add_argument("--offline", action="store_true",
                        help="track in this process without ROS 2 (no DDS)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"output folder (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--config", default="small", help="preset name or YAML path (default: small)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: the shipped models/vo_small.pt)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="compute device (default: auto)")
    parser.add_argument("--max-frames", type=positive_int, default=None,
                        help="track at most N frames of a sequence (a bag is replayed whole)")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide the progress bar (offline mode)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="logging level")
    node = parser.add_argument_group("through the node (default mode)")
    node.add_argument(
        "--groundtruth-extrinsic", type=float, nargs=7, default=None,
        metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
        help="T_body_cam (metres, unit quaternion) when the bag's ground truth is the pose of a "
        "body or IMU frame; see docs/ros2.md for EuRoC's value",
    )
    node.add_argument("--frame-timeout", type=positive_seconds, default=300.0, metavar="SECONDS",
                      help="maximum wait for the node to finish one frame, seconds (default 300)")
    return parser


def run_offline(args: argparse.Namespace, tracker: Tracker = track_offline) -> int:
    """Track the sequence in this process, write the outputs and print the summary."""
    try:
        model_path = resolve_model(args.model)
        config, network, device = load_engine(args.config, [], model_path, args.device)
        created = prepare_output_dir(args.output)
        sequence = open_demo_sequence(args.sequence, args.output, args.max_frames)
    except (
        MissingModelError, SequenceError, CalibrationError, ConfigError, TrajectoryError,
        ModelFileError, FileNotFoundError, FileExistsError, OutputError,
    ) as error:
        logger.error("%s", error)
        return EXIT_USAGE

    stop = StopRequest()
    stop.install()
    try:
        result = tracker(sequence, config, network, device, stop, not args.no_progress)
    finally:
        stop.restore()

    if result.frames == 0:
        report_nothing_tracked(args.output, created)
        return exit_status(result, stop)
    extra = {"sequence": str(sequence.root), "config": to_dict(config), "device": device,
             "model": str(model_path)}
    try:
        outputs = write_outputs(
            result, args.output, sequence.ground_truth, extra, length_unit(sequence)
        )
    except OSError as error:
        logger.error("writing the outputs to %s failed: %s", args.output, error)
        return EXIT_FAILED
    for line in format_demo_summary(result, outputs):
        print(line)
    return exit_status(result, stop)


def main(argv: TypingSequence[str] | None = None, tracker: Tracker = track_offline) -> int:
    """Run the demo; return the process exit status.

    The status is 0 on success, 1 when the node failed, 2 for invalid input and 128 + signal
    when interrupted. ``tracker`` replaces offline tracking (``--offline`` only).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.offline:
        return run_offline(args, tracker)
    return run_through_node(args)


if __name__ == "__main__":
    sys.exit(main())
