"""The one-cycle learning-rate schedule for every run length, and its configuration checks."""

import warnings

import pytest
import torch

from vo_node.config import ConfigError
from vo_node.train.config import load_train_config
from vo_node.train.trainer import MIN_WARMUP_STEPS, warmup_fraction

MAX_LR = 1.0e-3


def one_cycle_rates(steps: int, pct_start: float) -> list[float]:
    """Return the learning rate of each of ``steps`` optimiser steps, as the trainer builds it."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=MAX_LR)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=MAX_LR, total_steps=steps,
        pct_start=warmup_fraction(pct_start, steps), anneal_strategy="linear",
        cycle_momentum=False,
    )
    rates = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        for _ in range(steps):
            rates.append(scheduler.get_last_lr()[0])
            scheduler.step()
    return rates


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 40, 1000])
def test_schedule_runs_for_any_length(steps):
    rates = one_cycle_rates(steps, pct_start=0.01)
    assert len(rates) == steps
    assert all(0.0 < rate <= MAX_LR for rate in rates)
    if steps >= 2:
        assert rates[-1] < rates[-2]  # the last step anneals
    if steps >= MIN_WARMUP_STEPS + 1:
        peak = rates.index(max(rates))
        assert peak >= MIN_WARMUP_STEPS - 1
        assert max(rates) == pytest.approx(MAX_LR)


def test_long_schedule_keeps_configured_warmup():
    assert warmup_fraction(0.01, 12000) == pytest.approx(0.01)
    assert warmup_fraction(0.3, 10) == pytest.approx(0.3)
    assert warmup_fraction(0.01, 40) == pytest.approx(MIN_WARMUP_STEPS / 40)


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_warmup_rejects_invalid_steps(steps):
    with pytest.raises(ValueError, match="optim.steps"):
        warmup_fraction(0.01, steps)


@pytest.mark.parametrize("steps", [0, -1])
def test_config_rejects_steps_below_one(steps):
    with pytest.raises(ConfigError, match="optim.steps"):
        load_train_config(None, {"optim.steps": steps})
