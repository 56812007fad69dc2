"""Tests of ``python -m vo_node.demo``: the summary on a tiny rendered sequence, a missing model.

No trained model exists in the repository, so the run uses a randomly initialised network (seed
0) saved with ``save_model`` into a temporary folder. To keep the run short, that network has
tiny sizes (the model file's sizes replace the configuration's) and the sequence is 96x64 pixels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vo_node import demo, run
from vo_node.demo_data import render_demo_sequence
from vo_node.io.sequence import open_sequence
from vo_node.io.trajectory import read_tum

REPO = Path(__file__).resolve().parents[1]
TINY_FRAMES = 10
SUMMARY_PREFIXES = (
    "frames tracked:", "frames per second:", "low-confidence frames:", "peak memory", "ATE",
    "trajectory:",
)
COMMAND_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tiny_sequence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_demo_sequence(
        tmp_path_factory.mktemp("demo") / "sequence", num_frames=TINY_FRAMES, height=64, width=96
    )


def run_demo(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vo_node.demo", "--offline", *arguments, "--no-progress",
               "--device", "cpu"]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )


def test_demo_prints_summary(tiny_model: Path, tiny_sequence: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    completed = run_demo(str(tiny_sequence), "--model", str(tiny_model), "--output", str(output))

    assert completed.returncode == run.EXIT_OK, completed.stderr[-2000:]
    lines = completed.stdout.splitlines()
    for prefix in SUMMARY_PREFIXES:
        assert any(line.startswith(prefix) for line in lines), (prefix, completed.stdout)
    assert f"frames tracked: {TINY_FRAMES}" in lines
    trajectory = read_tum(output / run.TRAJECTORY_FILE)
    np.testing.assert_array_equal(
        trajectory.timestamps_ns, open_sequence(tiny_sequence).timestamps_ns
    )
    assert f"trajectory: {output / run.TRAJECTORY_FILE}" in lines
    assert f"metrics: {output / run.METRICS_FILE}" in lines
    assert f"plot: {output / run.PLOT_FILE}" in lines
    # The random tiny network may not move, so the Sim(3) alignment can fail; with an ATE, the
    # standstill reference comes next to it.
    ate_computed = any(line.startswith("ATE RMSE: ") for line in lines)
    has_standstill = any(line.startswith("standstill reference: ATE RMSE ") for line in lines)
    assert has_standstill == ate_computed, lines
    assert not any(" m " in line or line.endswith(" m") for line in lines), lines
    assert "nan" not in completed.stdout
    assert json.loads((output / run.METRICS_FILE).read_text())["length_unit"] == "scene units"


def test_demo_missing_model_exit_code(tiny_sequence: Path, tmp_path: Path) -> None:
    missing = tmp_path / "absent.pt"
    completed = run_demo(str(tiny_sequence), "--model", str(missing), "--output", str(tmp_path))

    assert completed.returncode == run.EXIT_USAGE
    assert str(missing) in completed.stderr
    assert demo.TRAIN_COMMAND in completed.stderr
    assert completed.stdout == ""


def test_demo_missing_default_model_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_default_model() -> Path:
        raise FileNotFoundError("default model vo_small.pt not found")

    monkeypatch.setattr(demo, "default_model_path", no_default_model)

    with pytest.raises(demo.MissingModelError) as raised:
        demo.resolve_model(None)
    assert demo.TRAIN_COMMAND in str(raised.value)
    assert "--model" in str(raised.value)


def test_demo_length_unit_of_rendered_folder(tiny_sequence: Path) -> None:
    assert demo.length_unit(open_sequence(tiny_sequence)) == "scene units"


def test_demo_unreadable_model_fails_before_bag(
    tiny_sequence: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A model file that is not a model stops the node demo before it writes a bag or starts
    DDS, and the message names the file."""
    bad = tmp_path / "not_a_model.pt"
    bad.write_text("hello")
    output = tmp_path / "out"
    assert demo.main([str(tiny_sequence), "--model", str(bad), "--output", str(output)]) == 2
    assert str(bad) in caplog.text
    assert "not a vo_node model file" in caplog.text
    assert not output.exists()
