"""Command-line error paths: bad output folders, runs that track nothing, bad files and flags.

Each case checks the exit status, that the message names the value and the fix, and that no
output file is left behind. The engine runs with a randomly initialised small network (seed 0),
so only behaviour is checked, never accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vo_node import demo, run

WIDTH, HEIGHT = 64, 48


def image_folder(root: Path, count: int = 3, calibrated_width: int = WIDTH) -> Path:
    """Write ``count`` random 64x48 grey images and a camera.yaml of ``calibrated_width``."""
    root.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for index in range(count):
        image = generator.integers(0, 256, size=(HEIGHT, WIDTH), dtype=np.uint8)
        cv2.imwrite(str(root / f"frame_{index:03d}.png"), image)
    (root / "camera.yaml").write_text(
        f"image_width: {calibrated_width}\nimage_height: {HEIGHT}\n"
        "camera_matrix: {rows: 3, cols: 3, data: [60.0, 0, 32.0, 0, 60.0, 24.0, 0, 0, 1]}\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients: {rows: 1, cols: 5, data: [0, 0, 0, 0, 0]}\n"
    )
    return root


def files_below(folder: Path) -> list[Path]:
    """Return every file under ``folder`` (empty when the folder does not exist)."""
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


# --------------------------------------------------------------------------------------------
# Runner: output folder and runs that track nothing


@pytest.mark.parametrize("below_file", [False, True])
def test_run_unwritable_output_exits_2(tmp_path, caplog, small_model, below_file):
    sequence = image_folder(tmp_path / "images")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    output = blocker / "out" if below_file else blocker
    argv = [str(sequence), "--model", str(small_model), "--device", "cpu", "--no-progress",
            "--output", str(output)]
    assert run.main(argv) == run.EXIT_USAGE
    if below_file:
        assert f"output folder {output} cannot be created because {blocker} is a file" in caplog.text
    else:
        assert f"output path {output} is a file, but --output takes a folder" in caplog.text
        assert f"such as {tmp_path / 'vo_output'}" in caplog.text
    assert "with --output" in caplog.text or "--output takes a folder" in caplog.text
    # The folder is checked before tracking starts.
    assert "tracked" not in caplog.text
    assert blocker.read_text() == "not a folder"


def test_run_nothing_tracked_writes_nothing(tmp_path, caplog, small_model):
    sequence = image_folder(tmp_path / "images", calibrated_width=WIDTH * 2)
    output = tmp_path / "out"
    argv = [str(sequence), "--model", str(small_model), "--device", "cpu", "--no-progress",
            "--output", str(output)]
    assert run.main(argv) == run.EXIT_USAGE
    assert "is 64x48 pixels but the calibration is 128x48" in caplog.text
    assert f"no frames were tracked, so nothing was written to {output}" in caplog.text
    assert files_below(tmp_path / "out") == []
    assert not output.exists()


def test_write_outputs_rejects_empty_trajectory(tmp_path):
    result = run.RunResult(run.empty_trajectory(), 0, 0.0, 0, "cpu_rss")
    with pytest.raises(ValueError, match="no poses to write"):
        run.write_outputs(result, tmp_path, None)
    assert files_below(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Demo: output folder


def test_demo_offline_unwritable_output_exits_2(tmp_path, caplog, small_model):
    sequence = image_folder(tmp_path / "images")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = [str(sequence), "--offline", "--model", str(small_model), "--device", "cpu",
            "--no-progress", "--output", str(blocker / "out")]
    assert demo.main(argv) == run.EXIT_USAGE
    assert f"output folder {blocker / 'out'} cannot be created because {blocker} is a file" in (
        caplog.text
    )
    assert "tracked" not in caplog.text


def test_demo_node_unwritable_output_exits_2(tmp_path, caplog, small_model):
    # The check comes before any bag is written or DDS starts, so no network namespace is needed.
    sequence = image_folder(tmp_path / "images")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = [str(sequence), "--model", str(small_model), "--device", "cpu", "--output", str(blocker)]
    assert demo.main(argv) == run.EXIT_USAGE
    assert f"output path {blocker} is a file, but --output takes a folder" in caplog.text
    assert blocker.read_text() == "not a folder"


def test_demo_offline_nothing_tracked_writes_nothing(tmp_path, caplog, small_model):
    sequence = image_folder(tmp_path / "images", calibrated_width=WIDTH * 2)
    output = tmp_path / "out"
    argv = [str(sequence), "--offline", "--model", str(small_model), "--device", "cpu",
            "--no-progress", "--output", str(output)]
    assert demo.main(argv) == run.EXIT_USAGE
    assert f"no frames were tracked, so nothing was written to {output}" in caplog.text
    assert files_below(output) == []


# --------------------------------------------------------------------------------------------
# Demo: model file


def test_demo_missing_default_model_message(tmp_path, monkeypatch):
    from vo_node.model import network

    monkeypatch.setattr(network, "MODELS_DIR", tmp_path)
    with pytest.raises(demo.MissingModelError) as error:
        demo.resolve_model(None)
    message = str(error.value)
    assert f"default model vo_small.pt not found (looked in {tmp_path / 'vo_small.pt'})" in message
    assert "--model PATH" in message
    assert message.count("train one") == 1


# --------------------------------------------------------------------------------------------
# Help text


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Return the argument parser of every command, study subcommands included."""
    from vo_node import bench
    from vo_node import study
    from vo_node import train
    from vo_node.ros import latency, replay

    parsers = {
        "run": run.build_parser(),
        "demo": demo.build_parser(),
        "bench": bench.build_parser(),
        "train": train.build_parser(),
        "replay": replay.build_parser(),
        "latency": latency.build_parser(),
    }
    study_parser = study.build_parser()
    for action in study_parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers.update({f"study {name}": sub for name, sub in action.choices.items()})
    return parsers


def test_every_option_has_help():
    missing = [
        f"{command} {action.option_strings or action.dest}"
        for command, parser in command_parsers().items()
        for action in parser._actions
        if action.help is None
    ]
    assert missing == []


@pytest.mark.parametrize(
    "command, option, expected",
    [
        ("run", "--stride", "(default 1)"),
        ("run", "--max-frames", "(default: all)"),
        ("run", "--model", "models/vo_small.pt"),
        ("bench", "--stride", "(default 1)"),
        ("replay", "--rate", "(default 1.0"),
        ("replay", "--frame-timeout", "(default 120)"),
        ("replay", "--start-delay", "(default 0)"),
        ("replay", "--image-topic", "(default /cam0/image_raw)"),
    ],
)
def test_help_states_default(command, option, expected):
    parser = command_parsers()[command]
    action = next(action for action in parser._actions if option in action.option_strings)
    assert expected in action.help


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_run_fps_must_be_positive(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.build_parser().parse_args(["images", "--fps", value])
    assert exit_info.value.code == run.EXIT_USAGE
    assert f"fps must be positive, got {value}" in capsys.readouterr().err


def test_run_fps_help_says_when_ignored():
    action = next(a for a in run.build_parser()._actions if "--fps" in a.option_strings)
    assert "without timestamps" in action.help
    assert "ignored with a warning" in action.help


def test_count_options_name_their_metavar():
    parser = command_parsers()["run"]
    for option in ("--stride", "--max-frames"):
        action = next(action for action in parser._actions if option in action.option_strings)
        assert action.metavar == "N"
        assert "N" in action.help


# --------------------------------------------------------------------------------------------
# Runner: ground truth of a ROS 2 bag

DATA = Path(
    os.environ.get("VO_NODE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
BAG = DATA / "ros2_bags" / "euroc_MH_05_cam0_derived"
EUROC_CAM0_T_BODY_CAM = ("-0.021640145", "-0.064676987", "0.009810731", "-0.007707180",
                         "0.010499323", "0.701752800", "0.712301461")
"""``T_BS`` of EuRoC MH_05 cam0 (``x y z qx qy qz qw``), the camera pose in the IMU body frame."""
needs_bag = pytest.mark.skipif(
    not BAG.exists(), reason=f"sample data {BAG} is absent (set VO_NODE_DATA)"
)


@needs_bag
def test_run_bag_with_ground_truth_topic_writes_metrics(tmp_path, small_model):
    output = tmp_path / "out"
    argv = [str(BAG), "--model", str(small_model), "--device", "cpu", "--no-progress",
            "--max-frames", "3", "--output", str(output),
            "--groundtruth-topic", "/groundtruth/imu_pose",
            "--groundtruth-extrinsic", *EUROC_CAM0_T_BODY_CAM]
    assert run.main(argv) == run.EXIT_OK
    assert (output / "trajectory.tum").is_file()
    report = json.loads((output / "metrics.json").read_text())
    assert report["frames"] == 3
    assert report["groundtruth_topic"] == "/groundtruth/imu_pose"


@needs_bag
def test_run_bag_without_ground_truth_names_pose_topic(tmp_path, caplog, small_model):
    caplog.set_level(logging.INFO, logger="vo_node.run")
    argv = [str(BAG), "--model", str(small_model), "--device", "cpu", "--no-progress",
            "--max-frames", "2", "--output", str(tmp_path / "out")]
    assert run.main(argv) == run.EXIT_OK
    assert "pose topic /groundtruth/imu_pose" in caplog.text
    assert "--groundtruth-topic" in caplog.text


def test_run_rejects_invalid_ground_truth_extrinsic(tmp_path, caplog, small_model):
    sequence = image_folder(tmp_path / "images")
    argv = [str(sequence), "--model", str(small_model), "--groundtruth-extrinsic",
            "0", "0", "0", "0", "0", "0", "0.5"]
    assert run.main(argv) == run.EXIT_USAGE
    assert "--groundtruth-extrinsic quaternion" in caplog.text
    assert "has norm 0.500000" in caplog.text


# --------------------------------------------------------------------------------------------
# Demo: signals


def test_demo_sigterm_exit_status_is_143():
    import signal

    with pytest.raises(KeyboardInterrupt) as error:
        demo._raise_terminated(signal.SIGTERM, None)
    assert demo.interrupt_exit_status(error.value) == 143
    assert demo.interrupt_exit_status(KeyboardInterrupt()) == 130


# --------------------------------------------------------------------------------------------
# Configuration, device and model checked before the input is opened


BAD_ENGINE_ARGUMENTS = [
    (["--config", "no_such_preset"], "configuration preset 'no_such_preset' not found"),
    (["--model", "/nonexistent/vo_model.pt"], "/nonexistent/vo_model.pt"),
    pytest.param(
        ["--device", "cuda"], "no CUDA device is visible",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA"),
    ),
]


@pytest.mark.parametrize("arguments, message", BAD_ENGINE_ARGUMENTS)
def test_run_checks_engine_before_sequence(tmp_path, caplog, small_model, arguments, message):
    missing_sequence = tmp_path / "no_such_sequence"
    argv = [str(missing_sequence), "--model", str(small_model), *arguments,
            "--output", str(tmp_path / "out")]
    assert run.main(argv) == run.EXIT_USAGE
    assert message in caplog.text
    assert "does not exist" not in caplog.text
    assert not (tmp_path / "out").exists()


NETWORK_ISOLATED = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"


@pytest.mark.parametrize("offline", [
    pytest.param(False, marks=pytest.mark.skipif(
        not NETWORK_ISOLATED,
        reason="if the check regressed, the demo would start DDS; run through scripts/netns_run.sh",
    )),
    True,
])
def test_demo_checks_config_before_rendering(tmp_path, caplog, small_model, offline):
    # The check comes before any sequence is rendered, bag written or DDS started.
    argv = ["--model", str(small_model), "--config", "no_such_preset", "--output", str(tmp_path)]
    assert demo.main(argv + (["--offline"] if offline else [])) == run.EXIT_USAGE
    assert "configuration preset 'no_such_preset' not found" in caplog.text
    assert not (tmp_path / demo.SEQUENCE_FOLDER).exists()
    assert not (tmp_path / demo.BAG_FOLDER).exists()
