"""The training loop: optimisation, beta/rho balancing, validation, checkpoints, logging and DDP.

Run through ``python -m vo_node.train`` (one process) or ``torchrun --nproc_per_node=N -m
vo_node.train`` (DistributedDataParallel: gloo on CPU, NCCL on CUDA). Only rank 0 writes files
and shows the progress bar. Every rank draws its own clips because the rank is part of each
sample's seed. Every rank updates beta and rho from probe norms averaged over the ranks, so they
stay identical everywhere.

Output folder::

    config.yaml       resolved training configuration (loadable with --config)
    engine.yaml       resolved engine configuration of the trained network
    version.txt       code version (git describe, else the package version)
    metrics.csv       one row per logged training window and per validation (columns:
                      METRICS_COLUMNS; wall_s is training seconds without validation passes)
    tensorboard/      TensorBoard event files
    checkpoints/      latest.pt, best.pt, step_<N>.pt (periodic copies; step_00000000.pt
                      with checkpoint.save_initial)
    model.pt          exported weights + engine configuration (at the end of the run)
"""

from __future__ import annotations

import csv
import logging
import math
import os
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vo_node.config import (
    ConfigError, EngineConfig, from_dict, load_engine_config, resolve_device, to_dict,
)
from vo_node.io.atomic import atomic_write
from vo_node.model.network import (
    ModelFileError, VONetwork, check_state_dict, load_model, save_model, summarize_load_error,
)
from vo_node.train import checkpoint as ckpt
from vo_node.train.balance import LossBalancer, ProbeNorms, find_parameter, probe_gradient_norms
from vo_node.train.config import (
    DataConfig,
    LossConfig,
    TrainConfig,
    resolve_engine_config,
    train_config_to_yaml,
)
from vo_node.train.data import ClipDataset, make_loader, validation_clips
from vo_node.train.unroll import UnrolledModel

logger = logging.getLogger(__name__)

METRICS_COLUMNS = (
    "step", "split", "loss", "flow", "translation", "rotation", "flow_epe", "pose_translation",
    "pose_rotation", "beta", "rho", "lr", "grad_norm", "steps_per_s", "skipped", "ate", "wall_s",
)
"""Columns of metrics.csv. New columns go at the end, so positional readers keep working."""
SIGNAL_EXIT_BASE = 128
"""A run stopped by signal ``s`` exits with ``128 + s`` (130 for SIGINT, 143 for SIGTERM)."""
SEED_MODULUS = 2**63 - 1
MIN_WARMUP_STEPS = 2
"""The one-cycle warm-up spans at least this many steps when the run has room for it."""
MIN_ANNEAL_STEPS = 0.5
"""The warm-up ends at least this many steps before the end of the schedule, so the anneal
phase has positive length. OneCycleLR divides by each phase's length in steps."""
VALIDATION_STREAM = 7
INITIAL_CHECKPOINT_NAME = "step_00000000.pt"


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. too many non-finite losses in a row)."""


@dataclass
class DistributedContext:
    """Rank layout of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str) -> DistributedContext:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)


def derive_seed(*parts: int) -> int:
    """Return a 63-bit seed that is a pure function of ``parts``."""
    state = np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)
    return int(state[0] % SEED_MODULUS)


def warmup_fraction(pct_start: float, steps: int) -> float:
    """Return the one-cycle ``pct_start`` for a schedule of ``steps`` optimiser steps.

    The warm-up ``pct_start * steps`` is raised to :data:`MIN_WARMUP_STEPS` and then capped at
    ``steps - MIN_ANNEAL_STEPS``. OneCycleLR raises ZeroDivisionError when the warm-up spans
    exactly 1 step or all of them, and the result avoids both for every ``steps >= 1``. With 1
    or 2 steps the peak learning rate is never used.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"optim.steps must be a whole number of 1 or more, got {steps!r}")
    warmup_steps = min(max(pct_start * steps, MIN_WARMUP_STEPS), steps - MIN_ANNEAL_STEPS)
    return warmup_steps / steps


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(enabled: bool, device: str) -> None:
    """Switch torch to deterministic kernels (error on an op without one) when ``enabled``."""
    if not enabled:
        return
    if device == "cuda":
        # cuBLAS needs a fixed workspace for reproducible matrix products.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=False)


class TrainingClock:
    """Training wall-clock seconds of a run: continued across resumes, paused during validation."""

    def __init__(self, seconds: float = 0.0):
        self.offset = float(seconds)
        self.started: float | None = None

    def start(self) -> None:
        if self.started is None:
            self.started = time.monotonic()

    def stop(self) -> None:
        if self.started is not None:
            self.offset += time.monotonic() - self.started
            self.started = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the clock inside the ``with`` block (and restart it only if it was running)."""
        running = self.started is not None
        self.stop()
        try:
            yield
        finally:
            if running:
                self.start()

    @property
    def seconds(self) -> float:
        """Seconds counted so far, the running interval included."""
        running = 0.0 if self.started is None else time.monotonic() - self.started
        return self.offset + running


class MetricsLog:
    """Rank 0's metrics.csv and TensorBoard writer (other ranks get a no-op log).

    An existing metrics.csv whose header lacks columns of :data:`METRICS_COLUMNS` (written by an
    older version) is rewritten with the current header. Its rows are kept, with an estimated
    ``wall_s`` and other missing values empty.
    """

    def __init__(self, output: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = output / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        if self.path.is_file():
            self._upgrade_header()
        if resume_step is not None and self.path.is_file():
            self._truncate_after(resume_step)
        if not self.path.is_file():
            with atomic_write(self.path) as handle:
                csv.writer(handle).writerow(METRICS_COLUMNS)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a crash may have logged past the last checkpoint)."""
        with open(self.path, newline="") as handle:
            rows = list(csv.reader(handle))
        kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) <= step]
        with atomic_write(self.path) as handle:
            csv.writer(handle).writerows(kept)

    def _upgrade_header(self) -> None:
        """Rewrite the file with the current columns if its header differs (values kept by name).

        Rows of a file without ``wall_s`` get the estimate of :func:`estimate_wall_seconds`.
        """
        with open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        if tuple(header) == METRICS_COLUMNS:
            return
        unknown = [name for name in header if name not in METRICS_COLUMNS]
        if unknown:
            raise ValueError(
                f"{self.path} has columns {unknown} that this trainer does not write; move the "
                "file away or write the run into a new --output folder"
            )
        if "wall_s" not in header:
            for row, seconds in zip(rows, estimate_wall_seconds(rows)):
                row["wall_s"] = _format(seconds)
        with atomic_write(self.path) as handle:
            writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS, restval="")
            writer.writeheader()
            writer.writerows(rows)
        logger.info("%s: header upgraded to the current columns", self.path)

    def wall_seconds_at(self, step: int) -> float:
        """Return the ``wall_s`` of the last train row at or before ``step`` (0 if none)."""
        if not self.enabled or not self.path.is_file():
            return 0.0
        with open(self.path, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["split"] == "train"]
        values = [
            float(row["wall_s"]) for row in rows if int(row["step"]) <= step and row["wall_s"]
        ]
        return values[-1] if values else 0.0

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = [step, split] + [_format(values.get(name)) for name in METRICS_COLUMNS[2:]]
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow(row)
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(f"{split}/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _format(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def estimate_wall_seconds(rows: list[dict[str, str]]) -> list[float]:
    """Estimate cumulative training seconds per metrics row from the logged ``steps_per_s``.

    Each train row adds ``(step - previous train step) / steps_per_s``. A val row gets the sum
    so far. Used for rows written before ``wall_s`` existed.
    """
    # NOTE: older trainers timed windows that included validation passes, so the estimate runs
    # high by the validation time of those windows.
    total, previous_step, estimates = 0.0, 0, []
    for row in rows:
        if row.get("split") == "train":
            step = int(row["step"])
            rate = float(row["steps_per_s"]) if row.get("steps_per_s") else math.nan
            if math.isfinite(rate) and rate > 0.0:
                total += (step - previous_step) / rate
            previous_step = step
        estimates.append(total)
    return estimates


class _SignalFlag:
    """Records SIGINT/SIGTERM so the loop can save a checkpoint and stop between steps."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            logger.warning("second signal %d: stopping without waiting for the step", signum)
            raise KeyboardInterrupt
        logger.warning("signal %d received: saving a checkpoint after this step", signum)
        self.signum = signum


class Trainer:
    """One training run (one rank of it under DDP)."""

    def __init__(
        self,
        config: TrainConfig,
        output: str | Path,
        resume: str | Path | None = None,
        context: DistributedContext | None = None,
    ):
        self.config = config
        self.output = Path(output)
        self.device = resolve_device(config.device)
        self.context = context or setup_distributed(self.device)
        if self.device == "cuda":
            torch.cuda.set_device(self.context.local_rank)
            self.device = f"cuda:{self.context.local_rank}"
        configure_determinism(config.deterministic, self.device.split(":")[0])
        seed_everything(derive_seed(config.seed, self.context.rank))
        if config.threads:
            torch.set_num_threads(config.threads)
        elif self.device == "cpu" and self.context.distributed:
            cores = os.cpu_count() or 1
            torch.set_num_threads(max(1, cores // self.context.world_size))

        self.engine = resolve_engine_config(config)
        self.network = VONetwork(self.engine.network)
        if config.init_weights and resume is None:
            load_initial_weights(self.network, config.init_weights)
        self.network = self.network.to(self.device)
        self.core = UnrolledModel(
            self.network, config.unroll, config.ba, config.loss, self.engine.frontend.centroid_selection
        )
        self.model: torch.nn.Module = self.core
        if self.context.distributed:
            device_ids = [self.context.local_rank] if self.device.startswith("cuda") else None
            self.model = DistributedDataParallel(self.core, device_ids=device_ids)
        self.probe = find_parameter(self.network, config.balance.probe_parameter)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=config.optim.lr,
            total_steps=config.optim.steps,
            pct_start=warmup_fraction(config.optim.pct_start, config.optim.steps),
            anneal_strategy="linear",
            cycle_momentum=False,
        )
        balance = config.balance
        self.balancer = LossBalancer(
            balance.interval, balance.window, balance.clip_factor, balance.norm_floor,
            enabled=balance.enabled,
        )
        self.step = 0
        self.nonfinite = 0
        self.best: float | None = None
        self.clock = TrainingClock()
        self.last_checkpoint_time = time.monotonic()
        self.resume_path = Path(resume) if resume else None
        wall_s_known = True
        if self.resume_path is not None:
            state = ckpt.load_checkpoint(self.resume_path, map_location="cpu")
            check_resume_state(state, self.resume_path, self.network, self.engine, config)
            self.load_state(state)
            wall_s_known = "wall_s" in state
        # Built before MetricsLog creates the run folder, so a missing dataset leaves no folder.
        self.dataset = ClipDataset(config.data, config.seed, self.context.rank,
                                   validation_seed=config.validation.seed)
        self.metrics = MetricsLog(
            self.output, self.context.is_main, self.step if self.resume_path else None
        )
        if not wall_s_known:
            # Checkpoints of older trainers lack wall_s: continue from the metrics.csv estimate.
            self.clock = TrainingClock(self.metrics.wall_seconds_at(self.step))
        self._validation_set: list[dict[str, torch.Tensor]] | None = None

    # ---------------------------------------------------------------------------------------
    # State
    # ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue the same curve."""
        return {
            "step": self.step,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "balance": self.balancer.state_dict(),
            "rng": ckpt.capture_rng_state(),
            "config": to_dict(self.config),
            "engine": to_dict(self.engine),
            "best": self.best,
            "nonfinite": self.nonfinite,
            "world_size": self.context.world_size,
            "code_version": ckpt.code_version(),
            "wall_s": self.clock.seconds,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict`."""
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.balancer.load_state_dict(state["balance"])
        self.step = int(state["step"])
        self.best = state["best"]
        self.nonfinite = int(state["nonfinite"])
        self.clock = TrainingClock(float(state.get("wall_s", 0.0)))
        if state.get("world_size", 1) == self.context.world_size:
            ckpt.restore_rng_state(state["rng"])
        else:
            logger.warning(
                "checkpoint was written by %s ranks, this run has %d: global RNG states not "
                "restored (data and patch draws depend only on the step and stay exact)",
                state.get("world_size"), self.context.world_size,
            )
        logger.info("resumed from step %d", self.step)

    def save(self, name: str) -> Path | None:
        """Write a checkpoint ``checkpoints/<name>`` on rank 0; return its path there."""
        if not self.context.is_main:
            return None
        path = ckpt.save_checkpoint(self.output / ckpt.CHECKPOINT_DIR / name, self.state_dict())
        self.last_checkpoint_time = time.monotonic()
        return path

    def write_run_files(self) -> None:
        """Write the resolved configurations and the code version (rank 0)."""
        if not self.context.is_main:
            return
        import yaml

        with atomic_write(self.output / "config.yaml") as handle:
            handle.write(train_config_to_yaml(self.config))
        with atomic_write(self.output / "engine.yaml") as handle:
            handle.write(yaml.safe_dump(to_dict(self.engine), sort_keys=False))
        with atomic_write(self.output / "version.txt") as handle:
            handle.write(ckpt.code_version() + "\n")

    # ---------------------------------------------------------------------------------------
    # One step
    # ---------------------------------------------------------------------------------------

    def _to_device(self, sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in sample.items()}

    def _step_generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.config.seed, self.context.rank, step))

    def _all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        if not self.context.distributed:
            return values
        values = values.to(self.device)
        dist.all_reduce(values)
        return (values / self.context.world_size).cpu()

    def _balance(self, parts: dict[str, torch.Tensor]) -> None:
        """Measure the probe gradient norms and update beta and rho (same value on all ranks)."""
        norms = probe_gradient_norms(parts, self.probe)
        measured = ProbeNorms(norms["flow"], norms["pose"], norms["translation"], norms["rotation"])
        averaged = ProbeNorms.from_tensor(self._all_reduce_mean(measured.as_tensor()))
        beta, rho = self.balancer.update(averaged)
        logger.debug("step %d: beta %.4g, rho %.4g from %s", self.step, beta, rho, averaged)

    def train_step(self, sample: dict[str, torch.Tensor]) -> dict[str, float]:
        """Run forward, balance, backward and optimiser step for one clip; return its metrics."""
        config = self.config
        self.model.train()
        sample = self._to_device(sample)
        out = self.model(
            sample["images"], sample["depths"], sample["poses_cw"], sample["intrinsics"],
            self._step_generator(self.step),
        )
        flow = config.loss.flow_weight * out["flow"]
        translation = config.loss.pose_weight * out["translation"]
        rotation = config.loss.pose_weight * out["rotation"]
        if self.balancer.is_due(self.step):
            pose = translation + self.balancer.rho * rotation
            self._balance({"flow": flow, "pose": pose, "translation": translation,
                           "rotation": rotation})
        loss = self.balancer.beta * flow + translation + self.balancer.rho * rotation

        finite = torch.tensor([float(torch.isfinite(loss))], dtype=torch.float64)
        finite = bool(self._all_reduce_mean(finite).item() == 1.0)
        grad_norm = float("nan")
        if finite:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), config.optim.grad_clip)
            )
            finite = math.isfinite(grad_norm)
            if finite:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():
            # A skipped step advances the schedule without an optimiser step, on purpose.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
        self._count_nonfinite(finite, float(loss.detach()))
        return {
            "loss": float(loss.detach()),
            "flow": float(out["flow"].detach()),
            "translation": float(out["translation"].detach()),
            "rotation": float(out["rotation"].detach()),
            "flow_epe": float(out["flow_epe"]),
            "pose_translation": float(out["pose_translation"]),
            "pose_rotation": float(out["pose_rotation"]),
            "beta": self.balancer.beta,
            "rho": self.balancer.rho,
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped": 0.0 if finite else 1.0,
        }

    def _count_nonfinite(self, finite: bool, loss: float) -> None:
        if finite:
            self.nonfinite = 0
            return
        self.nonfinite += 1
        logger.warning(
            "step %d: non-finite loss or gradient (loss %s), step skipped (%d in a row)",
            self.step, loss, self.nonfinite,
        )
        if self.nonfinite > self.config.optim.max_nonfinite:
            raise TrainingError(
                f"{self.nonfinite} consecutive steps had a non-finite loss or gradient (limit "
                f"optim.max_nonfinite={self.config.optim.max_nonfinite}); lower optim.lr or check "
                "the data, then resume from the last checkpoint"
            )

    # ---------------------------------------------------------------------------------------
    # Validation
    # ---------------------------------------------------------------------------------------

    def validation_set(self) -> list[dict[str, torch.Tensor]]:
        if self._validation_set is None:
            validation = self.config.validation
            self._validation_set = validation_clips(
                self.config.data, validation.seed, validation.clips
            )
        return self._validation_set

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Return mean validation metrics over the held-out synthetic clips (rank 0 only).

        ``loss`` is the unweighted objective (no Sigma weighting, adjacent flow edges, beta and
        rho at 1), so runs with different recipes are comparable.
        """
        clips = [self._to_device(clip) for clip in self.validation_set()]
        metrics = synthetic_validation(
            self.network, self.config, self.core.selection, clips, self.config.validation.seed
        )
        metrics.update(self._real_sequence_metrics())
        return metrics

    def _real_sequence_metrics(self) -> dict[str, float]:
        """ATE on the configured real sequences through the engine's runner, if it is available."""
        sequences = self.config.validation.sequences
        if not sequences:
            return {}
        try:
            from vo_node.evaluation.metrics import evaluate_trajectory
            from vo_node.io import open_sequence
            from vo_node.run import run_sequence
        except ImportError as error:
            logger.warning("ATE validation skipped: the engine runner is not importable (%s)", error)
            return {}
        validation = self.config.validation
        percents: dict[str, float] = {}
        for path in sequences:
            try:
                sequence = open_sequence(
                    path,
                    stride=validation.sequence_stride,
                    max_frames=validation.sequence_max_frames or None,
                )
                result = run_sequence(
                    sequence, self.engine, self.network, self.device, progress=False
                )
                metrics = evaluate_trajectory(result.trajectory, sequence.ground_truth)
                percents[Path(path).name] = float(metrics.ate_percent)
            except Exception as error:  # noqa: BLE001 - a failed evaluation must not stop training
                logger.warning("ATE validation on %s failed: %s", path, error)
        if not percents:
            return {}
        values = {f"ate_percent/{name}": value for name, value in percents.items()}
        values["ate_percent"] = float(np.mean(list(percents.values())))
        # The metrics CSV's ``ate`` column (read by the speed-up study) is this mean percentage.
        values["ate"] = values["ate_percent"]
        return values

    def _is_better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.config.validation.best_mode == "min" else value > self.best

    def run_validation(self) -> None:
        """Validate on rank 0, log, and keep ``best.pt`` by the configured metric."""
        if not self.context.is_main:
            return
        started = time.monotonic()
        metrics = self.validate()
        metrics["wall_s"] = self.clock.seconds
        self.metrics.log(self.step, "val", metrics)
        name = self.config.validation.best_metric.removeprefix("val/")
        value = metrics.get(name, float("nan"))
        logger.info(
            "validation at step %d (%.1f s): %s", self.step, time.monotonic() - started,
            ", ".join(f"{key} {value:.4g}" for key, value in sorted(metrics.items())),
        )
        if self._is_better(value):
            self.best = value
            self.save(ckpt.BEST_NAME)

    # ---------------------------------------------------------------------------------------
    # The loop
    # ---------------------------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint
        elapsed_min = (time.monotonic() - self.last_checkpoint_time) / 60.0
        return self.step % every.every_steps == 0 or elapsed_min >= every.every_minutes

    def _stop_requested(self, flag: _SignalFlag) -> int:
        signum = torch.tensor([float(flag.signum)], dtype=torch.float64)
        if self.context.distributed:
            dist.all_reduce(signum, op=dist.ReduceOp.MAX)
        return int(signum.item())

    def train(self, max_steps: int | None = None) -> int:
        """Train until ``optim.steps`` (or ``max_steps`` more steps); return the exit code.

        Returns 0 when finished, ``128 + signal`` after SIGINT/SIGTERM (a checkpoint is saved).
        Raises :class:`TrainingError` after too many non-finite steps, and re-raises any other
        error of a step or of the data loader, after saving a checkpoint in both cases.
        """
        config = self.config
        self.output.mkdir(parents=True, exist_ok=True)
        if self.step >= config.optim.steps:
            self.metrics.close()
            self._report_complete()
            return 0
        self.write_run_files()
        if config.checkpoint.save_initial and self.step == 0:
            self.save(INITIAL_CHECKPOINT_NAME)
        stop = config.optim.steps if max_steps is None else min(config.optim.steps,
                                                                self.step + max_steps)
        loader = make_loader(self.dataset, self.step, stop, config.data.num_workers,
                             config.data.prefetch_factor,
                             derive_seed(config.seed, self.context.rank, self.step))
        flag = _SignalFlag()
        flag.install()
        progress = self._progress_bar(stop)
        window: list[dict[str, float]] = []
        self.clock.start()
        window_start = self.clock.seconds
        try:
            for sample in loader:
                metrics = self.train_step(sample)
                self.step += 1
                window.append(metrics)
                if self.step % config.log_every == 0 or self.step == stop:
                    window_start = self._log_window(window, window_start, progress)
                    window = []
                if progress is not None:
                    progress.update(1)
                if self.step % config.validation.every == 0:
                    with self.clock.paused():
                        self.run_validation()
                if self._checkpoint_due():
                    self._save_periodic()
                signum = self._stop_requested(flag)
                if signum:
                    self.save(ckpt.LATEST_NAME)
                    logger.warning("stopped by signal %d at step %d", signum, self.step)
                    return SIGNAL_EXIT_BASE + signum
        except Exception as error:
            # Any failure (a data worker error, running out of memory) keeps the finished steps.
            logger.error("training failed at step %d (%s): saving %s before stopping",
                         self.step, error, ckpt.LATEST_NAME)
            self.save(ckpt.LATEST_NAME)
            raise
        finally:
            self.clock.stop()
            flag.restore()
            if progress is not None:
                progress.close()
            self.metrics.close()
        self.save(ckpt.LATEST_NAME)
        if self.step >= config.optim.steps:
            self.export(self.output / "model.pt")
        return 0

    def _report_complete(self) -> None:
        """Log that a resumed run has no steps left, and export model.pt if it is missing."""
        if not self.context.is_main:
            return
        logger.warning(
            "the run is already complete at step %d of %d (optim.steps), so nothing was trained. "
            "To train further, start a fine-tune run from its weights: --config RECIPE --output "
            "NEW_FOLDER init_weights=%s optim.steps=N (as config/finetune_small_largeflow.yaml "
            "does); resuming with a larger optim.steps cannot extend the run's learning-rate "
            "schedule", self.step, self.config.optim.steps, self.resume_path,
        )
        model = self.output / "model.pt"
        if not model.is_file():
            self.export(model)

    def _save_periodic(self) -> None:
        self.save(ckpt.LATEST_NAME)
        keep = self.config.checkpoint.keep_every_steps
        if keep and self.step % keep == 0:
            self.save(f"step_{self.step:08d}.pt")

    def _progress_bar(self, stop: int):
        if not self.context.is_main:
            return None
        from tqdm import tqdm

        return tqdm(total=stop, initial=self.step, unit="step", dynamic_ncols=True)

    def _log_window(self, window: list[dict[str, float]], started: float, progress) -> float:
        """Log the means of ``window``; ``started`` and the return value are clock seconds."""
        now = self.clock.seconds
        means = {key: float(np.nanmean([m[key] for m in window])) for key in window[0]}
        means["skipped"] = float(sum(m["skipped"] for m in window))
        means["steps_per_s"] = len(window) / max(now - started, 1e-9)
        means["wall_s"] = now
        self.metrics.log(self.step, "train", means)
        if progress is not None:
            progress.set_postfix(loss=f"{means['loss']:.4g}", beta=f"{means['beta']:.3g}",
                                 steps_per_s=f"{means['steps_per_s']:.3g}")
        return now

    def export(self, path: str | Path) -> None:
        """Write the compact model file (weights + engine configuration) on rank 0."""
        if self.context.is_main:
            metadata = {"step": self.step, "code_version": ckpt.code_version(),
                        "train_config": to_dict(self.config)}
            save_model(path, self.network, self.engine, metadata)


def check_resume_state(
    state: dict[str, Any],
    path: Path,
    network: VONetwork,
    engine: EngineConfig,
    config: TrainConfig,
) -> None:
    """Raise ConfigError when the checkpoint ``state`` (read from ``path``) cannot continue
    under ``config``.

    The checkpoint's network sizes must equal those of the configuration's engine, and
    ``optim.steps`` must not exceed the length of the checkpoint's one-cycle schedule, because
    the restored scheduler raises ValueError on the first step past its stored length.
    """
    fix = _resume_fix(path)
    differing = _differing_network_sizes(state, engine)
    if differing:
        raise ConfigError(
            f"checkpoint {path} has network sizes that do not match the configuration (engine "
            f"{config.engine}): {'; '.join(differing)}; {fix}"
        )
    try:
        check_state_dict(path, network, state["model"], fix=fix)
    except ModelFileError as error:
        raise ConfigError(
            f"checkpoint weights do not fit the configuration's network: {error}"
        ) from None
    scheduled = state.get("scheduler", {}).get("total_steps")
    if isinstance(scheduled, int) and config.optim.steps > scheduled:
        raise ConfigError(
            f"optim.steps={config.optim.steps} exceeds the {scheduled} steps of the learning-rate "
            f"schedule stored in checkpoint {path}, and a resumed run cannot extend its "
            f"schedule; resume with optim.steps={scheduled} or less, or train further in a "
            f"fine-tune run from its weights: --config RECIPE --output NEW_FOLDER "
            f"init_weights={path} optim.steps=N"
        )


def _differing_network_sizes(state: dict[str, Any], engine: EngineConfig) -> list[str]:
    """Describe each network size that differs between the checkpoint and ``engine``."""
    try:
        stored = to_dict(from_dict(EngineConfig, state["engine"]).network)
    except (ConfigError, KeyError, TypeError):
        return []  # no readable engine section: the weight shapes are checked instead
    current = to_dict(engine.network)
    return [
        f"network.{key} is {stored[key]} in the checkpoint but {value} in the configuration"
        for key, value in current.items() if stored.get(key) != value
    ]


def _resume_fix(path: Path) -> str:
    """Return the advice that ends a resume error: how to resume with the run's own settings."""
    saved = path.parent.parent / "config.yaml"
    if path.parent.name == ckpt.CHECKPOINT_DIR and saved.is_file():
        own = f"leave out --config, or pass --config {saved}, the run's resolved configuration"
    else:
        own = "leave out --config to use the configuration stored in the checkpoint"
    return (f"resume with the run's own configuration ({own}), or start a new run with another "
            "--output")


_VALIDATION_CLIP_CACHE: dict[tuple, list[dict[str, torch.Tensor]]] = {}
"""The clips of the last :func:`validate_checkpoint` call, reused when checkpoints of the same
recipe are scored one after another."""


def load_initial_weights(network: VONetwork, path: str | Path) -> None:
    """Copy the network weights of a model file or a training checkpoint into ``network``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: the file contains no network weights, or their sizes differ from
            ``network``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"init_weights {path} not found; pass a model file (models/*.pt) or a checkpoint"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # foreign bytes fail with any error type, as in load_checkpoint
        raise ConfigError(
            f"init_weights {path} could not be read ({summarize_load_error(error)}); pass a "
            "model file or a training checkpoint"
        ) from None
    weights = payload.get("state_dict", payload.get("model")) if isinstance(payload, dict) else None
    if not isinstance(weights, dict):
        raise ConfigError(
            f"init_weights {path} is invalid: it has no network weights (no 'state_dict' or "
            "'model' entry); pass a model file or a training checkpoint"
        )
    try:
        check_state_dict(path, network, weights, fix="use a file trained with the same preset")
    except ModelFileError as error:
        raise ConfigError(
            f"init_weights does not fit the network of the recipe's engine preset: {error}"
        ) from None
    network.load_state_dict(weights)
    logger.info("network weights initialised from %s", path)


@torch.no_grad()
def synthetic_validation(
    network: torch.nn.Module,
    config: TrainConfig,
    selection: str,
    clips: list[dict[str, torch.Tensor]],
    seed: int,
) -> dict[str, float]:
    """Return the mean unweighted validation metrics of ``network`` over ``clips``.

    The loss has no Sigma weighting, adjacent flow edges, and beta and rho at 1, so runs with
    different recipes are comparable. Clip ``i`` draws its patches from a generator seeded by
    ``(seed, i)``, so the same clips always give the same figures.
    """
    return mean_metrics(synthetic_validation_per_clip(network, config, selection, clips, seed))


def mean_metrics(per_clip: dict[str, list[float]]) -> dict[str, float]:
    """Average each metric over the clips, ignoring NaN values."""
    return {key: float(np.nanmean(values)) for key, values in per_clip.items()}


@torch.no_grad()
def synthetic_validation_per_clip(
    network: torch.nn.Module,
    config: TrainConfig,
    selection: str,
    clips: list[dict[str, torch.Tensor]],
    seed: int,
) -> dict[str, list[float]]:
    """Return each metric of :func:`synthetic_validation` for every clip, in clip order."""
    plain = LossConfig(**{**to_dict(config.loss), "flow_weighting": "none",
                          "flow_edges": "adjacent"})
    evaluator = UnrolledModel(network, config.unroll, config.ba, plain, selection)
    evaluator.eval()
    totals: dict[str, list[float]] = {}
    for index, clip in enumerate(clips):
        generator = torch.Generator().manual_seed(derive_seed(seed, VALIDATION_STREAM, index))
        out = evaluator(clip["images"], clip["depths"], clip["poses_cw"], clip["intrinsics"],
                        generator)
        loss = plain.flow_weight * out["flow"] + plain.pose_weight * (
            out["translation"] + out["rotation"]
        )
        values = {"loss": loss, **{key: out[key] for key in
                                    ("flow", "translation", "rotation", "flow_epe",
                                     "pose_translation", "pose_rotation")}}
        for key, value in values.items():
            totals.setdefault(key, []).append(float(value))
    return totals


LOADER_ONLY_DATA_KEYS = ("num_workers", "prefetch_factor")
"""Data settings that change how clips are loaded, not which clips: left out of the clip key."""


def clip_recipe(data: DataConfig) -> str:
    """Describe the data settings that decide the validation clips (loader settings left out)."""
    values = {key: value for key, value in to_dict(data).items() if key not in LOADER_ONLY_DATA_KEYS}
    return repr(sorted(values.items()))


@dataclass
class CheckpointValidation:
    """Validation of one checkpoint on held-out synthetic clips.

    Attributes:
        step: training step of the checkpoint (-1 when a model file does not record it).
        metrics: mean of every metric over the clips, as :func:`synthetic_validation`.
        clip_losses: loss of every clip, in clip order.
        clip_set: description of the clip set (data recipe, validation seed, count). Two
            validations with the same ``clip_set`` scored the same clips, so their losses pair.
    """

    step: int
    metrics: dict[str, float]
    clip_losses: list[float]
    clip_set: str


def paired_difference(losses: Sequence[float], reference: Sequence[float]) -> tuple[float, float, int]:
    """Return the mean per-clip difference ``losses - reference``, its standard error and the
    number of clips where ``losses`` is lower.

    Both lists hold the losses of the same clips in the same order. Clips where either loss is
    not finite are left out. The standard error is the sample standard deviation of the
    differences over the square root of their count (NaN with fewer than two clips).
    """
    if len(losses) != len(reference):
        raise ValueError(
            f"paired losses need the same clips, got {len(losses)} and {len(reference)} values; "
            "score both checkpoints on the same clips"
        )
    differences = np.asarray(losses, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    differences = differences[np.isfinite(differences)]
    if len(differences) == 0:
        return math.nan, math.nan, 0
    error = (float(differences.std(ddof=1) / math.sqrt(len(differences)))
             if len(differences) > 1 else math.nan)
    return float(differences.mean()), error, int((differences < 0).sum())


def format_standard_error(error: float) -> str:
    """Format a standard error for the paired-difference lines ("n/a" below two clips)."""
    return f"{error:.3f}" if math.isfinite(error) else "n/a (needs two clips)"


def validate_checkpoint(checkpoint_path: str | Path, clips: int) -> dict[str, float]:
    """Return the step and the mean validation metrics of a checkpoint (or of a model file
    exported from one) on ``clips`` held-out synthetic clips (see
    :func:`validate_checkpoint_clips`)."""
    result = validate_checkpoint_clips(checkpoint_path, clips)
    return {"step": float(result.step), **result.metrics}


def validate_checkpoint_clips(checkpoint_path: str | Path, clips: int) -> CheckpointValidation:
    """Validate a checkpoint (or a model file exported from one) on ``clips`` held-out
    synthetic clips, keeping the loss of every clip.

    The clips are the first ``clips`` of the recipe's validation set (the training run used the
    first ``validation.clips`` of them), rendered on the CPU. More clips than the run used give
    a steadier loss for choosing between checkpoints whose logged losses differ by less than
    their noise.
    """
    try:
        state = ckpt.load_checkpoint(checkpoint_path)
    except ValueError:
        # Not a training checkpoint: a model file from --export, whose metadata carry the recipe.
        network, engine = load_model(checkpoint_path)
        metadata = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["metadata"]
        if "train_config" not in metadata:
            raise ValueError(
                f"model file {checkpoint_path} does not record its training recipe; validate "
                "the training checkpoint it was exported from instead"
            ) from None
        config = from_dict(TrainConfig, metadata["train_config"]).validate()
        step = metadata.get("step", -1)
    else:
        config = from_dict(TrainConfig, state["config"]).validate()
        engine = from_dict(EngineConfig, state["engine"]).validate()
        network = VONetwork(engine.network)
        network.load_state_dict(state["model"])
        step = state["step"]
    key = (clip_recipe(config.data), config.validation.seed, clips)
    if key not in _VALIDATION_CLIP_CACHE:
        _VALIDATION_CLIP_CACHE.clear()  # keep one set: 64 clips of 8 frames at 192x256 take 176 MB
        _VALIDATION_CLIP_CACHE[key] = validation_clips(config.data, config.validation.seed, clips)
    held_out = _VALIDATION_CLIP_CACHE[key]
    per_clip = synthetic_validation_per_clip(
        network, config, engine.frontend.centroid_selection, held_out, config.validation.seed
    )
    return CheckpointValidation(int(step), mean_metrics(per_clip), per_clip["loss"], repr(key))


def export_checkpoint(
    checkpoint_path: str | Path, model_path: str | Path, engine_preset: str | Path | None = None
) -> Path:
    """Write a compact model file (``save_model``) from a training checkpoint; return its path.

    Args:
        engine_preset: preset name or YAML whose frontend and BA settings the model file
            carries, so that users of the file track with the tuned inference settings rather
            than those of the training run. None keeps the checkpoint's settings.

    Raises:
        ConfigError: the preset's network sizes differ from the checkpoint's.
    """
    state = ckpt.load_checkpoint(checkpoint_path)
    engine = from_dict(EngineConfig, state["engine"]).validate()
    if engine_preset is not None:
        preset = load_engine_config(engine_preset)
        if preset.network != engine.network:
            raise ConfigError(
                f"engine preset {engine_preset} has network sizes {preset.network}, but the "
                f"checkpoint {checkpoint_path} was trained with {engine.network}; pick the preset "
                "the checkpoint's recipe names"
            )
        engine = preset
    network = VONetwork(engine.network)
    network.load_state_dict(state["model"])
    metadata = {"step": state["step"], "code_version": state.get("code_version", "unknown"),
                "train_config": state["config"], "source_checkpoint": str(checkpoint_path)}
    save_model(model_path, network, engine, metadata)
    return Path(model_path)
