"""Trainer command line: what --resume accepts, where a resumed run writes, and its errors."""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vo_node.train import main
from vo_node.train.checkpoint import load_checkpoint
from vo_node.train.config import load_train_config
from vo_node.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "config" / "train_tiny.yaml")
SMALL = str(REPO / "config" / "train_small.yaml")
QUIET = ["validation.every=1000", "checkpoint.every_steps=1000"]


def train_run(tmp_path: Path, steps: int, *extra: str) -> tuple[Path, Path]:
    """Train the tiny recipe for ``steps`` steps into ``tmp_path/run``; return the run folder
    and the recipe-default output, which the test keeps inside ``tmp_path`` as well."""
    run = tmp_path / "run"
    default = tmp_path / "default_output"
    code = main(["--config", TINY, "--output", str(run), "--max-steps", str(steps),
                 f"output={default}", *QUIET, *extra])
    assert code == 0
    return run, default


def latest_step(run: Path) -> int:
    return load_checkpoint(run / "checkpoints" / "latest.pt")["step"]


@pytest.mark.parametrize("form", ["folder", "checkpoint", "checkpoint_without_config"])
def test_resume_writes_into_resumed_run(tmp_path, caplog, form):
    run, default = train_run(tmp_path, 1)
    target = {"folder": run, "checkpoint": run / "checkpoints" / "latest.pt",
              "checkpoint_without_config": run / "checkpoints" / "latest.pt"}[form]
    config = [] if form == "checkpoint_without_config" else ["--config", TINY]
    caplog.set_level(logging.INFO)
    code = main([*config, "--resume", str(target), "--max-steps", "1", f"output={default}",
                 *QUIET])
    assert code == 0
    assert latest_step(run) == 2
    assert not default.exists()
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().split()[1:]] == [
        "1", "2"]
    assert f"training into {run}" in caplog.text


@pytest.mark.parametrize("form", ["latest", "bare", "override_after_flag"])
def test_resume_latest_of_output(tmp_path, form):
    run, default = train_run(tmp_path, 1)
    resume = {"latest": ["--resume", "latest"], "bare": ["--resume"],
              "override_after_flag": []}[form]
    # argparse takes a key=value right after --resume as its optional CKPT.
    trailing = ["--resume", f"output={default}"] if form == "override_after_flag" else [
        f"output={default}"]
    code = main(["--config", TINY, "--output", str(run), *resume, "--max-steps", "1", *QUIET,
                 *trailing])
    assert code == 0
    assert latest_step(run) == 2
    assert not default.exists()


def test_resume_latest_without_run_folder(tmp_path, caplog):
    assert main(["--resume", "latest"]) == 2
    assert "--resume latest needs --output RUN_FOLDER or --config" in caplog.text


def test_resume_into_other_output_logs_it(tmp_path, caplog):
    run, default = train_run(tmp_path, 1)
    metrics = (run / "metrics.csv").read_text()
    branch = tmp_path / "branch"
    caplog.set_level(logging.INFO)
    code = main(["--config", TINY, "--resume", str(run), "--output", str(branch),
                 "--max-steps", "1", *QUIET])
    assert code == 0
    assert latest_step(branch) == 2
    assert latest_step(run) == 1
    assert (run / "metrics.csv").read_text() == metrics
    assert f"into --output {branch}" in caplog.text
    assert f"resumed run folder {run} stays unchanged" in caplog.text


def test_resume_copied_checkpoint_writes_recipe_output(tmp_path, caplog):
    run, default = train_run(tmp_path, 1)
    copied = tmp_path / "copied.pt"
    copied.write_bytes((run / "checkpoints" / "latest.pt").read_bytes())
    caplog.set_level(logging.INFO)
    code = main(["--config", TINY, "--resume", str(copied), "--max-steps", "1",
                 f"output={default}", *QUIET])
    assert code == 0
    assert latest_step(default) == 2
    assert "not inside a run folder" in caplog.text


def test_resume_with_other_network_sizes(tmp_path, caplog):
    run, default = train_run(tmp_path, 1)
    latest = (run / "checkpoints" / "latest.pt").read_bytes()
    code = main(["--config", SMALL, "--resume", str(run), "--max-steps", "1",
                 f"output={default}", "device=cpu"])
    assert code == 2
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "\n" not in message
    assert "network sizes that do not match the configuration" in message
    assert "network.matching_dim is 16 in the checkpoint but 32 in the configuration" in message
    assert "network.context_dim is 32 in the checkpoint" in message
    assert f"--config {run / 'config.yaml'}" in message
    assert "start a new run" in message
    assert (run / "checkpoints" / "latest.pt").read_bytes() == latest
    assert not default.exists()


def test_resume_with_longer_schedule_is_rejected(tmp_path, caplog):
    run, default = train_run(tmp_path, 1, "optim.steps=3")
    code = main(["--config", TINY, "--resume", str(run), "optim.steps=5", *QUIET])
    assert code == 2
    assert "optim.steps=5 exceeds the 3 steps of the learning-rate schedule" in caplog.text
    assert "init_weights=" in caplog.text
    assert latest_step(run) == 1


def test_resume_finished_run_reports_complete(tmp_path, caplog):
    run, default = train_run(tmp_path, 2, "optim.steps=2")
    latest = (run / "checkpoints" / "latest.pt").read_bytes()
    metrics = (run / "metrics.csv").read_text()
    (run / "model.pt").unlink()
    caplog.set_level(logging.INFO)
    assert main(["--resume", str(run)]) == 0
    assert "the run is already complete at step 2 of 2 (optim.steps)" in caplog.text
    assert "init_weights=" in caplog.text
    assert (run / "checkpoints" / "latest.pt").read_bytes() == latest
    assert (run / "metrics.csv").read_text() == metrics
    assert (run / "model.pt").is_file()  # exported again because it was missing


def test_validate_sigint_exits_130(tmp_path):
    trainer = Trainer(load_train_config(TINY, {"validation.sequences": []}), tmp_path / "run")
    checkpoint = trainer.save("latest.pt")
    trainer.metrics.close()
    command = [sys.executable, "-m", "vo_node.train", "--validate", str(checkpoint),
               "--clips", "500"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        # The second header line is printed just before the checkpoints are scored.
        assert process.stdout.readline().startswith("held-out synthetic validation")
        assert process.stdout.readline().startswith("checkpoint  step")
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    errors = process.stderr.read()
    assert code == 130, errors[-2000:]
    assert "Traceback" not in errors
    assert "validation interrupted by SIGINT (Ctrl-C)" in errors
    assert len([line for line in errors.splitlines() if line.strip()]) == 1
