"""Training runs on the generator: learning, outputs, exact resume, signals, NaN steps and DDP."""

import csv
import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from vo_node.model.network import load_model
from vo_node.train import main
from vo_node.train.checkpoint import load_checkpoint
from vo_node.train.config import load_train_config
from vo_node.train.trainer import METRICS_COLUMNS, Trainer, TrainingError

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "config" / "train_tiny.yaml")
QUIET = {"validation.every": 1000, "checkpoint.every_steps": 1000}
SHORT_RUN_STEPS = 30
SHORT_RUN = {
    "optim.steps": SHORT_RUN_STEPS,
    "validation.every": SHORT_RUN_STEPS,
    "balance.interval": 4,
}
"""The tiny recipe shortened from 40 to 30 steps, with the beta rule every 4 steps instead of 2.
With seeds 0 to 4 it lowered the validation loss to 0.70-0.87 and the flow EPE to 0.65-0.92 of
their initial values, a wider margin than the recipe's own 40 steps (up to 0.95 for both)."""


def parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in trainer.network.named_parameters()}


def read_rows(output: Path, split: str | None = None) -> list[dict[str, str]]:
    with open(output / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if split is None or row["split"] == split]


class TimedValidationTrainer(Trainer):
    """A trainer that adds up the seconds spent in its validation passes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.validation_seconds = 0.0

    def run_validation(self) -> None:
        started = time.monotonic()
        super().run_validation()
        self.validation_seconds += time.monotonic() - started


def test_short_run_lowers_validation_loss(tmp_path):
    config = load_train_config(TINY, SHORT_RUN)
    trainer = Trainer(config, tmp_path)
    before = trainer.validate()
    assert trainer.train() == 0
    after = trainer.validate()
    assert after["loss"] < before["loss"]
    assert after["flow_epe"] < before["flow_epe"]

    for name in ("config.yaml", "engine.yaml", "version.txt", "model.pt", "metrics.csv"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "checkpoints" / "latest.pt").is_file()
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert any((tmp_path / "tensorboard").iterdir())
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    train_rows = [row for row in rows if row["split"] == "train"]
    val_rows = [row for row in rows if row["split"] == "val"]
    assert len(train_rows) == config.optim.steps
    assert float(val_rows[-1]["loss"]) == pytest.approx(after["loss"], rel=1e-4)
    assert float(train_rows[-1]["beta"]) != 1.0  # the balance rule ran

    network, engine = load_model(tmp_path / "model.pt")
    assert engine.network.context_dim == config.engine_overrides["network.context_dim"]
    for name, value in network.named_parameters():
        assert torch.equal(value, dict(trainer.network.named_parameters())[name])


def test_resume_matches_straight_run(tmp_path):
    overrides = {**QUIET, "optim.steps": 4, "deterministic": True, "balance.interval": 1}
    config = load_train_config(TINY, overrides)
    straight = Trainer(config, tmp_path / "straight")
    straight.train()

    first = Trainer(config, tmp_path / "split")
    first.train(max_steps=2)
    checkpoint = tmp_path / "split" / "checkpoints" / "latest.pt"
    state = load_checkpoint(checkpoint)
    assert state["step"] == 2
    assert state["wall_s"] > 0.0
    resumed = Trainer(config, tmp_path / "split", resume=checkpoint)
    assert resumed.step == 2
    assert resumed.clock.seconds == pytest.approx(state["wall_s"])
    resumed.train()

    rows = read_rows(tmp_path / "split", "train")
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]
    wall = [float(row["wall_s"]) for row in rows]
    assert wall == sorted(wall)
    assert wall[2] > state["wall_s"]

    assert resumed.step == straight.step == 4
    assert resumed.balancer.beta == pytest.approx(straight.balancer.beta, rel=1e-6)
    expected = parameters(straight)
    for name, value in parameters(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7, msg=name)


def test_resume_without_wall_clock_in_checkpoint(tmp_path):
    # Checkpoints and metrics.csv written before the wall_s column existed must still resume.
    config = load_train_config(TINY, {**QUIET, "optim.steps": 3})
    Trainer(config, tmp_path).train(max_steps=2)
    checkpoint = tmp_path / "checkpoints" / "latest.pt"
    state = load_checkpoint(checkpoint)
    del state["wall_s"]
    torch.save(state, checkpoint)
    old_columns = [name for name in METRICS_COLUMNS if name != "wall_s"]
    old_rows = [{name: row[name] for name in old_columns} for row in read_rows(tmp_path)]
    with open(tmp_path / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old_columns)
        writer.writeheader()
        writer.writerows(old_rows)
    seconds = [1.0 / float(row["steps_per_s"]) for row in old_rows if row["split"] == "train"]

    resumed = Trainer(config, tmp_path, resume=checkpoint)
    assert resumed.clock.seconds == pytest.approx(sum(seconds), rel=1e-4)
    assert resumed.train() == 0

    with open(tmp_path / "metrics.csv", newline="") as handle:
        assert tuple(next(csv.reader(handle))) == METRICS_COLUMNS
    wall = [float(row["wall_s"]) for row in read_rows(tmp_path, "train")]
    assert len(wall) == 3
    assert wall[0] == pytest.approx(seconds[0], rel=1e-4)
    assert wall[1] == pytest.approx(sum(seconds), rel=1e-4)
    assert wall[2] > wall[1]


def test_wall_clock_excludes_validation(tmp_path):
    overrides = {"optim.steps": 3, "validation.every": 1, "validation.clips": 2,
                 "checkpoint.every_steps": 1000}
    trainer = TimedValidationTrainer(load_train_config(TINY, overrides), tmp_path)
    started = time.monotonic()
    trainer.train()
    elapsed = time.monotonic() - started

    train_rows = read_rows(tmp_path, "train")
    wall = [float(row["wall_s"]) for row in train_rows]
    assert len(wall) == 3
    assert 0.0 < wall[0] < wall[1] < wall[2]
    assert trainer.validation_seconds > 0.0
    assert wall[-1] <= elapsed - trainer.validation_seconds
    window_seconds = sum(1.0 / float(row["steps_per_s"]) for row in train_rows)
    assert window_seconds == pytest.approx(wall[-1], rel=1e-3)
    # A val row carries the training seconds at its step: after that step's log, before the next.
    val_wall = [float(row["wall_s"]) for row in read_rows(tmp_path, "val")]
    assert len(val_wall) == 3
    for step, seconds in enumerate(val_wall):
        assert wall[step] <= seconds
        assert step == 2 or seconds < wall[step + 1]


@pytest.mark.parametrize("steps", [1, 2])
def test_short_schedule_trains_to_end(tmp_path, steps):
    config = load_train_config(TINY, {**QUIET, "optim.steps": steps})
    trainer = Trainer(config, tmp_path)
    assert trainer.train() == 0
    assert trainer.step == steps
    assert (tmp_path / "model.pt").is_file()
    assert not (tmp_path / "checkpoints" / "step_00000000.pt").exists()
    rates = [float(row["lr"]) for row in read_rows(tmp_path, "train")]
    assert len(rates) == steps
    assert all(0.0 < rate <= config.optim.lr for rate in rates)


def test_save_initial_writes_step_zero(tmp_path):
    overrides = {**QUIET, "optim.steps": 2, "checkpoint.save_initial": True}
    config = load_train_config(TINY, overrides)
    trainer = Trainer(config, tmp_path)
    initial = parameters(trainer)
    trainer.train(max_steps=1)

    path = tmp_path / "checkpoints" / "step_00000000.pt"
    state = load_checkpoint(path)
    assert state["step"] == 0
    assert state["wall_s"] == 0.0
    for name, value in initial.items():
        assert torch.equal(state["model"][name], value), name
    assert any(not torch.equal(value, initial[name])
               for name, value in parameters(trainer).items())
    restarted = Trainer(config, tmp_path / "restart", resume=path)
    assert restarted.step == 0


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    config = load_train_config(TINY, {**QUIET, "optim.max_nonfinite": 1})
    trainer = Trainer(config, tmp_path)
    sample = trainer.validation_set()[0]
    broken = dict(sample, poses_cw=torch.full_like(sample["poses_cw"], float("nan")))
    before = parameters(trainer)
    metrics = trainer.train_step(broken)
    assert metrics["skipped"] == 1.0
    assert trainer.nonfinite == 1
    for name, value in parameters(trainer).items():
        assert torch.equal(value, before[name]), name
    with pytest.raises(TrainingError, match="optim.max_nonfinite"):
        trainer.train_step(broken)


class FailingStepTrainer(Trainer):
    """A trainer whose step ``fail_at`` raises, like a data worker that ran out of memory."""

    fail_at = 3

    def train_step(self, sample):
        if self.step == self.fail_at:
            raise MemoryError("worker could not allocate a clip")
        return super().train_step(sample)


def test_step_error_saves_checkpoint(tmp_path):
    config = load_train_config(TINY, {**QUIET, "optim.steps": 6})
    trainer = FailingStepTrainer(config, tmp_path)
    with pytest.raises(MemoryError, match="could not allocate"):
        trainer.train()

    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == FailingStepTrainer.fail_at
    for name, value in parameters(trainer).items():
        assert torch.equal(state["model"][name], value), name


def test_validation_logs_sequence_ate(tmp_path):
    from vo_node.demo_data import render_demo_sequence

    sequence = render_demo_sequence(tmp_path / "sequence", num_frames=24, height=96, width=128)
    # Every frame enters the patch graph (no motion probe), so the untrained network's estimate
    # moves and the Sim(3) alignment is defined.
    engine = {"network.matching_dim": 16, "network.context_dim": 32, "network.encoder_dim": 8,
              "frontend.motion_probe_threshold": 0.0}
    overrides = {**QUIET, "optim.steps": 1, "validation.every": 1, "engine_overrides": engine,
                 "validation.sequences": [str(sequence)], "validation.sequence_stride": 1}
    Trainer(load_train_config(TINY, overrides), tmp_path / "run").train()

    (row,) = read_rows(tmp_path / "run", "val")
    ate_percent = float(row["ate"])
    assert math.isfinite(ate_percent)
    assert ate_percent > 0.0


def test_small_recipe_step_completes(tmp_path):
    # A child process, because a heap corruption in a backward pass aborts the interpreter.
    command = [sys.executable, "-m", "vo_node.train", "--config", str(REPO / "config" /
               "train_small.yaml"), "--output", str(tmp_path / "run"), "--max-steps", "1",
               "data.num_workers=0", "validation.every=1000"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["step"] == 1


def test_cli_rejects_unknown_key(tmp_path, caplog):
    code = main(["--config", TINY, "--output", str(tmp_path), "optim.bogus=1"])
    assert code == 2
    assert "optim.bogus" in caplog.text


def wait_for_first_metrics(process: subprocess.Popen, output: Path) -> None:
    """Wait up to 120 s until the training process has logged a metrics row; fail if it exits."""
    metrics = output / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.stderr.read()


def test_sigterm_saves_loadable_checkpoint(tmp_path):
    output = tmp_path / "run"
    command = [sys.executable, "-m", "vo_node.train", "--config", TINY, "--output", str(output),
               "optim.steps=1000", "validation.every=1000", "checkpoint.every_steps=1000"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_first_metrics(process, output)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 128 + signal.SIGTERM, process.stderr.read()
    state = load_checkpoint(output / "checkpoints" / "latest.pt")
    assert state["step"] >= 1
    resumed = Trainer(load_train_config(TINY), output, resume=output / "checkpoints" / "latest.pt")
    assert resumed.step == state["step"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_group_signal_stops_cleanly_with_workers(tmp_path, stop):
    # Ctrl-C in a terminal, `timeout` and service managers signal the whole process group, data
    # workers included. The workers must leave the stop to the main process.
    output = tmp_path / "run"
    command = [sys.executable, "-m", "vo_node.train", "--config", TINY, "--output", str(output),
               "optim.steps=1000", "validation.every=1000", "checkpoint.every_steps=1000",
               "data.num_workers=1"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_first_metrics(process, output)
        os.killpg(process.pid, stop)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    errors = process.stderr.read()
    assert code == 128 + stop, errors[-2000:]
    assert "Traceback" not in errors
    assert "killed by signal" not in errors
    assert load_checkpoint(output / "checkpoints" / "latest.pt")["step"] >= 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, output: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo",
    )
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        config = load_train_config(TINY, {**QUIET, "optim.steps": 2, "balance.interval": 1})
        trainer = Trainer(config, output)
        trainer.train()
        result = {"parameters": parameters(trainer), "beta": trainer.balancer.beta,
                  "rho": trainer.balancer.rho}
        torch.save(result, Path(output) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_ranks_keep_identical_parameters(tmp_path):
    initial = Trainer(load_train_config(TINY, QUIET), tmp_path / "initial")
    start = parameters(initial)
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert ranks[0]["beta"] == ranks[1]["beta"]
    assert ranks[0]["rho"] == ranks[1]["rho"]
    for name, value in ranks[0]["parameters"].items():
        assert torch.equal(value, ranks[1]["parameters"][name]), name
    changed = [name for name, value in ranks[0]["parameters"].items()
               if not torch.equal(value, start[name])]
    assert changed, "training did not change any parameter"
    assert (tmp_path / "checkpoints" / "latest.pt").is_file()


def test_cli_export_missing_checkpoint_exits_2(tmp_path, caplog):
    missing = tmp_path / "missing.pt"
    code = main(["--export", str(missing), "--output", str(tmp_path / "model.pt")])
    assert code == 2
    assert f"checkpoint {missing} not found" in caplog.text
    assert "--resume" not in caplog.text
    assert not (tmp_path / "model.pt").exists()


def test_cli_export_carries_engine_preset(tmp_path, caplog):
    trainer = Trainer(load_train_config(TINY, QUIET), tmp_path / "run")
    checkpoint = trainer.save("latest.pt")
    preset = tmp_path / "tuned.yaml"
    preset.write_text(
        "name: tuned\n"
        "network: {matching_dim: 16, context_dim: 32, encoder_dim: 8}\n"
        "frontend: {patches_per_frame: 20, patch_lifetime: 5}\n"
    )
    model = tmp_path / "model.pt"
    assert main(["--export", str(checkpoint), "--output", str(model), "--engine", str(preset)]) == 0
    network, engine = load_model(model)
    assert engine.name == "tuned"
    assert engine.frontend.patches_per_frame == 20
    assert engine.frontend.patch_lifetime == 5
    assert network.config == trainer.engine.network

    mismatched = tmp_path / "mismatched.pt"
    code = main(["--export", str(checkpoint), "--output", str(mismatched), "--engine", "small"])
    assert code == 2
    assert "network sizes" in caplog.text
    assert not mismatched.exists()


@pytest.mark.parametrize("steps", ["0", "-3", "x"])
def test_cli_rejects_non_positive_max_steps(tmp_path, capsys, steps):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", TINY, "--output", str(tmp_path / "run"), "--max-steps", steps])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--max-steps: expected a positive integer, got" in error
    assert steps in error
    assert not (tmp_path / "run").exists()


def test_cli_missing_dataset_writes_no_run_folder(tmp_path, caplog):
    output = tmp_path / "run"
    missing = tmp_path / "no_dataset"
    code = main(["--config", TINY, "--output", str(output), "data.source=tartanair",
                 f"data.roots=[{missing}]"])
    assert code == 2
    assert f"tartanair dataset root {missing} not found" in caplog.text
    assert not output.exists()


def test_cli_without_config_trains_cpu_recipe(tmp_path, caplog):
    from vo_node.train import _resolve, build_parser

    caplog.set_level("INFO")
    config, output, resume = _resolve(build_parser().parse_args(["--output", str(tmp_path)]))
    small = load_train_config(REPO / "config" / "train_small.yaml")
    assert config == small
    assert config.engine == "small"
    assert (config.data.height, config.data.width) == (192, 256)
    assert output == tmp_path
    assert resume is None
    assert "no --config given" in caplog.text
    assert "train_small.yaml" in caplog.text
    assert "GPU-sized recipe" not in caplog.text


def test_cli_full_recipe_on_cpu_warns_memory(tmp_path, caplog):
    from vo_node.train import FULL_RECIPE_CPU_MEMORY_GB, _resolve, build_parser

    arguments = ["--config", str(REPO / "config" / "train_full.yaml"), "--output", str(tmp_path),
                 "device=cpu", f"data.roots=[{tmp_path}]"]
    config, _, _ = _resolve(build_parser().parse_args(arguments))
    assert config.engine == "full"
    assert "GPU-sized recipe" in caplog.text
    assert f"about {FULL_RECIPE_CPU_MEMORY_GB} GB of memory" in caplog.text
    assert "--config config/train_small.yaml" in caplog.text


def test_cli_small_recipe_on_cpu_does_not_warn(tmp_path, caplog):
    from vo_node.train import warn_if_too_large_for_cpu

    config = load_train_config(TINY)
    assert not warn_if_too_large_for_cpu(config)
    large = load_train_config(TINY, {"data.height": 480, "data.width": 640})
    assert warn_if_too_large_for_cpu(large)
    assert "480x640 clips" in caplog.text


def test_cli_validate_matches_trainer_validation(tmp_path, capsys):
    """--validate on a checkpoint and on its exported model file gives the trainer's own
    synthetic validation loss for the same clips."""
    from vo_node.train.trainer import validate_checkpoint

    config = load_train_config(TINY, {**QUIET, "validation.sequences": []})
    trainer = Trainer(config, tmp_path / "run")
    expected = trainer.validate()
    checkpoint = trainer.save("latest.pt")
    model = tmp_path / "model.pt"
    assert main(["--export", str(checkpoint), "--output", str(model)]) == 0

    for path in (checkpoint, model):
        metrics = validate_checkpoint(path, config.validation.clips)
        assert metrics["step"] == 0
        assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert metrics["flow_epe"] == pytest.approx(expected["flow_epe"], rel=1e-6)

    assert main(["--validate", str(checkpoint), "--clips", "1"]) == 0
    assert str(checkpoint) in capsys.readouterr().out


def test_cli_validate_missing_checkpoint_exits_2(tmp_path, caplog, capsys):
    """A missing checkpoint is reported, the others are still scored, and the exit code is 2."""
    trainer = Trainer(load_train_config(TINY, {**QUIET, "validation.sequences": []}), tmp_path / "run")
    trainer.save("latest.pt")
    missing = tmp_path / "missing.pt"
    assert main(["--validate", str(missing), str(tmp_path / "run"), "--clips", "1"]) == 2
    assert f"checkpoint {missing} not found" in caplog.text
    assert str(tmp_path / "run" / "checkpoints" / "latest.pt") in capsys.readouterr().out


def test_init_weights_from_checkpoint_and_model_file(tmp_path):
    """``init_weights`` starts a fresh run (step 0) from the weights of a checkpoint or an
    exported model file. A resumed run keeps its own checkpoint's weights."""
    source = Trainer(load_train_config(TINY, {**QUIET, "seed": 3}), tmp_path / "source")
    trained = parameters(source)
    checkpoint = source.save("latest.pt")
    model = tmp_path / "model.pt"
    assert main(["--export", str(checkpoint), "--output", str(model)]) == 0
    fresh = parameters(Trainer(load_train_config(TINY, QUIET), tmp_path / "fresh"))
    assert any(not torch.equal(value, trained[name]) for name, value in fresh.items())

    for path in (checkpoint, model):
        config = load_train_config(TINY, {**QUIET, "init_weights": str(path)})
        trainer = Trainer(config, tmp_path / f"init_{path.stem}")
        assert trainer.step == 0
        for name, value in parameters(trainer).items():
            assert torch.equal(value, trained[name]), (path.name, name)

    other = Trainer(load_train_config(TINY, QUIET), tmp_path / "other").save("latest.pt")
    config = load_train_config(TINY, {**QUIET, "init_weights": str(model)})
    resumed = Trainer(config, tmp_path / "resumed", resume=other)
    saved = load_checkpoint(other)["model"]
    for name, value in parameters(resumed).items():
        assert torch.equal(value, saved[name]), name


@pytest.mark.parametrize("case, message", [
    ("missing", "not found; pass a model file"),
    ("garbage", "could not be read"),
    ("other_sizes", "does not fit the network"),
])
def test_cli_rejects_bad_init_weights(tmp_path, caplog, case, message):
    path = tmp_path / "weights.pt"
    if case == "garbage":
        path.write_text("not a model")
    elif case == "other_sizes":
        path = REPO / "models" / "vo_small.pt"  # the small preset's sizes, not the tiny ones
    code = main(["--config", TINY, "--output", str(tmp_path / "run"), f"init_weights={path}"])
    assert code == 2
    assert message in caplog.text


def test_paired_difference_known_values():
    from vo_node.train.trainer import format_standard_error, paired_difference

    mean, error, lower = paired_difference([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0])
    assert mean == pytest.approx(0.5)
    assert error == pytest.approx(np.std([-1.0, 0.0, 1.0, 2.0], ddof=1) / 2.0)
    assert lower == 1
    # A clip with a non-finite loss is left out of the pair.
    mean, error, lower = paired_difference([1.0, float("nan"), 3.0], [2.0, 2.0, 2.0])
    assert mean == pytest.approx(0.0)
    assert error == pytest.approx(np.std([-1.0, 1.0], ddof=1) / np.sqrt(2.0))
    assert lower == 1
    with pytest.raises(ValueError, match="same clips, got 2 and 3"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
    # One clip has no standard error, and the formatted value is "n/a".
    mean, error, lower = paired_difference([1.0], [3.0])
    assert (mean, lower) == (-2.0, 1)
    assert math.isnan(error)
    assert format_standard_error(error) == "n/a (needs two clips)"
    assert format_standard_error(0.12345) == "0.123"


def test_cli_validate_pairs_checkpoints_on_same_clips(tmp_path, capsys):
    """Two checkpoints of one recipe are paired clip by clip; a checkpoint against its own
    exported model file differs by exactly zero on every clip."""
    config = load_train_config(TINY, {**QUIET, "validation.sequences": []})
    checkpoint = Trainer(config, tmp_path / "run").save("latest.pt")
    model = tmp_path / "model.pt"
    assert main(["--export", str(checkpoint), "--output", str(model)]) == 0
    capsys.readouterr()
    assert main(["--validate", str(checkpoint), str(model), "--clips", "2"]) == 0
    out = capsys.readouterr().out
    assert f"paired loss difference to {checkpoint}" in out
    assert f"{model}  +0.000 +- 0.000  (lower on 0 of 2 clips)" in out


def test_clip_recipe_ignores_loader_settings():
    from vo_node.train.trainer import clip_recipe

    config = load_train_config(TINY)
    data = config.data
    assert clip_recipe(data) == clip_recipe(dataclasses.replace(data, num_workers=3))
    assert clip_recipe(data) == clip_recipe(dataclasses.replace(data, prefetch_factor=5))
    assert clip_recipe(data) != clip_recipe(dataclasses.replace(data, max_flow=99.0))
    assert clip_recipe(data) != clip_recipe(dataclasses.replace(data, low_texture=0.2))


def test_new_run_into_existing_run_is_rejected(tmp_path, caplog):
    run = tmp_path / "run"
    assert main(["--config", TINY, "--output", str(run), "--max-steps", "2"]) == 0
    metrics = (run / "metrics.csv").read_text()
    latest = (run / "checkpoints" / "latest.pt").read_bytes()
    code = main(["--config", TINY, "--output", str(run), "--max-steps", "2"])
    assert code == 2
    assert "already contains a training run" in caplog.text
    assert "pass --resume" in caplog.text
    assert (run / "metrics.csv").read_text() == metrics
    assert (run / "checkpoints" / "latest.pt").read_bytes() == latest
    assert main(["--config", TINY, "--output", str(run), "--resume", "--max-steps", "1"]) == 0
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 3


def test_output_that_is_a_file_is_rejected(tmp_path, caplog):
    target = tmp_path / "run.txt"
    target.write_text("not a run folder")
    assert main(["--config", TINY, "--output", str(target), "--max-steps", "1"]) == 2
    assert "is a file; give a folder" in caplog.text
    assert target.read_text() == "not a run folder"


def test_new_run_over_logged_metrics_is_rejected(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,split,loss\n10,train,1.0\n")
    assert main(["--config", TINY, "--output", str(run), "--max-steps", "1"]) == 2
    assert "already contains a training run" in caplog.text
    assert (run / "metrics.csv").read_text() == "step,split,loss\n10,train,1.0\n"


def test_resume_over_later_run_is_rejected(tmp_path, caplog):
    early, late = tmp_path / "early", tmp_path / "late"
    assert main(["--config", TINY, "--output", str(early), "--max-steps", "1"]) == 0
    assert main(["--config", TINY, "--output", str(late), "--max-steps", "3"]) == 0
    late_metrics = (late / "metrics.csv").read_text()
    code = main(["--config", TINY, "--output", str(late), "--resume",
                 str(early / "checkpoints" / "latest.pt"), "--max-steps", "1"])
    assert code == 2
    assert "contains a run at step 3" in caplog.text
    assert (late / "metrics.csv").read_text() == late_metrics
    assert load_checkpoint(late / "checkpoints" / "latest.pt")["step"] == 3
    # Resuming the later run's own checkpoint, or an earlier run into a new folder, is fine.
    assert main(["--config", TINY, "--output", str(tmp_path / "fresh"), "--resume",
                 str(early / "checkpoints" / "latest.pt"), "--max-steps", "1"]) == 0
    assert load_checkpoint(tmp_path / "fresh" / "checkpoints" / "latest.pt")["step"] == 2


def test_load_checkpoint_memory_mapped_matches(tmp_path):
    from vo_node.train.checkpoint import save_checkpoint

    weights = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    path = save_checkpoint(tmp_path / "latest.pt", {"step": 7, "model": {"w": weights}})
    mapped = load_checkpoint(path, mmap=True)
    loaded = load_checkpoint(path)
    assert mapped["step"] == 7
    assert torch.equal(mapped["model"]["w"], loaded["model"]["w"])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_checkpoint(tmp_path / "text.pt", mmap=True)


def test_load_checkpoint_mmap_reads_legacy_format(tmp_path):
    from vo_node.train.checkpoint import CHECKPOINT_FORMAT

    path = tmp_path / "legacy.pt"
    payload = {"step": 9, "format": CHECKPOINT_FORMAT, "model": {"w": torch.ones(2)}}
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    state = load_checkpoint(path, mmap=True)
    assert state["step"] == 9
    assert torch.equal(state["model"]["w"], torch.ones(2))
