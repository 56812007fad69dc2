"""End-to-end tests of ``python -m vo_node.run``: output files, timestamps, metrics and signals.

No trained model exists in the repository, so every run uses a randomly initialised network of
the small configuration's sizes (seed 0), saved with ``save_model`` into a temporary folder. Its
poses are meaningless; these tests check the runner's contract, not accuracy. The motion probe is
disabled (``frontend.motion_probe_threshold=0``) so that frames enter the patch graph and the BA
runs. To keep the runs short on a shared CPU, the frames are downscaled to 160 pixels wide and
the patch graph is smaller (16 patches per frame, 4 initialisation frames, 2 iterations). The
EuRoC run tracks 12 frames: initialisation at the 4th, then 8 frames of tracking.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vo_node import run
from vo_node.demo_data import render_demo_sequence
from vo_node.io.sequence import open_sequence
from vo_node.io.trajectory import Trajectory, read_tum

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VO_NODE_DATA", REPO.parent / "shared" / "data"))
EUROC = DATA / "euroc_MH_05_difficult"
TEST_WIDTH = 160
"""Frames are downscaled to this width (pixels) so the runs stay short."""
FAST_OVERRIDES = [
    f"max_image_width={TEST_WIDTH}",
    "frontend.motion_probe_threshold=0",
    "frontend.patches_per_frame=16",
    "frontend.init_frames=4",
    "frontend.init_iterations=2",
    "frontend.final_iterations=2",
    "frontend.hypothesis_frames=2",
]
FINITE_METRICS = (
    "ate_rmse", "ate_mean", "ate_max", "ate_percent", "path_length", "scale",
    "rpe_translation_rmse", "rpe_rotation_rmse_deg",
)
"""Metrics that must be finite; the RPE over 1 m is undefined on paths shorter than that."""
TUM_LINE = re.compile(r"^\d+\.\d{9}( -?\d+\.\d+){7}$")
PROGRESS = re.compile(r"(\d+)/(\d+) \[")
FRAMES_BEFORE_SIGINT = 3
SIGINT_TIMEOUT_S = 120.0
EUROC_STRIDE = 2
EUROC_FRAMES = 12


@pytest.fixture(scope="module")
def demo_sequence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic demo sequence rendered at 128x96 pixels, 16 frames."""
    return render_demo_sequence(
        tmp_path_factory.mktemp("demo") / "sequence", num_frames=16, height=96, width=128
    )


def run_main(sequence: Path, model: Path, output: Path, *extra: str) -> int:
    argv = [
        str(sequence), "--config", "small", "--model", str(model), "--device", "cpu",
        "--output", str(output), "--no-progress", "--override", *FAST_OVERRIDES, *extra,
    ]
    return run.main(argv)


def assert_tum_matches_input(path: Path, timestamps_ns: np.ndarray) -> None:
    lines = path.read_text().splitlines()
    assert len(lines) == len(timestamps_ns)
    for line in lines:
        assert TUM_LINE.match(line), line
    trajectory = read_tum(path)
    np.testing.assert_array_equal(trajectory.timestamps_ns, timestamps_ns)
    assert np.all(np.isfinite(trajectory.poses))
    norms = np.linalg.norm(trajectory.poses[:, 3:], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def assert_metrics_finite(path: Path, frames: int) -> None:
    report = json.loads(path.read_text())
    assert report["frames"] == frames
    assert report["interrupted"] is False
    assert report["input_error"] is None
    for key in ("seconds", "frames_per_second", "peak_memory_bytes"):
        assert math.isfinite(report[key]), key
        assert report[key] > 0, key
    metrics = report["metrics"]
    assert metrics is not None
    for key in FINITE_METRICS:
        assert key in metrics, key
        assert math.isfinite(metrics[key]), key
    assert metrics["ate_rmse"] >= 0
    assert metrics["associated_poses"] == frames


def assert_no_temporary_files(folder: Path) -> None:
    leftovers = [path.name for path in folder.iterdir() if path.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.skipif(not EUROC.exists(), reason=f"sample data {EUROC} is absent (set VO_NODE_DATA)")
def test_run_euroc_end_to_end(small_model: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    status = run_main(
        EUROC, small_model, output, "--stride", str(EUROC_STRIDE), "--max-frames", str(EUROC_FRAMES)
    )

    assert status == run.EXIT_OK
    sequence = open_sequence(EUROC, stride=EUROC_STRIDE, max_frames=EUROC_FRAMES)
    assert_tum_matches_input(output / run.TRAJECTORY_FILE, sequence.timestamps_ns)
    assert_metrics_finite(output / run.METRICS_FILE, frames=EUROC_FRAMES)
    assert json.loads((output / run.METRICS_FILE).read_text())["length_unit"] == "m"
    assert (output / run.PLOT_FILE).stat().st_size > 0
    assert_no_temporary_files(output)


def test_run_demo_sequence_end_to_end(
    small_model: Path, demo_sequence: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "out"
    status = run_main(demo_sequence, small_model, output)

    assert status == run.EXIT_OK
    sequence = open_sequence(demo_sequence)
    assert_tum_matches_input(output / run.TRAJECTORY_FILE, sequence.timestamps_ns)
    assert sequence.ground_truth is not None
    assert_metrics_finite(output / run.METRICS_FILE, frames=len(sequence))
    assert json.loads((output / run.METRICS_FILE).read_text())["length_unit"] == "scene units"
    assert (output / run.PLOT_FILE).stat().st_size > 0
    assert_no_temporary_files(output)
    lines = capsys.readouterr().out.splitlines()
    for name in ("trajectory", "metrics", "plot"):
        assert any(line.startswith(f"{name}: {output}") for line in lines), (name, lines)
    assert any(line.startswith("standstill reference: ATE RMSE ") for line in lines), lines
    assert any(line.startswith("RPE per 1 scene units: ") for line in lines), lines


def test_run_missing_model_exit_code(demo_sequence: Path, tmp_path: Path) -> None:
    status = run_main(demo_sequence, tmp_path / "absent.pt", tmp_path / "out")

    assert status == run.EXIT_USAGE
    assert not (tmp_path / "out" / run.TRAJECTORY_FILE).exists()


def _read_progress(stream, sink: list[str]) -> None:
    """Copy ``stream`` into ``sink`` one character at a time (tqdm ends updates with ``\\r``)."""
    while True:
        text = stream.read(1)
        if not text:
            return
        sink.append(text)


def _frames_done(stderr: list[str]) -> int:
    counts = [int(match.group(1)) for match in PROGRESS.finditer("".join(stderr))]
    return max(counts, default=0)


def read_files(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Return the bytes of each of ``names`` in ``folder``."""
    return {name: (folder / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def long_sequence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120-frame demo sequence at 96x64 pixels: long enough to signal the runner mid-run."""
    return render_demo_sequence(
        tmp_path_factory.mktemp("long") / "sequence", num_frames=120, height=64, width=96
    )


def write_complete_run(sequence: Path, model: Path, output: Path) -> dict[str, bytes]:
    """Run ``sequence`` to completion with ``--trace`` into ``output`` and return its four files."""
    assert run_main(sequence, model, output, "--trace") == run.EXIT_OK
    return read_files(output, run.COMPLETE_OUTPUTS)


@dataclass
class Runner:
    """A ``python -m vo_node.run`` subprocess whose stderr a reader thread copies into ``stderr``."""

    process: subprocess.Popen
    reader: threading.Thread
    stderr: list[str]

    def log(self) -> str:
        return "".join(self.stderr)

    def wait(self) -> str:
        """Wait for the exit and the end of stderr, then return stdout.

        The reader thread owns the stderr pipe, so this does not call ``communicate``, which
        would read part of stderr itself.
        """
        self.process.wait(timeout=SIGINT_TIMEOUT_S)
        self.reader.join(timeout=SIGINT_TIMEOUT_S)
        assert not self.reader.is_alive()
        return self.process.stdout.read()


def start_runner(sequence: Path, model: Path, output: Path) -> Runner:
    """Start ``python -m vo_node.run --trace`` and wait until it has tracked a few frames."""
    command = [
        sys.executable, "-m", "vo_node.run", str(sequence), "--config", "small",
        "--model", str(model), "--device", "cpu", "--output", str(output), "--trace",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stderr: list[str] = []
    reader = threading.Thread(target=_read_progress, args=(process.stderr, stderr), daemon=True)
    reader.start()
    runner = Runner(process, reader, stderr)
    deadline = time.monotonic() + SIGINT_TIMEOUT_S
    while _frames_done(stderr) < FRAMES_BEFORE_SIGINT and process.poll() is None:
        assert time.monotonic() < deadline, runner.log()[-2000:]
        time.sleep(0.05)
    assert process.poll() is None, runner.log()[-2000:]
    return runner


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_run_signal_writes_partial_files(
    small_model: Path, demo_sequence: Path, long_sequence: Path, tmp_path: Path,
    signal_number: int,
) -> None:
    """A stopped run writes its frames under partial names and keeps the earlier complete run."""
    output = tmp_path / "out"
    complete = write_complete_run(demo_sequence, small_model, output)

    runner = start_runner(long_sequence, small_model, output)
    runner.process.send_signal(signal_number)
    stdout = runner.wait()
    log = runner.log()

    assert runner.process.returncode == run.SIGNAL_EXIT_BASE + signal_number, log[-2000:]
    assert read_files(output, run.COMPLETE_OUTPUTS) == complete
    assert "(interrupted)" in stdout
    assert f"trajectory: {output / 'trajectory.partial.tum'}" in stdout.splitlines()
    partial_files = ", ".join(run.PARTIAL_OUTPUTS)
    assert partial_files == (
        "trajectory.partial.tum, metrics.partial.json, trajectory.partial.png, frames.partial.csv"
    )
    assert f"wrote {partial_files} to {output} under partial names" in log
    assert "because tracking was interrupted" in log
    name = signal.Signals(signal_number).name
    assert f"received {name}: finishing the frames tracked so far" in log
    assert f"received {name} again" not in log

    trajectory = read_tum(output / "trajectory.partial.tum")
    input_stamps = open_sequence(long_sequence).timestamps_ns
    assert FRAMES_BEFORE_SIGINT <= len(trajectory) < len(input_stamps)
    np.testing.assert_array_equal(trajectory.timestamps_ns, input_stamps[: len(trajectory)])
    assert np.all(np.isfinite(trajectory.poses))
    report = json.loads((output / "metrics.partial.json").read_text())
    assert report["interrupted"] is True
    assert report["frames"] == len(trajectory)
    assert report["sequence"] == str(long_sequence)
    with (output / "frames.partial.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(trajectory)
    assert (output / "trajectory.partial.png").stat().st_size > 0
    assert_no_temporary_files(output)


def test_run_second_sigint_exits_at_once(
    small_model: Path, demo_sequence: Path, long_sequence: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    complete = write_complete_run(demo_sequence, small_model, output)

    runner = start_runner(long_sequence, small_model, output)
    runner.process.send_signal(signal.SIGINT)
    # Two signals that arrive before the handler runs count as one, so the second waits until
    # the runner has logged the first.
    deadline = time.monotonic() + SIGINT_TIMEOUT_S
    while "received SIGINT: " not in runner.log() and runner.process.poll() is None:
        assert time.monotonic() < deadline, runner.log()[-2000:]
        time.sleep(0.01)
    runner.process.send_signal(signal.SIGINT)
    runner.wait()
    log = runner.log()

    assert runner.process.returncode == run.SIGNAL_EXIT_BASE + signal.SIGINT, log[-2000:]
    assert "received SIGINT again: exiting at once with status 130" in log
    assert read_files(output, run.COMPLETE_OUTPUTS) == complete
    assert_no_temporary_files(output)


def test_run_unreadable_frame_says_stopped_early(
    demo_sequence: Path, small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A frame that cannot be read ends the run with exit 2 and a summary whose first line states
    that every output covers only the frames before it. Those outputs get partial names, the
    earlier complete run stays, and the next complete run removes the partial files."""
    import shutil

    output = tmp_path / "out"
    complete = write_complete_run(demo_sequence, small_model, output)
    capsys.readouterr()
    sequence = tmp_path / "sequence"
    shutil.copytree(demo_sequence, sequence)
    broken = sequence / "000010.png"
    broken.write_bytes(broken.read_bytes()[:40])

    with caplog.at_level(logging.INFO, logger="vo_node.run"):
        assert run_main(sequence, small_model, output, "--trace") == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("STOPPED EARLY: input frame 10 could not be read")
    assert "first 10 frames" in lines[0]
    assert "000010.png" in lines[0]
    assert f"metrics: {output / 'metrics.partial.json'}" in lines
    assert "because input frame 10 could not be read after 10 frames" in caplog.text
    assert read_files(output, run.COMPLETE_OUTPUTS) == complete
    report = json.loads((output / "metrics.partial.json").read_text())
    assert report["frames"] == 10
    assert report["interrupted"] is False
    assert "000010.png" in report["input_error"]
    assert len((output / "trajectory.partial.tum").read_text().splitlines()) == 10
    assert len((output / "frames.partial.csv").read_text().splitlines()) == 1 + 10
    assert (output / "trajectory.partial.png").stat().st_size > 0

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vo_node.run"):
        assert run_main(demo_sequence, small_model, output) == run.EXIT_OK
    assert sorted(path.name for path in output.iterdir()) == [
        "metrics.json", "trajectory.png", "trajectory.tum"
    ]
    assert "under partial names" not in caplog.text
    removal = f"removed {output / 'trajectory.partial.tum'} of an earlier run that stopped early"
    assert removal in caplog.text


def test_write_outputs_partial_keeps_complete_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stopped run without ground truth removes the partial metrics and plot of an earlier
    stopped run, but none of the files of an earlier complete run."""
    complete = {name: f"complete {name}\n".encode() for name in run.COMPLETE_OUTPUTS}
    for name, content in complete.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "metrics.partial.json").write_text("{}\n")
    (tmp_path / "trajectory.partial.png").write_bytes(b"png")
    poses = np.zeros((5, 7))
    poses[:, 6] = 1.0
    trajectory = Trajectory(np.arange(5, dtype=np.int64) * 50_000_000, poses)
    result = run.RunResult(trajectory, 5, 1.0, 0, "cpu_rss", interrupted=True)

    with caplog.at_level(logging.INFO, logger="vo_node.run"):
        outputs = run.write_outputs(result, tmp_path, None)

    assert outputs.partial is True
    assert outputs.trajectory_path == tmp_path / "trajectory.partial.tum"
    assert read_files(tmp_path, run.COMPLETE_OUTPUTS) == complete
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted([*run.COMPLETE_OUTPUTS, "trajectory.partial.tum"])
    removed = [tmp_path / "metrics.partial.json", tmp_path / "trajectory.partial.png"]
    assert outputs.removed == removed
    np.testing.assert_array_equal(
        read_tum(outputs.trajectory_path).timestamps_ns, trajectory.timestamps_ns
    )
    assert f"wrote trajectory.partial.tum to {tmp_path} under partial names" in caplog.text
    assert "because tracking was interrupted after 5 frames" in caplog.text


def test_run_trace_has_one_row_per_frame(
    small_model: Path, demo_sequence: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    assert run_main(demo_sequence, small_model, output, "--trace") == run.EXIT_OK

    sequence = open_sequence(demo_sequence)
    with (output / run.TRACE_FILE).open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == run.TRACE_COLUMNS
        rows = list(reader)
    assert len(rows) == len(sequence)
    assert [int(row["frame"]) for row in rows] == list(range(len(sequence)))
    assert [int(row["timestamp_ns"]) for row in rows] == list(sequence.timestamps_ns)
    assert {row["state"] for row in rows} <= {"initializing", "tracking", "lost"}
    # The probe runs on every frame after the first until initialisation, and a BA on every
    # frame from then on.
    assert rows[0]["probe_flow"] == ""
    assert math.isfinite(float(rows[1]["probe_flow"]))
    tracking = [row for row in rows if row["state"] == "tracking"]
    assert tracking
    for row in tracking:
        assert math.isfinite(float(row["ba_cost"]))
        assert float(row["ba_cost"]) >= 0
        assert int(row["ba_residuals"]) > 0
        assert int(row["edges"]) > 0
        assert float(row["ba_ms"]) > 0
        assert row["low_confidence"] in ("0", "1")
    ratios = [float(row["variance_ratio"]) for row in tracking if row["variance_ratio"]]
    assert ratios
    assert all(ratio > 0 for ratio in ratios)
    assert all(row["variance_ratio"] == "" for row in rows if row["state"] != "tracking")

    # A later run without --trace removes the stale trace.
    assert run_main(demo_sequence, small_model, output) == run.EXIT_OK
    assert not (output / run.TRACE_FILE).exists()


def test_write_outputs_partial_in_new_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stopped run into a new folder does not claim to have left complete files there, and
    one next to some complete files names only those."""
    poses = np.zeros((5, 7))
    poses[:, 6] = 1.0
    trajectory = Trajectory(np.arange(5, dtype=np.int64) * 50_000_000, poses)
    result = run.RunResult(trajectory, 5, 1.0, 0, "cpu_rss", interrupted=True)

    with caplog.at_level(logging.INFO, logger="vo_node.run"):
        run.write_outputs(result, tmp_path, None)
    assert f"wrote trajectory.partial.tum to {tmp_path} under partial names" in caplog.text
    assert "left the files" not in caplog.text
    assert "unchanged" not in caplog.text

    (tmp_path / run.TRAJECTORY_FILE).write_text("complete\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vo_node.run"):
        run.write_outputs(result, tmp_path, None)
    assert "complete run there (trajectory.tum) unchanged" in caplog.text


def test_run_stop_after_last_frame_logs_complete_names(
    small_model: Path, demo_sequence: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SIGINT during the final optimisation, after every frame was tracked, leaves a
    complete run, and the log states that its files get the complete names."""
    real_run_sequence = run.run_sequence

    def signal_during_finish(*args, **kwargs):
        result = real_run_sequence(*args, **kwargs)
        kwargs["should_stop"]._handle(signal.SIGINT, None)
        return result

    monkeypatch.setattr(run, "run_sequence", signal_during_finish)
    output = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="vo_node.run"):
        status = run_main(demo_sequence, small_model, output)
    assert status == run.SIGNAL_EXIT_BASE + signal.SIGINT
    assert "the run is complete and its outputs get the complete names" in caplog.text
    assert (output / run.TRAJECTORY_FILE).is_file()
    assert not (output / "trajectory.partial.tum").exists()


def test_run_never_initialised_warns(
    small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run on identical black frames never initialises. A warning states it and the likely
    cause, the summary and metrics.json record it, and the exit status stays 0."""
    import cv2

    sequence = tmp_path / "black"
    sequence.mkdir()
    frames = 10
    for index in range(frames):
        cv2.imwrite(str(sequence / f"{index:03d}.png"), np.zeros((96, 128), np.uint8))
    (sequence / "camera.yaml").write_text(
        "image_width: 128\nimage_height: 96\n"
        "camera_matrix: {rows: 3, cols: 3, data: [100.0, 0, 64.0, 0, 100.0, 48.0, 0, 0, 1]}\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients: {rows: 1, cols: 5, data: [0, 0, 0, 0, 0]}\n"
    )
    (sequence / "groundtruth.tum").write_text(
        "".join(f"{index * 0.05:.2f} {index * 0.1} 0 0 0 0 0 1\n" for index in range(frames))
    )
    output = tmp_path / "out"
    argv = [
        str(sequence), "--config", "small", "--model", str(small_model), "--device", "cpu",
        "--output", str(output), "--no-progress", "--override", "frontend.init_frames=4",
    ]
    with caplog.at_level(logging.INFO, logger="vo_node.run"):
        assert run.main(argv) == run.EXIT_OK
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = f"the engine never initialised in {frames} frames of black"
    assert any(message in record.getMessage() for record in warnings)
    assert "did not move" in caplog.text
    assert "evaluation skipped: the engine never initialised" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "NOT INITIALISED" in capsys.readouterr().out
    report = json.loads((output / run.METRICS_FILE).read_text())
    assert report["initialized"] is False
